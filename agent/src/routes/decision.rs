//! Where one request (or opaque connection) goes, and why: the route table's answer, made
//! against an immutable [`RouteTable`] snapshot.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::Serialize;

use super::{
    ClientAffinity, Fallback, OrigDstAddr, RouteTable, RoutingKey, ServiceId, ServicePortRef,
    ServiceRef, table::VirtualPick,
};

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
    /// `internalTrafficPolicy: Local` and no ready endpoint on this node: the connection is
    /// closed unanswered, as kube-proxy drops it.
    NoLocalEndpoint,
    /// The sandbox sent no response headers within `--response-header-timeout`; the route's
    /// fallback applied.
    SandboxTimeout,
    /// The sandbox failed (refused or timed out), and the request's body was not kept (over
    /// `--max-request-buffer`, or already streamed), so it could not go to its fallback.
    BodyTooLargeToRetry,
    /// A sandbox-bound request was refused (503, or REFUSED_STREAM on HTTP/2): the buffer
    /// budget (`--max-connection-buffer` or `--max-buffered-bytes`) was spent.
    BufferBudgetExhausted,
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
            Self::NoLocalEndpoint => "no_local_endpoint",
            Self::SandboxTimeout => "sandbox_timeout",
            Self::BodyTooLargeToRetry => "body_too_large_to_retry",
            Self::BufferBudgetExhausted => "buffer_budget_exhausted",
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

/// What the route table keeps about one client connection: where it was going, who dialled it,
/// and the baseline endpoint its virtual destination was given (kube-proxy picks one endpoint
/// per connection; so does the proxy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRoute {
    pub dst: OrigDstAddr,
    /// The Service capture found the destination under.
    pub service: ServiceId,
    /// The client's IP (the peer of the accepted connection): the key of `ClientIP` affinity.
    pub client: IpAddr,
    /// The endpoint picked for a virtual destination, once one was.
    pub pinned: Option<SocketAddr>,
}

impl ConnRoute {
    pub fn new(dst: OrigDstAddr, service: ServiceId, client: IpAddr) -> Self {
        Self {
            dst,
            service,
            client,
            pinned: None,
        }
    }
}

impl Decision {
    /// Whether the client connection is to be closed unanswered (as kube-proxy would drop it)
    /// rather than answered with an error.
    pub fn drops_connection(&self) -> bool {
        self.kind == DecisionKind::Reject && self.reason == DecisionReason::NoLocalEndpoint
    }

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

    /// Where a lone request to `dst` carrying `key` goes, and why: [`RouteTable::decide_on`]
    /// for a fresh connection from an unknown client, without affinity state.
    pub fn decide(
        &self,
        dst: OrigDstAddr,
        service: ServiceId,
        key: Option<&RoutingKey>,
        invalid_key: bool,
    ) -> Decision {
        let mut conn = ConnRoute::new(dst, service, IpAddr::from([0, 0, 0, 0]));
        self.decide_on(&mut conn, None, key, invalid_key)
    }

    /// Where a request on the client connection `conn` carrying `key` goes, and why.
    ///
    /// The connection's destination (with the Service id capture stored for it, see
    /// [`RouteTable::resolve`]) identifies the service: a ClusterIP or any baseline endpoint,
    /// and its port. The baseline is what kube-proxy would give the connection:
    /// - a pod address stays on that pod, ready or not (probes, scrapes and StatefulSet peers
    ///   address one pod on purpose);
    /// - a virtual address gets one endpoint per client connection, picked on first need and
    ///   kept in `conn` (then every unkeyed request of the connection goes there), with
    ///   `sessionAffinity: ClientIP` (through `affinity`) and `internalTrafficPolicy: Local`
    ///   honoured.
    ///
    /// A keyed request dialled to a pod address that several Services share follows the fork of
    /// the first of them (by namespace/name) whose fork for the key covers it.
    pub fn decide_on(
        &self,
        conn: &mut ConnRoute,
        affinity: Option<&ClientAffinity>,
        key: Option<&RoutingKey>,
        invalid_key: bool,
    ) -> Decision {
        let dst_addr = conn.dst.0;
        let Some((mut svc, mut port)) = self.resolve(conn.dst, conn.service) else {
            return Decision {
                kind: DecisionKind::Passthrough,
                reason: DecisionReason::UnknownService,
                upstream: Some(dst_addr),
                service: None,
                route: None,
                fallback: None,
            };
        };
        let virtual_dst = self.is_virtual(svc.id, dst_addr);
        if !virtual_dst
            && let Some(key) = key
            && let Some(sharer) = self.forked_sharer(dst_addr, key)
        {
            (svc, port) = sharer;
        }
        let service = Some(svc.label.clone());
        // `None`: the connection is dropped (no local endpoint), as kube-proxy would.
        let baseline = if !virtual_dst {
            Some(dst_addr)
        } else if let Some(pinned) = conn.pinned {
            Some(pinned)
        } else {
            match self.pick_virtual(svc.id, port.port, conn.client, affinity) {
                VirtualPick::To(ep) => {
                    conn.pinned = Some(ep);
                    Some(ep)
                }
                VirtualPick::NoLocalEndpoint => None,
                // Whatever the virtual address itself leads to (kube-proxy, if any).
                VirtualPick::NoEndpoint => Some(dst_addr),
            }
        };
        let to_baseline = |reason, route: Option<&Arc<str>>| match baseline {
            Some(upstream) => Decision {
                kind: DecisionKind::Baseline,
                reason,
                upstream: Some(upstream),
                service: service.clone(),
                route: route.cloned(),
                fallback: None,
            },
            None => Decision {
                route: route.cloned(),
                ..Decision::reject(DecisionReason::NoLocalEndpoint, service.clone())
            },
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
                fallback: if fallback == Fallback::Baseline {
                    baseline
                } else {
                    None
                },
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

#[cfg(test)]
#[path = "decision_baseline_tests.rs"]
mod baseline_tests;
