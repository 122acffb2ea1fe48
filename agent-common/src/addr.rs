//! Socket addresses in the one form every map uses.

/// The first three words of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), in network order.
pub const V4_MAPPED_PREFIX: [u32; 3] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])];

/// An IP address as four network-order words; IPv4 is stored IPv4-mapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetAddr {
    pub words: [u32; 4],
}

impl NetAddr {
    /// From an IPv4 address in network order, as `bpf_sock_addr.user_ip4` holds it.
    #[inline(always)]
    pub const fn from_ip4_be(ip4: u32) -> Self {
        Self {
            words: [
                V4_MAPPED_PREFIX[0],
                V4_MAPPED_PREFIX[1],
                V4_MAPPED_PREFIX[2],
                ip4,
            ],
        }
    }

    /// From four network-order words, as `bpf_sock_addr.user_ip6` holds them.
    #[inline(always)]
    pub const fn from_ip6_words(words: [u32; 4]) -> Self {
        Self { words }
    }

    #[inline(always)]
    pub const fn is_v4_mapped(&self) -> bool {
        self.words[0] == V4_MAPPED_PREFIX[0]
            && self.words[1] == V4_MAPPED_PREFIX[1]
            && self.words[2] == V4_MAPPED_PREFIX[2]
    }

    /// The IPv4 address in network order; meaningful only when [`Self::is_v4_mapped`].
    #[inline(always)]
    pub const fn ip4_be(&self) -> u32 {
        self.words[3]
    }

    pub fn from_octets(octets: [u8; 16]) -> Self {
        let mut words = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            words[i] = u32::from_ne_bytes([
                octets[4 * i],
                octets[4 * i + 1],
                octets[4 * i + 2],
                octets[4 * i + 3],
            ]);
            i += 1;
        }
        Self { words }
    }

    pub fn octets(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, w) in self.words.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }

    /// Any IP address; IPv4 (and IPv4-mapped IPv6) become the mapped form.
    pub fn from_ip(ip: core::net::IpAddr) -> Self {
        match ip {
            core::net::IpAddr::V4(v4) => Self::from_ip4_be(u32::from_ne_bytes(v4.octets())),
            core::net::IpAddr::V6(v6) => Self::from_octets(v6.octets()),
        }
    }

    /// The address as userspace writes it: IPv4 for the mapped form, IPv6 otherwise.
    pub fn to_ip(&self) -> core::net::IpAddr {
        if self.is_v4_mapped() {
            core::net::IpAddr::V4(core::net::Ipv4Addr::from(self.ip4_be().to_ne_bytes()))
        } else {
            core::net::IpAddr::V6(core::net::Ipv6Addr::from(self.octets()))
        }
    }
}

/// An address and TCP port. `port` is in network order, as `bpf_sock_addr.user_port` holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: NetAddr,
    pub port_be: u16,
    pub _pad: u16,
}

impl Endpoint {
    #[inline(always)]
    pub const fn new(addr: NetAddr, port_be: u16) -> Self {
        Self {
            addr,
            port_be,
            _pad: 0,
        }
    }

    pub fn from_socket_addr(sa: core::net::SocketAddr) -> Self {
        Self::new(NetAddr::from_ip(sa.ip()), sa.port().to_be())
    }

    pub fn to_socket_addr(&self) -> core::net::SocketAddr {
        core::net::SocketAddr::new(self.addr.to_ip(), u16::from_be(self.port_be))
    }
}

const _: () = assert!(core::mem::size_of::<NetAddr>() == 16);
const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);
const _: () = assert!(core::mem::align_of::<Endpoint>() == 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), only integer fields, no implicit padding (size asserts above).
    unsafe impl aya::Pod for super::NetAddr {}
    // SAFETY: as above; `_pad` makes the trailing two bytes explicit.
    unsafe impl aya::Pod for super::Endpoint {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::net::{IpAddr, SocketAddr};

    #[test]
    fn ipv4_round_trips_through_the_mapped_form() {
        let sa: SocketAddr = "10.96.0.7:9080".parse().unwrap();
        let ep = Endpoint::from_socket_addr(sa);
        assert!(ep.addr.is_v4_mapped());
        assert_eq!(ep.to_socket_addr(), sa);
    }

    #[test]
    fn v4_mapped_ipv6_equals_plain_ipv4() {
        let mapped: IpAddr = "::ffff:10.96.0.7".parse().unwrap();
        let plain: IpAddr = "10.96.0.7".parse().unwrap();
        assert_eq!(NetAddr::from_ip(mapped), NetAddr::from_ip(plain));
    }

    #[test]
    fn ipv6_round_trips() {
        let sa: SocketAddr = "[fd00::7]:443".parse().unwrap();
        assert_eq!(Endpoint::from_socket_addr(sa).to_socket_addr(), sa);
    }
}
