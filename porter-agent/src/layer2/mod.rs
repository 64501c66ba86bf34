//! Layer 2 mode: one node per EIP answers ARP/NDP for it (in XDP), chosen
//! deterministically among the nodes that can serve it, and a new leader
//! announces itself with gratuitous ARP / unsolicited neighbour advertisements.
pub mod announce;
pub mod election;
pub mod lease;
pub mod link;
pub mod speaker;
