//! Where one request (or opaque connection) goes, and why.
use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use serde::Serialize;

use crate::routes::RoutingKey;

/// The kind of destination chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionKind {
    /// A sandbox endpoint of a fork.
    Sandbox,
    /// A baseline endpoint of the service (or the original destination).
    Baseline,
    /// Not a known service: sent to the original destination untouched.
    Passthrough,
    /// Refused with 503 (the fork's fallback is Reject).
    Reject,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sandbox => "sandbox",
            Self::Baseline => "baseline",
            Self::Passthrough => "passthrough",
            Self::Reject => "reject",
        }
    }
}

/// Why that destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The key has a fork for this service.
    KeyMatched,
    /// The request carried no key.
    NoKey,
    /// A key was present but malformed; treated as no key.
    InvalidKey,
    /// The key has no fork for this service.
    KeyNotForked,
    /// The original destination is not a service in the route table.
    UnknownService,
    /// The fork has no ready sandbox endpoint.
    NoReadySandbox,
    /// The sandbox endpoint refused the connection.
    SandboxUnreachable,
    /// Not HTTP (TLS or unknown bytes): copied opaquely.
    OpaqueProtocol,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyMatched => "key_matched",
            Self::NoKey => "no_key",
            Self::InvalidKey => "invalid_key",
            Self::KeyNotForked => "key_not_forked",
            Self::UnknownService => "unknown_service",
            Self::NoReadySandbox => "no_ready_sandbox",
            Self::SandboxUnreachable => "sandbox_unreachable",
            Self::OpaqueProtocol => "opaque_protocol",
        }
    }
}

/// The router's answer for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub kind: DecisionKind,
    pub reason: Reason,
    /// Where to send it; `None` only for `Reject`.
    pub upstream: Option<SocketAddr>,
    /// `namespace/name` of the service, when known (shared with the route table).
    pub service: Option<Arc<str>>,
    /// `namespace/name` of the SandboxRoute involved, when any (shared with the route table).
    pub route: Option<Arc<str>>,
    /// For a sandbox decision: where to go if the sandbox refuses the connection (fallback
    /// Baseline), or `None` when the fallback is Reject.
    pub fallback: Option<SocketAddr>,
}

/// One entry of the decision log, as `/decisions` shows it.
///
/// One is written per request, so it takes what the request already owns (its method and key)
/// and the route table's shared names; only the path is copied.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionRecord {
    #[serde(with = "unix_ms")]
    pub time: SystemTime,
    pub client: SocketAddr,
    pub original_dst: SocketAddr,
    pub protocol: &'static str,
    #[serde(serialize_with = "as_str::method")]
    pub method: Option<http::Method>,
    /// The request's path (not its query, which may hold secrets). Copied: a shared slice
    /// would keep the connection's whole read buffer alive for as long as the log holds it.
    pub path: Option<Box<str>>,
    #[serde(serialize_with = "as_str::shared")]
    pub service: Option<Arc<str>>,
    pub key: Option<RoutingKey>,
    pub decision: DecisionKind,
    pub reason: Reason,
    #[serde(serialize_with = "as_str::shared")]
    pub route: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub status: Option<u16>,
    pub latency_us: u64,
}

impl DecisionRecord {
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_ref().map(RoutingKey::as_str)
    }
}

/// Optional values serialized as their string form (`null` when absent).
mod as_str {
    use std::sync::Arc;

    use serde::Serializer;

    pub fn method<S: Serializer>(m: &Option<http::Method>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => s.serialize_str(m.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn shared<S: Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(v),
            None => s.serialize_none(),
        }
    }
}

mod unix_ms {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        s.serialize_u64(ms as u64)
    }
}
