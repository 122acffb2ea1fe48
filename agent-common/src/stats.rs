//! `STATS_V1`: per-CPU counters of what the capture programs did and why, shared with userspace
//! by index (like Cilium's drop reasons), so every skipped or failed capture is visible.

pub const MAP_NAME: &str = "STATS_V2";

/// A connect was rewritten to the node proxy.
pub const STEERED: u32 = 0;
/// A connect to a steered destination came from the agent's own cgroup.
pub const EXEMPT_AGENT_CGROUP: u32 = 1;
/// A connect to a steered destination carried the agent's mark.
pub const EXEMPT_AGENT_MARK: u32 = 2;
/// A steered destination, but no proxy address for that family: left direct.
pub const NO_PROXY_FOR_FAMILY: u32 = 3;
/// Inserting into `ORIG_COOKIE` failed: left direct rather than losing the destination.
pub const ORIG_COOKIE_INSERT_FAILED: u32 = 4;
/// Inserting into `ORIG_DST` failed in sock_ops: the proxy will close that connection.
pub const ORIG_DST_INSERT_FAILED: u32 = 5;
/// getpeername restored an original destination.
pub const PEERNAME_RESTORED: u32 = 6;
/// sock_ops recorded a client endpoint → original destination.
pub const ORIG_DST_RECORDED: u32 = 7;
/// A connect from a marked source (`MARKED`) was rewritten to the node proxy.
pub const MARKED_SOURCE: u32 = 8;

pub const COUNT: u32 = 9;

/// Counter names for metrics, indexed like the constants above.
pub const NAMES: [&str; COUNT as usize] = [
    "steered",
    "exempt_agent_cgroup",
    "exempt_agent_mark",
    "no_proxy_for_family",
    "orig_cookie_insert_failed",
    "orig_dst_insert_failed",
    "peername_restored",
    "orig_dst_recorded",
    "marked_source",
];
