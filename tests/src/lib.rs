//! Test fixtures shared by the integration tests in `tests/tests/`.
pub mod backends;
pub mod cgroup;
pub mod fake_apiserver;
pub mod harness;
pub mod kernel;
pub mod netns;
pub mod process;
pub mod http_backend;
pub mod routes_fixture;
pub mod grpc_backend;
