//! The agent's two read-only HTTP listeners, split by who may reach them:
//!
//! - [`health`] on `--admin-addr` (in a cluster, the node address, which every pod on the node
//!   reaches): `/healthz`, `/readyz` and `/metrics`, and nothing that names a key, a path or a
//!   client.
//! - [`debug`] on `--debug-addr` (loopback by default): `/routes`, `/decisions` and
//!   `/topology`, what the agent saw of everyone's traffic. On a non-loopback address it answers
//!   only requests carrying the debug token ([`debug::DebugToken`]), which only the agents and
//!   the traffic API (`shunt traffic-api`, see [`crate::traffic`]) hold.
//!
//! Both bound their connections and the time a client has to send its headers
//! ([`listener::ListenerLimits`]), so a slow or greedy client cannot pin the agent's memory or
//! tasks. [`client`] is the loopback client of `shunt routes`/`topology`; [`topology`] builds
//! the service graph.
pub mod client;
#[cfg(feature = "node")]
pub mod debug;
#[cfg(feature = "node")]
pub mod health;
#[cfg(feature = "node")]
pub mod listener;
pub mod topology;

#[cfg(feature = "node")]
pub use debug::{DebugState, DebugToken};
#[cfg(feature = "node")]
pub use health::HealthState;
