//! Per-flow state, in maps of one address family each: IPv4 flows use a
//! 16-byte key, so their lookups hash and compare 16 bytes, not the 40 an
//! IPv6 key needs, and their entries take less memory and cache.
//!
//! The LRU maps keep per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`): an insert
//! takes only its CPU's list lock, not a global one. The hash table itself
//! is shared, so a flow's entry is found from every CPU, whichever CPU
//! inserted it; only eviction is per CPU (each CPU evicts the oldest of the
//! flows it inserted, out of its share of the entries).
use aya_ebpf::{bindings::BPF_F_NO_COMMON_LRU, btf_maps::LruHashMap, macros::btf_map};
use porter_common::{CtValue, FlowKey4, FlowKey6, RevNatValue, limits};

const ENTRIES: usize = limits::CONNTRACK_ENTRIES as usize;
const LRU_FLAGS: usize = BPF_F_NO_COMMON_LRU as usize;

pub type CtMap<K> = LruHashMap<K, CtValue, ENTRIES, LRU_FLAGS>;
pub type RevNatMap<K> = LruHashMap<K, RevNatValue, ENTRIES, LRU_FLAGS>;

#[btf_map(name = "PORTER_CT")]
static CONNTRACK4: CtMap<FlowKey4> = LruHashMap::new();
#[btf_map(name = "PORTER_CT6")]
static CONNTRACK6: CtMap<FlowKey6> = LruHashMap::new();
#[btf_map(name = "PORTER_REVNAT")]
static REVNAT4: RevNatMap<FlowKey4> = LruHashMap::new();
#[btf_map(name = "PORTER_REVNAT6")]
static REVNAT6: RevNatMap<FlowKey6> = LruHashMap::new();

/// A 5-tuple key of one family, and that family's maps.
pub trait Flow: Sized + 'static {
    /// `src:sport -> dst:dport` (addresses and ports as in `Headers`).
    fn new(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16, proto: u8) -> Self;
    /// The Maglev hash of the flow.
    fn hash(&self) -> u32;
    fn conntrack() -> &'static CtMap<Self>;
    fn revnat() -> &'static RevNatMap<Self>;
}

impl Flow for FlowKey4 {
    #[inline(always)]
    fn new(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16, proto: u8) -> Self {
        Self {
            src: src[0],
            dst: dst[0],
            sport,
            dport,
            proto,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    fn hash(&self) -> u32 {
        // The zero words keep the hash of the 40-byte key IPv4 flows had
        // before, so an upgrade keeps every flow on its backend.
        flow_hash(
            &[self.src, 0, 0, 0],
            &[self.dst, 0, 0, 0],
            self.sport,
            self.dport,
            self.proto,
        )
    }

    #[inline(always)]
    fn conntrack() -> &'static CtMap<Self> {
        &CONNTRACK4
    }

    #[inline(always)]
    fn revnat() -> &'static RevNatMap<Self> {
        &REVNAT4
    }
}

impl Flow for FlowKey6 {
    #[inline(always)]
    fn new(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16, proto: u8) -> Self {
        Self {
            src: *src,
            dst: *dst,
            sport,
            dport,
            proto,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    fn hash(&self) -> u32 {
        flow_hash(&self.src, &self.dst, self.sport, self.dport, self.proto)
    }

    #[inline(always)]
    fn conntrack() -> &'static CtMap<Self> {
        &CONNTRACK6
    }

    #[inline(always)]
    fn revnat() -> &'static RevNatMap<Self> {
        &REVNAT6
    }
}

/// A flow hash over the 5-tuple (murmur3-style mixing of its words).
#[inline(always)]
fn flow_hash(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let mut hash: u32 = 0x9747_b28c;
    let mut mix = |word: u32| {
        let mut k = word.wrapping_mul(0xcc9e_2d51);
        k = k.rotate_left(15).wrapping_mul(0x1b87_3593);
        hash ^= k;
        hash = hash
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    };
    for i in 0..4 {
        mix(src[i]);
        mix(dst[i]);
    }
    mix(((sport as u32) << 16) | dport as u32);
    mix(proto as u32);
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}
