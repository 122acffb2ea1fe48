//! The route table as plain data.
//!
//! Each source, the Kubernetes watch (`crate::kube`) or the routes file (parsed by
//! [`file`](mod@file), watched by `crate::sync::file_source`), describes the cluster as a
//! [`ClusterState`]. Route sync (`crate::sync`) hands that to [`RouteTable::compute`], which
//! gives the lookups the proxy makes per request, the set of destinations capture must steer,
//! and a [`RouteStatus`] per SandboxRoute; [`diff`] turns two steered sets into the BPF map
//! updates sync applies.
//!
//! Rooms: `model` (the input, with its `selector`), `table` (the computation and its lookups), `status`, `diff`,
//! `key` (the routing key a request carries), `file`.
//!
//! Dependency rule: this module imports none of `capture`, `proxy`, `kube`, aya, hyper or
//! kube-rs, nor tokio.
mod addr;
mod affinity;
mod decision;
mod diff;
pub mod file;
pub mod key;
mod model;
mod selector;
mod sources;
mod status;
mod table;

pub use addr::{OrigDstAddr, ServiceId, canonical};
pub use affinity::ClientAffinity;
pub use decision::{ConnRoute, Decision, DecisionKind, DecisionReason};
pub use diff::{SteeredDiff, diff};
pub use key::{KeyError, RoutingKey, is_key_byte};
pub use model::{
    ClusterState, DEFAULT_AFFINITY_TIMEOUT, EndpointAddr, EndpointTrust, Fallback, ForkSpec,
    ForkTarget, MarkedSource, NodePod, ObjectRef, Pod, PortRef, SANDBOX_LABEL, SandboxRouteObj,
    SandboxRouteSpec, Service, ServicePort, SpecField, SpecProblem, TargetPort, TrafficPolicy,
    inject_key_default, is_inject_key_default,
};
pub use selector::Selector;
pub use sources::{AppliedSource, AppliedSources};
pub use status::{ForkStatus, RouteReason, RouteStatus};
pub use table::{
    ForkPortView, ForkRoute, ForkView, ResolveMemo, RouteTable, RouteView, ServicePortRef,
    ServiceRef, service_id,
};

#[cfg(test)]
mod test_support;
