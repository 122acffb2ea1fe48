//! Test fixtures shared by the integration tests in `tests/tests/`.
pub mod backends;
pub mod cgroup;
pub mod fake_apiserver;
pub mod grpc_backend;
pub mod harness;
pub mod http_backend;
pub mod kernel;
pub mod kube_world;
pub mod mcp_cluster;
pub mod mcp_driver;
pub mod mcp_world;
pub mod netns;
pub mod process;
pub mod routes_fixture;
pub mod routing_world;
pub mod source_world;
pub mod traffic_world;
