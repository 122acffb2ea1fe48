//! Each agent's own entry in a SandboxRoute's `status.nodes[]`: what it could not apply on its
//! node (today: destinations `STEERED` had no room for), written by every agent, leader or not.
//!
//! Writes are server-side applies of `status.nodes` holding this node's entry alone, under the
//! field manager `shunt-agent/<node>`: the list is a map keyed by `name` in the CRD schema, so
//! each agent owns its entry and never touches another's. Applying an empty list removes the
//! entry this manager applied before, which is how a failure that cleared is taken back. An
//! agent writes only when its entry differs from what the object holds, so routes that apply
//! everywhere cost no writes at all.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    crd::{self, NodeStatus, SandboxRoute},
    route_records::RouteRecords,
};
use crate::{metrics::Metrics, sync::NodeRouteFailure};

/// How soon failed writes are retried when nothing else changes.
const RETRY: Duration = Duration::from_secs(2);

/// Longest field manager name the API server accepts.
const MAX_MANAGER_LEN: usize = 128;

/// The field manager of a node's entries.
pub fn field_manager(node: &str) -> String {
    truncate(
        &format!("{}/{node}", super::status::FIELD_MANAGER),
        MAX_MANAGER_LEN,
    )
}

/// The schema's bound on an entry's message.
const MAX_MESSAGE_LEN: usize = 1024;

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

type Key = (String, String);

pub struct NodeStatusWriter {
    client: Client,
    routes: RouteRecords,
    node: String,
    metrics: Arc<Metrics>,
    /// Writes made and not yet seen back through the watch: the entry written and the
    /// resourceVersion the object had then. While the object is unchanged, not repeated.
    pending: HashMap<Key, (Option<NodeStatus>, Option<String>)>,
}

impl NodeStatusWriter {
    pub fn new(client: Client, routes: RouteRecords, node: String, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            routes,
            node,
            metrics,
            pending: HashMap::new(),
        }
    }

    /// Keeps this node's entries right until `stop`: on each new set of failures and on every
    /// SandboxRoute change.
    pub async fn run(
        mut self,
        mut failures: watch::Receiver<Arc<Vec<NodeRouteFailure>>>,
        mut routes_touched: watch::Receiver<u64>,
        stop: CancellationToken,
    ) {
        let mut retry_after: Option<Duration> = None;
        loop {
            let wait = retry_after.unwrap_or(Duration::MAX);
            tokio::select! {
                _ = stop.cancelled() => return,
                r = failures.changed() => if r.is_err() { return },
                r = routes_touched.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
            routes_touched.borrow_and_update();
            let current = failures.borrow_and_update().clone();
            let failed = self.sync(&current).await;
            retry_after = (failed > 0).then_some(RETRY);
        }
    }

    /// One pass over the cached routes. Returns how many writes failed.
    ///
    /// It runs on every SandboxRoute event, so a route whose entry is already right costs no
    /// allocation: at 10,000 routes this pass is on the path of every route change.
    pub async fn sync(&mut self, failures: &[NodeRouteFailure]) -> usize {
        let want: HashMap<(&str, &str), NodeStatus> = failures
            .iter()
            .map(|f| {
                (
                    (f.namespace.as_str(), f.name.as_str()),
                    NodeStatus {
                        name: self.node.clone(),
                        reason: f.reason.into(),
                        message: truncate(&f.message, MAX_MESSAGE_LEN),
                    },
                )
            })
            .collect();
        let mut writes = Vec::new();
        let mut live = HashSet::new();
        let track_live = !self.pending.is_empty();
        let (node, pending) = (&self.node, &mut self.pending);
        self.routes.for_each(|ns, name, obj| {
            if obj.deleting {
                return;
            }
            let have = obj
                .status
                .iter()
                .flat_map(|s| &s.nodes)
                .find(|n| n.name == *node);
            let wanted = want.get(&(ns, name));
            if have == wanted && pending.is_empty() {
                return;
            }
            let key = (ns.to_owned(), name.to_owned());
            if track_live {
                live.insert(key.clone());
            }
            if have == wanted {
                pending.remove(&key);
                return;
            }
            let entry = (wanted.cloned(), obj.resource_version.clone());
            if pending.get(&key) == Some(&entry) {
                return;
            }
            writes.push((key, entry));
        });
        if track_live {
            self.pending.retain(|k, _| live.contains(k));
        }

        let manager = field_manager(&self.node);
        let mut failed = 0;
        for ((ns, name), entry) in writes {
            let api: Api<SandboxRoute> = Api::namespaced(self.client.clone(), &ns);
            let body = json!({
                "apiVersion": format!("{}/{}", crd::GROUP, crd::VERSION),
                "kind": "SandboxRoute",
                "metadata": { "name": name, "namespace": ns },
                "status": { "nodes": entry.0.iter().collect::<Vec<_>>() },
            });
            let pp = PatchParams::apply(&manager).force();
            match api.patch_status(&name, &pp, &Patch::Apply(&body)).await {
                Ok(_) => {
                    tracing::info!(route = %format!("{ns}/{name}"), node = %self.node,
                        reason = entry.0.as_ref().map_or("(cleared)", |e| e.reason.as_str()),
                        "node status written");
                    self.pending.insert((ns, name), entry);
                }
                // Deleted meanwhile: nothing to report on.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    failed += 1;
                    self.metrics.node_status_write_failed();
                    tracing::warn!(route = %format!("{ns}/{name}"), error = %e,
                        "writing this node's SandboxRoute status entry");
                }
            }
        }
        failed
    }
}
