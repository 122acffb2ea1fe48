//! The `/routes` view of each route: its status and the endpoints its forks installed.
//!
//! Views are built when `/routes` is asked for, from what the table keeps anyway (the routes'
//! shared objects, their statuses and resolved forks): at 10,000 routes, building and keeping
//! a view of every route at every computation was a sixth of the table's memory and of the
//! time to compute it, for a page that is rarely read.
use std::{fmt, net::SocketAddr, sync::Arc};

use jiff::Timestamp;
use serde::Serialize;

use super::{ServicePortRef, resolve::ResolvedFork};
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

/// What the views of one computation are built from.
#[derive(Default)]
pub(super) struct ViewSource {
    /// The routes of the cluster view, in its order.
    pub(super) routes: Vec<Arc<SandboxRouteObj>>,
    /// Their statuses, in the same order (shared with the status writers).
    pub(super) statuses: Arc<Vec<RouteStatus>>,
    /// Their resolved forks (shared with the memo), for the routes that got to resolve them.
    pub(super) resolved: Vec<Option<Arc<[ResolvedFork]>>>,
}

impl fmt::Debug for ViewSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViewSource")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

impl ViewSource {
    /// Every route's view, sorted by namespace/name. `ports_of(id)` is Service `id`'s ports
    /// as declared (what a resolved fork's port indexes point into).
    pub(super) fn views<'a>(
        &self,
        ports_of: impl Fn(u32) -> Option<&'a [ServicePortRef]>,
    ) -> Vec<RouteView> {
        let mut views: Vec<RouteView> = self
            .routes
            .iter()
            .zip(self.statuses.iter())
            .zip(&self.resolved)
            .map(|((r, st), resolved)| {
                view_of(r, st, resolved.as_deref().unwrap_or(&[]), &ports_of)
            })
            .collect();
        views.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        views
    }
}

/// The view of a route with its status and its resolved forks (none for a route that did not
/// get to resolve them).
fn view_of<'a>(
    r: &SandboxRouteObj,
    st: &RouteStatus,
    resolved: &[ResolvedFork],
    ports_of: &impl Fn(u32) -> Option<&'a [ServicePortRef]>,
) -> RouteView {
    let forks = resolved
        .iter()
        .map(|f| {
            let ports = f.service_id.and_then(ports_of);
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
                        let sp = ports?.get(*pi)?;
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
