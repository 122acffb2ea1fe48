//! Addresses as the route table and the proxy name them: the destination a client dialled, the
//! id capture stored for it, and the one canonical spelling of an address.
use std::{fmt, net::SocketAddr};

use serde::Serialize;

/// An IPv4-mapped IPv6 address (from a dual-stack socket) as plain IPv4, so both spellings of
/// one address match in maps and tables.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The destination the client dialled before capture redirected it to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct OrigDstAddr(pub SocketAddr);

impl fmt::Display for OrigDstAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of the Service a steered destination belongs to, as `STEERED` stores it (see
/// [`service_id`](super::service_id)). 0 means none: a `--steer` destination, or an entry
/// written without one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ServiceId(pub u32);

impl ServiceId {
    /// No Service: the destination is steered for another reason.
    pub const NONE: Self = Self(0);

    /// The id, unless it is [`ServiceId::NONE`].
    pub fn get(self) -> Option<u32> {
        (self.0 != 0).then_some(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_addresses_become_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().expect("addr");
        assert_eq!(canonical(mapped), "10.0.0.1:80".parse().expect("addr"));
        let v6: SocketAddr = "[fd00::1]:80".parse().expect("addr");
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn service_id_zero_is_none() {
        assert_eq!(ServiceId::NONE.get(), None);
        assert_eq!(ServiceId(7).get(), Some(7));
    }
}
