//! The route table as plain data.
//!
//! A source (the routes file now, Kubernetes later) produces a [`ClusterState`];
//! [`RouteTable::compute`] turns it into the lookups the proxy makes per request, the set of
//! destinations capture must steer, and a status per SandboxRoute. [`diff`] turns two steered
//! sets into BPF map updates.
//!
//! Dependency rule: this module imports none of `capture`, `proxy`, `kube`, aya, hyper or
//! kube-rs, nor tokio.
mod diff;
pub mod file;
mod key;
mod model;
mod status;
mod table;

pub use diff::{SteeredDiff, diff};
pub use key::{KeyError, RoutingKey, is_key_byte};
pub use model::{
    ClusterState, EndpointAddr, Fallback, ForkSpec, ForkTarget, Pod, PortRef, SANDBOX_LABEL,
    SandboxRouteObj, SandboxRouteSpec, Service, ServicePort, SpecField, SpecProblem, TargetPort,
};
pub use status::{ForkStatus, RouteReason, RouteStatus};
pub use table::{
    ForkPortView, ForkRoute, ForkView, RouteTable, RouteView, ServicePortRef, ServiceRef,
    service_id,
};
