//! Where a redirected connection was going. Behind a trait so the proxy can be tested without a
//! kernel (the way linkerd2-proxy hides `SO_ORIGINAL_DST`).
use std::{fmt, net::SocketAddr};

use serde::Serialize;

use crate::capture::OrigDstMap;
pub use crate::routes::{OrigDstAddr, ServiceId};

/// The client's address as the proxy accepted it, canonical (an IPv4-mapped peer of a
/// dual-stack listener is plain IPv4, as capture recorded it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClientAddr(SocketAddr);

impl ClientAddr {
    /// The accepted peer address, canonicalised.
    pub fn from_peer(peer: SocketAddr) -> Self {
        Self(crate::routes::canonical(peer))
    }

    pub fn get(self) -> SocketAddr {
        self.0
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Resolves the original destination of an accepted connection, and the id of the Service
/// capture found it under, from its peer address. Called once per accepted connection.
pub trait OrigDstLookup: Send + Sync + 'static {
    fn lookup(&self, client: ClientAddr) -> Option<(OrigDstAddr, ServiceId)>;
}

/// Takes the entry out of `ORIG_DST`: once read, it can never answer for a later connection
/// from the same (address, port) that capture did not record.
impl OrigDstLookup for OrigDstMap {
    fn lookup(&self, client: ClientAddr) -> Option<(OrigDstAddr, ServiceId)> {
        self.take(client.get())
            .map(|(dst, id)| (OrigDstAddr(dst), ServiceId(id)))
    }
}

/// A fixed table, for tests and for running without capture.
impl OrigDstLookup for std::collections::HashMap<ClientAddr, (OrigDstAddr, ServiceId)> {
    fn lookup(&self, client: ClientAddr) -> Option<(OrigDstAddr, ServiceId)> {
        self.get(&client).copied()
    }
}
