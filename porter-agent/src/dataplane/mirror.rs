//! Writing the shared maps through their mirror: every map the data plane
//! shares between services is mirrored in userspace, so an update writes
//! only the entries that differ.
use std::collections::{BTreeMap, BTreeSet};

use aya::{
    Pod,
    maps::{Array, HashMap, MapData, MapError},
};

use super::{DataplaneError, map_err};
use crate::plan;

/// A map whose contents the data plane mirrors in `written`.
pub(super) trait Mirrored<K, V> {
    fn store(&mut self, key: K, value: V) -> Result<(), MapError>;
    fn free(&mut self, key: K) -> Result<(), MapError>;
}

impl<K: Pod, V: Pod> Mirrored<K, V> for HashMap<MapData, K, V> {
    fn store(&mut self, key: K, value: V) -> Result<(), MapError> {
        self.insert(key, value, 0)
    }

    fn free(&mut self, key: K) -> Result<(), MapError> {
        ignore_missing(self.remove(&key))
    }
}

/// An array's slots cannot be deleted: a freed one holds `free`.
pub(super) struct ArraySlots<'a, V: Pod> {
    pub(super) array: &'a mut Array<MapData, V>,
    pub(super) free: V,
}

impl<V: Pod> Mirrored<u32, V> for ArraySlots<'_, V> {
    fn store(&mut self, key: u32, value: V) -> Result<(), MapError> {
        self.array.set(key, value, 0)
    }

    fn free(&mut self, key: u32) -> Result<(), MapError> {
        self.array.set(key, self.free, 0)
    }
}

/// Brings the part `part` of `map` (mirrored by `written`) to `wanted`:
/// writes the entries that differ, and with `remove`, frees the keys that
/// `wanted` lacks.
pub(super) fn sync_map<K: Ord + Copy, V: PartialEq + Copy>(
    map: &mut impl Mirrored<K, V>,
    name: &'static str,
    written: &mut BTreeMap<K, V>,
    wanted: &BTreeMap<K, V>,
    part: &BTreeSet<K>,
    remove: bool,
) -> Result<(), DataplaneError> {
    let changes = plan::diff(written, wanted, part);
    for (key, value) in changes.upserts {
        map.store(key, value).map_err(map_err(name))?;
        written.insert(key, value);
    }
    if remove {
        for key in changes.removals {
            map.free(key).map_err(map_err(name))?;
            written.remove(&key);
        }
    }
    Ok(())
}

pub(super) fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}
