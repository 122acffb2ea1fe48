//! The Kubernetes route source: watches SandboxRoutes, Services, EndpointSlices and sandbox Pods
//! and produces [`crate::routes::ClusterState`]s; writes SandboxRoute status. Never imports
//! `proxy`.
//!
//! - [`crd`]: the `SandboxRoute` custom resource and its CRD (`shunt crd`).
//! - [`convert`]: Kubernetes objects → `ClusterState` (pure).
//! - [`marks`]: which pods of this node are marked sources (pure).
//! - [`source`]: watches, caches, and the loop that publishes them as `ClusterState`s.
//! - `route_cache`: SandboxRoutes converted once per generation, from the watch's events.
//! - [`lease`]: leader election (one status writer per cluster).
//! - [`status`]: status writes and deletion of expired routes, by the leader.
//! - [`node_status`]: each agent's own entry in `status.nodes[]` (what its node could not
//!   apply).
//! - [`rbac`]: every API permission the above uses.
//!
//! - [`agents`]: where the node agents run (flags of the clients that reach them).
//! - [`client`]: the one kubeconfig loader (agent, `shunt sandbox`, `shunt mcp --kube`).
//! - [`route_status`], [`pods`]: helpers the clients share (status read back from a
//!   SandboxRoute, pod waiting states).
//!
//! [`KubeSource::spawn`] publishes on a watch channel, as the routes-file source does, and
//! subscribes its status writer to the statuses that route sync (`crate::sync`) publishes: table
//! swaps and `STEERED` updates happen in that one room whatever the source.
pub mod agents;
pub mod client;
pub mod convert;
pub mod crd;
#[cfg(feature = "node")]
pub mod lease;
pub mod marks;
#[cfg(feature = "node")]
mod node_source;
#[cfg(feature = "node")]
pub mod node_status;
pub mod pods;
pub mod rbac;
#[cfg(feature = "node")]
mod route_cache;
#[cfg(feature = "node")]
pub mod route_records;
pub mod route_status;
#[cfg(feature = "node")]
pub mod source;
#[cfg(feature = "node")]
pub mod status;
#[cfg(feature = "node")]
pub mod touched;
#[cfg(feature = "node")]
mod watch_store;

#[cfg(feature = "node")]
pub use node_source::{KubeFeed, KubeHandle, KubeOptions, KubeSource, default_identity};
