//! A protocol-faithful fake Kubernetes API server for tests.
//!
//! It speaks kube-apiserver's HTTP/JSON protocol on `http://127.0.0.1:PORT`, closely enough that
//! kube-rs's own `Client`, `watcher` and `reflector` and the real `kubectl` run against it
//! unmodified: discovery (plain and aggregated), LIST with resourceVersion semantics, paging and
//! selectors, WATCH with bookmarks and in-stream 410s, create/update/patch (merge, JSON,
//! strategic, server-side apply)/delete with optimistic concurrency, finalizers, the status
//! subresource, CRDs (registered by creating a CustomResourceDefinition), plus fault injection
//! ([`Faults`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tests::fake_apiserver::FakeApiServer;
//! let api = FakeApiServer::start().await?;
//! let client = api.client();
//! api.create(serde_json::json!({
//!     "apiVersion": "v1", "kind": "Service",
//!     "metadata": { "name": "web", "namespace": "default" },
//!     "spec": { "ports": [{ "port": 80 }] },
//! }))?;
//! api.faults().cut_watches();
//! # drop(client); Ok(()) }
//! ```
//!
//! Served: core/v1 Namespaces, Pods, Services, Endpoints, ConfigMaps, Secrets, ServiceAccounts,
//! Nodes, Events; apps/v1 Deployments (+ `/scale`), ReplicaSets, DaemonSets, StatefulSets;
//! discovery.k8s.io/v1 EndpointSlices; coordination.k8s.io/v1 Leases; events.k8s.io/v1 Events;
//! apiextensions.k8s.io/v1 CustomResourceDefinitions and every CRD created through them. Every
//! type has a `/status` subresource. A fresh server has the namespaces `default`,
//! `kube-system`, `kube-public`, `kube-node-lease` and the `default/kubernetes` Service
//! (10.96.0.1) with its EndpointSlice. Objects are schemaless JSON; what the real server does to
//! them that clients observe is reproduced: ClusterIP/NodePort allocation and port defaults,
//! name/label validation, immutable fields, `generation` only on the types that have one.
//!
//! kubectl: point it at [`FakeApiServer::write_kubeconfig`] (and give it its own
//! `--cache-dir`). `get` (server-side Table printing), `get -w`, `apply -f` (client-side and
//! `--server-side`), `create -f`, `patch`, `label`, `scale`, `delete` (waiting on finalizers),
//! `describe` and `api-resources` work with default flags: the OpenAPI v3 documents advertise
//! server-side field validation, so `--validate=strict` needs no schemas (unknown fields are
//! not rejected, though). Not supported: the typed generators (`kubectl create configmap|
//! deployment|...`, `kubectl run`) send protobuf bodies and get a 415; `kubectl explain`
//! needs schemas.
//!
//! Module map: `store` (objects, global resourceVersion, history), `cluster` (API semantics),
//! `defaults` (per-type defaulting/allocation), `patch`, `selectors`, `watch`, `render`
//! (Table/metadata encodings), `discovery` (+ OpenAPI), `http` (server and routing), `rest`
//! (verbs), `faults`, `resources` (served types; add a built-in type there), `meta`, `error`.
//!
//! Known gaps (deliberate): no protobuf; no `managedFields` and no apply conflicts between
//! field managers (apply always forces; custom resources' list-maps do merge per manager, see
//! `apply`); no garbage collector (ownerReferences and
//! propagationPolicy have no effect); no controllers (Deployments never get Pods or status,
//! Pods stay Pending); no admission webhooks; no schema validation or defaulting of custom
//! resources; authentication by bearer token and RBAC only for registered tokens (see `auth`;
//! requests without credentials are unrestricted); no `/exec`, `/attach`, `/eviction` (`pods/log` and `pods/proxy` are served:
//! see `kubelet`, the test sets logs and how pods are reached); core/v1 and events.k8s.io/v1
//! Events are stored separately.

mod aggregator;
mod apply;
mod auth;
mod cluster;
mod defaults;
mod discovery;
mod error;
mod faults;
mod http;
mod kubelet;
mod meta;
mod patch;
mod pod_security;
mod render;
mod resources;
mod rest;
mod selectors;
mod state;
mod store;
mod upstream;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde_json::{Value, json};

pub use aggregator::{ServiceDialer, ServiceTarget, dial_cluster_ip};
pub use auth::User;
pub use error::ApiError;
pub use faults::Faults;
pub use kubelet::{PodDialer, PodTarget, dial_pod_ip};
pub use state::Options;

use cluster::{Cluster, DeleteOpts, Deleted, Sub, WriteOpts};
use patch::PatchType;
use state::Shared;

/// The outcome of [`FakeApiServer::delete`].
#[derive(Clone, Debug, PartialEq)]
pub enum Deletion {
    /// The object was removed; this is its final state.
    Deleted(Value),
    /// The object has finalizers: it now has a `deletionTimestamp` and stays until they are
    /// removed.
    Pending(Value),
}

/// A running fake API server. Dropping it stops the server.
pub struct FakeApiServer {
    shared: Arc<Shared>,
}

impl FakeApiServer {
    /// Start a server with default [`Options`] on `127.0.0.1` and a free port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Start a server with the given options.
    pub async fn start_with(options: Options) -> anyhow::Result<Self> {
        let listener = http::bind("127.0.0.1:0".parse().context("loopback address")?)
            .context("binding the fake API server")?;
        let addr = listener.local_addr().context("listener address")?;
        let mut cluster = Cluster::new(options.max_history);
        cluster.seed(addr.port(), options.kubernetes_service);
        let shared = Arc::new(Shared {
            cluster: Mutex::new(cluster),
            faults: faults::FaultState::new(),
            options,
            addr,
            requests: Mutex::new(Vec::new()),
            pod_logs: Mutex::new(kubelet::PodLogs::default()),
            pod_dialer: Mutex::new(Arc::new(dial_pod_ip)),
            tokens: Mutex::new(auth::Tokens::default()),
            front_proxy: Mutex::new(None),
            service_dialer: Mutex::new(Arc::new(dial_cluster_ip)),
            listener: Mutex::new(None),
        });
        let handle = http::spawn_server(shared.clone(), listener);
        *shared.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(Self { shared })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kube-rs configuration for this server (default namespace `default`).
    pub fn kube_config(&self) -> kube::Config {
        // The URL is always a valid URI ("http://127.0.0.1:PORT").
        let uri = self
            .url()
            .parse()
            .unwrap_or_else(|_| hyper::Uri::from_static("http://127.0.0.1"));
        kube::Config::new(uri)
    }

    /// A kube-rs client for this server. Must be called within a Tokio runtime.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config())
            .expect("a kube::Client for a plain-HTTP URL always builds")
    }

    /// Write a kubeconfig for this server (context `fake`, namespace `default`, no
    /// credentials): for `kubectl --kubeconfig PATH` and `kube::Config::from_kubeconfig`.
    /// Tip: also give kubectl its own `--cache-dir`, so discovery caches of earlier servers
    /// that used the same port are not reused.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        self.write_kubeconfig_as(path.as_ref(), " {}")
    }

    /// A kubeconfig whose user entry is `user:` followed by `user` (YAML).
    fn write_kubeconfig_as(&self, path: &Path, user: &str) -> anyhow::Result<()> {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: fake\n  user:{user}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n",
            url = self.url()
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Write a kubeconfig like [`Self::write_kubeconfig`] whose user authenticates with `token`
    /// (see [`Self::add_token`]).
    pub fn write_kubeconfig_with_token(
        &self,
        path: impl AsRef<Path>,
        token: &str,
    ) -> anyhow::Result<()> {
        self.write_kubeconfig_as(path.as_ref(), &format!("\n    token: {token}"))
    }

    /// Registers a bearer token: requests carrying it act as `user` in `groups` (plus
    /// `system:authenticated`) and are authorized with RBAC (Roles, ClusterRoles and their
    /// bindings in the store). Requests without credentials stay unrestricted.
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".into());
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .insert(
                token.to_string(),
                User {
                    name: user.to_string(),
                    groups,
                },
            );
    }

    /// The aggregator's client certificate and key (PEM), presented to APIService backends
    /// (kube-apiserver's `--proxy-client-cert-file`/`--proxy-client-key-file`).
    pub fn set_front_proxy_client(&self, cert_pem: &[u8], key_pem: &[u8]) {
        *self
            .shared
            .front_proxy
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(aggregator::FrontProxy {
            cert_pem: cert_pem.to_vec(),
            key_pem: key_pem.to_vec(),
        });
    }

    /// Sets how aggregated requests reach an APIService's Service (default:
    /// [`dial_cluster_ip`]).
    pub fn set_service_dialer(&self, dialer: ServiceDialer) {
        *self
            .shared
            .service_dialer
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = dialer;
    }

    /// Register a custom resource (schemaless, with a status subresource) by creating its
    /// CustomResourceDefinition, exactly as `kubectl apply -f crd.yaml` would.
    pub fn register_crd(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
    ) -> anyhow::Result<()> {
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": { "name": format!("{plural}.{group}") },
            "spec": {
                "group": group,
                "scope": if namespaced { "Namespaced" } else { "Cluster" },
                "names": {
                    "plural": plural,
                    "singular": kind.to_ascii_lowercase(),
                    "kind": kind,
                    "listKind": format!("{kind}List"),
                },
                "versions": [{
                    "name": version,
                    "served": true,
                    "storage": true,
                    "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } },
                    "subresources": { "status": {} },
                }],
            },
        });
        self.create(crd).map(|_| ()).map_err(anyhow::Error::from)
    }

    /// Sets what `GET pods/NAME/log` returns for a pod (the kubelet's part: there is none).
    /// Until set, a Pending pod's log is a 400 "waiting to start", any other an empty text.
    pub fn set_pod_log(&self, namespace: &str, pod: &str, text: impl Into<String>) {
        self.shared
            .pod_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(namespace, pod, text.into());
    }

    /// Sets how `pods/NAME[:PORT]/proxy/...` connects to a pod (default: [`dial_pod_ip`]), e.g.
    /// from inside the network namespace the pod's address lives in.
    pub fn set_pod_dialer(&self, dialer: PodDialer) {
        *self
            .shared
            .pod_dialer
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = dialer;
    }

    /// Fault injection controls.
    pub fn faults(&self) -> Faults {
        Faults {
            shared: self.shared.clone(),
        }
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().store.rv()
    }

    /// Requests received so far (most recent last), as `"METHOD /path?query"`.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    // Direct store access. These go through the same code as HTTP requests (validation,
    // defaulting, resourceVersion, watch events, finalizers), and work while the listener is
    // stopped.

    /// Create an object (like POST); its `apiVersion`/`kind` pick the resource, a missing
    /// namespace means `default`.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        self.shared.lock().create_any(obj)
    }

    /// Get an object, if it exists (`namespace` None means `default` for namespaced kinds).
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let cluster = self.shared.lock();
        let rt = cluster.rt_by_kind(api_version, kind).ok()?;
        cluster
            .get(&rt, Some(namespace.unwrap_or("default")), name)
            .ok()
    }

    /// All objects of a kind, in one namespace or (None) in all.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let cluster = self.shared.lock();
        let Ok(rt) = cluster.rt_by_kind(api_version, kind) else {
            return Vec::new();
        };
        cluster
            .list(&rt, namespace, &Default::default())
            .map(|page| {
                page.items
                    .iter()
                    .map(|o| cluster::versioned(&rt, o))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replace an object (like PUT, status ignored). Without `metadata.resourceVersion` the
    /// update is unconditional; with one, a stale version is a 409 Conflict.
    pub fn replace(&self, obj: Value) -> Result<Value, ApiError> {
        self.put(obj, Sub::Main)
    }

    /// Replace an object's status (like PUT on `/status`; everything else is ignored).
    pub fn replace_status(&self, obj: Value) -> Result<Value, ApiError> {
        self.put(obj, Sub::Status)
    }

    fn put(&self, mut obj: Value, sub: Sub) -> Result<Value, ApiError> {
        let mut cluster = self.shared.lock();
        let rt = cluster.rt_of(&obj)?;
        let name = meta::meta_str(&obj, "name").to_string();
        let ns = Self::namespace_of(&rt, &obj);
        if meta::meta_str(&obj, "resourceVersion").is_empty() {
            let current = cluster.get(&rt, ns.as_deref(), &name)?;
            let rv = meta::meta_str(&current, "resourceVersion").to_string();
            meta::meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv));
        }
        cluster.update(&rt, ns.as_deref(), &name, obj, sub, &WriteOpts::default())
    }

    fn namespace_of(rt: &resources::ResourceType, obj: &Value) -> Option<String> {
        rt.namespaced.then(|| {
            let ns = meta::meta_str(obj, "namespace");
            if ns.is_empty() {
                "default".to_string()
            } else {
                ns.to_string()
            }
        })
    }

    /// JSON-merge-patch an object (like PATCH with `application/merge-patch+json`), e.g. to
    /// remove finalizers: `json!({"metadata": {"finalizers": null}})`. `namespace` None means
    /// `default` for namespaced kinds.
    pub fn merge_patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value, ApiError> {
        let mut cluster = self.shared.lock();
        let rt = cluster.rt_by_kind(api_version, kind)?;
        let body = serde_json::to_vec(&patch).unwrap_or_default();
        cluster
            .patch(
                &rt,
                Some(namespace.unwrap_or("default")),
                name,
                PatchType::Merge,
                &body,
                Sub::Main,
                &WriteOpts::default(),
            )
            .map(|(v, _)| v)
    }

    /// Delete an object (like DELETE): removed at once, or marked for deletion if it has
    /// finalizers. `namespace` None means `default` for namespaced kinds.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Deletion, ApiError> {
        let mut cluster = self.shared.lock();
        let rt = cluster.rt_by_kind(api_version, kind)?;
        let ns = Some(namespace.unwrap_or("default"));
        Ok(
            match cluster.delete(&rt, ns, name, &DeleteOpts::default())? {
                Deleted::Gone(v) => Deletion::Deleted(v),
                Deleted::Pending(v) => Deletion::Pending(v),
            },
        )
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(h) = self
            .shared
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
    }
}
