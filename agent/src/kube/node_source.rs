//! The node agent's Kubernetes route source as one unit (`shunt run --kube`): connects, spawns
//! the watches ([`super::source`]), the status writer ([`super::status`]) under its lease
//! ([`super::lease`]) and this node's status entry ([`super::node_status`]).
use std::{path::PathBuf, sync::Arc, time::Duration};

use kube::Client;

use super::{agents, client, lease, node_status, source, status};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    capture::PodCgroups,
    metrics::Metrics,
    routes::{ClusterState, RouteStatus},
    sync::NodeRouteFailure,
};

/// How the kube source connects and elects its status writer.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// A kubeconfig file; `None`: in-cluster config, else `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// This agent's Lease holder identity (the node name).
    pub identity: String,
    pub lease_namespace: String,
    pub lease_duration: Duration,
}

/// A configured (not yet connected) kube source.
pub struct KubeSource {
    client: Client,
    opts: KubeOptions,
}

/// What the kube source publishes.
pub struct KubeFeed {
    /// A complete view of the cluster after the first full list, then after each change.
    pub states: watch::Receiver<Arc<ClusterState>>,
    /// Bumped after each relist.
    pub relists: watch::Receiver<u64>,
}

/// The running source: watches, publish loop, election, status writer.
pub struct KubeHandle {
    stop: CancellationToken,
    lease: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Reads the configuration and builds a client. A bad kubeconfig is an error here, at
    /// startup; an unreachable API server is not (the watches retry).
    pub async fn new(opts: KubeOptions) -> anyhow::Result<Self> {
        let (client, _namespace) = client::load(opts.kubeconfig.as_deref()).await?;
        Ok(Self { client, opts })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Starts everything. The status writer (while this agent holds the Lease) writes the
    /// `statuses` that route sync computes from what this source publishes; every agent writes
    /// its own `node_failures` in the routes' `status.nodes[]`. `pod_cgroups` finds this node's
    /// pods' cgroups, for the marked sources it publishes.
    pub fn spawn(
        self,
        statuses: watch::Receiver<Arc<Vec<RouteStatus>>>,
        node_failures: watch::Receiver<Arc<Vec<NodeRouteFailure>>>,
        metrics: Arc<Metrics>,
        pod_cgroups: Arc<dyn PodCgroups>,
    ) -> (KubeHandle, KubeFeed) {
        let stop = CancellationToken::new();
        let mut watches =
            source::Watches::start(&self.client, &stop, &self.opts.identity, pod_cgroups);
        let mut tasks = std::mem::take(&mut watches.tasks);
        let routes = watches.stores.route_records.clone();
        let routes_touched = watches.routes_touched.clone();
        let touched_routes = watches.touched_routes.clone();
        let relists = watches.relists.clone();

        let (leader_tx, leader_rx) = watch::channel(false);
        let lease = tokio::spawn(lease::run(
            self.client.clone(),
            lease::LeaseConfig {
                namespace: self.opts.lease_namespace.clone(),
                name: lease::LEASE_NAME.into(),
                identity: self.opts.identity.clone(),
                duration: self.opts.lease_duration,
            },
            leader_tx,
            stop.clone(),
        ));

        let (unready_tx, unready_rx) = watch::channel(Arc::default());
        tasks.push(tokio::spawn(unready_agents_while_leading(
            self.client.clone(),
            self.opts.lease_namespace.clone(),
            leader_rx.clone(),
            unready_tx,
            stop.clone(),
        )));
        tasks.push(tokio::spawn(
            node_status::NodeStatusWriter::new(
                self.client.clone(),
                routes.clone(),
                self.opts.identity.clone(),
                metrics.clone(),
            )
            .run(node_failures, routes_touched.clone(), stop.clone()),
        ));
        tasks.push(tokio::spawn(
            status::StatusWriter::new(self.client.clone(), routes, metrics)
                .with_touched(touched_routes)
                .run(
                    statuses,
                    leader_rx,
                    routes_touched,
                    unready_rx,
                    stop.clone(),
                ),
        ));
        let (states_tx, states) = watch::channel(Arc::new(ClusterState::default()));
        tasks.push(tokio::spawn(source::publish_loop(
            watches,
            states_tx,
            stop.clone(),
        )));
        (
            KubeHandle { stop, lease, tasks },
            KubeFeed { states, relists },
        )
    }
}

impl KubeHandle {
    /// Stops the watches and, if this agent holds the status Lease, releases it so another
    /// agent takes over at once. The route table in force stays as it is.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.lease).await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// While this agent leads, watches the agent pods (in the Lease's namespace, with the deployed
/// selector) for the status writer; a follower watches nothing (so N agents do not each watch
/// N pods).
async fn unready_agents_while_leading(
    client: Client,
    namespace: String,
    mut leader: watch::Receiver<bool>,
    tx: watch::Sender<Arc<agents::UnreadyAgents>>,
    stop: CancellationToken,
) {
    loop {
        while !*leader.borrow_and_update() {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = leader.changed() => if r.is_err() { return },
            }
        }
        let watching = stop.child_token();
        let watch = agents::watch_unready(
            client.clone(),
            namespace.clone(),
            agents::DEFAULT_AGENT_SELECTOR.into(),
            tx.clone(),
            watching.clone(),
        );
        let lost = async {
            while *leader.borrow_and_update() {
                if leader.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = watch => {}
            _ = lost => {}
        }
        watching.cancel();
        if stop.is_cancelled() {
            return;
        }
        tx.send_replace(Arc::default());
    }
}

/// This agent's identity when `--node-name`/`NODE_NAME` is not set: the host name.
pub fn default_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("shunt-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kubeconfig: PathBuf) -> KubeOptions {
        KubeOptions {
            kubeconfig: Some(kubeconfig),
            identity: "node-a".into(),
            lease_namespace: "shunt-system".into(),
            lease_duration: Duration::from_secs(15),
        }
    }

    #[tokio::test]
    async fn https_kubeconfig_builds_a_tls_client() {
        let dir = std::env::temp_dir().join(format!("shunt-kube-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
             users:\n- name: u\n  user:\n    token: abc\n\
             contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
             current-context: x\n",
        )
        .unwrap();
        // Building the client picks the TLS crypto provider (ring): no panic, no error.
        let src = KubeSource::new(opts(path)).await;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(src.is_ok(), "{:?}", src.err());
    }

    #[tokio::test]
    async fn missing_kubeconfig_is_a_startup_error() {
        let Err(e) = KubeSource::new(opts("/nonexistent/kubeconfig".into())).await else {
            panic!("a missing kubeconfig must fail");
        };
        assert!(format!("{e:#}").contains("--kubeconfig"), "{e:#}");
    }
}
