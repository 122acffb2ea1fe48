//! Tool parameters and results: the JSON schemas a coding agent sees (`tools/list`), so every
//! field is documented for an agent, not for a Rust reader.
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A port given as a number (`9080`) or a name (`"http"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PortValue {
    Number(u16),
    Name(String),
}

impl std::fmt::Display for PortValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortValue::Number(n) => write!(f, "{n}"),
            PortValue::Name(n) => write!(f, "{n:?}"),
        }
    }
}

impl From<&crate::routes::TargetPort> for PortValue {
    fn from(t: &crate::routes::TargetPort) -> Self {
        match t {
            crate::routes::TargetPort::Number(n) => PortValue::Number(*n),
            crate::routes::TargetPort::Name(n) => PortValue::Name(n.clone()),
        }
    }
}

impl From<&crate::routes::PortRef> for PortValue {
    fn from(t: &crate::routes::PortRef) -> Self {
        match t {
            crate::routes::PortRef::Number(n) => PortValue::Number(*n),
            crate::routes::PortRef::Name(n) => PortValue::Name(n.clone()),
        }
    }
}

impl From<&PortValue> for crate::routes::PortRef {
    fn from(p: &PortValue) -> Self {
        match p {
            PortValue::Number(n) => crate::routes::PortRef::Number(*n),
            PortValue::Name(n) => match n.parse::<u16>() {
                Ok(n) => crate::routes::PortRef::Number(n),
                Err(_) => crate::routes::PortRef::Name(n.clone()),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct NamespaceParams {
    /// Only this namespace. Default: every namespace of the routes file (no-cluster mode), or
    /// the namespace given by --namespace / the kubeconfig context (cluster mode).
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DependenciesParams {
    /// The service: `name` or `namespace/name`. Omit it to get the whole observed graph.
    #[serde(default)]
    pub service: Option<String>,
    /// Namespace of `service` when it is given as a bare name and several namespaces have one.
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ResolvePortParams {
    /// The service: `name` or `namespace/name`.
    pub service: String,
    /// The port you intend to call: a number (`9080`) or a port name (`"http"`).
    pub port: PortValue,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ForkParam {
    /// The baseline service whose keyed requests are forked: `name` (in the route's namespace).
    pub service: String,
    /// Labels selecting the sandbox pods. Must include `shunt.dev/sandbox` (baseline pods never
    /// carry it), e.g. `{"app": "reviews-pr-42", "shunt.dev/sandbox": "pr-42"}`. Give this or
    /// `target_service`.
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// A sandbox service whose endpoints receive the forked requests (instead of `selector`).
    #[serde(default)]
    pub target_service: Option<String>,
    /// Only these service ports (numbers or names) are forked. Default: all of them.
    #[serde(default)]
    pub ports: Option<Vec<PortValue>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FallbackParam {
    /// Keyed requests go to the baseline when no sandbox pod is ready (the default).
    #[default]
    Baseline,
    /// Keyed requests get a 503 when no sandbox pod is ready, so a test never silently
    /// exercises the baseline.
    Reject,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateRouteParams {
    /// The routing key, `[A-Za-z0-9._-]{1,64}`, e.g. `pr-42`. Requests carrying it (as W3C
    /// baggage `sd-routing-key=KEY`) go to the forks below. One route per key and namespace.
    pub key: String,
    /// One entry per forked service.
    pub forks: Vec<ForkParam>,
    /// The route's namespace (the forked services' namespace). Default: the namespace of the
    /// first fork's service when it is unambiguous.
    #[serde(default)]
    pub namespace: Option<String>,
    /// What keyed requests get when no sandbox pod is ready. Default `Baseline`.
    #[serde(default)]
    pub fallback: Option<FallbackParam>,
    /// Delete the route after this long, e.g. `30m`, `2h`. Default: when this MCP session ends
    /// (no-cluster mode), else never.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Keep the route after this MCP session ends (no-cluster mode). Default false.
    #[serde(default)]
    pub keep: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct KeyParams {
    /// The routing key of the route.
    pub key: String,
    /// The route's namespace, when the key is used in several.
    #[serde(default)]
    pub namespace: Option<String>,
    /// delete_sandbox_route only: also delete a route this session did not create (another
    /// session's or a person's). Never needed for your own.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SendRequestParams {
    /// `http://HOST:PORT/PATH`. HOST may be a service address or a service name (`reviews`,
    /// `reviews.shop`, `reviews.shop.svc.cluster.local`); PORT must be the service port (see
    /// resolve_port). Plain HTTP only: TLS cannot be steered by key.
    pub url: String,
    /// The routing key to send (injected as `baggage: sd-routing-key=KEY`). Omit it to see where
    /// unkeyed traffic goes.
    #[serde(default)]
    pub key: Option<String>,
    /// HTTP method. Default `GET`.
    #[serde(default)]
    pub method: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Request body (text).
    #[serde(default)]
    pub body: Option<String>,
    /// How long to wait for the response. Default 10.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DecisionsParams {
    /// The routing key.
    pub key: String,
    /// Only decisions at or after this time (unix milliseconds), e.g. the `started_unix_ms` of
    /// a send_test_request result. Default: all the agent still remembers.
    #[serde(default)]
    pub since_unix_ms: Option<u64>,
    /// At most this many (the newest). Default 100.
    #[serde(default)]
    pub limit: Option<usize>,
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Debug, Serialize, JsonSchema)]
pub struct ServicePortInfo {
    /// The port's name, if it has one.
    pub name: Option<String>,
    /// The service port: what clients must connect to.
    pub port: u16,
    /// Where the pods listen (a number, or a container port name resolved per pod). Never
    /// connect to it directly: such requests bypass routing.
    pub target_port: PortValue,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EndpointInfo {
    pub ip: String,
    pub ready: bool,
    /// The pod behind it, when known.
    pub pod: Option<String>,
    /// Service port name ("" when unnamed) → the port on this endpoint.
    pub ports: BTreeMap<String, u16>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ForkTargetInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ServiceForkInfo {
    /// The routing key.
    pub key: String,
    /// `namespace/name` of the SandboxRoute.
    pub route: String,
    pub to: ForkTargetInfo,
    /// Whether the route is Ready (every fork has a ready sandbox endpoint).
    pub ready: Option<bool>,
    pub reason: Option<String>,
    /// Ready sandbox pods (distinct IPs) serving this fork.
    pub ready_sandbox_endpoints: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// Virtual addresses (ClusterIPs).
    pub addresses: Vec<String>,
    /// In-cluster DNS name (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    pub ports: Vec<ServicePortInfo>,
    /// A URL for the first port, ready for send_test_request.
    pub url: Option<String>,
    pub baseline_endpoints: Vec<EndpointInfo>,
    /// Existing forks of this service (one per routing key).
    pub forks: Vec<ServiceForkInfo>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListServicesResult {
    /// `no-cluster` (routes file) or `cluster` (Kubernetes API).
    pub mode: String,
    pub services: Vec<ServiceInfo>,
    /// Pods labelled `shunt.dev/sandbox`: candidates for fork selectors.
    pub sandbox_pods: Vec<PodInfo>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct EdgeInfo {
    /// The caller: `namespace/service` (a baseline pod), `namespace/pod` (a sandbox pod), or an
    /// address nobody is known to own (e.g. a test client).
    pub from: String,
    /// The callee: `namespace/service`, or an address.
    pub to: String,
    /// The destination port dialled.
    pub port: u16,
    /// Connections observed.
    pub connections: u64,
    pub last_seen_unix_ms: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DependenciesResult {
    /// `namespace/name` of the service asked about (absent for the whole graph).
    pub service: Option<String>,
    /// Downstream callers: edges into the service (who calls it).
    pub callers: Vec<EdgeInfo>,
    /// Upstream dependencies: edges out of the service's baseline pods and of its sandbox pods
    /// (what it calls).
    pub callees: Vec<EdgeInfo>,
    /// Every observed edge (only when no service was given).
    pub edges: Vec<EdgeInfo>,
    pub note: Option<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ResolvePortResult {
    /// `namespace/name`.
    pub service: String,
    /// The service port to connect to.
    pub port: u16,
    pub name: Option<String>,
    /// Where the pods listen; for information only.
    pub target_port: PortValue,
    /// The URL to use with send_test_request.
    pub url: String,
    /// Every port of the service.
    pub valid_ports: Vec<ServicePortInfo>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RouteForkInfo {
    /// The forked baseline service.
    pub service: String,
    pub to: ForkTargetInfo,
    /// Forked ports (all when absent).
    pub ports: Option<Vec<PortValue>>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub ready_sandbox_endpoints: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RouteInfo {
    pub namespace: String,
    pub name: String,
    pub key: String,
    pub fallback: FallbackParam,
    /// RFC 3339 time after which the route is deleted.
    pub expires_at: Option<String>,
    /// Ready: every fork has a ready sandbox endpoint. None when not known yet.
    pub ready: Option<bool>,
    /// EndpointsReady, NoReadyEndpoints, ServiceNotFound, PortNotFound, DuplicateKey, Expired,
    /// CrossNamespace, InvalidKey, InvalidSelector, InvalidTarget.
    pub reason: Option<String>,
    pub message: Option<String>,
    pub forks: Vec<RouteForkInfo>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListRoutesResult {
    pub routes: Vec<RouteInfo>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CreateRouteResult {
    pub route: RouteInfo,
    /// Whether the agent(s) already apply it.
    pub applied: bool,
    /// How to send a request that takes the fork.
    pub next_step: String,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DeleteRouteResult {
    /// `namespace/name` of the deleted route.
    pub deleted: String,
    pub key: String,
    /// Whether the agent(s) stopped applying it already.
    pub applied: bool,
    pub warnings: Vec<String>,
}

/// One routing decision of the agent's proxy.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct DecisionInfo {
    /// When the decision was logged (after the response headers), unix milliseconds.
    pub time: u64,
    /// The connecting client `ip:port`.
    pub client: String,
    /// Who the client is (`namespace/service`, `namespace/pod`), when known.
    #[serde(default)]
    pub client_owner: Option<String>,
    /// The address the client dialled.
    pub original_dst: String,
    pub protocol: String,
    pub method: Option<String>,
    pub path: Option<String>,
    /// The service (`namespace/name`) the destination belongs to.
    pub service: Option<String>,
    pub key: Option<String>,
    /// True when the request came without a key from a marked source (a sandbox pod, a test
    /// runner) and Shunt added `key` to it before deciding.
    #[serde(default)]
    pub key_injected: bool,
    /// sandbox | baseline | passthrough | reject
    pub decision: String,
    /// key_matched | no_key | invalid_key | key_not_forked | unknown_service |
    /// no_ready_sandbox | sandbox_unreachable | opaque_protocol
    pub reason: String,
    /// The SandboxRoute involved (`namespace/name`).
    pub route: Option<String>,
    /// Where the request went (`ip:port`).
    pub upstream: Option<String>,
    /// Who that is (`namespace/pod` for a sandbox pod, `namespace/service` for a baseline one).
    #[serde(default)]
    pub upstream_owner: Option<String>,
    pub status: Option<u16>,
    pub latency_us: u64,
    /// Which agent logged it (cluster mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Hint {
    pub reason: String,
    pub count: usize,
    pub hint: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DecisionsResult {
    pub key: String,
    /// Oldest first.
    pub decisions: Vec<DecisionInfo>,
    /// Count per decision (sandbox, baseline, ...).
    pub summary: BTreeMap<String, usize>,
    /// What each reason seen means and what to do about it.
    pub hints: Vec<Hint>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Hop {
    /// 1 for the request you sent, 2 for the call its server made, ...
    pub hop: usize,
    /// The hop that made this call (absent for hop 1).
    pub parent: Option<usize>,
    /// The key this hop carried; null when a service on the path dropped it.
    pub key: Option<String>,
    /// True when the caller received the key but did not pass it on: a propagation bug in the
    /// caller (it must forward the `baggage` header).
    pub key_lost: bool,
    /// True when the caller sent no key and Shunt added it: the caller is a marked source (a
    /// sandbox pod, or a test runner) and the key carried on from there.
    pub key_injected: bool,
    pub from: String,
    pub service: Option<String>,
    pub decision: String,
    pub reason: String,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub upstream_owner: Option<String>,
    pub status: Option<u16>,
    pub latency_us: u64,
    /// One line: `from → service: decision (reason) → upstream owner`.
    pub summary: String,
    /// What the serving pod logged while this request was in flight (no-cluster mode with
    /// --cluster-dir), bounded to 20 lines and 4 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<super::sandbox_types::PodLogs>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ResponseInfo {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    /// The body as text (truncated to 256 KiB).
    pub body: String,
    /// The body parsed as JSON, when it is JSON.
    pub body_json: Option<Value>,
    pub truncated: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SendRequestResult {
    pub method: String,
    pub url: String,
    /// The address actually dialled (service names resolved).
    pub connected_to: String,
    /// Where the request was sent from: the client pod (no-cluster mode) or the short-lived
    /// request pod (cluster mode).
    pub sent_from: String,
    /// The key sent, if any.
    pub key: Option<String>,
    pub started_unix_ms: u64,
    pub elapsed_ms: u64,
    pub response: ResponseInfo,
    /// The routing decisions this request caused, hop by hop (outermost first).
    pub hops: Vec<Hop>,
    pub hints: Vec<String>,
    pub warnings: Vec<String>,
}
