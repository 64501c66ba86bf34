//! The userspace data plane API: installs services and their local backends
//! into the pinned maps, builds and swaps Maglev tables, reads counters, and
//! picks up the pinned state of an earlier agent.
//!
//! Table swaps are double-buffered: every service owns two tables of M slots
//! in the Maglev array. An update writes the spare one, then rewrites the
//! service's value (one atomic map update) to point at it, so a packet sees
//! either the old table or the new one, never a mix.
pub mod attach;
mod config;
mod counters;
mod error;
mod layer2_answers;
mod mirror;
mod service_ids;

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
};
use porter_common::{
    BackendKey, BackendValue, L2Key, L2Value, MaglevSlot, RevNatValue, ServiceCounters, ServiceKey,
    ServiceValue, VipKey, limits::MAGLEV_SLOTS_PER_ENTRY, map_names, program_names,
};
use tracing::{debug, info};

use crate::{
    PinLayout,
    l2_interface::L2Interface,
    maglev,
    mmap_array::MmapArray,
    plan::{self, PlannedService, SharedMapPlan, SharedMaps},
    service::{Backend, LocalService, ServiceAddr},
};
use error::map_err;
use mirror::{ArraySlots, ignore_missing, sync_map};
use service_ids::free_id;

pub use config::{DataplaneConfig, Forwarding};
pub use error::DataplaneError;
pub(crate) use layer2_answers::monotonic_ns;

/// A service as installed in the maps.
#[derive(Clone, Debug)]
struct Installed {
    id: u32,
    /// Its backends' [`BackendValue::epoch`]: names this installation.
    epoch: u32,
    /// Which of the service's two tables is live.
    active: u32,
    backends: BTreeMap<Backend, u32>,
}

pub struct Dataplane {
    ebpf: Ebpf,
    pins: PinLayout,
    config: DataplaneConfig,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    vips: HashMap<MapData, VipKey, u32>,
    vip_filter: Array<MapData, u32>,
    backends: Array<MapData, BackendValue>,
    backend_revnat: HashMap<MapData, BackendKey, RevNatValue>,
    /// The Maglev tables, written through a memory mapping.
    maglev: MmapArray,
    service_stats: PerCpuArray<MapData, ServiceCounters>,
    l2_leads: HashMap<MapData, L2Key, L2Value>,
    /// The settings the programs read; it also keeps the last epoch.
    settings: Array<MapData, u32>,
    /// The last epoch handed out (see [`BackendValue::epoch`]).
    last_epoch: u32,
    /// Interfaces XDP was attached to, by name: where Layer 2 answers go out.
    l2_interfaces: BTreeMap<String, L2Interface>,
    installed: BTreeMap<ServiceAddr, Installed>,
    /// Who uses each entry of the shared maps, per `installed`.
    plan: SharedMapPlan,
    /// What the backend and reverse-NAT maps hold (in use, not free slots).
    written: SharedMaps,
}

impl Dataplane {
    /// Loads the programs with the maps pinned under `pins` (creating them
    /// the first time), and reads back what an earlier agent installed.
    pub fn open(pins: &PinLayout, config: DataplaneConfig) -> Result<Self, DataplaneError> {
        maglev::validate_size(config.maglev_size, 1)?;
        let mut ebpf = attach::load_with(pins, |loader| {
            loader
                .map_max_entries(map_names::MAGLEV, config.maglev_entries())
                .map_max_entries(map_names::SERVICES, config.max_services)
                .map_max_entries(map_names::VIPS, config.max_services)
                .map_max_entries(map_names::SERVICE_COUNTERS, config.max_services);
        })?;
        let tc = attach::tc_program(&mut ebpf)?;
        attach::retry_interrupted_load(|| tc.load()).map_err(|source| DataplaneError::Program {
            name: program_names::TC_REVNAT,
            source,
        })?;
        let maglev_map = ebpf
            .take_map(map_names::MAGLEV)
            .ok_or(DataplaneError::MissingMap(map_names::MAGLEV))?;
        let found = match &maglev_map {
            aya::maps::Map::Array(data) => data
                .info()
                .map_err(map_err(map_names::MAGLEV))?
                .max_entries(),
            _ => 0,
        };
        // Pinned maps are reused as they are, whatever size we asked for.
        if found != config.maglev_entries() {
            return Err(DataplaneError::PinnedSizeMismatch {
                map: map_names::MAGLEV,
                found,
                wanted: config.maglev_entries(),
            });
        }
        let maglev = match maglev_map {
            aya::maps::Map::Array(data) => {
                MmapArray::new(data, (MAGLEV_SLOTS_PER_ENTRY * found) as usize)
                    .map_err(|source| DataplaneError::MaglevMap { source })?
            }
            _ => return Err(DataplaneError::MissingMap(map_names::MAGLEV)),
        };
        let mut settings: Array<MapData, u32> = take(&mut ebpf, map_names::CONFIG)?;
        let mode = match config.forwarding {
            Forwarding::Kernel => porter_common::config::FORWARD_KERNEL,
            Forwarding::Redirect => porter_common::config::FORWARD_REDIRECT,
        };
        settings
            .set(porter_common::config::FORWARD, mode, 0)
            .map_err(map_err(map_names::CONFIG))?;
        let last_epoch = settings
            .get(&porter_common::config::LAST_EPOCH, 0)
            .map_err(map_err(map_names::CONFIG))?;
        let mut dataplane = Self {
            settings,
            last_epoch,
            services: take(&mut ebpf, map_names::SERVICES)?,
            vips: take(&mut ebpf, map_names::VIPS)?,
            vip_filter: take(&mut ebpf, map_names::VIP_FILTER)?,
            backends: take(&mut ebpf, map_names::BACKENDS)?,
            backend_revnat: take(&mut ebpf, map_names::BACKEND_REVNAT)?,
            service_stats: take(&mut ebpf, map_names::SERVICE_COUNTERS)?,
            l2_leads: take(&mut ebpf, map_names::L2_LEADS)?,
            l2_interfaces: BTreeMap::new(),
            maglev,
            ebpf,
            pins: pins.clone(),
            config,
            installed: BTreeMap::new(),
            plan: SharedMapPlan::default(),
            written: SharedMaps::default(),
        };
        dataplane.read_back()?;
        Ok(dataplane)
    }

    pub fn config(&self) -> DataplaneConfig {
        self.config
    }

    /// The loaded programs, e.g. for BPF_PROG_TEST_RUN.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The services installed now, backends sorted.
    pub fn services(&self) -> Vec<LocalService> {
        self.installed
            .iter()
            .map(|(addr, installed)| LocalService {
                addr: *addr,
                backends: installed.backends.keys().copied().collect(),
            })
            .collect()
    }

    /// Makes the maps serve exactly `desired`: upserts each, removes the rest.
    pub fn reconcile(&mut self, desired: &[LocalService]) -> Result<(), DataplaneError> {
        let wanted: BTreeSet<ServiceAddr> = desired.iter().map(|spec| spec.addr).collect();
        let stale: Vec<ServiceAddr> = self
            .installed
            .keys()
            .filter(|addr| !wanted.contains(addr))
            .copied()
            .collect();
        for addr in stale {
            self.remove_service(&addr)?;
        }
        desired
            .iter()
            .try_for_each(|spec| self.upsert_service(spec))
    }

    /// Installs `spec`, or changes its backends. A no-op when nothing changed.
    pub fn upsert_service(&mut self, spec: &LocalService) -> Result<(), DataplaneError> {
        self.upsert_services(std::slice::from_ref(spec))
    }

    /// Installs or changes several services. Services whose backends did
    /// not change are skipped; every spec is checked before anything is
    /// written. Only the entries of the shared maps that the changed
    /// services touch are planned and written, so one change costs the same
    /// whatever else is installed.
    pub fn upsert_services(&mut self, specs: &[LocalService]) -> Result<(), DataplaneError> {
        let changed = self.changed_services(specs)?;
        if changed.is_empty() {
            return Ok(());
        }
        let result = self.install(changed);
        if result.is_err() {
            // Part of the batch may be written and part not: bring the
            // shared maps back in step with what is installed.
            self.resync_shared()?;
        }
        result
    }

    /// The services of `specs` that differ from what is installed, as they
    /// are to be installed, with ids for what is new.
    fn changed_services(
        &mut self,
        specs: &[LocalService],
    ) -> Result<BTreeMap<ServiceAddr, Installed>, DataplaneError> {
        let mut used_ids: BTreeSet<u32> = self.installed.values().map(|i| i.id).collect();
        // Ids only get taken during one call, so the lowest free one never
        // goes down: searching on from the last one keeps a batch linear.
        let (mut next_backend, mut next_service) = (0, 0);
        // Changed services, as they are to be installed.
        let mut changed: BTreeMap<ServiceAddr, Installed> = BTreeMap::new();
        for spec in specs {
            let wanted = spec.backend_set()?;
            maglev::validate_size(self.config.maglev_size, wanted.len())?;
            let addr = spec.addr;
            let existing = changed
                .get(&addr)
                .or_else(|| self.installed.get(&addr))
                .cloned();
            if let Some(existing) = &existing
                && existing.backends.keys().eq(wanted.iter())
            {
                continue;
            }
            let mut installed = match existing {
                Some(installed) => installed,
                None => {
                    let id = free_id(
                        used_ids.range(next_service..).copied(),
                        next_service,
                        self.config.max_services,
                    )
                    .ok_or(DataplaneError::ServiceSlotsFull(addr))?;
                    used_ids.insert(id);
                    next_service = id + 1;
                    Installed {
                        id,
                        epoch: self.next_epoch(),
                        // The first table written is buffer 0: "flip" from 1.
                        active: 1,
                        backends: BTreeMap::new(),
                    }
                }
            };
            let mut next_backends = BTreeMap::new();
            for backend in &wanted {
                // A pod that turns draining (or back) keeps its id, so the
                // flows conntrack pins to it go on.
                let id = match installed.backends.range(backend.either_state()).next() {
                    Some((_, &id)) => id,
                    None => {
                        // Ids taken earlier in this batch lie below the cursor.
                        let id = free_id(
                            self.written
                                .backends
                                .range(next_backend..)
                                .map(|(id, _)| *id),
                            next_backend,
                            porter_common::limits::MAX_BACKENDS,
                        )
                        .ok_or(DataplaneError::BackendIdsFull(addr))?;
                        next_backend = id + 1;
                        id
                    }
                };
                next_backends.insert(*backend, id);
            }
            installed.backends = next_backends;
            changed.insert(addr, installed);
        }
        Ok(changed)
    }

    /// Writes `changed` (from [`Self::changed_services`]): new backends,
    /// each service's spare table and its flip, then frees what is left.
    fn install(&mut self, changed: BTreeMap<ServiceAddr, Installed>) -> Result<(), DataplaneError> {
        // Kept before any backend carries a new epoch, so that no later
        // agent hands it out again.
        self.settings
            .set(porter_common::config::LAST_EPOCH, self.last_epoch, 0)
            .map_err(map_err(map_names::CONFIG))?;
        let mut keys = plan::Keys::default();
        for (addr, after) in &changed {
            match self.installed.get(addr) {
                Some(before) => {
                    self.plan.remove(planned(addr, before));
                    keys.add(planned(addr, before));
                }
                None => self.reset_counters(after.id)?,
            }
            self.plan.add(planned(addr, after));
            keys.add(planned(addr, after));
        }
        // New backends get their entries before any table names them; old
        // ones keep theirs until no live table does.
        self.write(&keys, false)?;

        for (addr, mut installed) in changed {
            let backends: Vec<Backend> = installed.backends.keys().copied().collect();
            let ids: Vec<u32> = installed.backends.values().copied().collect();
            let table = maglev::backend_table(&backends, self.config.maglev_size)?;
            // Backend ids fit a slot: they are below MAX_BACKENDS.
            let slots: Vec<MaglevSlot> = table
                .iter()
                .map(|&index| ids.get(index as usize).map_or(0, |&id| id as MaglevSlot))
                .collect();
            let spare = 1 - installed.active;
            let base = self.config.table_base(installed.id, spare);
            self.maglev
                .write(base, &slots)
                .map_err(|source| DataplaneError::MaglevWrite { source })?;
            // The flip: one map update makes the new table live.
            let value = ServiceValue {
                id: installed.id,
                table_base: base,
                table_size: self.config.maglev_size,
                backend_count: installed.backends.len() as u32,
            };
            self.services
                .insert(addr.key(), value, 0)
                .map_err(map_err(map_names::SERVICES))?;
            installed.active = spare;
            info!(service = %addr, backends = installed.backends.len(), table = spare, "service installed");
            self.installed.insert(addr, installed);
        }
        // After the flips: no live table names the removed backends any more.
        self.write(&keys, true)
    }

    /// Brings the shared maps under `keys` to the plan: writes what
    /// differs, and with `remove`, frees what the plan does not name.
    fn write(&mut self, keys: &plan::Keys, remove: bool) -> Result<(), DataplaneError> {
        let plan = self.plan.contents(keys, &self.written.revnat);
        let written = &mut self.written;
        let backends = &mut ArraySlots {
            array: &mut self.backends,
            free: FREE_BACKEND,
        };
        let (name, wanted) = (map_names::BACKENDS, &plan.backends);
        sync_map(
            backends,
            name,
            &mut written.backends,
            wanted,
            &keys.backend_ids,
            remove,
        )?;
        let (name, wanted) = (map_names::BACKEND_REVNAT, &plan.revnat);
        let revnat = &mut self.backend_revnat;
        sync_map(
            revnat,
            name,
            &mut written.revnat,
            wanted,
            &keys.backend_keys,
            remove,
        )?;
        let (name, wanted) = (map_names::VIPS, &plan.vips);
        sync_map(
            &mut self.vips,
            name,
            &mut written.vips,
            wanted,
            &keys.vips,
            remove,
        )?;
        let filter = &mut ArraySlots {
            array: &mut self.vip_filter,
            free: 0,
        };
        let (name, wanted) = (map_names::VIP_FILTER, &plan.vip_filter);
        sync_map(
            filter,
            name,
            &mut written.vip_filter,
            wanted,
            &keys.vip_filter,
            remove,
        )
    }

    /// Rebuilds the plan from what is installed and brings every entry of
    /// the shared maps to it, freeing what no service names.
    fn resync_shared(&mut self) -> Result<(), DataplaneError> {
        self.plan = SharedMapPlan::of(
            self.installed
                .iter()
                .map(|(addr, installed)| planned(addr, installed)),
        );
        let mut keys = self.plan.keys();
        keys.backend_ids.extend(self.written.backends.keys());
        keys.backend_keys.extend(self.written.revnat.keys());
        keys.vips.extend(self.written.vips.keys());
        keys.vip_filter.extend(self.written.vip_filter.keys());
        self.write(&keys, true)
    }

    /// Stops serving `addr`. Unknown services are ignored.
    pub fn remove_service(&mut self, addr: &ServiceAddr) -> Result<(), DataplaneError> {
        let Some(installed) = self.installed.remove(addr) else {
            return Ok(());
        };
        self.plan.remove(planned(addr, &installed));
        ignore_missing(self.services.remove(&addr.key())).map_err(map_err(map_names::SERVICES))?;
        let mut keys = plan::Keys::default();
        keys.add(planned(addr, &installed));
        self.write(&keys, true)?;
        info!(service = %addr, "service removed");
        Ok(())
    }

    /// A new installation's epoch, never handed out before on this node.
    fn next_epoch(&mut self) -> u32 {
        self.last_epoch = self.last_epoch.wrapping_add(1);
        self.last_epoch
    }

    /// Rebuilds `installed` from the pinned maps (after an agent restart).
    fn read_back(&mut self) -> Result<(), DataplaneError> {
        // Backends and their ids, and their epoch, by service id.
        let mut by_service: BTreeMap<u32, (u32, BTreeMap<Backend, u32>)> = BTreeMap::new();
        for (id, entry) in self.backends.iter().enumerate() {
            let value = entry.map_err(map_err(map_names::BACKENDS))?;
            // Free slots (family 0) decode to None.
            if let Some(backend) = Backend::from_value(&value) {
                let id = id as u32;
                self.written.backends.insert(id, value);
                // Epochs are handed out in order: none above the last kept.
                self.last_epoch = self.last_epoch.max(value.epoch);
                let (epoch, backends) = by_service.entry(value.service_id).or_default();
                *epoch = value.epoch;
                backends.insert(backend, id);
            }
        }
        let pinned: Vec<(ServiceKey, ServiceValue)> = self
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::SERVICES))?;
        for (key, value) in pinned {
            let Some(addr) = ServiceAddr::from_key(&key) else {
                continue;
            };
            let active = u32::from(value.table_base != self.config.table_base(value.id, 0));
            let (epoch, backends) = match by_service.remove(&value.id) {
                Some(found) => found,
                // No backend names its epoch: a fresh one serves as well.
                None => (self.next_epoch(), BTreeMap::new()),
            };
            debug!(service = %addr, backends = backends.len(), "found pinned service");
            self.installed.insert(
                addr,
                Installed {
                    id: value.id,
                    epoch,
                    active,
                    backends,
                },
            );
        }
        for entry in self.backend_revnat.iter() {
            let (key, value) = entry.map_err(map_err(map_names::BACKEND_REVNAT))?;
            self.written.revnat.insert(key, value);
        }
        for entry in self.vips.iter() {
            let (key, value) = entry.map_err(map_err(map_names::VIPS))?;
            self.written.vips.insert(key, value);
        }
        for (slot, entry) in self.vip_filter.iter().enumerate() {
            let value = entry.map_err(map_err(map_names::VIP_FILTER))?;
            if value != 0 {
                self.written.vip_filter.insert(slot as u32, value);
            }
        }
        // Frees what services that are gone left behind (an agent that died
        // mid-update), and fixes anything else out of step.
        self.resync_shared()
    }
}

const FREE_BACKEND: BackendValue = BackendValue {
    addr: [0; 4],
    port: 0,
    family: 0,
    flags: 0,
    service_id: 0,
    node: [0; 4],
    epoch: 0,
};

fn planned<'a>(addr: &ServiceAddr, installed: &'a Installed) -> PlannedService<'a> {
    PlannedService {
        addr: *addr,
        id: installed.id,
        epoch: installed.epoch,
        backends: &installed.backends,
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}
