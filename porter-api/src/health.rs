//! What `/readyz` reports: whether the binary says it is ready for work, and
//! the problems that keep it from getting there (a watch the API server
//! refuses, for one), so that `kubectl describe pod` shows the reason and
//! not only "Readiness probe failed".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    /// Problem → what to tell the operator; ready only while empty.
    problems: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Health {
    /// Not ready until [`Health::set_ready`].
    pub fn starting() -> Self {
        Self::default()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Records (`Some`) or clears (`None`) the problem named `what`.
    pub fn set_problem(&self, what: &str, message: Option<String>) {
        let Ok(mut problems) = self.problems.lock() else {
            return;
        };
        match message {
            Some(message) => problems.insert(what.to_owned(), message),
            None => problems.remove(what),
        };
    }

    /// `Ok` when ready; else why not, one line per problem.
    pub fn readiness(&self) -> Result<(), String> {
        let problems: Vec<String> = self
            .problems
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        match (self.ready.load(Ordering::Relaxed), problems.is_empty()) {
            (true, true) => Ok(()),
            (_, false) => Err(problems.join("\n")),
            (false, true) => Err("starting".to_owned()),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_withdraws_readiness_until_it_is_cleared() {
        let health = Health::starting();
        assert_eq!(health.readiness(), Err("starting".to_owned()));
        health.set_ready(true);
        assert_eq!(health.readiness(), Ok(()));
        health.set_problem("watch Service", Some("cannot list services".into()));
        assert_eq!(health.readiness(), Err("cannot list services".to_owned()));
        health.set_problem("watch Service", None);
        assert!(health.is_ready());
    }
}
