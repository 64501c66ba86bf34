//! Bidirectional Forwarding Detection for Porter: RFC 5880 asynchronous
//! mode over UDP, single hop (RFC 5881: port 3784, TTL 255 sent and
//! required) and multihop (RFC 5883: port 4784).
//!
//! Layers, each in its own module:
//! - [`packet`]: the Control packet codec, bounds-checked; every rejection
//!   has a [`DropReason`] that the runtime counts;
//! - [`fsm`]: one session as a pure state machine (packets and time in,
//!   packets and state changes out), with slow start and Poll Sequences;
//! - `socket`: UDP sockets that send with TTL 255 and report received TTLs;
//! - [`runtime`]: the tokio task that owns the sessions.
//!
//! Authentication (RFC 5880 section 6.7) is not implemented: packets with
//! the A bit are dropped and counted as [`DropReason::Authenticated`].
pub mod fsm;
/// Entry points for the fuzz targets in fuzz/; not a stable API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod packet;
pub mod runtime;
mod socket;

pub use fsm::{Negotiated, SLOW_START_TX, StateChange, Timers};
pub use packet::{ControlPacket, Diag, DropReason, State};
pub use runtime::{Bfd, Counters, PeerConfig, PeerEvent, PeerKey, PeerStatus};
pub use socket::{MULTIHOP_PORT, SINGLE_HOP_PORT};
