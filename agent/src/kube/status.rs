//! SandboxRoute status and expiry, done by the lease holder only.
//!
//! Every agent computes the same statuses from the same watch caches; only the leader writes
//! them, with a JSON merge patch on `/status`, and only when they differ from what the object
//! already says (so a new leader with an up-to-date view writes nothing, and its own writes do
//! not make it write again). The leader also deletes routes past `expiresAt` (every agent has
//! already stopped applying them).
//!
//! Ready is the cluster's truth, not the leader's view alone: a route the leader finds ready is
//! `NotAppliedOnNodes` while some node does not apply it, either because that node's agent said
//! so in `status.nodes[]` (its own entry, see [`super::node_status`]) or because its agent pod
//! is not Ready (crash-looping, not started). The message names up to [`NODES_NAMED`] nodes
//! and counts the rest. The leader never writes `status.nodes`.
use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::StreamExt as _;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    agents::UnreadyAgents,
    crd::{self, RouteCondition, SandboxRoute, SandboxRouteStatus},
    route_records::RouteRecords,
    touched::{ByRoute, Touched, TouchedRoutes},
};
use crate::{
    metrics::Metrics,
    routes::{RouteReason, RouteStatus},
};

/// The field manager of status writes.
pub const FIELD_MANAGER: &str = "shunt-agent";

/// Status writes in flight at once.
const CONCURRENCY: usize = 16;

/// How soon failed writes are retried when nothing else changes.
const RETRY: Duration = Duration::from_secs(2);

/// Nodes named in a Ready message; the rest are counted.
pub const NODES_NAMED: usize = 10;

/// Nodes that do not apply a route, and why, sorted by node name.
pub type NodesNotApplied = Vec<(String, String)>;

/// The nodes that do not apply the route of `current`: the agents' own entries and the nodes
/// whose agent pod is not Ready.
pub fn nodes_not_applied(
    current: Option<&SandboxRouteStatus>,
    unready: &UnreadyAgents,
) -> NodesNotApplied {
    let mut nodes: std::collections::BTreeMap<&str, String> = unready
        .iter()
        .map(|(n, why)| (n.as_str(), why.clone()))
        .collect();
    for n in current.iter().flat_map(|c| &c.nodes) {
        nodes
            .entry(n.name.as_str())
            .or_insert_with(|| match n.message.as_str() {
                "" => n.reason.clone(),
                m => format!("{}: {m}", n.reason),
            });
    }
    nodes.into_iter().map(|(n, w)| (n.to_string(), w)).collect()
}

/// "not applied on N node(s): a (why), b (why), ... and K more".
pub fn nodes_message(nodes: &[(String, String)]) -> String {
    let named: Vec<String> = nodes
        .iter()
        .take(NODES_NAMED)
        .map(|(n, why)| format!("{n} ({why})"))
        .collect();
    let mut s = format!(
        "not applied on {} node(s): {}",
        nodes.len(),
        named.join(", ")
    );
    if nodes.len() > NODES_NAMED {
        s.push_str(&format!(" ...and {} more", nodes.len() - NODES_NAMED));
    }
    s
}

/// The status `st` asks for, given what the object has now and the nodes that do not apply it:
/// the condition keeps its `lastTransitionTime` unless its status flips. `nodes` (the agents'
/// entries) is kept as it is.
pub fn desired_status(
    st: &RouteStatus,
    current: Option<&SandboxRouteStatus>,
    not_applied: &[(String, String)],
    now: jiff::Timestamp,
) -> SandboxRouteStatus {
    let nodes_matter = st.applied && !not_applied.is_empty();
    let (status, reason, message) = if nodes_matter {
        let reason = if st.ready {
            RouteReason::NotAppliedOnNodes
        } else {
            st.reason
        };
        let nodes = nodes_message(not_applied);
        let message = match st.message.as_str() {
            "" => nodes,
            m => format!("{m}; {nodes}"),
        };
        ("False", reason, message)
    } else {
        (st.condition_status(), st.reason, st.message.clone())
    };
    let prev = current.and_then(|c| c.conditions.iter().find(|c| c.type_ == crd::READY));
    let last_transition_time = match prev {
        Some(p) if p.status == status && p.last_transition_time.is_some() => p.last_transition_time,
        _ => Some(now),
    };
    SandboxRouteStatus {
        observed_generation: Some(st.observed_generation),
        conditions: vec![RouteCondition {
            type_: crd::READY.into(),
            status: status.into(),
            reason: reason.as_str().into(),
            message,
            observed_generation: Some(st.observed_generation),
            last_transition_time,
        }],
        forks: st
            .forks
            .iter()
            .map(|f| crd::ForkStatus {
                service: f.service.clone(),
                reason: f.reason.as_str().into(),
                message: f.message.clone(),
                ready_endpoints: u32::try_from(f.ready_endpoints).unwrap_or(u32::MAX),
            })
            .collect(),
        nodes: current.map(|c| c.nodes.clone()).unwrap_or_default(),
        digest: None,
    }
}

/// The merge patch of a status: everything but `nodes`, which belongs to the agents.
fn status_patch(want: &SandboxRouteStatus) -> serde_json::Value {
    let mut status = serde_json::to_value(want).unwrap_or_default();
    if let Some(m) = status.as_object_mut() {
        m.remove("nodes");
    }
    json!({ "status": status })
}

type Key = (String, String);

/// A hash of everything in a computed status that ends up in the object.
fn fingerprint(st: &RouteStatus) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    st.observed_generation.hash(&mut h);
    st.ready.hash(&mut h);
    st.reason.hash(&mut h);
    st.message.hash(&mut h);
    for f in &st.forks {
        f.service.hash(&mut h);
        f.reason.hash(&mut h);
        f.message.hash(&mut h);
        f.ready_endpoints.hash(&mut h);
    }
    h.finish()
}

pub struct StatusWriter {
    client: Client,
    routes: RouteRecords,
    /// Per route: the fingerprint of the computed status and the object's resourceVersion when
    /// we last found its status right or wrote it. While both are unchanged there is nothing
    /// to do (and a write of ours that has not come back through the watch yet is not
    /// repeated), so a pass over thousands of unchanged routes is cheap.
    seen: ByRoute<(u64, Option<String>)>,
    /// The routes the watch saw change since the last pass: an untouched route with the same
    /// fingerprint is skipped without looking its object up. Without it every route is looked
    /// up.
    touched: Option<TouchedRoutes>,
    /// UIDs of expired routes we already deleted.
    deleted: HashSet<String>,
    /// Nodes whose agent pod is not Ready, as last published.
    unready: Arc<UnreadyAgents>,
    metrics: Arc<Metrics>,
}

impl StatusWriter {
    pub fn new(client: Client, routes: RouteRecords, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            routes,
            seen: ByRoute::default(),
            touched: None,
            deleted: HashSet::new(),
            unready: Arc::default(),
            metrics,
        }
    }

    /// Skips, in each pass, the routes that `touched` (filled by the SandboxRoute watch that
    /// feeds `routes`) does not name and whose computed status is unchanged.
    pub fn with_touched(mut self, touched: TouchedRoutes) -> Self {
        self.touched = Some(touched);
        self
    }

    /// Writes statuses and deletes expired routes while we lead; returns when `stop` fires.
    /// Runs on each new computation, on leadership changes, when a SandboxRoute changes
    /// without a new computation (`routes_touched`: its status was edited by someone else, an
    /// agent's `status.nodes[]` entry included), and when the set of nodes whose agent is not
    /// Ready changes (`agents`).
    pub async fn run(
        mut self,
        mut statuses: watch::Receiver<Arc<Vec<RouteStatus>>>,
        mut leader: watch::Receiver<bool>,
        mut routes_touched: watch::Receiver<u64>,
        mut agents: watch::Receiver<Arc<UnreadyAgents>>,
        stop: CancellationToken,
    ) {
        let mut retry_after: Option<Duration> = None;
        loop {
            let wait = retry_after.unwrap_or(Duration::MAX);
            tokio::select! {
                _ = stop.cancelled() => return,
                r = statuses.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                r = routes_touched.changed() => if r.is_err() { return },
                r = agents.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
            let unready = agents.borrow_and_update().clone();
            if unready != self.unready {
                // Every route's condition may change: look at each again.
                self.seen.clear();
                self.metrics.set_unready_agent_nodes(unready.len());
                self.unready = unready;
            }
            if !*leader.borrow_and_update() {
                if let Some(t) = &self.touched {
                    t.take();
                }
                self.seen.clear();
                self.deleted.clear();
                retry_after = None;
                continue;
            }
            routes_touched.borrow_and_update();
            let current = statuses.borrow_and_update().clone();
            let failed = self.sync(&current).await;
            retry_after = (failed > 0).then_some(RETRY);
        }
    }

    /// One pass: status patches, then deletes of expired routes. Returns how many calls failed.
    pub async fn sync(&mut self, statuses: &[RouteStatus]) -> usize {
        // Whole seconds, as Kubernetes condition times are.
        let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .unwrap_or_else(|_| jiff::Timestamp::now());
        let mut patches = Vec::new();
        let mut expired = Vec::new();
        let touched = match &self.touched {
            Some(t) => t.take(),
            None => Touched::everything(),
        };
        for (i, st) in statuses.iter().enumerate() {
            // Thousands of routes take milliseconds: let the runtime's other tasks (the watches,
            // route sync) run in between.
            if i % 512 == 511 {
                tokio::task::yield_now().await;
            }
            let fp = fingerprint(st);
            // Found right (or written) at this fingerprint, and no event since: the object is
            // the one we saw. An expired route goes on: its object is deleted below.
            if !touched.contains(&st.namespace, &st.name)
                && self
                    .seen
                    .get(&st.namespace, &st.name)
                    .is_some_and(|(f, _)| *f == fp)
                && st.reason != RouteReason::Expired
            {
                continue;
            }
            let Some(obj) = self.routes.get(&st.namespace, &st.name) else {
                continue;
            };
            // Computed from an older generation: a newer computation is on its way.
            if obj.generation.unwrap_or(0) != st.observed_generation {
                continue;
            }
            if st.reason == RouteReason::Expired
                && let Some(uid) = obj.uid.clone()
                && !self.deleted.contains(&uid)
            {
                expired.push((st.namespace.clone(), st.name.clone(), uid));
            }
            let rv = &obj.resource_version;
            if self
                .seen
                .get(&st.namespace, &st.name)
                .is_some_and(|(f, r)| *f == fp && r == rv)
            {
                continue;
            }
            let not_applied = nodes_not_applied(obj.status.as_ref(), &self.unready);
            let want = desired_status(st, obj.status.as_ref(), &not_applied, now);
            if obj.status.as_ref().is_some_and(|s| s.says(&want)) {
                self.seen.insert(&st.namespace, &st.name, (fp, rv.clone()));
            } else {
                let key: Key = (st.namespace.clone(), st.name.clone());
                patches.push((key, fp, rv.clone(), want));
            }
        }

        let client = self.client.clone();
        let results: Vec<_> = futures::stream::iter(patches)
            .map(|((ns, name), fp, rv, want)| {
                let api: Api<SandboxRoute> = Api::namespaced(client.clone(), &ns);
                async move {
                    let pp = PatchParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    };
                    let patch = Patch::Merge(status_patch(&want));
                    let r = api.patch_status(&name, &pp, &patch).await;
                    ((ns, name), fp, rv, want, r)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failed = 0;
        for (key, fp, rv, want, r) in results {
            match r {
                Ok(_) => {
                    tracing::debug!(route = %format!("{}/{}", key.0, key.1),
                        reason = %want.conditions[0].reason, "status written");
                    self.seen.insert(&key.0, &key.1, (fp, rv));
                }
                // Deleted meanwhile: nothing to report on.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    failed += 1;
                    tracing::warn!(route = %format!("{}/{}", key.0, key.1), error = %e,
                        "writing SandboxRoute status");
                }
            }
        }

        for (ns, name, uid) in expired {
            let api: Api<SandboxRoute> = Api::namespaced(self.client.clone(), &ns);
            let dp = DeleteParams {
                // Only the object we judged expired, not a new one of the same name.
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    tracing::info!(route = %format!("{ns}/{name}"), "deleted expired SandboxRoute");
                    self.deleted.insert(uid);
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    self.deleted.insert(uid);
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(route = %format!("{ns}/{name}"), error = %e,
                        "deleting expired SandboxRoute");
                }
            }
        }
        // Forget routes that are gone, so the maps do not grow without bound.
        if self.seen.len() > statuses.len() * 2 + 64 {
            let mut live: ByRoute<()> = ByRoute::default();
            for s in statuses {
                live.insert(&s.namespace, &s.name, ());
            }
            self.seen.retain(|ns, name| live.get(ns, name).is_some());
        }
        failed
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
