//! The routes file as written: serde types that keep every value's position, so a problem can
//! be reported at its line. Unknown fields are errors (a typo must not pass unnoticed).
use std::{collections::BTreeMap, net::IpAddr};

use jiff::Timestamp;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::routes::{Fallback, ObjectRef, PortRef, TargetPort, TrafficPolicy};

pub(super) type S<T> = Spanned<T>;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) services: Vec<RawService>,
    #[serde(default)]
    pub(super) pods: Vec<RawPod>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    /// The node the agent runs on (see [`ClusterState::node`](crate::routes::ClusterState)).
    #[serde(default)]
    pub(super) node: Option<S<String>>,
    /// The pods of that node.
    #[serde(default, rename = "nodePods")]
    pub(super) node_pods: Vec<RawNodePod>,
    /// Marked sources (see [`MarkedSource`](crate::routes::MarkedSource)).
    #[serde(default)]
    pub(super) sources: Vec<S<RawSource>>,
}

/// `{ cgroup: /sys/fs/cgroup/..., key: pr-42, origin: "pod shop/reviews-v2" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) cgroup: S<String>,
    pub(super) key: S<String>,
    /// Who is marked, for the decision log; default `file`.
    #[serde(default)]
    pub(super) origin: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: S<String>,
    #[serde(default)]
    pub(super) namespace: Option<S<String>>,
    #[serde(default)]
    pub(super) addresses: Vec<S<IpAddr>>,
    #[serde(default)]
    pub(super) ports: Vec<S<RawServicePort>>,
    #[serde(default)]
    pub(super) endpoints: Vec<S<RawEndpoint>>,
    /// See [`Service::always_steer`].
    #[serde(default, rename = "alwaysSteer")]
    pub(super) always_steer: Option<S<bool>>,
    /// `ClientIP` or `None`, as in Kubernetes.
    #[serde(default, rename = "sessionAffinity")]
    pub(super) session_affinity: Option<S<String>>,
    #[serde(default, rename = "sessionAffinityConfig")]
    pub(super) session_affinity_config: Option<RawAffinityConfig>,
    /// `Cluster` or `Local`, as in Kubernetes.
    #[serde(default, rename = "internalTrafficPolicy")]
    pub(super) internal_traffic_policy: Option<S<TrafficPolicy>>,
}

/// `sessionAffinityConfig: { clientIP: { timeoutSeconds: N } }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAffinityConfig {
    #[serde(rename = "clientIP")]
    pub(super) client_ip: RawClientIpConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientIpConfig {
    #[serde(rename = "timeoutSeconds")]
    pub(super) timeout_seconds: S<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawServicePort {
    #[serde(default)]
    pub(super) name: Option<S<String>>,
    pub(super) port: S<u16>,
    /// Defaults to `port`, as in Kubernetes.
    #[serde(default)]
    pub(super) target_port: Option<S<TargetPort>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    pub(super) ip: S<IpAddr>,
    #[serde(default = "yes")]
    pub(super) ready: bool,
    /// Service port name → port on this endpoint.
    #[serde(default)]
    pub(super) ports: BTreeMap<String, S<u16>>,
    #[serde(default, rename = "nodeName")]
    pub(super) node_name: Option<String>,
    #[serde(default, rename = "targetRef")]
    pub(super) target_ref: Option<ObjectRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNodePod {
    pub(super) name: S<String>,
    #[serde(default)]
    pub(super) namespace: Option<S<String>>,
    #[serde(default)]
    pub(super) uid: String,
    #[serde(default)]
    pub(super) ips: Vec<S<IpAddr>>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    /// The pod's network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`): its upstream
    /// connections are made there, with its own address.
    #[serde(default)]
    pub(super) netns: Option<S<std::path::PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPod {
    pub(super) name: S<String>,
    #[serde(default)]
    pub(super) namespace: Option<S<String>>,
    #[serde(default)]
    pub(super) ips: Vec<S<IpAddr>>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub(super) ready: bool,
    /// Container port name → number.
    #[serde(default)]
    pub(super) ports: BTreeMap<String, S<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: S<String>,
    #[serde(default)]
    pub(super) namespace: Option<S<String>>,
    pub(super) spec: S<RawSpec>,
}

/// [`SandboxRouteSpec`] with spans; same field names, so the file and the CRD read alike.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSpec {
    pub(super) routing_key: S<String>,
    #[serde(default)]
    pub(super) forks: Vec<S<RawFork>>,
    #[serde(default)]
    pub(super) fallback: Fallback,
    #[serde(default)]
    pub(super) expires_at: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFork {
    pub(super) service: S<String>,
    pub(super) to: S<RawTarget>,
    #[serde(default)]
    pub(super) ports: Option<Vec<PortRef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    #[serde(default)]
    pub(super) selector: Option<S<BTreeMap<String, String>>>,
    #[serde(default)]
    pub(super) service: Option<S<String>>,
}

fn yes() -> bool {
    true
}
