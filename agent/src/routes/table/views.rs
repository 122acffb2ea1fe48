//! The `/routes` view of each route: its status and the endpoints its forks installed.
use std::net::SocketAddr;

use jiff::Timestamp;
use serde::Serialize;

use super::resolve::{Index, ResolvedFork};
use crate::routes::{Fallback, RouteReason, RouteStatus, SandboxRouteObj};

/// One route for the admin `/routes` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    pub namespace: String,
    pub name: String,
    pub routing_key: String,
    pub fallback: Fallback,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    pub ready: bool,
    pub reason: RouteReason,
    pub message: String,
    pub applied: bool,
    pub forks: Vec<ForkView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkView {
    pub service: String,
    /// `None` when the Service was not found.
    pub service_id: Option<u32>,
    pub reason: RouteReason,
    pub message: String,
    pub ready_endpoints: usize,
    pub ports: Vec<ForkPortView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkPortView {
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub endpoints: Vec<SocketAddr>,
}

/// The view of a route with its status and its resolved forks (none for a route that did not
/// get to resolve them).
pub(super) fn view_of(
    r: &SandboxRouteObj,
    st: &RouteStatus,
    resolved: &[ResolvedFork],
    ix: &Index<'_>,
) -> RouteView {
    let forks = resolved
        .iter()
        .map(|f| {
            let svc = f.service_id.and_then(|id| ix.by_id.get(&id));
            ForkView {
                service: f.status.service.clone(),
                service_id: f.service_id,
                reason: f.status.reason,
                message: f.status.message.clone(),
                ready_endpoints: f.status.ready_endpoints,
                ports: f
                    .ports
                    .iter()
                    .filter_map(|(pi, eps)| {
                        let sp = svc?.ports.get(*pi)?;
                        Some(ForkPortView {
                            port: sp.port,
                            name: sp.name.clone(),
                            endpoints: eps.clone(),
                        })
                    })
                    .collect(),
            }
        })
        .collect();
    RouteView {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        routing_key: r.spec.routing_key.clone(),
        fallback: r.spec.fallback,
        expires_at: r.spec.expires_at,
        ready: st.ready,
        reason: st.reason,
        message: st.message.clone(),
        applied: st.applied,
        forks,
    }
}
