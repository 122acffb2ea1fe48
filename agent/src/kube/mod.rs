//! The Kubernetes route source: watches SandboxRoutes, Services, EndpointSlices and sandbox Pods
//! and produces [`crate::routes::ClusterState`]s; writes SandboxRoute status. Never imports
//! `proxy`.
pub mod rbac;
