//! Reads the global per-CPU counters from the pinned stats map.
use aya::maps::{Map, MapData, PerCpuArray};
use porter_common::{Stat, map_names};

use crate::PinLayout;

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(
        "cannot open pinned map {path}: {source} (is the agent running, and is --bpffs right?)"
    )]
    Open {
        path: String,
        source: aya::maps::MapError,
    },
    #[error("cannot read counter {stat}: {source}")]
    Read {
        stat: &'static str,
        source: aya::maps::MapError,
    },
}

/// Sum over CPUs of every global counter, in [`Stat::ALL`] order.
pub fn read_global_stats(pins: &PinLayout) -> Result<Vec<(Stat, u64)>, StatsError> {
    let path = pins.map(map_names::STATS);
    let open_error = |source| StatsError::Open {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_error)?;
    let array: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(open_error)?;
    Stat::ALL
        .iter()
        .map(|&stat| {
            let per_cpu = array
                .get(&stat.index(), 0)
                .map_err(|source| StatsError::Read {
                    stat: stat.name(),
                    source,
                })?;
            Ok((stat, per_cpu.iter().sum()))
        })
        .collect()
}

/// Convenience for callers that want one counter.
pub fn read_stat(pins: &PinLayout, wanted: Stat) -> Result<u64, StatsError> {
    Ok(read_global_stats(pins)?
        .into_iter()
        .find_map(|(stat, value)| (stat == wanted).then_some(value))
        .unwrap_or(0))
}
