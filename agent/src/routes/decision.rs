//! Where one request (or opaque connection) goes, and why: the route table's answer, made
//! against an immutable [`RouteTable`] snapshot.
use std::{net::SocketAddr, sync::Arc};

use serde::Serialize;

use super::{Fallback, OrigDstAddr, RouteTable, RoutingKey, ServiceId, ServicePortRef, ServiceRef};

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
    /// Refused (503 when the fork's fallback is Reject, 408 when the headers never arrived).
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
pub enum DecisionReason {
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
    /// Part of a request arrived, but its headers did not finish in time (answered 408).
    HeaderReadTimeout,
}

impl DecisionReason {
    /// The serialized name, also the `reason` label of the request metric.
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
            Self::HeaderReadTimeout => "header_read_timeout",
        }
    }
}

/// The route table's answer for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub kind: DecisionKind,
    pub reason: DecisionReason,
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

impl Decision {
    /// A refusal made before any routing (the request never became routable).
    pub fn reject(reason: DecisionReason, service: Option<Arc<str>>) -> Self {
        Self {
            kind: DecisionKind::Reject,
            reason,
            upstream: None,
            service,
            route: None,
            fallback: None,
        }
    }
}

impl RouteTable {
    /// The Service and port a connection's original destination belongs to.
    ///
    /// The id capture stored for the destination names the Service directly; the address is
    /// looked up only when there is no id (a `--steer` destination) or the id does not fit this
    /// table (the Service is gone, or has no port for this destination).
    pub fn resolve(
        &self,
        dst: OrigDstAddr,
        service: ServiceId,
    ) -> Option<(&ServiceRef, &ServicePortRef)> {
        service
            .get()
            .and_then(|id| self.service_port(id, dst.0))
            .or_else(|| self.service_for(dst.0))
    }

    /// Where a request to `dst` carrying `key` goes, and why.
    ///
    /// `dst` (with the Service id capture stored for it, see [`RouteTable::resolve`]) identifies
    /// the service: a ClusterIP or any baseline endpoint, and its port. The baseline choice for a
    /// service address is one of its ready endpoints (round-robin), so routing works with no
    /// kube-proxy on the path; a request addressed to an endpoint stays on that endpoint.
    pub fn decide(
        &self,
        dst: OrigDstAddr,
        service: ServiceId,
        key: Option<&RoutingKey>,
        invalid_key: bool,
    ) -> Decision {
        let OrigDstAddr(dst_addr) = dst;
        let Some((svc, port)) = self.resolve(dst, service) else {
            return Decision {
                kind: DecisionKind::Passthrough,
                reason: DecisionReason::UnknownService,
                upstream: Some(dst_addr),
                service: None,
                route: None,
                fallback: None,
            };
        };
        let service = Some(svc.label.clone());
        let baseline = if self.baseline(svc.id, port.port).contains(&dst_addr) {
            dst_addr
        } else {
            self.pick_baseline(svc.id, port.port).unwrap_or(dst_addr)
        };
        let to_baseline = |reason, route: Option<&Arc<str>>| Decision {
            kind: DecisionKind::Baseline,
            reason,
            upstream: Some(baseline),
            service: service.clone(),
            route: route.cloned(),
            fallback: None,
        };
        let Some(key) = key else {
            return to_baseline(
                if invalid_key {
                    DecisionReason::InvalidKey
                } else {
                    DecisionReason::NoKey
                },
                None,
            );
        };
        let Some(fork) = self.fork(svc.id, key).filter(|f| f.covers(port.port)) else {
            return to_baseline(DecisionReason::KeyNotForked, None);
        };
        match (fork.pick_sandbox(port.port), fork.fallback()) {
            (Some(ep), fallback) => Decision {
                kind: DecisionKind::Sandbox,
                reason: DecisionReason::KeyMatched,
                upstream: Some(ep),
                service,
                route: Some(fork.route().clone()),
                fallback: (fallback == Fallback::Baseline).then_some(baseline),
            },
            (None, Fallback::Baseline) => {
                to_baseline(DecisionReason::NoReadySandbox, Some(fork.route()))
            }
            (None, Fallback::Reject) => Decision {
                route: Some(fork.route().clone()),
                ..Decision::reject(DecisionReason::NoReadySandbox, service)
            },
        }
    }
}

#[cfg(test)]
#[path = "decision_tests.rs"]
mod tests;
