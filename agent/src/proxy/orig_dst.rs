//! Where a redirected connection was going. Behind a trait so the proxy can be tested without a
//! kernel (the way linkerd2-proxy hides `SO_ORIGINAL_DST`).
use std::net::SocketAddr;

use crate::capture::OrigDstMap;

/// The destination the client dialled before capture redirected it to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

/// The agent's id for the service that destination belongs to (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceId(pub u32);

/// Resolves the original destination of an accepted connection from its peer address.
pub trait OrigDstLookup: Send + Sync + 'static {
    fn lookup(&self, client: SocketAddr) -> Option<(OrigDstAddr, ServiceId)>;
}

impl OrigDstLookup for OrigDstMap {
    fn lookup(&self, client: SocketAddr) -> Option<(OrigDstAddr, ServiceId)> {
        self.get(client)
            .map(|(dst, id)| (OrigDstAddr(dst), ServiceId(id)))
    }
}

/// A fixed table, for tests and for running without capture.
impl OrigDstLookup for std::collections::HashMap<SocketAddr, (OrigDstAddr, ServiceId)> {
    fn lookup(&self, client: SocketAddr) -> Option<(OrigDstAddr, ServiceId)> {
        self.get(&normalize(client)).copied()
    }
}

/// An IPv4-mapped IPv6 peer (from a dual-stack listener) as plain IPv4.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}
