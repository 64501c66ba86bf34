//! Why a data plane operation failed.
use std::path::PathBuf;

use aya::{
    maps::MapError,
    programs::{ProgramError, links::LinkError},
};
use porter_common::map_names;

use super::attach::AttachError;
use crate::{
    l2_interface::InterfaceError,
    maglev,
    service::{ServiceAddr, SpecError},
    stats,
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Maglev(#[from] maglev::MaglevError),
    #[error("the eBPF object has no map {0}; agent and object are out of step")]
    MissingMap(&'static str),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error(
        "pinned map {map} holds {found} entries but this configuration needs {wanted}; \
         run `porter-agent cleanup` (drops conntrack) or keep the old Maglev size and service limit"
    )]
    PinnedSizeMismatch {
        map: &'static str,
        found: u32,
        wanted: u32,
    },
    #[error("no room for service {0}: all service slots are used; raise max_services")]
    ServiceSlotsFull(ServiceAddr),
    #[error("no free backend id for service {0}")]
    BackendIdsFull(ServiceAddr),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("tc on {interface}: {source}")]
    Tc {
        interface: String,
        source: ProgramError,
    },
    #[error("cannot use pinned tc link {path}: {source}")]
    TcLink { path: PathBuf, source: LinkError },
    #[error(
        "tc on {interface}: this kernel has no TCX, so the reply program cannot be a pinned link \
         that outlives the agent; Porter needs Linux >= 6.6"
    )]
    TcxMissing { interface: String },
    #[error("cannot pin tc link at {path}: {source}")]
    TcPin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("cannot count CPUs: {0}")]
    Cpus(String),
    #[error(
        "cannot map the Maglev tables ({}) into memory: {source}; \
         the kernel must be 5.5 or newer",
        map_names::MAGLEV
    )]
    MaglevMap { source: std::io::Error },
    #[error("cannot write a Maglev table: {source}")]
    MaglevWrite { source: std::io::Error },
    #[error(transparent)]
    Stats(#[from] stats::StatsError),
    #[error(transparent)]
    Interface(#[from] InterfaceError),
    #[error(
        "{wanted} Layer 2 answers (EIPs x interfaces) exceed the map's {capacity}; \
         spread the EIPs over more nodes"
    )]
    L2LeadsFull { wanted: usize, capacity: u32 },
    #[error("cannot read the monotonic clock: {0}")]
    Clock(String),
}

pub(super) fn map_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}
