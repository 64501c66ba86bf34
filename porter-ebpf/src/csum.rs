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

/// Accumulates the change of a 32-bit word (as read from memory).
#[inline(always)]
pub fn add_u32(acc: u32, old: u32, new: u32) -> u32 {
    let acc = add_word(acc, old as u16, new as u16);
    add_word(acc, (old >> 16) as u16, (new >> 16) as u16)
}

/// Accumulates the change of an IPv6 address.
#[inline(always)]
pub fn add_addr(mut acc: u32, old: &[u32; 4], new: &[u32; 4]) -> u32 {
    for i in 0..4 {
        acc = add_u32(acc, old[i], new[i]);
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
