//! Route sync, end to end: sources publish [`crate::routes::ClusterState`]s; this room turns them
//! into the proxy's table and the kernel's steered set.
pub mod file_source;
