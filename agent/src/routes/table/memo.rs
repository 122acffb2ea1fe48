//! What one computation can hand the next: each route's static check and resolved forks.
//!
//! The check depends on the route alone; the forks also on the rest of the cluster (Services,
//! their endpoints, pods, this node's pods). Sources share an unchanged route's `Arc` from one
//! view to the next, so a route whose `Arc` is the same has the same check, and, while the rest
//! of the cluster is unchanged (a route created, edited or deleted: the usual change), the same
//! forks. At 10,000 routes resolving them again was about a third of each computation.
use std::{collections::HashMap, sync::Arc};

use super::resolve::ResolvedFork;
use crate::routes::{ClusterState, RouteReason};

/// The static check of one route: its worst problem, if any (reason, `field: message`).
pub(super) type Checked = Option<(RouteReason, String)>;

#[derive(Default)]
pub(super) struct Remembered {
    pub(super) checked: Option<Checked>,
    pub(super) resolved: Option<Arc<[ResolvedFork]>>,
}

/// Kept by route sync from one computation to the next ([`super::RouteTable::compute_with`]).
#[derive(Default)]
pub struct ResolveMemo {
    /// The view the entries were computed from. Holding it keeps its routes alive, so the
    /// addresses that key `routes` are not reused by other routes meanwhile.
    state: Option<Arc<ClusterState>>,
    /// By the address of the route's shared object.
    routes: HashMap<usize, Remembered>,
}

impl ResolveMemo {
    /// What was remembered for the routes of `state`: the checks, and the forks too if the rest
    /// of the cluster is the same as in the last view. Either way, the memo is then empty until
    /// [`Self::keep`].
    pub(super) fn take_for(&mut self, state: &ClusterState) -> HashMap<usize, Remembered> {
        let same_cluster = self
            .state
            .as_ref()
            .is_some_and(|last| same_cluster_apart_from_routes(last, state));
        self.state = None;
        let mut routes = std::mem::take(&mut self.routes);
        if !same_cluster {
            for r in routes.values_mut() {
                r.resolved = None;
            }
        }
        routes
    }

    /// Remembers `routes` (keyed by the address of each of `state.routes`) for the next view.
    pub(super) fn keep(&mut self, state: Arc<ClusterState>, routes: HashMap<usize, Remembered>) {
        self.state = Some(state);
        self.routes = routes;
    }
}

/// The key of a route in the memo.
pub(super) fn route_key(r: &Arc<crate::routes::SandboxRouteObj>) -> usize {
    Arc::as_ptr(r) as usize
}

/// Everything a route's check and forks are computed from, apart from the routes.
fn same_cluster_apart_from_routes(a: &ClusterState, b: &ClusterState) -> bool {
    a.services == b.services
        && a.pods == b.pods
        && a.node == b.node
        && a.node_pods == b.node_pods
        && a.endpoint_trust == b.endpoint_trust
}

#[cfg(test)]
impl ResolveMemo {
    /// The forks remembered for route `r`, if resolved.
    pub(super) fn resolved_for(
        &self,
        r: &Arc<crate::routes::SandboxRouteObj>,
    ) -> Option<Arc<[ResolvedFork]>> {
        self.routes.get(&route_key(r))?.resolved.clone()
    }
}
