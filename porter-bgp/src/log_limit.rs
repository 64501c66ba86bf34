//! Log lines that a peer (or anyone who can reach the listener) can cause
//! are rate-limited per key: the first in each window is logged, the rest
//! are counted and reported with the next one logged. Pure: the caller
//! passes the time.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// One line per key per window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Keys seen more than this long ago are forgotten, so a flood of distinct
/// keys (source addresses) cannot grow the table without bound.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// At most this many keys are kept; beyond it the oldest are dropped.
const MAX_KEYS: usize = 1024;

#[derive(Debug)]
pub struct LogLimit<K> {
    window: Duration,
    /// Key → (when it was last logged, lines suppressed since).
    seen: HashMap<K, (Instant, u64)>,
}

impl<K: Eq + Hash + Clone> Default for LogLimit<K> {
    fn default() -> Self {
        Self::new(WINDOW)
    }
}

impl<K: Eq + Hash + Clone> LogLimit<K> {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when a line for `key` may be logged now (with how
    /// many were suppressed since the last one), `None` when it may not.
    pub fn allow(&mut self, key: &K, now: Instant) -> Option<u64> {
        if let Some((logged, suppressed)) = self.seen.get_mut(key) {
            if now.saturating_duration_since(*logged) < self.window {
                *suppressed += 1;
                return None;
            }
            let count = *suppressed;
            *logged = now;
            *suppressed = 0;
            return Some(count);
        }
        if self.seen.len() >= MAX_KEYS {
            self.seen
                .retain(|_, (logged, _)| now.saturating_duration_since(*logged) < FORGET_AFTER);
        }
        if self.seen.len() >= MAX_KEYS {
            // Still full of recent keys: one line for all the new ones.
            return None;
        }
        self.seen.insert(key.clone(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_window_with_the_suppressed_count() {
        let start = Instant::now();
        let mut limit = LogLimit::new(Duration::from_secs(60));
        assert_eq!(limit.allow(&"a", start), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.allow(&"a", start + Duration::from_secs(1)), None);
        }
        assert_eq!(limit.allow(&"b", start), Some(0), "keys are independent");
        assert_eq!(limit.allow(&"a", start + Duration::from_secs(61)), Some(5));
        assert_eq!(limit.allow(&"a", start + Duration::from_secs(62)), None);
    }

    #[test]
    fn a_flood_of_keys_stays_bounded() {
        let start = Instant::now();
        let mut limit = LogLimit::new(Duration::from_secs(60));
        for i in 0..(MAX_KEYS as u32 + 100) {
            limit.allow(&i, start);
        }
        assert!(limit.seen.len() <= MAX_KEYS);
        let later = start + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(limit.allow(&u32::MAX, later), Some(0), "old keys make room");
    }
}
