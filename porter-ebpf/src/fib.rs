//! The kernel's routing table from XDP (`bpf_fib_lookup`), asked one way
//! by every path that needs it: forwarding to another node (bare or
//! encapsulated), redirect mode, and the liveness probe's "is this address
//! mine" check.
use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams, helpers::generated::bpf_fib_lookup, programs::XdpContext,
};
use porter_common::{
    FAMILY_V4,
    wire::{AF_INET, AF_INET6},
};

/// One question to the FIB. Addresses are as read from memory, of
/// `family`; `src: None` leaves the source to the kernel (with
/// `BPF_FIB_LOOKUP_SRC` it answers with the one it would pick).
pub struct Query<'a> {
    pub family: u8,
    pub src: Option<&'a [u32; 4]>,
    pub dst: &'a [u32; 4],
    /// Protocol and ports, for the multipath hash.
    pub l4: (u8, u16, u16),
    /// The packet's length, checked against the route's MTU; 0: not checked.
    pub tot_len: u16,
    pub flags: u32,
}

/// The route for `query`, from the interface the packet came in on: the
/// helper's return code and its answer (next hop MACs, egress interface).
#[inline(always)]
pub fn lookup(ctx: &XdpContext, query: &Query) -> (i64, FibParams) {
    // SAFETY: a plain C struct; all zeros is a valid request.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    (fib.l4_protocol, fib.sport, fib.dport) = query.l4;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_1.tot_len = query.tot_len;
    if query.family == FAMILY_V4 {
        fib.family = AF_INET;
        if let Some(src) = query.src {
            fib.__bindgen_anon_3.ipv4_src = src[0];
        }
        fib.__bindgen_anon_4.ipv4_dst = query.dst[0];
    } else {
        fib.family = AF_INET6;
        if let Some(src) = query.src {
            fib.__bindgen_anon_3.ipv6_src = *src;
        }
        fib.__bindgen_anon_4.ipv6_dst = *query.dst;
    }
    // SAFETY: the helper reads and writes `fib`, which lives on our stack.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            query.flags,
        )
    };
    (rc, fib)
}
