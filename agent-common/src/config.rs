//! `PROXY_CFG`: one entry written by the agent at start: where to redirect, and whom to exempt.

pub const MAP_NAME: &str = "PROXY_CFG_V1";

/// `flags` bits.
pub const FLAG_PROXY4: u32 = 1 << 0;
pub const FLAG_PROXY6: u32 = 1 << 1;
/// Skip sockets whose `SO_MARK` equals `agent_mark`.
pub const FLAG_EXEMPT_MARK: u32 = 1 << 2;

/// The one `PROXY_CFG` entry (the proxy's own timeouts and limits live in the agent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyMapConfig {
    /// cgroup v2 id of the agent; connects from it are never rewritten.
    pub agent_cgroup_id: u64,
    /// IPv6 proxy address, network-order words.
    pub proxy6: [u32; 4],
    /// IPv4 proxy address, network order.
    pub proxy4: u32,
    pub agent_mark: u32,
    pub flags: u32,
    /// Ports in network order.
    pub proxy4_port_be: u16,
    pub proxy6_port_be: u16,
}

const _: () = assert!(core::mem::size_of::<ProxyMapConfig>() == 40);

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, laid out without implicit padding (size assert).
unsafe impl aya::Pod for ProxyMapConfig {}
