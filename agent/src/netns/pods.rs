//! Which network namespace a client address is in, for this node's pods, with a handle per
//! namespace cached from the first connection of that pod until the pod leaves the node.
//!
//! A node pod's namespace file is the one the routes file names (`netns:`, for the
//! mini-cluster and the tests, whose pods are named namespaces), or else is found through the
//! pod's cgroup (cluster mode, [`super::locate`]). An address several pods share is a
//! hostNetwork address and stays on the node, as does a pod whose namespace turns out to be the
//! agent's own.
use std::{
    collections::HashMap,
    fs::File,
    io,
    net::IpAddr,
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;

use super::{NetnsId, SourceSockets, UpstreamSource, locate, thread::NetnsThread};
use crate::{capture::PodCgroups, metrics::Metrics, routes::NodePod};

/// How long a namespace that could not be entered is not tried again: a pod that has just
/// started may have no process yet, and a missing capability should cost one try, not one per
/// connection.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One node pod, as far as finding its namespace goes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodRef {
    /// `namespace/name`, for logs.
    id: String,
    uid: String,
    netns: Option<PathBuf>,
}

struct Cached {
    pod: PodRef,
    source: UpstreamSource,
    /// When a fallback may be tried again.
    retry_at: Option<Instant>,
}

#[derive(Default)]
struct State {
    /// This node's pod addresses that belong to exactly one pod.
    pods: HashMap<IpAddr, PodRef>,
    cache: HashMap<IpAddr, Cached>,
    threads: HashMap<NetnsId, Arc<NetnsThread>>,
}

/// The node pods' namespaces: [`SourceSockets`] for the proxy, fed the node's pods by route
/// sync's sources ([`PodNetns::set_pods`]).
pub struct PodNetns {
    /// Finds a pod's cgroup by UID (cluster mode); `None`: only `netns:` paths are used.
    cgroups: Option<Arc<dyn PodCgroups>>,
    proc_root: PathBuf,
    /// The agent's own namespace: a pod in it is a hostNetwork pod.
    own: Option<NetnsId>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

impl PodNetns {
    pub fn new(cgroups: Option<Arc<dyn PodCgroups>>, metrics: Arc<Metrics>) -> Self {
        Self {
            cgroups,
            proc_root: PathBuf::from("/proc"),
            own: NetnsId::own().ok(),
            metrics,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes this node's pods as of now: handles of pods that left (or whose address now
    /// belongs to another pod) are dropped, which ends their threads.
    pub fn set_pods(&self, node_pods: &[NodePod]) {
        let mut owners: HashMap<IpAddr, Vec<PodRef>> = HashMap::new();
        for p in node_pods {
            let pod = PodRef {
                id: format!("{}/{}", p.namespace, p.name),
                uid: p.uid.clone(),
                netns: p.netns.clone(),
            };
            for ip in &p.ips {
                owners
                    .entry(ip.to_canonical())
                    .or_default()
                    .push(pod.clone());
            }
        }
        let pods: HashMap<IpAddr, PodRef> = owners
            .into_iter()
            .filter_map(|(ip, mut v)| (v.len() == 1).then(|| (ip, v.remove(0))))
            .collect();
        let mut st = self.lock();
        st.cache.retain(|ip, c| pods.get(ip) == Some(&c.pod));
        let live: Vec<NetnsId> = st.cache.values().filter_map(|c| c.source.netns()).collect();
        st.threads.retain(|id, _| live.contains(id));
        st.pods = pods;
    }

    /// Follows the node's pods in a source's views until `stop`.
    pub async fn follow(
        self: Arc<Self>,
        mut states: tokio::sync::watch::Receiver<Arc<crate::routes::ClusterState>>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let state = states.borrow_and_update().clone();
            self.set_pods(&state.node_pods);
            tokio::select! {
                _ = stop.cancelled() => return,
                r = states.changed() => if r.is_err() { return },
            }
        }
    }

    /// The namespaces entered now (for tests and logs).
    pub fn entered(&self) -> usize {
        self.lock().threads.len()
    }

    /// Finds and enters `pod`'s namespace.
    fn resolve(&self, st: &mut State, pod: &PodRef) -> UpstreamSource {
        let file = match self.open(pod) {
            Ok(Some(f)) => f,
            Ok(None) => return UpstreamSource::Node,
            Err(e) => {
                tracing::warn!(pod = %pod.id, error = %e,
                    "cannot find the client pod's network namespace; its upstream connections leave from the node");
                return UpstreamSource::NodeFallback;
            }
        };
        let id = match NetnsId::of(&file) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(pod = %pod.id, error = %e, "cannot stat the pod's network namespace");
                return UpstreamSource::NodeFallback;
            }
        };
        if Some(id) == self.own {
            // hostNetwork: the node's address is the pod's own.
            return UpstreamSource::Node;
        }
        if st.threads.contains_key(&id) {
            return UpstreamSource::Pod(id);
        }
        match NetnsThread::enter(file) {
            Ok(t) => {
                tracing::debug!(pod = %pod.id, "entered the client pod's network namespace");
                st.threads.insert(id, Arc::new(t));
                UpstreamSource::Pod(id)
            }
            Err(e) => {
                tracing::warn!(pod = %pod.id, error = %e,
                    "cannot enter the client pod's network namespace (CAP_SYS_ADMIN?); its upstream connections leave from the node");
                UpstreamSource::NodeFallback
            }
        }
    }

    /// The pod's namespace file; `None` when there is no way to find one (a routes-file pod
    /// without `netns:`, or no cgroup lookup).
    fn open(&self, pod: &PodRef) -> io::Result<Option<File>> {
        if let Some(path) = &pod.netns {
            return File::open(path)
                .map(Some)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())));
        }
        let Some(cgroups) = &self.cgroups else {
            return Ok(None);
        };
        if pod.uid.is_empty() {
            return Ok(None);
        }
        let dir = cgroups.pod_dir(&pod.uid).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no cgroup for pod UID {}", pod.uid),
            )
        })?;
        locate::pod_netns(&dir, &self.proc_root).map(Some)
    }

    #[cfg(test)]
    fn with_proc_root(mut self, root: &std::path::Path) -> Self {
        self.proc_root = root.to_path_buf();
        self
    }
}

impl SourceSockets for PodNetns {
    fn source_for(&self, client: IpAddr) -> UpstreamSource {
        let client = client.to_canonical();
        let mut st = self.lock();
        let Some(pod) = st.pods.get(&client).cloned() else {
            return UpstreamSource::Node;
        };
        let now = Instant::now();
        let source = match st.cache.get(&client) {
            Some(c) if c.pod == pod && c.retry_at.is_none_or(|t| now < t) => c.source,
            _ => {
                // Once per pod (and per retry): a few file reads and a thread start, under the
                // lock so two first connections do not both enter the namespace.
                let source = self.resolve(&mut st, &pod);
                let retry_at = (source == UpstreamSource::NodeFallback).then(|| now + RETRY_AFTER);
                st.cache.insert(
                    client,
                    Cached {
                        pod,
                        source,
                        retry_at,
                    },
                );
                source
            }
        };
        if source == UpstreamSource::NodeFallback {
            self.metrics.source_netns_fallback();
        }
        source
    }

    fn socket(&self, netns: NetnsId, v6: bool) -> BoxFuture<'static, Option<OwnedFd>> {
        let thread = self.lock().threads.get(&netns).cloned();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let r = match thread {
                Some(t) => t.socket(v6).await,
                None => Err(io::Error::other("the pod has left the node")),
            };
            r.map_err(|e| {
                metrics.source_netns_fallback();
                tracing::debug!(error = %e, "no socket in the client pod's namespace; connecting from the node");
            })
            .ok()
        })
    }
}

#[cfg(test)]
#[path = "pods_tests.rs"]
mod tests;
