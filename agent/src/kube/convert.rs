//! Kubernetes objects (k8s-openapi types and [`SandboxRoute`]) to the plain-data
//! [`ClusterState`] the route computation reads. Pure functions, no I/O.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::crd::SandboxRoute;
use crate::routes::{self, ClusterState, EndpointAddr, EndpointTrust, TargetPort, TrafficPolicy};

/// The label an EndpointSlice carries to name its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn is_tcp(protocol: Option<&String>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

fn port_u16(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// A Service with its endpoints from `slices` (its EndpointSlices). `None` for an ExternalName
/// Service (nothing to steer) or one without a name.
///
/// Only TCP ports are kept (`STEERED` is TCP only). ClusterIPs come from `clusterIPs` (both
/// families of a dual-stack Service), else `clusterIP`; a headless Service has none. Endpoints
/// come from every IPv4 and IPv6 slice; each address carries the slice's ports by name, which is
/// how a named `targetPort` is resolved per endpoint. An endpoint with no `ready` condition is
/// ready (the API's rule). An address listed by two slices (during a slice update) is merged.
pub fn service(svc: &Service, slices: &[&EndpointSlice]) -> Option<routes::Service> {
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone()?;
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ips = spec
        .cluster_ips
        .as_ref()
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default();
    let mut addresses: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    addresses.dedup();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(p.protocol.as_ref()))
        .filter_map(|p| {
            let port = port_u16(p.port)?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(port_u16(*n)?),
                Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(port),
                Some(IntOrString::String(s)) => TargetPort::Name(s.clone()),
            };
            Some(routes::ServicePort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port,
                target_port,
            })
        })
        .collect();

    // ip → the endpoint, merged over slices.
    let mut eps: BTreeMap<IpAddr, EndpointAddr> = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let slice_ports: BTreeMap<String, u16> = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| is_tcp(p.protocol.as_ref()))
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), port_u16(p.port?)?)))
            .collect();
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let target_ref = ep.target_ref.as_ref().and_then(|r| {
                Some(routes::ObjectRef {
                    kind: r.kind.clone()?,
                    namespace: r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                    name: r.name.clone()?,
                })
            });
            for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                let e = eps.entry(ip).or_insert_with(|| EndpointAddr {
                    ip,
                    ready: false,
                    ports: BTreeMap::new(),
                    target_ref: None,
                    node_name: None,
                });
                e.ready |= ready;
                for (k, v) in &slice_ports {
                    e.ports.entry(k.clone()).or_insert(*v);
                }
                e.target_ref = e.target_ref.take().or_else(|| target_ref.clone());
                e.node_name = e.node_name.take().or_else(|| ep.node_name.clone());
            }
        }
    }
    Some(routes::Service {
        namespace,
        name,
        addresses,
        ports,
        endpoints: eps.into_values().collect(),
        always_steer: false,
        client_ip_affinity: (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u64::try_from(t).ok())
                .filter(|t| *t > 0)
                .map_or(routes::DEFAULT_AFFINITY_TIMEOUT, Duration::from_secs)
        }),
        internal_traffic_policy: match spec.internal_traffic_policy.as_deref() {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        },
    })
}

/// The IPs of a pod: `status.podIPs` (dual-stack), else `status.podIP`.
fn pod_ips(p: &Pod) -> Vec<IpAddr> {
    let status = p.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_ref())
            .and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// A pod of this node (from the `spec.nodeName` watch), whatever its labels.
pub fn node_pod(p: &Pod) -> Option<routes::NodePod> {
    Some(routes::NodePod {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone()?,
        uid: p.metadata.uid.clone().unwrap_or_default(),
        ips: pod_ips(p),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        // Found from the UID through the pod's cgroup (netns::locate).
        netns: None,
    })
}

/// The pods of this node, sorted by (namespace, name).
pub fn node_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<routes::NodePod> {
    let mut v: Vec<routes::NodePod> = pods.into_iter().filter_map(node_pod).collect();
    v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    v
}

/// A (sandbox) pod. Ready means the `Ready` condition is True and the pod is not terminating
/// (as EndpointSlices treat it). IPs from `status.podIPs` (dual-stack), else `status.podIP`.
pub fn pod(p: &Pod) -> Option<routes::Pod> {
    let name = p.metadata.name.clone()?;
    let status = p.status.as_ref();
    let ips = pod_ips(p);
    let ready = p.metadata.deletion_timestamp.is_none()
        && status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
    let container_ports = p
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|cp| is_tcp(cp.protocol.as_ref()))
        .filter_map(|cp| Some((cp.name.clone()?, port_u16(cp.container_port)?)))
        .collect();
    Some(routes::Pod {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name,
        ips,
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ready,
        container_ports,
    })
}

/// A SandboxRoute, or `None` while it is being deleted (it stops applying at once).
pub fn route(r: &SandboxRoute) -> Option<routes::SandboxRouteObj> {
    if r.metadata.deletion_timestamp.is_some() {
        return None;
    }
    Some(routes::SandboxRouteObj {
        namespace: r.metadata.namespace.clone()?,
        name: r.metadata.name.clone()?,
        // Never missing from a real API server; if it were, the route loses key contests.
        creation_timestamp: r
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(jiff::Timestamp::MAX, |t| t.0),
        generation: r.metadata.generation.unwrap_or(0),
        spec: (&r.spec).into(),
    })
}

/// The whole state, sorted by (namespace, name) so equal inputs give equal states. Slices are
/// matched to Services by namespace and the `kubernetes.io/service-name` label.
/// (`node` and `node_pods` are the source's to fill: see [`node_pods`].)
pub fn cluster_state<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    pods: impl IntoIterator<Item = &'a Pod>,
    routes: impl IntoIterator<Item = &'a SandboxRoute>,
) -> ClusterState {
    let routes = sorted_by_name(routes);
    // Sized up front: a filtered collect grows by doubling, copying every route each time and
    // keeping up to half the capacity unused for as long as the state lives.
    let mut converted_routes = Vec::with_capacity(routes.len());
    converted_routes.extend(routes.into_iter().filter_map(route).map(Arc::new));
    cluster_state_with_routes(services, slices, pods, converted_routes)
}

/// [`cluster_state`] with the routes already converted, in (namespace, name) order (the kube
/// source keeps them converted: see `route_cache`).
pub fn cluster_state_with_routes<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    pods: impl IntoIterator<Item = &'a Pod>,
    routes: Vec<Arc<routes::SandboxRouteObj>>,
) -> ClusterState {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.as_deref(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        by_service.entry((ns, svc.as_str())).or_default().push(s);
    }
    // Sorted as references, then converted in order: sorting the converted objects would move
    // each (a few hundred bytes) many times over, at 10,000 routes a cost on every change.
    let services = sorted_by_name(services);
    let pods = sorted_by_name(pods);
    let mut converted_services = Vec::with_capacity(services.len());
    converted_services.extend(services.into_iter().filter_map(|s| {
        let key = (
            s.metadata.namespace.as_deref().unwrap_or_default(),
            s.metadata.name.as_deref().unwrap_or_default(),
        );
        service(s, by_service.get(&key).map_or(&[], Vec::as_slice))
    }));
    ClusterState {
        services: converted_services,
        pods: pods.into_iter().filter_map(pod).collect(),
        routes,
        node: None,
        node_pods: Vec::new(),
        // Anyone who may write an EndpointSlice in a namespace wrote its addresses.
        endpoint_trust: EndpointTrust::OwnPodsOnly,
        sources: Vec::new(),
    }
}

/// Objects sorted by (namespace, name), as the state lists them.
fn sorted_by_name<'a, K: kube::Resource + 'a>(objs: impl IntoIterator<Item = &'a K>) -> Vec<&'a K> {
    let mut v: Vec<&K> = objs.into_iter().collect();
    v.sort_by(|a, b| {
        let key = |o: &'a K| {
            (
                o.meta().namespace.as_deref().unwrap_or_default(),
                o.meta().name.as_deref().unwrap_or_default(),
            )
        };
        key(a).cmp(&key(b))
    });
    v
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
