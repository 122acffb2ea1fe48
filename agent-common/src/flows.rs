//! `FLOWS_V1`: connections opened by processes in the captured cgroup, steered or not, for the
//! service graph (`/topology`). Per-CPU LRU: no lock on the connect path, and old flows age out.
//!
//! Key: (source address, destination address, destination port). The destination is the one the
//! application dialled (the original destination for steered connections).

use crate::NetAddr;

pub const MAP_NAME: &str = "FLOWS_V1";
pub const DEFAULT_MAX_ENTRIES: u32 = 16_384;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: NetAddr,
    pub dst: NetAddr,
    pub dst_port_be: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub connections: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the latest connection.
    pub last_seen_ns: u64,
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 36);
const _: () = assert!(core::mem::size_of::<FlowCounters>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer fields only, explicit padding (size asserts above).
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: repr(C), two u64.
    unsafe impl aya::Pod for super::FlowCounters {}
}
