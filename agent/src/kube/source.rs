//! The watch side: reflectors over SandboxRoutes, Services, EndpointSlices, sandbox Pods and the
//! Pods of this node, and the loop that publishes their caches as [`ClusterState`]s (route sync
//! does the rest).
//!
//! Rules this follows:
//! - The caches are the truth: the reflector caches, and for SandboxRoutes the converted routes
//!   and the status writers' records, which follow the same events. A relist (`Init …
//!   InitDone`, after a restart, an expired resourceVersion (410) or a cut watch) swaps each
//!   whole, so a missed Delete event cannot leave a stale route behind.
//! - Nothing is published until every cache has listed once (`Store::wait_until_ready`, and
//!   `RouteRecords::wait_until_listed` for the routes), and a
//!   watch error never empties a cache: while the API server is unreachable the last-good table
//!   stays in force. Watches resume from their resourceVersion with a backoff (kube's
//!   `default_backoff`).
//! - Each relist after the first is counted on `relists`, so route sync reconciles the kernel
//!   map against the fresh view.
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt as _, stream::FuturesUnordered};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    runtime::{reflector::Store, watcher},
};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    convert,
    crd::SandboxRoute,
    marks::{self, Marks},
    route_cache::ConvertedRoutes,
    route_records::RouteRecords,
    touched::TouchedRoutes,
    watch_store::{WatchSpec, watch_into_store},
};
use crate::{
    capture::PodCgroups,
    routes::{ClusterState, SANDBOX_LABEL},
};

/// How long to wait before looking again for the cgroup of a pod to mark that has none yet.
const UNRESOLVED_RETRY: Duration = Duration::from_secs(1);

/// The caches (the SandboxRoutes as records and converted routes, the rest as reflector
/// caches), the node they were made on, and where its pods' cgroups are.
#[derive(Clone)]
pub struct Stores {
    /// What the status writers read of each SandboxRoute.
    pub route_records: RouteRecords,
    /// The SandboxRoutes, converted once per generation (the watch keeps both).
    pub converted_routes: Arc<Mutex<ConvertedRoutes>>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub pods: Store<Pod>,
    /// Every pod of this node (`spec.nodeName`), whatever its labels.
    pub node_pods: Store<Pod>,
    pub node: Arc<str>,
    /// Pod UID → the pod's cgroup directory, for its marks.
    pub pod_cgroups: Arc<dyn PodCgroups>,
}

impl Stores {
    /// The cluster as the caches have it now, with this node's marked sources in
    /// `sources` (and the marks' report: pods left unmarked and why).
    pub fn cluster_state(&self) -> (ClusterState, Marks) {
        let (services, slices, pods) = (
            self.services.state(),
            self.slices.state(),
            self.pods.state(),
        );
        let routes = locked(&self.converted_routes).routes();
        let mut state = convert::cluster_state_with_routes(
            services.iter().map(AsRef::as_ref),
            slices.iter().map(AsRef::as_ref),
            pods.iter().map(AsRef::as_ref),
            routes,
        );
        state.node = Some(self.node.to_string());
        let node_pods = self.node_pods.state();
        state.node_pods = convert::node_pods(node_pods.iter().map(AsRef::as_ref));
        // A finished pod's cgroup is gone: nothing to mark, nothing to wait for.
        let finished = node_pods
            .iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                matches!(phase, Some("Succeeded" | "Failed"))
            })
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        let marks = marks::marked_sources(&state, jiff::Timestamp::now(), &finished, &|uid| {
            self.pod_cgroups.pod_dir(uid)
        });
        state.sources = marks.sources.clone();
        (state, marks)
    }
}

/// Watches and their change counters.
pub struct Watches {
    pub stores: Stores,
    /// Bumped when something that can change the route table changed.
    pub changes: watch::Receiver<u64>,
    /// Bumped on every SandboxRoute event, status-only ones included (for the status writer).
    pub routes_touched: watch::Receiver<u64>,
    /// Which SandboxRoutes those events were about.
    pub touched_routes: TouchedRoutes,
    /// Bumped by every relist after a watch's first list.
    pub relists: watch::Receiver<u64>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// The converted routes, locked; a poisoned lock is taken as it is, as the agent's other locks
/// are (`Steering::lock`), rather than stopping route sync.
fn locked(routes: &Mutex<ConvertedRoutes>) -> std::sync::MutexGuard<'_, ConvertedRoutes> {
    routes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn hash_of(v: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher as _;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Status writes (ours included) change neither the generation nor anything else the table
/// reads, so they do not cost a recomputation.
fn route_relevance(r: &SandboxRoute) -> u64 {
    hash_of((
        &r.metadata.uid,
        r.metadata.generation,
        r.metadata.deletion_timestamp.is_some(),
    ))
}

/// What the table reads of a pod (its status changes often for other reasons).
fn pod_relevance(p: &Pod) -> u64 {
    hash_of(serde_json::to_string(&convert::pod(p)).unwrap_or_default())
}

/// What the state keeps of a pod of this node, and whether it finished (its marks go).
fn node_pod_relevance(p: &Pod) -> u64 {
    hash_of((
        serde_json::to_string(&convert::node_pod(p)).unwrap_or_default(),
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
    ))
}

/// Anything: every event counts.
fn always<K: Resource>(o: &K) -> u64 {
    hash_of(o.meta().resource_version.as_deref())
}

impl Watches {
    /// Starts the five watches (all namespaces): SandboxRoutes, Services, EndpointSlices, Pods
    /// with the `shunt.dev/sandbox` label, and every Pod of `node` (`spec.nodeName`), whose
    /// cgroups `pod_cgroups` finds.
    pub fn start(
        client: &Client,
        stop: &CancellationToken,
        node: &str,
        pod_cgroups: Arc<dyn PodCgroups>,
    ) -> Self {
        let (tx, changes) = watch::channel(0u64);
        let (touched_tx, routes_touched) = watch::channel(0u64);
        let touched_routes = TouchedRoutes::default();
        let (relists_tx, relists) = watch::channel(0u64);
        let mut tasks = Vec::new();
        let converted_routes = Arc::new(Mutex::new(ConvertedRoutes::default()));
        let converted = converted_routes.clone();
        let route_records = RouteRecords::default();
        let records = route_records.clone();
        let (_, t) = watch_into_store(
            WatchSpec::<SandboxRoute> {
                what: "SandboxRoutes",
                api: Api::all(client.clone()),
                cfg: watcher::Config::default(),
                // Nothing reads a route's annotations (`kubectl apply` keeps a whole copy of
                // the object in one).
                strip: |r| {
                    r.managed_fields_mut().clear();
                    r.annotations_mut().clear();
                },
                // The reflector would keep a whole object per route: `follow` converts each
                // route for the table and keeps the status writers' records instead.
                cached: false,
                relevant: route_relevance,
                touched: Some(touched_tx),
                touched_routes: Some(touched_routes.clone()),
                follow: Some(Box::new(move |ev| {
                    locked(&converted).on_event(ev);
                    records.on_event(ev);
                })),
            },
            tx.clone(),
            relists_tx.clone(),
            stop.clone(),
        );
        tasks.push(t);
        let (services, t) = watch_into_store(
            WatchSpec::<Service> {
                what: "Services",
                api: Api::all(client.clone()),
                cfg: watcher::Config::default(),
                strip: |s| {
                    s.managed_fields_mut().clear();
                    s.annotations_mut().clear();
                    s.status = None;
                },
                cached: true,
                relevant: always,
                touched: None,
                touched_routes: None,
                follow: None,
            },
            tx.clone(),
            relists_tx.clone(),
            stop.clone(),
        );
        tasks.push(t);
        let (slices, t) = watch_into_store(
            WatchSpec::<EndpointSlice> {
                what: "EndpointSlices",
                api: Api::all(client.clone()),
                cfg: watcher::Config::default().labels(convert::SERVICE_NAME_LABEL),
                strip: |s| {
                    s.managed_fields_mut().clear();
                    s.annotations_mut().clear();
                    for ep in &mut s.endpoints {
                        ep.hints = None;
                        ep.deprecated_topology = None;
                        // Kept: which pod (kind, namespace, name, uid) the address is.
                        if let Some(r) = ep.target_ref.as_mut() {
                            r.api_version = None;
                            r.field_path = None;
                            r.resource_version = None;
                        }
                    }
                },
                cached: true,
                relevant: always,
                touched: None,
                touched_routes: None,
                follow: None,
            },
            tx.clone(),
            relists_tx.clone(),
            stop.clone(),
        );
        tasks.push(t);
        let (pods, t) = watch_into_store(
            WatchSpec::<Pod> {
                what: "sandbox Pods",
                api: Api::all(client.clone()),
                // Only sandbox pods: no agent lists every pod of the cluster.
                cfg: watcher::Config::default().labels(SANDBOX_LABEL),
                strip: |p| {
                    p.managed_fields_mut().clear();
                    p.annotations_mut().clear();
                    if let Some(spec) = p.spec.as_mut() {
                        spec.volumes = None;
                        spec.init_containers = None;
                        for c in &mut spec.containers {
                            c.env = None;
                            c.env_from = None;
                            c.volume_mounts = None;
                            c.args = None;
                            c.command = None;
                            c.resources = None;
                        }
                    }
                    if let Some(st) = p.status.as_mut() {
                        st.container_statuses = None;
                        st.init_container_statuses = None;
                    }
                },
                cached: true,
                relevant: pod_relevance,
                touched: None,
                touched_routes: None,
                follow: None,
            },
            tx.clone(),
            relists_tx.clone(),
            stop.clone(),
        );
        tasks.push(t);
        let (node_pods, t) = watch_into_store(
            WatchSpec::<Pod> {
                what: "node Pods",
                api: Api::all(client.clone()),
                // Only this node's pods: what a local address is.
                cfg: watcher::Config::default().fields(&format!("spec.nodeName={node}")),
                strip: |p| {
                    p.managed_fields_mut().clear();
                    p.annotations_mut().clear();
                    p.spec = None;
                    if let Some(st) = p.status.as_mut() {
                        *st = k8s_openapi::api::core::v1::PodStatus {
                            pod_ip: st.pod_ip.take(),
                            pod_ips: st.pod_ips.take(),
                            phase: st.phase.take(),
                            ..Default::default()
                        };
                    }
                },
                cached: true,
                relevant: node_pod_relevance,
                touched: None,
                touched_routes: None,
                follow: None,
            },
            tx,
            relists_tx,
            stop.clone(),
        );
        tasks.push(t);
        Self {
            stores: Stores {
                route_records,
                converted_routes,
                services,
                slices,
                pods,
                node_pods,
                node: node.into(),
                pod_cgroups,
            },
            changes,
            routes_touched,
            touched_routes,
            relists,
            tasks,
        }
    }
}

/// Publishes the caches as a [`ClusterState`] once every watch has listed, then after each
/// change. The build runs on the blocking pool (it copies every cached object the table reads);
/// changes during a build are coalesced into the next one. Ends on `stop` or when route sync
/// drops its receiver.
pub async fn publish_loop(
    mut watches: Watches,
    states: watch::Sender<Arc<ClusterState>>,
    stop: CancellationToken,
) {
    if !wait_until_listed(&watches.stores, &stop).await {
        return;
    }
    let mut reported = MarkReport::default();
    loop {
        watches.changes.borrow_and_update();
        let stores = watches.stores.clone();
        let t0 = std::time::Instant::now();
        let (state, marks) = match tokio::task::spawn_blocking(move || stores.cluster_state()).await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "kube: building the cluster state panicked");
                return;
            }
        };
        tracing::debug!(
            routes = state.routes.len(),
            sources = state.sources.len(),
            build_us = t0.elapsed().as_micros() as u64,
            "kube: cluster state published"
        );
        reported.log(&marks);
        if states.send(Arc::new(state)).is_err() {
            return;
        }
        // A pod to mark whose cgroup kubelet has not made yet: look again soon, as no watch
        // event says when it appears.
        let retry = async {
            if marks.unresolved.is_empty() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(UNRESOLVED_RETRY).await;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = watches.changes.changed() => if r.is_err() { return },
            _ = retry => {}
        }
    }
}

/// What was last said about pods left unmarked, so each is logged once, not on every change.
#[derive(Default)]
struct MarkReport {
    ignored: Vec<marks::IgnoredMark>,
    unresolved: Vec<String>,
}

impl MarkReport {
    fn log(&mut self, marks: &Marks) {
        for i in marks.ignored.iter().filter(|i| !self.ignored.contains(i)) {
            tracing::warn!(pod = %i.pod, key = %i.key, why = %i.why,
                "kube: pod not marked as a source");
        }
        for p in marks
            .unresolved
            .iter()
            .filter(|p| !self.unresolved.contains(p))
        {
            tracing::info!(pod = %p,
                "kube: pod to mark has no cgroup directory yet; looking again every second");
        }
        self.ignored.clone_from(&marks.ignored);
        self.unresolved.clone_from(&marks.unresolved);
    }
}

/// Waits until every cache has listed once (a partial view would drop routes), reporting the
/// ones still missing every 10 s. `false`: stopped first.
async fn wait_until_listed(stores: &Stores, stop: &CancellationToken) -> bool {
    type Ready = Pin<Box<dyn std::future::Future<Output = &'static str> + Send>>;
    fn ready<K>(what: &'static str, store: &Store<K>) -> Ready
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let store = store.clone();
        Box::pin(async move {
            // The writer lives as long as the watch task; if it is gone, so is the watch.
            let _ = store.wait_until_ready().await;
            what
        })
    }
    let mut pending = vec![
        "SandboxRoutes",
        "Services",
        "EndpointSlices",
        "sandbox Pods",
        "node Pods",
    ];
    let records = stores.route_records.clone();
    let mut waits: FuturesUnordered<Ready> = [
        Box::pin(async move {
            records.wait_until_listed().await;
            "SandboxRoutes"
        }) as Ready,
        ready("Services", &stores.services),
        ready("EndpointSlices", &stores.slices),
        ready("sandbox Pods", &stores.pods),
        ready("node Pods", &stores.node_pods),
    ]
    .into_iter()
    .collect();
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(10),
        Duration::from_secs(10),
    );
    while !pending.is_empty() {
        tokio::select! {
            _ = stop.cancelled() => return false,
            Some(what) = waits.next() => pending.retain(|p| *p != what),
            _ = report.tick() => {
                tracing::warn!(waiting_for = ?pending, "kube: initial sync still incomplete");
            }
        }
    }
    true
}
