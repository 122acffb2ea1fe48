//! `PROXY_CFG`: one entry written by the agent at start: where to redirect, and whom to exempt.

use crate::Endpoint;

pub const MAP_NAME: &str = "PROXY_CFG_V2";

/// `flags` bits.
pub const FLAG_PROXY4: u32 = 1 << 0;
pub const FLAG_PROXY6: u32 = 1 << 1;
/// Skip sockets whose `SO_MARK` equals `agent_mark`.
pub const FLAG_EXEMPT_MARK: u32 = 1 << 2;
/// Do not count connections in `FLOWS` (the agent's `--count-flows false`): the service graph
/// stays empty and each connect() skips the flow map update. A skip flag rather than an enable
/// flag, so a `PROXY_CFG` written before the flag existed still means "count".
pub const FLAG_SKIP_FLOWS: u32 = 1 << 3;
/// The agent's cgroup is outside the captured one, so none of its sockets reach the programs:
/// flow counting skips the agent-cgroup comparison (`bpf_get_current_cgroup_id`, about a third of
/// counting's cost per connect). A skip flag, so a `PROXY_CFG` without it keeps the comparison.
/// Steering's own exemption (connect4/6) ignores it: a loop costs more than the helper call.
pub const FLAG_AGENT_UNCAPTURED: u32 = 1 << 4;

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
    /// Bit `n` set: some marked source (`MARKED`) is a cgroup at level `n` (the root is level
    /// 0). 0 while `MARKED` is empty, so connect skips the lookup. Written by the agent's one
    /// `MARKED` writer after each change.
    pub marked_levels: u32,
    pub _pad: u32,
}

impl ProxyMapConfig {
    /// Whether `remote` is the node proxy's address for its family (IPv4 and v4-mapped: the IPv4
    /// proxy; native IPv6: the IPv6 proxy). A socket-cookie record describes a redirect only if
    /// the socket really went to the proxy: a socket redirected once, whose connect failed, may
    /// connect again directly, and its stale record must not be trusted.
    #[inline(always)]
    pub fn is_proxy(&self, remote: &Endpoint) -> bool {
        if remote.addr.is_v4_mapped() {
            self.flags & FLAG_PROXY4 != 0
                && remote.addr.ip4_be() == self.proxy4
                && remote.port_be == self.proxy4_port_be
        } else {
            self.flags & FLAG_PROXY6 != 0
                && remote.addr.words[0] == self.proxy6[0]
                && remote.addr.words[1] == self.proxy6[1]
                && remote.addr.words[2] == self.proxy6[2]
                && remote.addr.words[3] == self.proxy6[3]
                && remote.port_be == self.proxy6_port_be
        }
    }
}

const _: () = assert!(core::mem::size_of::<ProxyMapConfig>() == 48);

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, laid out without implicit padding (size assert).
unsafe impl aya::Pod for ProxyMapConfig {}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::net::SocketAddr;

    fn cfg() -> ProxyMapConfig {
        let p6: core::net::Ipv6Addr = "fd00::1".parse().unwrap();
        ProxyMapConfig {
            proxy4: u32::from_ne_bytes([10, 0, 0, 1]),
            proxy4_port_be: 15001u16.to_be(),
            proxy6: crate::NetAddr::from_octets(p6.octets()).words,
            proxy6_port_be: 15001u16.to_be(),
            flags: FLAG_PROXY4 | FLAG_PROXY6,
            ..Default::default()
        }
    }

    fn ep(s: &str) -> Endpoint {
        Endpoint::from_socket_addr(s.parse::<SocketAddr>().unwrap())
    }

    #[test]
    fn only_the_proxy_endpoint_of_the_family_is_the_proxy() {
        let c = cfg();
        assert!(c.is_proxy(&ep("10.0.0.1:15001")));
        assert!(
            c.is_proxy(&ep("[::ffff:10.0.0.1]:15001")),
            "v4-mapped is IPv4"
        );
        assert!(c.is_proxy(&ep("[fd00::1]:15001")));
        assert!(!c.is_proxy(&ep("10.0.0.1:15002")), "another port");
        assert!(!c.is_proxy(&ep("10.0.0.2:15001")), "another address");
        assert!(!c.is_proxy(&ep("[fd00::2]:15001")));
    }

    #[test]
    fn a_family_without_a_proxy_has_no_proxy_endpoint() {
        let c = ProxyMapConfig {
            flags: FLAG_PROXY4,
            ..cfg()
        };
        assert!(!c.is_proxy(&ep("[fd00::1]:15001")));
        let zero = ProxyMapConfig::default();
        assert!(
            !zero.is_proxy(&ep("0.0.0.0:0")),
            "no flags: nothing is the proxy"
        );
    }
}
