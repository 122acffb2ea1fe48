//! The input of the route computation: what a source (the Kubernetes watch or the routes file)
//! knows about the cluster. Plain data, no behaviour beyond static validation of a route spec.
use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc, time::Duration};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{KeyError, RouteReason, RoutingKey, Selector};

/// The label every selector fork must carry, so a fork can never select baseline pods by
/// accident (baseline pods do not have it).
pub const SANDBOX_LABEL: &str = "shunt.dev/sandbox";

/// Everything a source knows, as of one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub services: Vec<Service>,
    pub pods: Vec<Pod>,
    /// Shared: the kube source converts a route once per generation and every later view
    /// shares it, so a change costs one conversion, not one per route.
    #[serde(with = "shared_vec")]
    pub routes: Vec<Arc<SandboxRouteObj>>,
    /// The name of the node this agent runs on: which endpoints are local, for
    /// `internalTrafficPolicy: Local`. `None` when the source does not know it.
    #[serde(default)]
    pub node: Option<String>,
    /// Every pod scheduled on this node (whatever its labels), sorted by (namespace, name).
    #[serde(default)]
    pub node_pods: Vec<NodePod>,
    /// Who wrote the Services' endpoint addresses, which decides what an address without a
    /// `targetRef` is.
    #[serde(default)]
    pub endpoint_trust: EndpointTrust,
    /// Marked sources of this node: pods (or test runners) whose outbound connections carry a
    /// routing key that Shunt adds when a request has none. Sorted by cgroup.
    #[serde(default)]
    pub sources: Vec<MarkedSource>,
}

/// A marked source: every TCP connection from processes in `cgroup` (a pod-level cgroup v2
/// directory, or a child cgroup that `shunt test` made) goes through the proxy, which adds `key`
/// to HTTP requests that carry no key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkedSource {
    /// The cgroup v2 directory (absolute); its id is what the capture hooks look up.
    pub cgroup: std::path::PathBuf,
    pub key: String,
    /// Who is marked, for statuses and the decision log: `pod NS/NAME`, or `file`.
    pub origin: String,
}

/// Who wrote the endpoint addresses of a [`ClusterState`].
///
/// A namespace steers only what it owns: its Services' virtual addresses, and endpoint
/// addresses that are its own Pods. Anyone who may write an EndpointSlice (or Endpoints) in a
/// namespace can list any address in it, so an address is a Service's own only when its
/// `targetRef` is a Pod of the Service's namespace, and, where the agent knows the Pod object
/// for that address, that Pod agrees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointTrust {
    /// Written through the Kubernetes API by whoever may write EndpointSlices in the namespace:
    /// an address without a Pod `targetRef` of the Service's namespace is refused.
    #[default]
    OwnPodsOnly,
    /// Written by the node's operator (the routes file): an address without a `targetRef` is
    /// the Service's own. One with a `targetRef` is still checked like [`Self::OwnPodsOnly`].
    Operator,
}

/// A Kubernetes Service with its baseline endpoints (as EndpointSlices give them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// ClusterIPs, IPv4 and/or IPv6 (empty for a headless Service).
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<EndpointAddr>,
    /// Steer the virtual addresses even without a fork, so the agent load-balances them: for
    /// clusters with no kube-proxy on the path (the demo's mini-cluster). Kubernetes sources
    /// leave it false.
    #[serde(default)]
    pub always_steer: bool,
    /// `Some(timeout)` when `sessionAffinity` is `ClientIP`: a client IP keeps the endpoint it
    /// was first given for this long after its last connection (Kubernetes' default: 10800 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip_affinity: Option<Duration>,
    /// `internalTrafficPolicy`: `Local` sends a virtual address only to this node's endpoints.
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

/// A Service's `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficPolicy {
    /// Any ready endpoint, on any node.
    #[default]
    Cluster,
    /// Only ready endpoints on this node; none there means the connection fails.
    Local,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
}

impl ServicePort {
    /// The key EndpointSlices use for this port: its name, or "" when unnamed.
    pub fn slice_key(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

/// A Service's `targetPort`: a number, or the name of a container port (resolved per pod).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// A reference to one of a Service's ports: its `port` number or its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// One baseline endpoint address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointAddr {
    pub ip: IpAddr,
    pub ready: bool,
    /// Service port name ("" for an unnamed port) → the port on this endpoint, already resolved
    /// (EndpointSlices resolve named target ports per endpoint).
    pub ports: BTreeMap<String, u16>,
    /// The object behind the address (usually its Pod), as the EndpointSlice's `targetRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectRef>,
    /// The node the endpoint runs on, as the EndpointSlice's `nodeName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// A reference to a namespaced object (an EndpointSlice endpoint's `targetRef`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// A pod on this agent's node, whatever its labels: who a local address belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Pod IPs, primary first (as `status.podIPs`).
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// The pod's network namespace file, where a source names it (the routes file's `netns:`,
    /// for pods that are named network namespaces); in a cluster it is found from the UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<std::path::PathBuf>,
}

/// A pod, for selector forks and for resolving named target ports on sandbox pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// Pod IPs, primary first (as `status.podIPs`).
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    /// Container port name → number.
    pub container_ports: BTreeMap<String, u16>,
}

/// A SandboxRoute object: the metadata the computation needs plus its spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRouteObj {
    pub namespace: String,
    pub name: String,
    /// Orders routes that claim the same key: the older one wins.
    pub creation_timestamp: Timestamp,
    pub generation: i64,
    pub spec: SandboxRouteSpec,
}

impl SandboxRouteObj {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The spec of a SandboxRoute as the computation reads it. The routes file and the CRD
/// (`kube::crd::SandboxRouteSpec`, a separate type so `routes` needs no kube-rs) both convert
/// to it, and it serializes exactly like the CRD's spec. It does not deny unknown fields: a spec
/// written by a newer CRD must still read on an older agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRouteSpec {
    /// Kept as a string (not a [`RoutingKey`]) so an invalid key becomes a status, not a failure
    /// to read the object.
    pub routing_key: String,
    #[serde(default)]
    pub forks: Vec<ForkSpec>,
    #[serde(default)]
    pub fallback: Fallback,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// `injectKey`: the sandbox's pods are marked sources, so Shunt adds the key to their
    /// outbound HTTP requests that carry none. On unless set to `false`; written only when off,
    /// so a spec without it reads and writes back unchanged.
    #[serde(
        default = "inject_key_default",
        skip_serializing_if = "is_inject_key_default"
    )]
    pub inject_key: bool,
}

/// `injectKey`'s default (on), shared by the routes model and the CRD.
pub fn inject_key_default() -> bool {
    true
}

// serde's skip_serializing_if passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
pub fn is_inject_key_default(on: &bool) -> bool {
    *on
}

/// "Requests for `service` carrying the key go to `to`."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkSpec {
    /// The baseline Service, in the route's namespace.
    pub service: String,
    pub to: ForkTarget,
    /// Only these ports of the Service are forked (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortRef>>,
}

/// Where forked requests go: exactly one of a pod selector or a sandbox Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// What keyed requests get when no sandbox endpoint is ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Fallback {
    /// Go to the baseline as if the request had no key.
    #[default]
    Baseline,
    /// Answer 503, so a test never silently exercises the baseline.
    Reject,
}

/// Which field of a spec a [`SpecProblem`] is about, so the routes file can point at its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecField {
    RoutingKey,
    ForkService(usize),
    ForkTo(usize),
    ForkSelector(usize),
    ForkTargetService(usize),
}

impl fmt::Display for SpecField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecField::RoutingKey => write!(f, "routingKey"),
            SpecField::ForkService(i) => write!(f, "forks[{i}].service"),
            SpecField::ForkTo(i) => write!(f, "forks[{i}].to"),
            SpecField::ForkSelector(i) => write!(f, "forks[{i}].to.selector"),
            SpecField::ForkTargetService(i) => write!(f, "forks[{i}].to.service"),
        }
    }
}

/// A problem found in a spec without looking at the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecProblem {
    pub field: SpecField,
    pub reason: RouteReason,
    pub message: String,
}

impl SandboxRouteSpec {
    /// Problems that make the route unusable whatever the cluster holds: a bad key, a bad
    /// selector, a target outside `namespace`. Shared by the route computation (which turns them
    /// into a status) and the routes file (which rejects the file, pointing at the line).
    pub fn problems(&self, namespace: &str) -> Vec<SpecProblem> {
        let mut out = Vec::new();
        let mut bad = |field, reason, message: String| {
            out.push(SpecProblem {
                field,
                reason,
                message,
            })
        };
        if let Err(e) = RoutingKey::parse(&self.routing_key) {
            bad(
                SpecField::RoutingKey,
                RouteReason::InvalidKey,
                format!(
                    "{:?} is not a valid routing key ({}): {}",
                    truncate(&self.routing_key, 80),
                    RoutingKey::SYNTAX,
                    match e {
                        KeyError::Empty => "it is empty".to_owned(),
                        KeyError::TooLong { len } => format!("it is {len} bytes long"),
                        KeyError::InvalidChar { ch, at } => format!("{ch:?} at byte {at}"),
                    }
                ),
            );
        }
        for (i, fork) in self.forks.iter().enumerate() {
            let baseline = match local_name(namespace, &fork.service) {
                Ok(n) => Some(n),
                Err(p) => {
                    bad(SpecField::ForkService(i), p.0, p.1);
                    None
                }
            };
            match (&fork.to.selector, &fork.to.service) {
                (Some(_), Some(_)) | (None, None) => bad(
                    SpecField::ForkTo(i),
                    RouteReason::InvalidTarget,
                    "set exactly one of `selector` or `service`".into(),
                ),
                (Some(sel), None) => {
                    if let Err(e) = check_selector(sel) {
                        bad(
                            SpecField::ForkSelector(i),
                            RouteReason::InvalidSelector,
                            e.to_string(),
                        );
                    }
                }
                (None, Some(svc)) => match local_name(namespace, svc) {
                    Err(p) => bad(SpecField::ForkTargetService(i), p.0, p.1),
                    Ok(target) if Some(target) == baseline => bad(
                        SpecField::ForkTargetService(i),
                        RouteReason::InvalidTarget,
                        format!("a fork of {target:?} cannot target the same service"),
                    ),
                    Ok(_) => {}
                },
            }
        }
        out
    }
}

/// A Service name as written in a fork: `name`, or `namespace/name` for the route's own
/// namespace. Anything else leaves the namespace, which a route may not do: a route's author
/// must not be able to redirect another namespace's traffic.
pub fn local_name<'a>(namespace: &str, s: &'a str) -> Result<&'a str, (RouteReason, String)> {
    let name = match s.split_once('/') {
        None => s,
        Some((ns, name)) if ns == namespace => name,
        Some((ns, _)) => {
            return Err((
                RouteReason::CrossNamespace,
                format!(
                    "{s:?} is in namespace {ns:?}; forks may only target namespace {namespace:?}"
                ),
            ));
        }
    };
    if name.is_empty() || name.contains('/') {
        return Err((
            RouteReason::InvalidTarget,
            format!("{s:?} is not a service name"),
        ));
    }
    Ok(name)
}

/// Why a fork's pod selector is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
enum SelectorError {
    #[error(
        "an empty selector would match every pod; it must include {}",
        SANDBOX_LABEL
    )]
    Empty,
    #[error(
        "selector must include the {} label, so it can never match baseline pods",
        SANDBOX_LABEL
    )]
    NoSandboxLabel,
    #[error("{} must not be empty", SANDBOX_LABEL)]
    EmptySandboxLabel,
}

fn check_selector(sel: &Selector) -> Result<(), SelectorError> {
    if sel.is_empty() {
        return Err(SelectorError::Empty);
    }
    match sel.get(SANDBOX_LABEL) {
        None => Err(SelectorError::NoSandboxLabel),
        Some("") => Err(SelectorError::EmptySandboxLabel),
        Some(_) => Ok(()),
    }
}

/// At most `max` characters of `s`, for messages that quote user input.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A `Vec<Arc<T>>` written as the `Vec<T>` it shares (serde's `rc` feature is off).
mod shared_vec {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &[Arc<T>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|t| &**t))
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Arc<T>>, D::Error> {
        Ok(Vec::<T>::deserialize(d)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
}

/// `Number` or `Name`, written in YAML/JSON as an integer or a string (Kubernetes' IntOrString).
macro_rules! int_or_name_serde {
    ($ty:ident, $what:literal) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $ty::Number(n) => s.serialize_u16(*n),
                    $ty::Name(n) => s.serialize_str(n),
                }
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        u16::try_from(v)
                            .ok()
                            .filter(|p| *p != 0)
                            .map($ty::Number)
                            .ok_or_else(|| E::custom(format!("port {v} is not in 1..=65535")))
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        match u64::try_from(v) {
                            Ok(v) => self.visit_u64(v),
                            Err(_) => Err(E::custom(format!("port {v} is not in 1..=65535"))),
                        }
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        if v.is_empty() {
                            return Err(E::custom("a port name must not be empty"));
                        }
                        Ok($ty::Name(v.to_owned()))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

int_or_name_serde!(TargetPort, "a port number or a port name");
int_or_name_serde!(PortRef, "a service port number or a service port name");

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
