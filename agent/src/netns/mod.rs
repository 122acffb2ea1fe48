//! Source identity: the proxy's upstream connections leave from the client pod's own network
//! namespace, with the pod's address as their source, as they would without the proxy. So
//! NetworkPolicy, access logs and per-client limits upstream see the client pod, not the node.
//!
//! A socket belongs to the network namespace it was created in, whichever thread later connects
//! it. So each pod namespace gets one dedicated thread that entered it once (`setns`, at the
//! first connection from that pod) and makes sockets there on request ([`thread`]); tokio
//! connects them. No `setns` per request. Which namespace is a client's comes from the accepted
//! peer address (the pod's address) and this node's pods ([`pods`]), and how to reach a pod's
//! namespace file from its cgroup is [`locate`].
//!
//! The capture programs do not capture these sockets again: a cgroup program sees the cgroup of
//! the task that created the socket, the agent's own, which is exempt.
//!
//! Fail open: a namespace that cannot be entered leaves the connection going upstream from the
//! node, as it did before, counted in `shunt_source_netns_fallbacks_total` and shown as
//! `source: node_fallback` in the decision log.
pub mod locate;
pub mod pods;
pub mod thread;

use std::{fs::File, io, net::IpAddr, os::fd::OwnedFd, os::unix::fs::MetadataExt as _};

use futures::future::BoxFuture;
use serde::Serialize;

pub use pods::PodNetns;

/// A network namespace, by its nsfs inode (the identity `lsns` and `ip netns identify` use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    /// The namespace an open nsfs file (`/proc/PID/ns/net`, `/run/netns/NAME`) refers to.
    pub fn of(file: &File) -> io::Result<Self> {
        let m = file.metadata()?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// The agent's own network namespace (the node's, for the DaemonSet's hostNetwork pod).
    pub fn own() -> io::Result<Self> {
        Self::of(&File::open("/proc/thread-self/ns/net")?)
    }
}

/// Where a client connection's upstream sockets are made; decided once, when it is accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UpstreamSource {
    /// The node's own namespace: the client is no pod of this node that the agent can place,
    /// it is a hostNetwork pod (which has the node's address anyway), or source identity is
    /// off.
    #[default]
    Node,
    /// The client pod's own namespace: upstreams see the pod's address.
    Pod(NetnsId),
    /// The client pod's namespace could not be entered: the node's, as without source identity
    /// (fail open). Counted, and logged once per pod.
    NodeFallback,
}

impl UpstreamSource {
    /// The namespace to make sockets in; `None` for the node's own.
    pub fn netns(self) -> Option<NetnsId> {
        match self {
            Self::Pod(id) => Some(id),
            Self::Node | Self::NodeFallback => None,
        }
    }

    /// As the decision log shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Pod(_) => "pod",
            Self::NodeFallback => "node_fallback",
        }
    }
}

impl Serialize for UpstreamSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Where upstream sockets come from. Behind a trait so the proxy runs without pods (tests,
/// `--upstream-source node`), the way [`crate::proxy::OrigDstLookup`] hides the kernel map.
pub trait SourceSockets: Send + Sync + 'static {
    /// Where the upstream connections of a client at `client` (the accepted peer address)
    /// leave from. Called once per accepted connection.
    fn source_for(&self, client: IpAddr) -> UpstreamSource;

    /// A new TCP socket (non-blocking, close-on-exec) for an IPv6 (`v6`) or IPv4 destination,
    /// made in `netns`; `None` when it cannot be (already counted and logged): the caller then
    /// connects from the node.
    fn socket(&self, netns: NetnsId, v6: bool) -> BoxFuture<'static, Option<OwnedFd>>;
}

/// Every upstream connection from the node's namespace (source identity off).
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeSockets;

impl SourceSockets for NodeSockets {
    fn source_for(&self, _client: IpAddr) -> UpstreamSource {
        UpstreamSource::Node
    }

    fn socket(&self, _netns: NetnsId, _v6: bool) -> BoxFuture<'static, Option<OwnedFd>> {
        Box::pin(std::future::ready(None))
    }
}
