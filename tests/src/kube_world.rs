//! Test worlds for the agent's Kubernetes source (`shunt run --kube`): the netns topology of
//! [`Env`], the fake API server, and builders for the objects a cluster would hold.
//!
//! The fake API server listens on the test process's loopback, which the agent (in the node
//! namespace) cannot reach. A [`Relay`] listens on the same port on the node namespace's
//! loopback and copies bytes to the server, so the server's own kubeconfig works unchanged in
//! the node, and several nodes (agents) can share one server. Stopping the server
//! ([`tests::fake_apiserver::Faults::stop`]) drops relayed connections too, as a real outage
//! would.
//!
//! Standard layout (pods as in [`Env`]): pod 0 client; pod 1 `reviews` baseline; pod 2
//! `reviews-v2` sandbox (`shunt.dev/sandbox: pr-42`); pod 3 `reviews-v3` sandbox (`pr-42-b`);
//! pod 4 `ratings` baseline; pod 5 `ratings-v2` sandbox (`pr-99`). Every backend serves HTTP
//! on [`POD_PORT`]; Services listen on [`SERVICE_PORT`] with `targetPort: http`, resolved
//! through EndpointSlice port names (baseline) and container port names (sandbox pods).
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::{
    fake_apiserver::FakeApiServer,
    harness::{AgentProc, Bins, Env},
    http_backend::HttpBackend,
    netns::Netns,
};

pub const SERVICE_PORT: u16 = 9080;
pub const POD_PORT: u16 = 8080;
pub const NS: &str = "shop";
pub const LEASE_NS: &str = "shunt-system";
pub const REVIEWS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 7);
pub const RATINGS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 8);
pub const ROUTES_API: &str = "shunt.dev/v1alpha1";

/// The fake API server and the runtime it runs on.
pub struct FakeCluster {
    pub api: FakeApiServer,
    // Last: the server's tasks live on it.
    pub rt: tokio::runtime::Runtime,
}

impl FakeCluster {
    /// Starts a server with the SandboxRoute CRD (as `shunt crd` prints it) and the namespaces
    /// `shop`, `other` and (when `lease_namespace`) `shunt-system`.
    pub fn start(lease_namespace: bool) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let api = rt.block_on(FakeApiServer::start())?;
        let crd = serde_json::to_value(agent::kube::crd::crd())?;
        api.create(crd)?;
        let c = Self { api, rt };
        c.namespace(NS)?;
        c.namespace("other")?;
        if lease_namespace {
            c.namespace(LEASE_NS)?;
        }
        Ok(c)
    }

    pub fn namespace(&self, name: &str) -> anyhow::Result<()> {
        self.api.create(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name },
        }))?;
        Ok(())
    }

    /// A relay into `netns` on the server's port.
    pub fn relay_into(&self, netns: &Netns) -> anyhow::Result<Relay> {
        Relay::start(&self.rt, netns, self.api.addr())
    }

    /// A SandboxRoute object, if it exists.
    pub fn route(&self, name: &str) -> Option<Value> {
        self.api.get(ROUTES_API, "SandboxRoute", Some(NS), name)
    }

    /// The route's `Ready` condition reason, once it has a status.
    pub fn route_reason(&self, name: &str) -> Option<String> {
        let r = self.route(name)?;
        r["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["reason"].as_str().map(str::to_string))
    }

    /// PATCHes of the route's status the server received so far.
    pub fn status_writes(&self, name: &str) -> usize {
        let prefix =
            format!("PATCH /apis/shunt.dev/v1alpha1/namespaces/{NS}/sandboxroutes/{name}/status");
        self.api
            .requests()
            .iter()
            .filter(|r| r.starts_with(&prefix))
            .count()
    }

    /// Who holds the status Lease.
    pub fn lease_holder(&self) -> Option<String> {
        self.api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                Some(LEASE_NS),
                agent::kube::lease::LEASE_NAME,
            )
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    }

    pub fn create(&self, obj: Value) -> Value {
        self.api
            .create(obj.clone())
            .unwrap_or_else(|e| panic!("creating {obj}: {e}"))
    }

    /// A Service in `shop` with a fixed ClusterIP and one named port.
    pub fn service(&self, name: &str, ip: Ipv4Addr) {
        self.create(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": NS },
            "spec": {
                "clusterIP": ip.to_string(),
                "selector": { "app": name },
                "ports": [{ "name": "http", "port": SERVICE_PORT, "targetPort": "http" }],
            },
        }));
    }

    /// An EndpointSlice of Service `svc` listing `ips` (ready) with the `http` port.
    pub fn slice(&self, svc: &str, ips: &[Ipv4Addr]) {
        self.create(slice_obj(svc, ips));
    }

    /// Replaces the slice's endpoints.
    pub fn set_slice(&self, svc: &str, ips: &[Ipv4Addr]) {
        self.api
            .replace(slice_obj(svc, ips))
            .unwrap_or_else(|e| panic!("updating slice of {svc}: {e}"));
    }

    /// A running, ready sandbox pod in `namespace` with a named `http` container port.
    pub fn sandbox_pod(&self, namespace: &str, name: &str, ip: Ipv4Addr, sandbox: &str) {
        self.create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace,
                          "labels": { "app": name, "shunt.dev/sandbox": sandbox } },
            "spec": { "containers": [{ "name": "app", "image": "sandbox:latest",
                "ports": [{ "name": "http", "containerPort": POD_PORT }] }] },
        }));
        self.pod_ready(namespace, name, ip, true);
    }

    /// Sets a pod's status: Running with `ip`, Ready as given.
    pub fn pod_ready(&self, namespace: &str, name: &str, ip: Ipv4Addr, ready: bool) {
        self.api
            .replace_status(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": namespace },
                "status": {
                    "phase": "Running",
                    "podIP": ip.to_string(),
                    "podIPs": [{ "ip": ip.to_string() }],
                    "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
                },
            }))
            .unwrap_or_else(|e| panic!("pod status {namespace}/{name}: {e}"));
    }

    /// A pod (no sandbox label) scheduled on `node`, running with `ip`: one the agent knows
    /// through its node's Pod watch.
    pub fn node_pod(&self, namespace: &str, name: &str, node: &str, ip: Ipv4Addr) {
        self.create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace, "labels": { "app": name } },
            "spec": { "nodeName": node, "containers": [{ "name": "app", "image": "app:1" }] },
        }));
        self.pod_ready(namespace, name, ip, true);
    }

    /// A SandboxRoute in any namespace.
    pub fn route_in(&self, namespace: &str, name: &str, spec: Value) -> Value {
        self.create(json!({
            "apiVersion": ROUTES_API, "kind": "SandboxRoute",
            "metadata": { "name": name, "namespace": namespace },
            "spec": spec,
        }))
    }

    /// A route's `Ready` condition (reason, message), once it has a status.
    pub fn route_condition(&self, namespace: &str, name: &str) -> Option<(String, String)> {
        let r = self
            .api
            .get(ROUTES_API, "SandboxRoute", Some(namespace), name)?;
        let c = r["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        Some((
            c["reason"].as_str()?.to_string(),
            c["message"].as_str().unwrap_or_default().to_string(),
        ))
    }

    /// A SandboxRoute in `shop` with the given spec.
    pub fn sandbox_route(&self, name: &str, spec: Value) -> Value {
        self.create(route_obj(name, spec))
    }

    /// Replaces a SandboxRoute's spec.
    pub fn set_route_spec(&self, name: &str, spec: Value) {
        self.api
            .replace(route_obj(name, spec))
            .unwrap_or_else(|e| panic!("updating route {name}: {e}"));
    }

    pub fn delete_route(&self, name: &str) {
        self.api
            .delete(ROUTES_API, "SandboxRoute", Some(NS), name)
            .unwrap_or_else(|e| panic!("deleting route {name}: {e}"));
    }
}

fn slice_obj(svc: &str, ips: &[Ipv4Addr]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("{svc}-abcde"), "namespace": NS,
                      "labels": { "kubernetes.io/service-name": svc } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": POD_PORT, "protocol": "TCP" }],
        "endpoints": ips.iter().map(|ip| json!({
            "addresses": [ip.to_string()], "conditions": { "ready": true },
            "targetRef": { "kind": "Pod", "namespace": NS, "name": slice_pod_name(svc, *ip) },
        })).collect::<Vec<_>>(),
    })
}

/// The Pod a [`FakeCluster::slice`] endpoint names in its `targetRef`, as the EndpointSlice
/// controller would: a Pod of the Service's namespace (the agent steers only those).
pub fn slice_pod_name(svc: &str, ip: Ipv4Addr) -> String {
    format!("{svc}-{}", ip.to_string().replace('.', "-"))
}

fn route_obj(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": ROUTES_API, "kind": "SandboxRoute",
        "metadata": { "name": name, "namespace": NS },
        "spec": spec,
    })
}

/// The spec of a one-fork route: `service` forked to pods with `shunt.dev/sandbox: sandbox`.
pub fn selector_spec(key: &str, service: &str, sandbox: &str) -> Value {
    json!({
        "routingKey": key,
        "forks": [{ "service": service, "to": { "selector": { "shunt.dev/sandbox": sandbox } } }],
    })
}

/// Copies connections accepted on `addr`'s port in a namespace to `addr` in ours.
pub struct Relay {
    task: JoinHandle<()>,
}

impl Relay {
    pub fn start(
        rt: &tokio::runtime::Runtime,
        netns: &Netns,
        upstream: SocketAddr,
    ) -> anyhow::Result<Self> {
        let local = SocketAddr::from(([127, 0, 0, 1], upstream.port()));
        let listener = netns
            .run(move || std::net::TcpListener::bind(local))?
            .with_context(|| format!("binding the API relay on {local} in {}", netns.name))?;
        listener.set_nonblocking(true)?;
        let task = rt.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    a = listener.accept() => {
                        let Ok((mut down, _)) = a else { continue };
                        conns.spawn(async move {
                            // Refused (server stopped): closing `down` is the outage.
                            if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = down.set_nodelay(true);
                                let _ = up.set_nodelay(true);
                                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Self { task })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One node: an [`Env`] whose node namespace reaches the fake API server, with the standard
/// backends running and a bpffs mounted for the agent (which never mounts one with `--kube`).
pub struct KubeNode {
    pub env: Env,
    pub kubeconfig: PathBuf,
    _relay: Relay,
    /// The HTTP backends of pods 1-5, in pod order (a test may stop and restart one).
    pub backends: Vec<HttpBackend>,
}

/// The fake API server and a node with its [`KubeNode::standard_objects`]; `None` when kernel
/// tests cannot run here (checked before the server starts).
pub fn standard_world(
    test: &str,
    lease_namespace: bool,
    bins: Bins,
) -> Option<(FakeCluster, KubeNode)> {
    if !crate::kernel::available(test) {
        return None;
    }
    let cluster = FakeCluster::start(lease_namespace).expect("fake API server");
    let node = KubeNode::new(test, &cluster, bins)?;
    node.standard_objects(&cluster);
    Some((cluster, node))
}

impl KubeNode {
    /// `None` when kernel tests cannot run here.
    pub fn new(test: &str, cluster: &FakeCluster, bins: Bins) -> Option<Self> {
        let env = Env::new(test, 6, bins)?;
        let node = (|| -> anyhow::Result<Self> {
            let relay = cluster.relay_into(env.node())?;
            let kubeconfig = env.run.path.join("kubeconfig");
            cluster.api.write_kubeconfig(&kubeconfig)?;
            mount_bpffs(&env.run.bpffs())?;
            let names = [
                (1, "reviews-v1"),
                (2, "reviews-v2"),
                (3, "reviews-v3"),
                (4, "ratings-v1"),
                (5, "ratings-v2"),
            ];
            let backends = names
                .iter()
                .map(|(i, n)| {
                    HttpBackend::start(
                        &env.topo.pods[*i].netns,
                        n,
                        env.topo.pods[*i].addr4(POD_PORT),
                    )
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Self {
                env,
                kubeconfig,
                _relay: relay,
                backends,
            })
        })();
        Some(node.unwrap_or_else(|e| panic!("{test}: building the kube test node: {e:#}")))
    }

    pub fn ip(&self, pod: usize) -> Ipv4Addr {
        self.env.topo.pods[pod].ip4
    }

    /// The baseline endpoint clients call (there is no kube-proxy to translate ClusterIPs when
    /// nothing is steered, so clients dial an endpoint; capture recognises both).
    pub fn reviews_endpoint(&self) -> SocketAddr {
        self.env.topo.pods[1].addr4(POD_PORT)
    }

    pub fn ratings_endpoint(&self) -> SocketAddr {
        self.env.topo.pods[4].addr4(POD_PORT)
    }

    /// Creates the standard objects: Services `reviews` (endpoint pod 1) and `ratings` (pod 4),
    /// sandbox pods `reviews-v2` (pod 2, `pr-42`), `reviews-v3` (pod 3, `pr-42-b`) and
    /// `ratings-v2` (pod 5, `pr-99`).
    pub fn standard_objects(&self, cluster: &FakeCluster) {
        cluster.service("reviews", REVIEWS_IP);
        cluster.slice("reviews", &[self.ip(1)]);
        cluster.service("ratings", RATINGS_IP);
        cluster.slice("ratings", &[self.ip(4)]);
        cluster.sandbox_pod(NS, "reviews-v2", self.ip(2), "pr-42");
        cluster.sandbox_pod(NS, "reviews-v3", self.ip(3), "pr-42-b");
        cluster.sandbox_pod(NS, "ratings-v2", self.ip(5), "pr-99");
    }

    /// The agent flags for this node (plus the standard ones from [`Env::agent_args`]).
    pub fn kube_args(&self, node_name: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "--kube",
            "--kubeconfig",
            &self.kubeconfig.display().to_string(),
            "--node-name",
            node_name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    pub fn start_agent(&self, node_name: &str, extra: &[&str]) -> AgentProc {
        self.env
            .start_agent(&self.kube_args(node_name, extra), None)
    }

    /// `STEERED` as pinned under this node's bpffs (works while the agent is down, too).
    pub fn steered(&self) -> Vec<(SocketAddr, u32)> {
        match agent::capture::open_pinned(&self.env.run.bpffs()) {
            Ok((steered, _)) => steered.entries(),
            Err(_) => Vec::new(),
        }
    }

    pub fn is_steered(&self, dst: SocketAddr) -> bool {
        self.steered().iter().any(|(a, _)| *a == dst)
    }

    /// One HTTP GET from pod 0 to `dst` with routing key `key` (or none); who served it, or
    /// the error.
    pub fn served_by(&self, dst: SocketAddr, key: Option<&str>) -> String {
        let req = match key {
            Some(k) => {
                json!([{ "path": "/", "headers": { "baggage": format!("sd-routing-key={k}") } }])
            }
            None => json!([{ "path": "/" }]),
        };
        let lines = self
            .env
            .peer(0, &["http", &dst.to_string(), &req.to_string()]);
        lines
            .first()
            .and_then(|l| l["served_by"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("error: {lines:?}"))
    }
}

/// (group, resource[/subresource], verb) of every request `api` received: what RBAC must allow.
pub fn api_calls(api: &FakeApiServer) -> BTreeSet<(String, String, String)> {
    api.requests()
        .iter()
        .filter_map(|line| {
            let (method, target) = line.split_once(' ')?;
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let (group, rest) = match *segs.first()? {
                "api" => ("", segs.get(2..)?),
                "apis" => (*segs.get(1)?, segs.get(3..)?),
                _ => return None,
            };
            let rest = match rest {
                ["namespaces", _, more @ ..] if !more.is_empty() => more,
                r => r,
            };
            let resource = match rest {
                // `pods/NAME:PORT/proxy/PATH...` is the `pods/proxy` subresource.
                [res, _name, sub, ..] => format!("{res}/{sub}"),
                [res, ..] => res.to_string(),
                [] => return None,
            };
            let named = rest.len() >= 2;
            let watch = query
                .split('&')
                .any(|kv| kv == "watch=true" || kv == "watch=1");
            let verb = match (method, named, watch) {
                ("GET", _, true) => "watch",
                ("GET", true, false) => "get",
                ("GET", false, false) => "list",
                ("POST", ..) => "create",
                ("PUT", ..) => "update",
                ("PATCH", ..) => "patch",
                ("DELETE", ..) => "delete",
                _ => return None,
            };
            Some((group.to_string(), resource, verb.to_string()))
        })
        .collect()
}

/// The (group, resource, verb) triples an access list grants.
pub fn granted(access: &[agent::kube::rbac::ApiAccess]) -> BTreeSet<(String, String, String)> {
    access
        .iter()
        .flat_map(|a| {
            a.verbs
                .iter()
                .map(|v| (a.group.to_string(), a.resource.to_string(), v.to_string()))
        })
        .collect()
}

/// Polls `f` every 20 ms until it holds; returns how long that took, or panics with `what`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mounts a bpffs at `dir` (the run dir unmounts it on drop).
pub fn mount_bpffs(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    agent::capture::mount_bpffs(dir).with_context(|| format!("mounting bpffs at {}", dir.display()))
}
