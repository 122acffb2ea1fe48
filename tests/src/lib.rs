//! Test fixtures shared by the integration tests in `tests/tests/`.
pub mod backends;
pub mod cgroup;
pub mod harness;
pub mod kernel;
pub mod netns;
pub mod process;
