//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! Words are read from memory as raw `u16`s, never byte-swapped: the one's
//! complement sum is the same in either byte order as long as every word is
//! taken the same way, so the hot path needs no swaps.

/// Accumulates the change of one 16-bit word from `old` to `new`.
#[inline(always)]
pub fn add_word(acc: u32, old: u16, new: u16) -> u32 {
    acc + (!old) as u32 + new as u32
}

/// Accumulates the change of `old` to `new`, both `N` bytes (N even).
#[inline(always)]
pub fn add_bytes<const N: usize>(mut acc: u32, old: &[u8; N], new: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        acc = add_word(
            acc,
            u16::from_ne_bytes([old[i], old[i + 1]]),
            u16::from_ne_bytes([new[i], new[i + 1]]),
        );
        i += 2;
    }
    acc
}

/// Applies an accumulated change to the checksum field value `check`.
#[inline(always)]
pub fn apply(check: u16, acc: u32) -> u16 {
    let mut sum = (!check) as u32 + acc;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
