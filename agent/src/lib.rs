//! Shunt: the node agent (`shunt run`) and the clients that drive it (`shunt mcp`, `sandbox`,
//! `routes`, `topology`, `crd`).
//!
//! Rooms by role, and who may import whom (see ARCHITECTURE.md, "Dependency rules"):
//! - [`routes`]: the route table as plain data, and the routing decision made against it; no
//!   runtime part (no tokio, aya, hyper or kube-rs).
//! - [`sync`]: route sync, end to end. Sources (the routes file in [`sync::file_source`],
//!   Kubernetes in [`kube`]) publish `ClusterState`s; sync alone recomputes the table, swaps the
//!   proxy's copy, and hands [`sync::Steering`] (the only writer of `STEERED`) a diff.
//! - [`capture`]: the only module that touches aya: loads, attaches and pins the eBPF programs.
//! - [`proxy`]: accepts redirected connections and forwards each request by its key; reads a
//!   table snapshot and an original-destination lookup, never `kube`.
//! - [`netns`]: source identity: upstream sockets made in the client pod's network namespace,
//!   for the proxy (which sees it through the [`netns::SourceSockets`] trait).
//! - [`kube`]: watches and status writes against the API server; never `proxy`. Shared
//!   Kubernetes helpers for [`mcp`] and [`sandbox`] live here.
//! - [`admin`]: the health listener (node address) and the debug listener (routes, decisions,
//!   topology); [`traffic`]: the aggregated API through which users read the debug data of
//!   their namespaces with their own RBAC; [`watchdog`]: fails open when the proxy
//!   stops accepting (an OS thread on purpose: a wedged runtime could not run it).
//! - [`handover`]: restarts with no gap (a ready successor takes the node over on SIGTERM).
//! - [`run`] wires the parts for `shunt run` from a config value; [`cli`] parses the command
//!   line and is imported by no one.
pub mod admin;
pub mod allocator;
#[cfg(feature = "node")]
pub mod capture;
pub mod cli;
#[cfg(feature = "node")]
pub mod config;
pub mod duration;
#[cfg(feature = "node")]
pub mod handover;
pub mod kube;
pub mod mcp;
#[cfg(feature = "node")]
pub mod metrics;
#[cfg(feature = "node")]
pub mod netns;
pub mod placement;
#[cfg(feature = "node")]
pub mod proxy;
pub mod routes;
#[cfg(feature = "node")]
pub mod run;
pub mod sandbox;
pub mod skill;
#[cfg(feature = "node")]
pub mod sync;
pub mod traffic;
#[cfg(feature = "node")]
pub mod watchdog;
