//! Maglev lookup tables (Eisenbud et al., NSDI 2016), built in userspace.
//!
//! Each backend gets a permutation of the M slots from two hashes of its
//! name; backends take turns claiming their next free preferred slot until
//! the table is full. Hashes use fixed seeds, so the same backend names and
//! M always give the same table, on every node and after every restart.

use crate::service::Backend;

/// Seeds of the two permutation hashes; fixed forever, as changing them would
/// reshuffle every flow.
const OFFSET_SEED: u64 = 0x005e_ed0f_f5e7_u64;
const SKIP_SEED: u64 = 0x5eed_5c19_u64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error(
        "Maglev table size {0} is not prime; choose a prime such as 65537 (the default) or 16381"
    )]
    NotPrime(u32),
    #[error(
        "Maglev table size {size} is too small for {backends} backends; it must be at least 100x the backend count"
    )]
    TooSmall { size: u32, backends: usize },
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// Checks that `size` can serve as M for up to `backends` backends.
pub fn validate_size(size: u32, backends: usize) -> Result<(), MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    if (size as usize) < backends.saturating_mul(100) {
        return Err(MaglevError::TooSmall { size, backends });
    }
    Ok(())
}

/// FNV-1a over `bytes`, started from `seed`, then a splitmix64 finalizer so
/// that similar names (10.0.0.1 vs 10.0.0.2) give unrelated values.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for &byte in bytes {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds the table of size `size` for backends named `names` (stable, unique
/// byte strings, e.g. `"10.0.0.7:8080"`). Slot `i` holds an index into
/// `names`. Ties go by position, so callers pass the names sorted, and equal
/// sets give equal tables. No backends give an empty table.
pub fn build<N: AsRef<[u8]>>(names: &[N], size: u32) -> Result<Vec<u32>, MaglevError> {
    validate_size(size, names.len())?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let m = size as usize;
    // Backend i's j-th preferred slot is (offset_i + j * skip_i) mod M. Each
    // walk keeps its current slot and adds the skip (both below M, so one
    // subtraction reduces it): a full table takes about M ln M steps, and a
    // division per step made that most of the cost at the default M.
    let mut walks: Vec<(usize, usize)> = names
        .iter()
        .map(|name| {
            let offset = hash(name.as_ref(), OFFSET_SEED) % u64::from(size);
            let skip = hash(name.as_ref(), SKIP_SEED) % u64::from(size - 1) + 1;
            (offset as usize, skip as usize)
        })
        .collect();
    let mut table = vec![u32::MAX; m];
    let mut filled = 0usize;
    'fill: loop {
        for (backend, (slot, skip)) in walks.iter_mut().enumerate() {
            // Walk this backend's permutation to its next slot still free.
            while table[*slot] != u32::MAX {
                *slot = step(*slot, *skip, m);
            }
            table[*slot] = backend as u32;
            *slot = step(*slot, *skip, m);
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    Ok(table)
}

/// The table of a service's `backends` (unique by address and port), the
/// same on every node for the same set, whatever order they come in and
/// whichever node each runs on: slot `i` holds an index into `backends`.
/// The table is built over the backends sorted by (address, port) and named
/// `ip:port`, which is what makes it cluster-wide.
///
/// Draining backends (terminating pods) get no slot while any backend is
/// not draining; when every one is, they all take new flows, as kube-proxy
/// does. Every node sees the same conditions, so this too is cluster-wide.
pub fn backend_table(backends: &[Backend], size: u32) -> Result<Vec<u32>, MaglevError> {
    let all_draining = backends.iter().all(|backend| backend.draining);
    let mut order: Vec<usize> = (0..backends.len())
        .filter(|&i| all_draining || !backends[i].draining)
        .collect();
    order.sort_by_key(|&i| (backends[i].addr, backends[i].port));
    let names: Vec<String> = order.iter().map(|&i| backends[i].table_name()).collect();
    Ok(build(&names, size)?
        .into_iter()
        .map(|position| order[position as usize] as u32)
        .collect())
}

/// `(slot + skip) mod m` for `slot, skip < m`.
#[inline]
fn step(slot: usize, skip: usize, m: usize) -> usize {
    let next = slot + skip;
    if next >= m { next - m } else { next }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = crate::DEFAULT_MAGLEV_SIZE;

    fn names(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    /// Table of backend names rather than indices, to compare across sets.
    fn named_table(names: &[String], size: u32) -> Vec<String> {
        build(names, size)
            .expect("valid size")
            .into_iter()
            .map(|index| names[index as usize].clone())
            .collect()
    }

    /// Slots that changed backend although neither their old nor their new
    /// backend was the one added or removed.
    fn needless_moves(before: &[String], after: &[String], changed: &str) -> usize {
        before
            .iter()
            .zip(after)
            .filter(|(old, new)| old != new && *old != changed && *new != changed)
            .count()
    }

    /// The paper's population loop, with the permutation computed as
    /// written there: `(offset + j * skip) mod M`.
    fn reference(names: &[String], size: u32) -> Vec<u32> {
        let m = u64::from(size);
        let perms: Vec<(u64, u64)> = names
            .iter()
            .map(|n| {
                let offset = hash(n.as_bytes(), OFFSET_SEED) % m;
                (offset, hash(n.as_bytes(), SKIP_SEED) % (m - 1) + 1)
            })
            .collect();
        let mut next = vec![0u64; names.len()];
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0;
        loop {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                let mut slot = (offset + next[i] * skip) % m;
                while table[slot as usize] != u32::MAX {
                    next[i] += 1;
                    slot = (offset + next[i] * skip) % m;
                }
                table[slot as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == table.len() {
                    return table;
                }
            }
        }
    }

    #[test]
    fn tables_are_the_papers_permutations() {
        // Agents of every version must build the same table from the same
        // backends, or an upgrade would move flows.
        for (count, size) in [(1, 251), (3, 1009), (10, 1009), (10, M), (100, M)] {
            let backends = names(count);
            assert_eq!(
                build(&backends, size).expect("valid size"),
                reference(&backends, size),
                "{count} backends, M = {size}"
            );
        }
    }

    #[test]
    fn same_input_gives_same_table() {
        let backends = names(7);
        assert_eq!(build(&backends, M), build(&backends, M));
        assert_eq!(build(&backends, 251), build(&backends, 251));
    }

    #[test]
    fn every_slot_is_filled_and_shares_are_even() {
        for count in [1, 2, 3, 10, 100] {
            let table = build(&names(count), M).expect("valid size");
            let mut shares = vec![0usize; count];
            for &slot in &table {
                shares[slot as usize] += 1;
            }
            let fair = M as usize / count;
            for share in shares {
                // Maglev guarantees near-equal shares: within a few percent of M/N.
                assert!(
                    share.abs_diff(fair) * 100 <= fair * 3 + 100,
                    "{count} backends: share {share} vs fair {fair}"
                );
            }
        }
    }

    #[test]
    fn adding_or_removing_one_backend_moves_at_most_one_percent_extra() {
        for count in [2, 3, 5, 10, 25, 50, 99, 100] {
            let all = names(count);
            let full = named_table(&all, M);
            for removed in [0, count / 2, count - 1] {
                let rest: Vec<String> = all
                    .iter()
                    .filter(|name| **name != all[removed])
                    .cloned()
                    .collect();
                if rest.is_empty() {
                    continue;
                }
                let smaller = named_table(&rest, M);
                // Removing: the removed backend's slots must move; others should stay.
                let moved = needless_moves(&full, &smaller, &all[removed]);
                assert!(
                    moved * 100 <= M as usize,
                    "{count} backends, removing #{removed} moved {moved} other slots of {M}"
                );
                // Adding it back is the same comparison in reverse.
                let moved = needless_moves(&smaller, &full, &all[removed]);
                assert!(moved * 100 <= M as usize, "adding back moved {moved}");
            }
        }
    }

    #[test]
    fn rejects_unusable_sizes() {
        assert_eq!(build(&names(1), 100), Err(MaglevError::NotPrime(100)));
        assert_eq!(
            build(&names(10), 251),
            Err(MaglevError::TooSmall {
                size: 251,
                backends: 10
            })
        );
        assert!(build::<String>(&[], 251).expect("valid").is_empty());
    }

    fn pods(count: usize) -> Vec<Backend> {
        (0..count)
            .map(|i| Backend::local(format!("10.244.0.{}", i + 1).parse().expect("ip"), 8080))
            .collect()
    }

    #[test]
    fn draining_backends_get_no_slot_until_every_one_drains() {
        let mut backends = pods(3);
        let before = backend_table(&backends, 1009).expect("table");
        backends[1].draining = true;
        let table = backend_table(&backends, 1009).expect("table");
        assert!(
            table.iter().all(|&i| i != 1),
            "a draining pod took new flows"
        );
        // The table of the others alone (Maglev keeps their slots, bar
        // about 1%), by index into the same slice.
        let without = backend_table(&[backends[0], backends[2]], 1009).expect("table");
        let map_back = |i: u32| if i == 0 { 0 } else { 2 };
        assert_eq!(table, without.into_iter().map(map_back).collect::<Vec<_>>());
        // No ready pod left: every draining one takes new flows again.
        backends.iter_mut().for_each(|b| b.draining = true);
        assert_eq!(backend_table(&backends, 1009).expect("table"), before);
    }
}
