//! Where a redirected connection was going. Behind a trait so the proxy can be tested without a
//! kernel (the way linkerd2-proxy hides `SO_ORIGINAL_DST`).
use std::{fmt, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::capture::OrigDstMap;
use crate::routes::{AppliedSource, AppliedSources};
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

/// Where a redirected connection was going, and who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirected {
    pub dst: OrigDstAddr,
    /// The Service capture found the destination under; [`ServiceId::NONE`] for a destination
    /// that is not steered (a marked source's connection to anywhere else) or `--steer`.
    pub service: ServiceId,
    /// The marked source the connection came from (`MARKED`), as route sync applied it.
    pub source: Option<Arc<AppliedSource>>,
}

/// Resolves the original destination of an accepted connection, the id of the Service capture
/// found it under, and its marked source, from its peer address. Called once per accepted
/// connection.
pub trait OrigDstLookup: Send + Sync + 'static {
    fn lookup(&self, client: ClientAddr) -> Option<Redirected>;
}

/// Capture's `ORIG_DST`, with the marked sources route sync applied (a source's cgroup id, as
/// capture recorded it, names its key).
pub struct CapturedOrigDst {
    pub map: OrigDstMap,
    pub sources: Arc<ArcSwap<AppliedSources>>,
}

/// Takes the entry out of `ORIG_DST`: once read, it can never answer for a later connection
/// from the same (address, port) that capture did not record.
impl OrigDstLookup for CapturedOrigDst {
    fn lookup(&self, client: ClientAddr) -> Option<Redirected> {
        let (dst, id, source_id) = self.map.take_with_source(client.get())?;
        let source = (source_id != 0)
            .then(|| {
                let s = self.sources.load().get(source_id).cloned();
                if s.is_none() {
                    // Unmarked since connect: the connection is served as unmarked.
                    tracing::debug!(%client, cgroup_id = source_id, "marked source no longer applied");
                }
                s
            })
            .flatten();
        Some(Redirected {
            dst: OrigDstAddr(dst),
            service: ServiceId(id),
            source,
        })
    }
}

/// A fixed table, for tests and for running without capture.
impl OrigDstLookup for std::collections::HashMap<ClientAddr, (OrigDstAddr, ServiceId)> {
    fn lookup(&self, client: ClientAddr) -> Option<Redirected> {
        self.get(&client).map(|(dst, service)| Redirected {
            dst: *dst,
            service: *service,
            source: None,
        })
    }
}

/// A fixed table with sources, for tests.
impl OrigDstLookup for std::collections::HashMap<ClientAddr, Redirected> {
    fn lookup(&self, client: ClientAddr) -> Option<Redirected> {
        self.get(&client).cloned()
    }
}
