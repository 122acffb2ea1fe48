//! What the computation says about each SandboxRoute: the `Ready` condition of its status.
use std::fmt;

use serde::Serialize;

/// The reason of a route's (or a fork's) `Ready` condition. Only `EndpointsReady` is Ready=True.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum RouteReason {
    /// Every fork has at least one ready sandbox endpoint on every forked port.
    EndpointsReady,
    /// A fork's baseline Service or target Service does not exist.
    ServiceNotFound,
    /// A fork lists a port its Service does not have, or a target Service has no matching port.
    PortNotFound,
    /// A fork has no ready sandbox endpoint on some port (its fallback applies).
    NoReadyEndpoints,
    /// An older route in the namespace already claims this key; this one is not applied.
    DuplicateKey,
    /// `expiresAt` has passed; not applied.
    Expired,
    /// A fork targets, or its selector only matches pods in, another namespace.
    CrossNamespace,
    /// The forked Service's endpoints, or the sandbox Service's, list addresses that are not
    /// Pods of the route's namespace (no Pod `targetRef`, another namespace's Pod, or a Pod
    /// object that disagrees). Such addresses are never steered nor used; a forked Service
    /// with any of them is not forked at all, so its baseline stays exactly as it was.
    ForeignEndpoints,
    /// The routing key is not `[A-Za-z0-9._-]{1,64}`; not applied.
    InvalidKey,
    /// A selector is empty or lacks the `shunt.dev/sandbox` label; not applied.
    InvalidSelector,
    /// A fork's `to` sets neither or both of `selector`/`service`, or targets its own Service.
    InvalidTarget,
    /// Ready as far as the routes go, but some nodes do not apply it (their agent is not Ready,
    /// or reported a failure in `status.nodes[]`): set by the kube status writer only.
    NotAppliedOnNodes,
}

impl RouteReason {
    /// Every reason (a new variant must be added here: `every_reason_round_trips` checks it).
    pub const ALL: [RouteReason; 12] = [
        RouteReason::EndpointsReady,
        RouteReason::ServiceNotFound,
        RouteReason::PortNotFound,
        RouteReason::NoReadyEndpoints,
        RouteReason::DuplicateKey,
        RouteReason::Expired,
        RouteReason::CrossNamespace,
        RouteReason::ForeignEndpoints,
        RouteReason::InvalidKey,
        RouteReason::InvalidSelector,
        RouteReason::InvalidTarget,
        RouteReason::NotAppliedOnNodes,
    ];

    /// The reason spelled `s` by [`Self::as_str`], if this version knows it.
    pub fn parse(s: &str) -> Option<RouteReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RouteReason::EndpointsReady => "EndpointsReady",
            RouteReason::ServiceNotFound => "ServiceNotFound",
            RouteReason::PortNotFound => "PortNotFound",
            RouteReason::NoReadyEndpoints => "NoReadyEndpoints",
            RouteReason::DuplicateKey => "DuplicateKey",
            RouteReason::Expired => "Expired",
            RouteReason::CrossNamespace => "CrossNamespace",
            RouteReason::ForeignEndpoints => "ForeignEndpoints",
            RouteReason::InvalidKey => "InvalidKey",
            RouteReason::InvalidSelector => "InvalidSelector",
            RouteReason::InvalidTarget => "InvalidTarget",
            RouteReason::NotAppliedOnNodes => "NotAppliedOnNodes",
        }
    }
}

impl fmt::Display for RouteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of one SandboxRoute after a computation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub namespace: String,
    pub name: String,
    /// The `generation` this status was computed from.
    pub observed_generation: i64,
    /// `Ready` condition: true only with [`RouteReason::EndpointsReady`].
    pub ready: bool,
    pub reason: RouteReason,
    pub message: String,
    /// Whether any of its forks are in the table.
    pub applied: bool,
    /// One per spec fork, in spec order, for a route that got to resolve its forks (empty for
    /// spec errors, expired routes and lost key claims).
    pub forks: Vec<ForkStatus>,
}

impl RouteStatus {
    /// The condition status string Kubernetes expects.
    pub fn condition_status(&self) -> &'static str {
        if self.ready { "True" } else { "False" }
    }
}

/// The status of one fork of a route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkStatus {
    /// The baseline Service, as written in the spec.
    pub service: String,
    pub reason: RouteReason,
    pub message: String,
    /// Distinct ready sandbox endpoint IPs serving at least one forked port.
    pub ready_endpoints: usize,
}
