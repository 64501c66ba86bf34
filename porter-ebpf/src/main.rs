//! Porter's kernel programs. Built by `porter-agent/build.rs` (or
//! `cargo xtask build-ebpf`) for `bpfel-unknown-none` and embedded in the agent.
//!
//! - `porter_xdp` (uplink ingress): matches `VIP:port/proto`, keeps flows on
//!   their backend through conntrack, picks new flows' backends from the
//!   service's Maglev table, DNATs to the backend and passes the packet to the
//!   kernel, which routes it to the pod (or, with redirect forwarding,
//!   redirects it to the pod's interface itself). Answers ICMP echo to a VIP, drops
//!   traffic to a VIP port no service uses.
//!   In Layer 2 mode it also answers ARP requests and neighbour
//!   solicitations for the EIPs this node leads (see `l2`).
//!   For `externalTrafficPolicy: Cluster`, a backend may run on another
//!   node: the packet is then sent on unchanged but marked, with a MAC
//!   rewrite, to that node (in IPIP when it is behind a router, see
//!   `encap`), whose program DNATs it to the pod and never forwards it
//!   again (see `forward_remote`).
//! - `porter_tc_revnat` (tc): rewrites replies from a backend back to `VIP:port`.
//! - `porter_xdp_empty`: passes everything; the benchmark's baseline.
//! - `porter_xdp_tx`, `porter_xdp_sink`: the packet-rate benchmark's
//!   generator and receiving pod (see `bench`).
//!
//! Why translated packets are passed to the kernel by default rather than
//! redirected to the pod's interface (`config::FORWARD_REDIRECT`, the agent's
//! `--forwarding redirect`): the node's netfilter then sees both directions
//! of every flow as client <-> pod, so the node's own rules keep working on
//! service traffic (NetworkPolicy of iptables-based CNIs, conntrack-based
//! INVALID drops, and a MASQUERADE rule for the pod subnet, which leaves the
//! replies alone because the flow's first packet came from the client).
//! Redirecting skips the routing and netfilter cost (the packet-rate bench
//! measures it), but netfilter then sees no request: replies look like new
//! pod-to-outside flows and are masqueraded where the node masquerades pod
//! traffic, NetworkPolicy in netfilter never sees the requests, and a veth
//! only takes redirected frames when its pod side runs XDP too. None of that
//! can be detected from the node, so redirect is the operator's choice.
#![no_std]
#![no_main]

mod bench;
mod csum;
mod encap;
mod fib;
mod flow;
mod l2;
mod parse;
mod probe;

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_MMAPABLE, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup as FibParams, xdp_action,
    },
    btf_maps::{Array, HashMap, PerCpuArray},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_ktime_get_coarse_ns, bpf_redirect},
    },
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use flow::Flow;
use parse::{Headers, load, store, swap_ends};
use porter_common::{
    BACKEND_DRAINING, BACKEND_REMOTE, BACKEND_SHARED, BackendKey, BackendValue, CtValue, FAMILY_V4,
    FlowKey4, FlowKey6, IPV4_FORWARDED_MARK, L2Key, L2Value, MaglevSlot, RevNatValue,
    ServiceCounters, ServiceKey, ServiceValue, Stat, VIP_FILTER_SLOTS, VipKey, config, limits,
    limits::MAGLEV_SLOTS_PER_ENTRY,
    vip_filter_slot,
    wire::{
        ETH_SRC_OFF, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L4_DST_PORT,
        ND_NEIGHBOR_SOLICIT, icmp, ipv4, ipv6, tcp, udp,
    },
};

// BTF-defined maps: `bpftool map dump` shows their field names. They carry
// no pinning attribute; the agent pins each one by name in its versioned
// directory (see `porter_common::map_names::ALL`).
const MAX_SERVICES: usize = limits::DEFAULT_MAX_SERVICES as usize;
const MAX_BACKENDS: usize = limits::MAX_BACKENDS as usize;

#[btf_map(name = "PORTER_CONFIG")]
static CONFIG: Array<u32, { config::SLOTS as usize }> = Array::new();
#[btf_map(name = "PORTER_STATS")]
static STATS: PerCpuArray<u64, { Stat::COUNT as usize }> = PerCpuArray::new();
#[btf_map(name = "PORTER_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue, MAX_SERVICES> = HashMap::new();
#[btf_map(name = "PORTER_VIPS")]
static VIPS: HashMap<VipKey, u32, MAX_SERVICES> = HashMap::new();
#[btf_map(name = "PORTER_VIP_FILTER")]
static VIP_FILTER: Array<u32, { VIP_FILTER_SLOTS as usize }> = Array::new();
#[btf_map(name = "PORTER_BACKENDS")]
static BACKENDS: Array<BackendValue, MAX_BACKENDS> = Array::new();
/// Userspace sizes it at load: two tables of M slots per service. Slots are
/// packed four to an element: the kernel spaces array values 8 bytes apart,
/// so a slot per element would leave most of the memory (and of each cache
/// line a new flow's lookup pulls in) as padding. Userspace writes a table
/// with one copy into a memory mapping, hence mmap-able.
#[btf_map(name = "PORTER_MAGLEV")]
static MAGLEV: Array<
    [MaglevSlot; MAGLEV_SLOTS_PER_ENTRY as usize],
    {
        (MAX_SERVICES * 2 * limits::DEFAULT_MAGLEV_SIZE as usize)
            .div_ceil(MAGLEV_SLOTS_PER_ENTRY as usize)
    },
    { BPF_F_MMAPABLE as usize },
> = Array::new();
#[btf_map(name = "PORTER_BE_REVNAT")]
static BACKEND_REVNAT: HashMap<BackendKey, RevNatValue, MAX_BACKENDS> = HashMap::new();
#[btf_map(name = "PORTER_SVC_STATS")]
static SERVICE_STATS: PerCpuArray<ServiceCounters, MAX_SERVICES> = PerCpuArray::new();
#[btf_map(name = "PORTER_L2_LEADS")]
static L2_LEADS: HashMap<L2Key, L2Value, { limits::L2_LEADS as usize }> = HashMap::new();
/// Redirect mode's next hop to a pod address, per CPU (see [`redirect`]).
/// Not pinned: a cache, which a new program may start empty.
#[btf_map(name = "PORTER_HOP_CACHE")]
static HOP_CACHE: PerCpuArray<CachedHop, { HOP_CACHE_SLOTS as usize }> = PerCpuArray::new();

/// The per-flow reverse NAT of a flow to a shared backend is written again
/// at most this often (in case its LRU dropped it), so an established flow
/// costs lookups, not writes. Other flows have nothing to refresh: lookups
/// keep their conntrack entries in the LRU.
const REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
fn count(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat.index()) {
        // Per-CPU slot: no other CPU writes it, so a plain add is race-free.
        unsafe { *slot += 1 };
    }
}

#[xdp]
pub fn porter_xdp(ctx: XdpContext) -> u32 {
    count(Stat::PacketsSeen);
    // An encapsulated packet for a VIP becomes its inner one (encap.rs).
    let forwarded = match encap::decapsulate(&ctx, is_vip) {
        Ok(forwarded) => forwarded,
        Err(stat) => {
            count(stat);
            return xdp_action::XDP_DROP;
        }
    };
    let (action, stat) = xdp_decide(&ctx, forwarded);
    count(stat);
    action
}

#[xdp]
pub fn porter_xdp_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn xdp_decide(ctx: &XdpContext, decapsulated: bool) -> (u32, Stat) {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let h = match parse::parse(data, data_end) {
        // IPv6 has no header bit for the mark: decapsulation is the mark.
        Ok(h) => Headers {
            forwarded: h.forwarded || decapsulated,
            ..h
        },
        // ARP is not IP; only this (rare) path looks further.
        Err(Stat::PassNotIp) => {
            return match l2::answer_arp(ctx, l2_lead) {
                Some(xdp_action::XDP_TX) => (xdp_action::XDP_TX, Stat::ArpAnswered),
                Some(action) => (action, Stat::DropRewriteFailed),
                None => (xdp_action::XDP_PASS, Stat::PassNotIp),
            };
        }
        Err(stat) => return (xdp_action::XDP_PASS, stat),
    };
    if let Some(answered) = probe::answer(ctx, data, data_end, &h) {
        return answered;
    }
    // Solicitations go to a multicast address, not to the EIP, so they are
    // looked at before the VIP filter; one compare for all other traffic.
    if h.icmp_type == ND_NEIGHBOR_SOLICIT
        && h.proto == IPPROTO_ICMPV6
        && let Some(action) = l2::answer_ns(ctx, &h, l2_lead)
    {
        let stat = if action == xdp_action::XDP_TX {
            Stat::NdpAnswered
        } else {
            Stat::DropRewriteFailed
        };
        return (action, stat);
    }
    // Most traffic a node sees is not for a service: one array read settles it.
    if VIP_FILTER
        .get(vip_filter_slot(&h.dst))
        .is_none_or(|&vips| vips == 0)
    {
        return (xdp_action::XDP_PASS, Stat::PassNotService);
    }
    // Read only when conntrack names a draining pod.
    let bare_syn = || {
        h.proto == IPPROTO_TCP
            && load::<u8>(data, data_end, h.l4_off + tcp::FLAGS)
                .is_some_and(|flags| flags & (encap::TCP_SYN | encap::TCP_ACK) == encap::TCP_SYN)
    };
    // Established flows first: their conntrack entry names everything the
    // rewrite needs, so they skip the service lookup.
    let tracked = if h.proto != IPPROTO_TCP && h.proto != IPPROTO_UDP {
        None
    } else if h.family == FAMILY_V4 {
        tracked::<FlowKey4>(&h, bare_syn)
    } else {
        tracked::<FlowKey6>(&h, bare_syn)
    };
    let (backend, service_id, new_flow) = match tracked {
        Some((backend, service_id)) => (backend, service_id, false),
        None => {
            let service = match service_of(data, data_end, &h) {
                Ok(service) => service,
                Err(verdict) => return verdict,
            };
            let picked = if h.family == FAMILY_V4 {
                pick_backend::<FlowKey4>(&h, &service)
            } else {
                pick_backend::<FlowKey6>(&h, &service)
            };
            match picked {
                Ok(backend) => (backend, service.id, true),
                Err(stat) => return (xdp_action::XDP_DROP, stat),
            }
        }
    };
    let remote = backend.flags & BACKEND_REMOTE != 0;
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += (data_end - data) as u64;
            (*counters).new_flows += new_flow as u64;
            (*counters).forwarded_out += remote as u64;
            (*counters).forwarded_in += h.forwarded as u64;
        }
    }
    if remote {
        return forward_remote(ctx, data, data_end, &h, &backend);
    }
    if dnat(data, data_end, &h, &backend).is_none() {
        // Cannot happen after a successful parse; never forward half-rewritten.
        return (xdp_action::XDP_DROP, Stat::DropRewriteFailed);
    }
    if CONFIG
        .get(config::FORWARD)
        .is_some_and(|&mode| mode == config::FORWARD_REDIRECT)
        && let Some(action) = redirect(ctx, data, data_end, &h, &backend)
    {
        return (action, Stat::Redirected);
    }
    (xdp_action::XDP_PASS, Stat::Forwarded)
}

#[inline(always)]
fn is_vip(family: u8, addr: &[u32; 4]) -> bool {
    let vip = VipKey {
        addr: *addr,
        family,
        _pad: [0; 3],
    };
    VIPS.get_ptr(&vip).is_some()
}

#[inline(always)]
fn l2_lead(key: &L2Key) -> Option<L2Value> {
    // SAFETY: copied out at once; map values stay valid for the run (RCU).
    let lead = unsafe { *L2_LEADS.get_ptr(key)? };
    // SAFETY: no memory effects.
    let now = unsafe { bpf_ktime_get_ns() };
    (now < lead.expires_ns).then_some(lead)
}

/// The service of `h`'s address, port and protocol; or, for a packet to a
/// service address that no service takes, what becomes of it: answered
/// (ICMP echo), passed (other ICMP) or dropped.
#[inline(always)]
fn service_of(data: usize, data_end: usize, h: &Headers) -> Result<ServiceValue, (u32, Stat)> {
    if h.proto == IPPROTO_TCP || h.proto == IPPROTO_UDP {
        let key = ServiceKey {
            addr: h.dst,
            port: h.dport,
            proto: h.proto,
            family: h.family,
        };
        if let Some(service) = SERVICES.get_ptr(&key) {
            // SAFETY: map values stay valid for the program's run (RCU).
            return Ok(unsafe { *service });
        }
    }
    Err(not_a_service(data, data_end, h))
}

/// What becomes of a packet to a filtered address that no service takes.
#[inline(always)]
fn not_a_service(data: usize, data_end: usize, h: &Headers) -> (u32, Stat) {
    if !is_vip(h.family, &h.dst) {
        // Another address in a filter slot that a VIP uses.
        return (xdp_action::XDP_PASS, Stat::PassNotService);
    }
    let is_icmp = (h.family == FAMILY_V4 && h.proto == IPPROTO_ICMP)
        || (h.family != FAMILY_V4 && h.proto == IPPROTO_ICMPV6);
    if !is_icmp {
        // An EIP is not a local address: passed, this would loop back
        // to the router until its TTL ran out.
        return (xdp_action::XDP_DROP, Stat::DropUnknownPort);
    }
    let echo_request = if h.family == FAMILY_V4 {
        icmp::ECHO_REQUEST
    } else {
        icmp::V6_ECHO_REQUEST
    };
    if h.icmp_type != echo_request {
        // Errors (e.g. fragmentation needed) and other ICMP pass untouched.
        return (xdp_action::XDP_PASS, Stat::PassIcmp);
    }
    match echo_reply(data, data_end, h) {
        Some(()) => (xdp_action::XDP_TX, Stat::EchoReplied),
        None => (xdp_action::XDP_DROP, Stat::DropRewriteFailed),
    }
}

/// The backend conntrack keeps the flow of `h` on, with the flow's
/// service; None when the flow is new to this node or its entry is stale.
///
/// An entry is followed only while its backend id still carries the epoch
/// it recorded: the installation of the service that made the entry, at
/// the address and port the entry's key names, is then still in place
/// (its backends are freed when it is removed, and epochs are never
/// reused), so no service lookup is needed.
///
/// A packet `forwarded` here by another node is served only by a local
/// backend, so it is never forwarded twice: an entry naming a remote
/// backend is ignored for it (and the pick then refuses it, see
/// [`pick_backend`]).
#[inline(always)]
fn tracked<F: Flow>(h: &Headers, bare_syn: impl Fn() -> bool) -> Option<(BackendValue, u32)> {
    let flow = F::new(&h.src, &h.dst, h.sport, h.dport, h.proto);
    let ct = F::conntrack().get_ptr_mut(&flow)?;
    // SAFETY: valid for this run; a racing update at worst loses a refresh.
    let entry = unsafe { *ct };
    let backend = *BACKENDS.get(entry.backend_id)?;
    let refused = h.forwarded && backend.flags & BACKEND_REMOTE != 0;
    // A new connection on the tuple of a closed one (reused client port)
    // to a terminating pod: picked anew (KEP-1669).
    let reopened = backend.flags & BACKEND_DRAINING != 0 && bare_syn();
    if backend.family == 0 || backend.epoch != entry.epoch || refused || reopened {
        return None;
    }
    if backend.flags & BACKEND_SHARED != 0 {
        let now = coarse_now();
        if now.wrapping_sub(entry.refreshed_ns) > REFRESH_NS {
            unsafe { (*ct).refreshed_ns = now };
            record_revnat::<F>(h, &backend, entry.service_id);
        }
    }
    Some((backend, entry.service_id))
}

/// The tick-granular clock: a refresh once a second needs no more, and it
/// is a memory read, where the precise clock reads the TSC. Read only for
/// flows to shared backends, the only ones with something to refresh.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: no memory effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// A new flow's backend, from `service`'s Maglev table, recorded in
/// conntrack; or the reason to drop the packet. A packet forwarded here
/// by another node must not be forwarded again: a remote pick is refused,
/// and not recorded, so the flow is served once the nodes' tables agree.
#[inline(always)]
fn pick_backend<F: Flow>(h: &Headers, service: &ServiceValue) -> Result<BackendValue, Stat> {
    if service.backend_count == 0 || service.table_size == 0 {
        return Err(Stat::DropNoBackend);
    }
    let flow = F::new(&h.src, &h.dst, h.sport, h.dport, h.proto);
    let slot = service.table_base + flow.hash() % service.table_size;
    let slots = MAGLEV
        .get(slot / MAGLEV_SLOTS_PER_ENTRY)
        .ok_or(Stat::DropNoBackend)?;
    let backend_id = u32::from(slots[(slot % MAGLEV_SLOTS_PER_ENTRY) as usize]);
    let backend = *BACKENDS.get(backend_id).ok_or(Stat::DropNoBackend)?;
    if backend.family == 0 || backend.service_id != service.id {
        return Err(Stat::DropNoBackend);
    }
    if h.forwarded && backend.flags & BACKEND_REMOTE != 0 {
        return Err(Stat::DropForwardLoop);
    }
    let entry = CtValue {
        backend_id,
        service_id: service.id,
        epoch: backend.epoch,
        _pad: 0,
        // Never refreshed: a flow to a shared backend refreshes its reverse
        // NAT on its next packet, and no other flow reads the clock.
        refreshed_ns: 0,
    };
    // A full LRU evicts the oldest flow; failure only costs the next packet a lookup.
    let _ = F::conntrack().insert(&flow, &entry, 0);
    record_revnat::<F>(h, &backend, service.id);
    Ok(backend)
}

/// Per-flow reverse NAT, needed only when the backend serves several
/// services; otherwise tc maps replies back by the backend's address alone.
#[inline(always)]
fn record_revnat<F: Flow>(h: &Headers, backend: &BackendValue, service_id: u32) {
    // Shared and local only: a remote backend's replies leave from its node.
    if backend.flags & (BACKEND_SHARED | BACKEND_REMOTE) != BACKEND_SHARED {
        return;
    }
    let reply = F::new(&backend.addr, &h.src, backend.port, h.sport, h.proto);
    let value = RevNatValue {
        vip: h.dst,
        port: h.dport,
        flags: 0,
        _pad: 0,
        service_id,
    };
    let _ = F::revnat().insert(&reply, &value, 0);
}

/// Rewrites destination address and port to the backend's, updating the IPv4
/// header checksum and the L4 checksum (pseudo-header included) incrementally.
#[inline(always)]
fn dnat(data: usize, data_end: usize, h: &Headers, backend: &BackendValue) -> Option<()> {
    let check_off = h.l4_off
        + if h.proto == IPPROTO_TCP {
            tcp::CHECKSUM
        } else {
            udp::CHECKSUM
        };
    let old_check: u16 = load(data, data_end, check_off)?;
    let mut acc = csum::add_word(0, h.dport, backend.port);
    if h.family == FAMILY_V4 {
        let (old, new) = (h.dst[0], backend.addr[0]);
        let ip_check: u16 = load(data, data_end, h.l3_off + ipv4::CHECKSUM)?;
        let mut ip_acc = csum::add_u32(0, old, new);
        if h.forwarded {
            // The mark has done its job; the pod gets a plain packet.
            let flags: u16 = load(data, data_end, h.l3_off + ipv4::FRAG)?;
            let cleared = flags & !IPV4_FORWARDED_MARK.to_be();
            ip_acc = csum::add_word(ip_acc, flags, cleared);
            store(data, data_end, h.l3_off + ipv4::FRAG, cleared)?;
        }
        store(
            data,
            data_end,
            h.l3_off + ipv4::CHECKSUM,
            csum::apply(ip_check, ip_acc),
        )?;
        store(data, data_end, h.l3_off + ipv4::DST, new)?;
        acc = csum::add_u32(acc, old, new);
    } else {
        store(data, data_end, h.l3_off + ipv6::DST, backend.addr)?;
        acc = csum::add_addr(acc, &h.dst, &backend.addr);
    }
    store(data, data_end, h.l4_off + L4_DST_PORT, backend.port)?;
    // An IPv4 UDP checksum of 0 means "none" and must stay 0; a computed 0 is sent as 0xffff.
    let udp = h.proto == IPPROTO_UDP;
    if !(udp && h.family == FAMILY_V4 && old_check == 0) {
        let mut check = csum::apply(old_check, acc);
        if udp && check == 0 {
            check = 0xffff;
        }
        store(data, data_end, check_off, check)?;
    }
    Some(())
}

/// Sends the packet, unchanged but for the MACs and the forwarded mark, to
/// the node of a remote backend, which DNATs it to the pod and answers the
/// client itself. On this node's L2 segment (no MTU cost) the FIB says how
/// to reach it and the neighbour table gives its MAC; behind a router it
/// goes in IPIP (`encap::forward`).
#[inline(always)]
fn forward_remote(
    ctx: &XdpContext,
    data: usize,
    data_end: usize,
    h: &Headers,
    backend: &BackendValue,
) -> (u32, Stat) {
    // No header bit to mark an IPv6 packet with: always encapsulated.
    if h.family != FAMILY_V4 {
        return encap::forward(ctx, h, backend);
    }
    let Some(tot_len) = load::<u16>(data, data_end, h.l3_off + ipv4::TOTAL_LEN) else {
        return (xdp_action::XDP_DROP, Stat::DropRewriteFailed);
    };
    let (rc, fib) = fib::lookup(
        ctx,
        &fib::Query {
            family: FAMILY_V4,
            src: None,
            dst: &backend.node,
            l4: (h.proto, h.sport, h.dport),
            tot_len: u16::from_be(tot_len),
            flags: 0,
        },
    );
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return (xdp_action::XDP_DROP, Stat::DropForwardNoNeighbour);
    }
    // The kernel puts the gateway in `ipv4_dst` when the node is behind a
    // router: that needs encapsulation, not a MAC rewrite.
    // SAFETY: a plain u32 the helper wrote.
    let next_hop = unsafe { fib.__bindgen_anon_4.ipv4_dst };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 && next_hop != backend.node[0] {
        return encap::forward(ctx, h, backend);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return (xdp_action::XDP_DROP, Stat::DropForwardNoRoute);
    }
    if mark_forwarded(data, data_end, h, &fib).is_none() {
        return (xdp_action::XDP_DROP, Stat::DropRewriteFailed);
    }
    encap::to_next_hop(ctx, &fib)
}

/// Sets the forwarded mark (IPv4 header checksum updated) and the MACs of
/// the hop to the backend's node.
#[inline(always)]
fn mark_forwarded(data: usize, data_end: usize, h: &Headers, fib: &FibParams) -> Option<()> {
    encap::set_mark(data, data_end, h.l3_off)?;
    store(data, data_end, 0, fib.dmac)?;
    store(data, data_end, ETH_SRC_OFF, fib.smac)
}

/// A pod address's next hop as the FIB gave it, `checked_ns` when.
#[repr(C)]
#[derive(Clone, Copy)]
struct CachedHop {
    addr: [u32; 4],
    checked_ns: u64,
    ifindex: u32,
    /// The longest packet the FIB let through (it checks the route's MTU):
    /// a longer one is asked about again, and the FIB refuses it if it does
    /// not fit, so that the kernel answers with its ICMP error.
    fits: u16,
    dmac: [u8; 6],
    smac: [u8; 6],
}

/// Slots of [`HOP_CACHE`], by a hash of the pod address (a power of two).
const HOP_CACHE_SLOTS: u32 = 256;
/// How long a cached next hop is used before the FIB is asked again: a
/// pod's route or MAC changing (its neighbour entry replaced) is followed
/// within this.
const HOP_TRUST_NS: u64 = 1_000_000_000;

/// Redirect mode: routes the translated packet in XDP (FIB lookup) and
/// sends it out of the backend's interface. None (pass to the kernel) when
/// the kernel must do it, e.g. while the pod's neighbour entry is missing.
/// Unlike the kernel, it leaves the TTL alone: the mode exists to measure.
/// The FIB's answer for a pod is kept per CPU for [`HOP_TRUST_NS`]: the
/// lookup costs as much as the rest of an established flow's path.
#[inline(always)]
fn redirect(
    ctx: &XdpContext,
    data: usize,
    data_end: usize,
    h: &Headers,
    backend: &BackendValue,
) -> Option<u32> {
    let tot_len = if h.family == FAMILY_V4 {
        u16::from_be(load(data, data_end, h.l3_off + ipv4::TOTAL_LEN)?)
    } else {
        u16::from_be(load(data, data_end, h.l3_off + ipv6::PAYLOAD_LEN)?) + ipv6::LEN as u16
    };
    let a = backend.addr;
    let slot = (a[0] ^ a[1] ^ a[2] ^ a[3]).wrapping_mul(0x9e37_79b1) >> 24;
    let hop = HOP_CACHE.get_ptr_mut(slot & (HOP_CACHE_SLOTS - 1))?;
    // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
    let hop = unsafe { &mut *hop };
    // SAFETY: reads the clock, nothing else.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // An empty slot (all zeros) names no pod address.
    if hop.addr != a || now.wrapping_sub(hop.checked_ns) >= HOP_TRUST_NS || tot_len > hop.fits {
        *hop = ask_fib(ctx, h, backend, tot_len, now)?;
    }
    store(data, data_end, 0, hop.dmac)?;
    store(data, data_end, ETH_SRC_OFF, hop.smac)?;
    // SAFETY: no memory effects beyond the redirect decision.
    Some(unsafe { bpf_redirect(hop.ifindex, 0) } as u32)
}

/// The FIB's next hop to `backend` for this packet, asked at `now`; None
/// unless it can be sent from XDP.
#[inline(always)]
fn ask_fib(
    ctx: &XdpContext,
    h: &Headers,
    backend: &BackendValue,
    tot_len: u16,
    now: u64,
) -> Option<CachedHop> {
    let (rc, fib) = fib::lookup(
        ctx,
        &fib::Query {
            family: h.family,
            src: Some(&h.src),
            dst: &backend.addr,
            l4: (h.proto, h.sport, backend.port),
            tot_len,
            flags: 0,
        },
    );
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    Some(CachedHop {
        addr: backend.addr,
        checked_ns: now,
        ifindex: fib.ifindex,
        fits: tot_len,
        dmac: fib.dmac,
        smac: fib.smac,
    })
}

/// Turns an echo request into its reply in place (for XDP_TX). None only
/// if a write fails, which the parse's bounds checks rule out.
#[inline(always)]
fn echo_reply(data: usize, data_end: usize, h: &Headers) -> Option<()> {
    let reply: u8 = if h.family == FAMILY_V4 {
        icmp::ECHO_REPLY
    } else {
        icmp::V6_ECHO_REPLY
    };
    // Swapping source and destination leaves every sum unchanged.
    swap_ends(data, data_end, h)?;
    let type_code: [u8; 2] = load(data, data_end, h.l4_off)?;
    let new_type_code = [reply, type_code[1]];
    let check: u16 = load(data, data_end, h.l4_off + icmp::CHECKSUM)?;
    let acc = csum::add_word(
        0,
        u16::from_ne_bytes(type_code),
        u16::from_ne_bytes(new_type_code),
    );
    store(data, data_end, h.l4_off, new_type_code)?;
    store(
        data,
        data_end,
        h.l4_off + icmp::CHECKSUM,
        csum::apply(check, acc),
    )?;
    Some(())
}

/// Reverse NAT for replies from backends: source `backend:targetPort` becomes
/// `VIP:port`. Runs on the uplink's egress, after the node's netfilter, which
/// saw the forward path too (see `Dataplane::attach_tc_egress` for why that
/// keeps a pod-subnet MASQUERADE rule away from replies). Everything else
/// passes untouched.
#[classifier]
pub fn porter_tc_revnat(ctx: TcContext) -> i32 {
    // Only the headers need to be linear.
    let _ = ctx.pull_data(ctx.len().min(128));
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Ok(h) = parse::parse_skb_headers(data, data_end) else {
        return TC_ACT_OK as i32;
    };
    if h.proto != IPPROTO_TCP && h.proto != IPPROTO_UDP {
        return TC_ACT_OK as i32;
    }
    let backend = BackendKey {
        addr: h.src,
        port: h.sport,
        proto: h.proto,
        family: h.family,
    };
    let Some(by_backend) = BACKEND_REVNAT.get_ptr(&backend) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: copied out at once.
    let mut revnat = unsafe { *by_backend };
    let v4 = h.family == FAMILY_V4;
    let by_flow = if revnat.flags & BACKEND_SHARED == 0 {
        None
    } else if v4 {
        revnat_by_flow::<FlowKey4>(&h)
    } else {
        revnat_by_flow::<FlowKey6>(&h)
    };
    match by_flow {
        // Recorded by XDP for exactly this flow.
        Some(by_flow) => revnat = by_flow,
        // Only replies of flows XDP translated: the pod may also be reached
        // directly (routed pod networks), and those replies must keep its
        // address. For a shared backend whose flow has no entry (it began
        // before the backend was shared), the backend's value names the
        // service it served first, and conntrack confirms it.
        None => {
            let translated = if v4 {
                translated::<FlowKey4>(&h, &revnat)
            } else {
                translated::<FlowKey6>(&h, &revnat)
            };
            if !translated {
                return TC_ACT_OK as i32;
            }
        }
    }
    match revnat_rewrite(&ctx, &h, &revnat) {
        Ok(()) => {
            encap::clamp_syn_ack(&ctx, &h, revnat.vip, revnat.port);
            count(Stat::RevNatApplied);
            TC_ACT_OK as i32
        }
        Err(_) => {
            // Possibly half-rewritten: never let it out.
            count(Stat::RevNatFailed);
            TC_ACT_SHOT as i32
        }
    }
}

/// The reverse NAT XDP recorded for the flow of reply `h`, if any.
#[inline(always)]
fn revnat_by_flow<F: Flow>(h: &Headers) -> Option<RevNatValue> {
    let flow = F::new(&h.src, &h.dst, h.sport, h.dport, h.proto);
    // SAFETY: copied out at once.
    F::revnat().get_ptr(&flow).map(|value| unsafe { *value })
}

/// Whether XDP translated the flow that reply `h` answers, to `revnat`'s service.
#[inline(always)]
fn translated<F: Flow>(h: &Headers, revnat: &RevNatValue) -> bool {
    let forward = F::new(&h.dst, &revnat.vip, h.dport, revnat.port, h.proto);
    F::conntrack()
        .get_ptr(&forward)
        .is_some_and(|ct| unsafe { (*ct).service_id } == revnat.service_id)
}

/// Uses the skb helpers, which know whether the L4 checksum is complete or
/// only the pseudo-header part (CHECKSUM_PARTIAL, as replies from local pods are).
#[inline(always)]
fn revnat_rewrite(ctx: &TcContext, h: &Headers, revnat: &RevNatValue) -> Result<(), i64> {
    let check_off = h.l4_off
        + if h.proto == IPPROTO_TCP {
            tcp::CHECKSUM
        } else {
            udp::CHECKSUM
        };
    let mangled_0 = if h.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled_0;
    if h.family == FAMILY_V4 {
        let (old, new) = (h.src[0], revnat.vip[0]);
        ctx.l4_csum_replace(check_off, old as u64, new as u64, pseudo | 4)?;
        ctx.l3_csum_replace(h.l3_off + ipv4::CHECKSUM, old as u64, new as u64, 4)?;
        ctx.store(h.l3_off + ipv4::SRC, &new, 0)?;
    } else {
        for i in 0..4 {
            let (old, new) = (h.src[i], revnat.vip[i]);
            ctx.l4_csum_replace(check_off, old as u64, new as u64, pseudo | 4)?;
        }
        ctx.store(h.l3_off + ipv6::SRC, &revnat.vip, 0)?;
    }
    ctx.l4_csum_replace(check_off, h.sport as u64, revnat.port as u64, mangled_0 | 2)?;
    ctx.store(h.l4_off, &revnat.port, 0)?;
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}
