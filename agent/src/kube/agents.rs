//! Where the node agents run: the flags of the clients that find their pods (`shunt mcp --kube`
//! for send_test_request's image, `shunt traffic-api` for the agents' debug ports), and the
//! status writer's watch of the nodes whose agent is not Ready.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use clap::Args;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Args)]
pub struct AgentPodsArgs {
    /// Namespace of the agent pods.
    #[arg(long, value_name = "NS", default_value = "shunt-system")]
    pub agent_namespace: String,

    /// Label selector of the agent pods.
    #[arg(
        long,
        value_name = "SELECTOR",
        default_value = "app.kubernetes.io/name=shunt,app.kubernetes.io/component=agent"
    )]
    pub agent_selector: String,
}

/// The label selector of the agent pods as deployed (`deploy/`), the default of
/// `--agent-selector`.
pub const DEFAULT_AGENT_SELECTOR: &str =
    "app.kubernetes.io/name=shunt,app.kubernetes.io/component=agent";

/// Nodes whose agent pod is not Ready (so the node applies no route: its traffic goes direct),
/// with why: node name → "agent pod NAME not Ready (REASON)".
pub type UnreadyAgents = BTreeMap<String, String>;

/// Watches the agent pods in `namespace` matching `selector` and publishes on `tx` the nodes
/// whose agent is not Ready, until `stop`. A node with any Ready agent pod (a rolling update)
/// counts as Ready.
pub async fn watch_unready(
    client: Client,
    namespace: String,
    selector: String,
    tx: watch::Sender<Arc<UnreadyAgents>>,
    stop: CancellationToken,
) {
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let cfg = watcher::Config::default().labels(&selector);
    let (store, writer) = reflector::store();
    let events = reflector::reflector(writer, watcher::watcher(api, cfg).default_backoff());
    futures::pin_mut!(events);
    let mut last_error: Option<String> = None;
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.next() => ev,
        };
        match ev {
            None => return,
            Some(Err(e)) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "watching the agent pods");
                    last_error = Some(msg);
                }
                continue;
            }
            Some(Ok(_)) => last_error = None,
        }
        let pods = store.state();
        let unready = unready_agents(pods.iter().map(AsRef::as_ref));
        tx.send_if_modified(|old| {
            let changed = **old != unready;
            if changed {
                *old = Arc::new(unready);
            }
            changed
        });
    }
}

/// The nodes none of whose agent pods is Ready, with why: a pod counts as not Ready when its
/// `Ready` condition says so (False or Unknown).
pub fn unready_agents<'a>(pods: impl Iterator<Item = &'a Pod>) -> UnreadyAgents {
    let mut ready = BTreeSet::new();
    let mut unready = UnreadyAgents::new();
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue; // not scheduled: no node to name
        };
        let status = pod.status.clone().unwrap_or_default();
        // No Ready condition: the kubelet has not reported on the pod yet (just scheduled), so
        // nothing is claimed about it either way.
        let Some(ready_condition) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
        else {
            continue;
        };
        if ready_condition.status == "True" {
            ready.insert(node);
            continue;
        }
        let why = super::pods::waiting_containers(&status)
            .into_iter()
            .map(|(reason, _)| reason)
            .next()
            .or_else(|| status.phase.clone())
            .unwrap_or_else(|| "Unknown".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        unready.insert(node, format!("agent pod {name} not Ready ({why})"));
    }
    unready.retain(|node, _| !ready.contains(node));
    unready
}

#[cfg(test)]
#[path = "agents_tests.rs"]
mod tests;
