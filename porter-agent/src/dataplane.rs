//! The userspace data plane API: installs services and their local backends
//! into the pinned maps, builds and swaps Maglev tables, reads counters, and
//! picks up the pinned state of an earlier agent.
//!
//! Table swaps are double-buffered: every service owns two tables of M slots
//! in the Maglev array. An update writes the spare one, then rewrites the
//! service's value (one atomic map update) to point at it, so a packet sees
//! either the old table or the new one, never a mix.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc,
    },
};
use porter_common::{
    BackendKey, BackendValue, L2Key, L2Value, RevNatValue, ServiceCounters, ServiceKey,
    ServiceValue, VipKey, map_names, program_names,
};
use tracing::{debug, info};

use crate::{
    PinLayout,
    layer2::link::{InterfaceError, L2Interface},
    maglev,
    mmap_array::MmapArray,
    plan::{self, Plan, PlannedService, SharedMaps},
    service::{Backend, ServiceAddr, ServiceSpec, SpecError},
    stats,
    xdp_attach::{self, AttachError, Attachment, XdpModePreference},
};

/// Sizes fixed when the maps are first created (and pinned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// M, the Maglev table size: a prime at least 100x the most backends a service has.
    pub maglev_size: u32,
    /// Most services (VIP:port/proto) this node can serve.
    pub max_services: u32,
    /// How translated packets reach the pod (a runtime setting).
    pub forwarding: Forwarding,
}

/// How translated packets reach the pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Forwarding {
    /// Pass to the kernel, which routes them (through netfilter) to the pod.
    /// Correct with the node's own rules; see porter-ebpf's docs.
    #[default]
    Kernel,
    /// Redirect from XDP to the pod's interface, past the node's routing and
    /// netfilter. Correct only where the node does not masquerade pod
    /// traffic (replies would be, since netfilter never saw the request) and
    /// enforces no NetworkPolicy in netfilter (it sees no request), and only
    /// for pods whose interface takes redirected frames (veth: its pod side
    /// runs XDP). Falls back to the kernel while the pod's neighbour entry
    /// is unresolved.
    Redirect,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            maglev_size: porter_common::limits::DEFAULT_MAGLEV_SIZE,
            max_services: porter_common::limits::DEFAULT_MAX_SERVICES,
            forwarding: Forwarding::Kernel,
        }
    }
}

impl DataplaneConfig {
    /// Two tables of M slots per service, two slots per map element.
    fn maglev_entries(&self) -> u32 {
        self.max_services.saturating_mul(self.maglev_size)
    }

    fn table_base(&self, service_id: u32, buffer: u32) -> u32 {
        (service_id * 2 + buffer) * self.maglev_size
    }
}

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

fn map_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

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
    plan: Plan,
    /// What the backend and reverse-NAT maps hold (in use, not free slots).
    written: SharedMaps,
}

impl Dataplane {
    /// Loads the programs with the maps pinned under `pins` (creating them
    /// the first time), and reads back what an earlier agent installed.
    pub fn open(pins: &PinLayout, config: DataplaneConfig) -> Result<Self, DataplaneError> {
        maglev::validate_size(config.maglev_size, 1)?;
        let mut ebpf = xdp_attach::load_with(pins, |loader| {
            loader
                .map_max_entries(map_names::MAGLEV, config.maglev_entries())
                .map_max_entries(map_names::SERVICES, config.max_services)
                .map_max_entries(map_names::VIPS, config.max_services)
                .map_max_entries(map_names::SERVICE_COUNTERS, config.max_services);
        })?;
        let tc: &mut SchedClassifier = ebpf
            .program_mut(program_names::TC_REVNAT)
            .ok_or(AttachError::MissingProgram)?
            .try_into()
            .map_err(|source| DataplaneError::Program {
                name: program_names::TC_REVNAT,
                source,
            })?;
        xdp_attach::retry_interrupted_load(|| tc.load()).map_err(|source| {
            DataplaneError::Program {
                name: program_names::TC_REVNAT,
                source,
            }
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
            aya::maps::Map::Array(data) => MmapArray::new(data, 2 * found as usize)
                .map_err(|source| DataplaneError::MaglevMap { source })?,
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
            plan: Plan::default(),
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

    /// Attaches the XDP program to `interface` through a pinned link.
    pub fn attach_xdp(
        &mut self,
        interface: &str,
        mode: XdpModePreference,
    ) -> Result<Attachment, DataplaneError> {
        let link = L2Interface::lookup(interface)?;
        let attachment = xdp_attach::attach_xdp(&mut self.ebpf, &self.pins, interface, mode)?;
        self.l2_interfaces.insert(interface.to_owned(), link);
        Ok(attachment)
    }

    /// Makes XDP answer ARP requests and neighbour solicitations for exactly
    /// `eips` (the Layer 2 EIPs this node leads) on every interface it was
    /// attached to here, with that interface's MAC, for `valid_for` from now
    /// (the rest of this node's lease): a leader that stops renewing stops
    /// answering by itself. Other EIPs stop being answered at once.
    pub fn set_l2_leaderships(
        &mut self,
        eips: &BTreeSet<IpAddr>,
        valid_for: Duration,
    ) -> Result<(), DataplaneError> {
        let answers = eips.iter().map(|&eip| (eip, None)).collect();
        self.set_l2_answers(&answers, valid_for)
    }

    /// [`Self::set_l2_leaderships`] where an EIP may be limited to one
    /// interface (by name, `Eip.spec.interface`); an EIP limited to an
    /// interface XDP is not attached to is answered nowhere.
    pub fn set_l2_answers(
        &mut self,
        answers: &BTreeMap<IpAddr, Option<String>>,
        valid_for: Duration,
    ) -> Result<(), DataplaneError> {
        let expires_ns = deadline(valid_for)?;
        let desired = answers
            .iter()
            .flat_map(|(&eip, only)| {
                self.l2_interfaces
                    .iter()
                    .filter(move |(name, _)| only.as_ref().is_none_or(|only| only == *name))
                    .map(move |(_, link)| l2_entry(link, eip, expires_ns))
            })
            .collect();
        self.write_l2(desired)
    }

    /// The interfaces Layer 2 answers go out of (those XDP was attached to here).
    pub fn l2_interfaces(&self) -> Vec<L2Interface> {
        self.l2_interfaces.values().copied().collect()
    }

    /// [`Self::set_l2_leaderships`] on explicit interfaces (e.g. for
    /// BPF_PROG_TEST_RUN, whose packets arrive on loopback).
    pub fn set_l2_leaderships_on(
        &mut self,
        interfaces: &[L2Interface],
        eips: &BTreeSet<IpAddr>,
        valid_for: Duration,
    ) -> Result<(), DataplaneError> {
        let expires_ns = deadline(valid_for)?;
        let desired = interfaces
            .iter()
            .flat_map(|link| eips.iter().map(move |&eip| l2_entry(link, eip, expires_ns)))
            .collect();
        self.write_l2(desired)
    }

    /// Makes the Layer 2 map hold exactly `desired`.
    fn write_l2(&mut self, desired: BTreeMap<L2Key, L2Value>) -> Result<(), DataplaneError> {
        let capacity = porter_common::limits::L2_LEADS;
        if desired.len() > capacity as usize {
            return Err(DataplaneError::L2LeadsFull {
                wanted: desired.len(),
                capacity,
            });
        }
        let mut stale = Vec::new();
        for key in self.l2_leads.keys() {
            let key = key.map_err(map_err(map_names::L2_LEADS))?;
            if !desired.contains_key(&key) {
                stale.push(key);
            }
        }
        // Removals first: the map is sized for what is desired, not for both.
        // Kept entries are overwritten in place (a renewal moves their
        // deadline), so they are answered throughout.
        for key in &stale {
            ignore_missing(self.l2_leads.remove(key)).map_err(map_err(map_names::L2_LEADS))?;
        }
        for (key, value) in &desired {
            self.l2_leads
                .insert(key, value, 0)
                .map_err(map_err(map_names::L2_LEADS))?;
        }
        debug!(answers = desired.len(), "layer 2 answers set");
        Ok(())
    }

    /// Attaches the reverse-NAT program to the egress of uplink `interface`
    /// through a pinned TCX link, replacing an earlier agent's program in place.
    ///
    /// Why uplink egress: XDP passes translated packets to the kernel, so the
    /// node's netfilter sees both directions of every flow as client <-> pod.
    /// A MASQUERADE rule for the pod subnet (Calico natOutgoing, flannel)
    /// decides on a flow's first packet, which comes from the client, so the
    /// replies keep the pod's address until they leave here, where they
    /// become `VIP:port`. (Had XDP redirected past netfilter, a reply would
    /// look like a new pod-to-outside flow and be masqueraded before reaching
    /// this hook.)
    pub fn attach_tc_egress(&mut self, interface: &str) -> Result<(), DataplaneError> {
        let direction = "egress";
        let path = self
            .pins
            .links_dir()
            .join(format!("tc-{direction}-{interface}"));
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(program_names::TC_REVNAT)
            .ok_or(AttachError::MissingProgram)?
            .try_into()
            .map_err(|source| DataplaneError::Program {
                name: program_names::TC_REVNAT,
                source,
            })?;
        let tc_err = |source| DataplaneError::Tc {
            interface: interface.to_owned(),
            source,
        };
        xdp_attach::adopt_older_link(&self.pins, &path).map_err(|source| {
            AttachError::AdoptLink {
                path: path.clone(),
                source,
            }
        })?;
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path).map_err(|source| DataplaneError::TcLink {
                path: path.clone(),
                source,
            })?;
            let link =
                FdLink::from(pinned)
                    .try_into()
                    .map_err(|source| DataplaneError::TcLink {
                        path: path.clone(),
                        source,
                    })?;
            program.attach_to_link(link).map_err(tc_err)?;
            info!(
                interface,
                direction, "replaced the program on the pinned tc link"
            );
            xdp_attach::remove_abandoned_layouts(&self.pins);
            return Ok(());
        }
        // Without TCX, aya falls back to a netlink filter, which needs the
        // qdisc; that attach then succeeds, and the check below says why it
        // is not enough.
        let _ = tc::qdisc_add_clsact(interface);
        let id = program
            .attach(interface, TcAttachType::Egress)
            .map_err(tc_err)?;
        // Only a TCX attachment is a bpf link, which can be pinned.
        let link: FdLink = program
            .take_link(id)
            .map_err(tc_err)?
            .try_into()
            .map_err(|_| DataplaneError::TcxMissing {
                interface: interface.to_owned(),
            })?;
        link.pin(&path).map_err(|source| DataplaneError::TcPin {
            path: path.clone(),
            source,
        })?;
        info!(interface, direction, pin = %path.display(), "attached tc reverse NAT");
        Ok(())
    }

    /// The services installed now, backends sorted.
    pub fn services(&self) -> Vec<ServiceSpec> {
        self.installed
            .iter()
            .map(|(addr, installed)| ServiceSpec {
                addr: *addr,
                backends: installed.backends.keys().copied().collect(),
            })
            .collect()
    }

    /// Makes the maps serve exactly `desired`: upserts each, removes the rest.
    pub fn reconcile(&mut self, desired: &[ServiceSpec]) -> Result<(), DataplaneError> {
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
    pub fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError> {
        self.upsert_services(std::slice::from_ref(spec))
    }

    /// Installs or changes several services. Services whose backends did
    /// not change are skipped; every spec is checked before anything is
    /// written. Only the entries of the shared maps that the changed
    /// services touch are planned and written, so one change costs the same
    /// whatever else is installed.
    pub fn upsert_services(&mut self, specs: &[ServiceSpec]) -> Result<(), DataplaneError> {
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
        specs: &[ServiceSpec],
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
            let slots: Vec<u32> = table
                .iter()
                .map(|&index| ids.get(index as usize).copied().unwrap_or_default())
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
        self.plan = Plan::of(
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

    fn reset_counters(&mut self, id: u32) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, err)| DataplaneError::Cpus(format!("{what}: {err}")))?;
        let zeros = PerCpuValues::try_from(vec![ServiceCounters::default(); cpus])
            .map_err(|err| DataplaneError::Cpus(err.to_string()))?;
        self.service_stats
            .set(id, zeros, 0)
            .map_err(map_err(map_names::SERVICE_COUNTERS))
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

/// `valid_for` from now on the clock of `bpf_ktime_get_ns`.
fn deadline(valid_for: Duration) -> Result<u64, DataplaneError> {
    Ok(monotonic_ns()
        .map_err(|err| DataplaneError::Clock(err.to_string()))?
        .saturating_add(u64::try_from(valid_for.as_nanos()).unwrap_or(u64::MAX)))
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub(crate) fn monotonic_ns() -> std::io::Result<u64> {
    // SAFETY: an all-zero timespec is valid; clock_gettime writes into it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to our own timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64))
}

fn l2_entry(link: &L2Interface, eip: IpAddr, expires_ns: u64) -> (L2Key, L2Value) {
    let (family, addr) = crate::service::encode_ip(eip);
    (
        L2Key {
            addr,
            ifindex: link.ifindex,
            family,
            _pad: [0; 3],
        },
        L2Value {
            mac: link.mac,
            _pad: [0; 2],
            expires_ns,
        },
    )
}

fn planned<'a>(addr: &ServiceAddr, installed: &'a Installed) -> PlannedService<'a> {
    PlannedService {
        addr: *addr,
        id: installed.id,
        epoch: installed.epoch,
        backends: &installed.backends,
    }
}

/// The lowest id from `from` below `limit` that `used` (ascending, none
/// below `from`) lacks.
fn free_id(used: impl Iterator<Item = u32>, from: u32, limit: u32) -> Option<u32> {
    let mut id = from;
    for taken in used {
        if taken != id {
            break;
        }
        id += 1;
    }
    (id < limit).then_some(id)
}

/// A map whose contents the data plane mirrors in `written`.
trait Mirrored<K, V> {
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
struct ArraySlots<'a, V: Pod> {
    array: &'a mut Array<MapData, V>,
    free: V,
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
fn sync_map<K: Ord + Copy, V: PartialEq + Copy>(
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

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}
