//! The data plane's counters: per service and global.
use aya::maps::PerCpuValues;
use porter_common::{ServiceCounters, map_names};

use super::{Dataplane, DataplaneError, map_err};
use crate::{service::ServiceAddr, stats};

impl Dataplane {
    /// Packets, bytes and new flows of one service, summed over CPUs.
    pub fn service_counters(
        &self,
        addr: &ServiceAddr,
    ) -> Result<Option<ServiceCounters>, DataplaneError> {
        let Some(installed) = self.installed.get(addr) else {
            return Ok(None);
        };
        let per_cpu = self
            .service_stats
            .get(&installed.id, 0)
            .map_err(map_err(map_names::SERVICE_COUNTERS))?;
        Ok(Some(
            per_cpu
                .iter()
                .fold(ServiceCounters::default(), ServiceCounters::plus),
        ))
    }

    /// Global pass/drop reason counters, summed over CPUs.
    pub fn global_counters(&self) -> Result<Vec<(porter_common::Stat, u64)>, DataplaneError> {
        Ok(stats::read_global_stats(&self.pins)?)
    }

    pub(super) fn reset_counters(&mut self, id: u32) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, err)| DataplaneError::Cpus(format!("{what}: {err}")))?;
        let zeros = PerCpuValues::try_from(vec![ServiceCounters::default(); cpus])
            .map_err(|err| DataplaneError::Cpus(err.to_string()))?;
        self.service_stats
            .set(id, zeros, 0)
            .map_err(map_err(map_names::SERVICE_COUNTERS))
    }
}
