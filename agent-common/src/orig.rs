//! Original destinations of redirected connections.
//!
//! `ORIG_COOKIE` (LRU, written by connect4/6): socket cookie → [`OrigDst`]. getpeername reads it
//! so the application still sees the address it dialled.
//!
//! `ORIG_DST` (LRU, written by sock_ops at `TCP_CONNECT_CB`, once the local port is bound):
//! the client's (address, port) → [`OrigDst`]. The proxy reads it for each accepted connection.

use crate::Endpoint;

pub const COOKIE_MAP_NAME: &str = "ORIG_COOKIE_V2";
pub const DST_MAP_NAME: &str = "ORIG_DST_V2";
pub const DEFAULT_MAX_ENTRIES: u32 = 262_144;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub dst: Endpoint,
    /// The `STEERED` service id; 0 when the destination is not steered (a marked source's
    /// connection to anywhere else) or steered without a service (`--steer`).
    pub service_id: u32,
    /// The cgroup id of the marked source (`MARKED`) the connection came from; 0 for none.
    pub source_cgroup_id: u64,
}

const _: () = assert!(core::mem::size_of::<OrigDst>() == 32);

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, no implicit padding (size assert).
unsafe impl aya::Pod for OrigDst {}
