//! The BPF map ABI shared by `agent-ebpf` and the agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields and no `bool`, `Option` or enum
//! fields, so the kernel and userspace agree on every byte. Each map family has its own module
//! with its pinned, versioned map name: a change to a layout bumps the `_V` suffix, so a new agent
//! never reinterprets an old agent's pinned map. [`MAP_NAMES`] lists them all and [`programs`]
//! names the capture programs: nothing else spells these names out (the eBPF attributes aside,
//! which take only literals; `agent/tests/map_names.rs` checks those against this crate).
//!
//! Addresses are held in one form for both families: IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`),
//! as four network-order words exactly like the kernel's `bpf_sock_addr.user_ip6`. A dual-stack
//! socket dialling `::ffff:a.b.c.d` therefore finds the same `STEERED` entry as an IPv4 socket.
#![no_std]

pub mod addr;
pub mod config;
pub mod flows;
pub mod marked;
pub mod orig;
pub mod programs;
pub mod stats;
pub mod steered;

pub use addr::{Endpoint, NetAddr};

/// Every map in the capture object (aya-log's own aside), by its pinned name. The agent and the
/// test binaries name maps only through these constants; a test checks the list against the
/// object itself.
pub const MAP_NAMES: [&str; 7] = [
    steered::MAP_NAME,
    config::MAP_NAME,
    orig::COOKIE_MAP_NAME,
    orig::DST_MAP_NAME,
    flows::MAP_NAME,
    stats::MAP_NAME,
    marked::MAP_NAME,
];
