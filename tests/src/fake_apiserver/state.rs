//! State shared by the public handle, the fault controls and every request task.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::cluster::Cluster;
use super::faults::FaultState;

/// Server options; see [`FakeApiServer::start_with`](super::FakeApiServer::start_with).
#[derive(Clone, Debug)]
pub struct Options {
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (kube-apiserver: about
    /// once a minute; short here so tests see them). Default 1 s.
    pub bookmark_interval: Duration,
    /// Events kept for watches and exact reads before the oldest are compacted away
    /// automatically. Default 100 000.
    pub max_history: usize,
    /// Create the `default/kubernetes` Service (ClusterIP 10.96.0.1) and its EndpointSlice,
    /// as every real cluster has. Default true.
    pub kubernetes_service: bool,
    /// `Retry-After` seconds sent with injected 429s. Default 1.
    pub retry_after_seconds: u64,
    /// Watch timeout when the client sets no `timeoutSeconds` (kube-apiserver: 30-60 min).
    /// Default 30 min.
    pub default_watch_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(1),
            max_history: 100_000,
            kubernetes_service: true,
            retry_after_seconds: 1,
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

/// How many request lines [`Shared::log_request`] keeps.
const REQUEST_LOG_CAP: usize = 10_000;

pub(crate) struct Shared {
    pub(crate) cluster: Mutex<Cluster>,
    pub(crate) faults: FaultState,
    pub(crate) options: Options,
    pub(crate) addr: SocketAddr,
    pub(crate) requests: Mutex<Vec<String>>,
    /// Pod logs set by the test (the kubelet's part).
    pub(crate) pod_logs: Mutex<super::kubelet::PodLogs>,
    /// How `pods/proxy` reaches a pod.
    pub(crate) pod_dialer: Mutex<super::kubelet::PodDialer>,
    /// Bearer tokens and their users.
    pub(crate) tokens: Mutex<super::auth::Tokens>,
    /// The aggregator's client identity towards APIService backends.
    pub(crate) front_proxy: Mutex<Option<super::aggregator::FrontProxy>>,
    /// How aggregated requests reach an APIService's Service.
    pub(crate) service_dialer: Mutex<super::aggregator::ServiceDialer>,
    /// The accept loop; it owns every connection task, so aborting it drops them all.
    pub(crate) listener: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    /// The cluster lock. Never held across an await. A panic while holding it cannot leave
    /// the store half-written (commits are single map operations), so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn log_request(&self, line: String) {
        let mut log = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= REQUEST_LOG_CAP {
            log.drain(..REQUEST_LOG_CAP / 2);
        }
        log.push(line);
    }
}
