//! The capture programs' names: their function names in `agent-ebpf`, which is how the agent
//! finds them in the object. The kernel keeps at most 15 bytes of a program's name, so the ones
//! it reports (BPF run-time statistics, `bpftool`) may be cut short; all of them start with
//! [`PREFIX`].

/// Every capture program's name starts with this.
pub const PREFIX: &str = "shunt_";

/// `cgroup/connect4`: steers IPv4 connects to the node proxy.
pub const CONNECT4: &str = "shunt_connect4";
/// `cgroup/connect6`: steers IPv6 (and IPv4-mapped) connects to the node proxy.
pub const CONNECT6: &str = "shunt_connect6";
/// `cgroup/getpeername4`: a steered IPv4 socket still sees the address it dialled.
pub const GETPEERNAME4: &str = "shunt_getpeername4";
/// `cgroup/getpeername6`: likewise for IPv6.
pub const GETPEERNAME6: &str = "shunt_getpeername6";
/// `sockops`: records each steered client endpoint in `ORIG_DST`, and counts flows.
pub const SOCK_OPS: &str = "shunt_sock_ops";

/// The cgroup sock_addr programs (loaded and attached alike).
pub const SOCK_ADDR: [&str; 4] = [CONNECT4, CONNECT6, GETPEERNAME4, GETPEERNAME6];

/// Every program in the capture object.
pub const ALL: [&str; 5] = [CONNECT4, CONNECT6, GETPEERNAME4, GETPEERNAME6, SOCK_OPS];
