//! Shunt's node agent: loads the capture programs, runs the node proxy and serves the admin API.
//!
//! Folders by role: [`capture`] is the only module that touches aya; [`proxy`] accepts redirected
//! connections; [`admin`] serves health and metrics. [`run`] wires them together for `shunt run`.
pub mod admin;
pub mod capture;
pub mod cli;
pub mod config;
pub mod duration;
pub mod kube;
pub mod mcp;
pub mod metrics;
pub mod placement;
pub mod proxy;
pub mod routes;
pub mod run;
pub mod sandbox;
pub mod steering;
pub mod sync;
pub mod watchdog;
