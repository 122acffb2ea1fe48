//! From the raw document to a [`ClusterState`], checking what serde cannot: names, ports,
//! duplicates, and every route spec (pointing at the offending line).
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use jiff::Timestamp;
use serde_saphyr::Location;

use super::{
    DEFAULT_NAMESPACE, Diagnostic,
    raw::{RawEndpoint, RawFile, RawService, RawServicePort, RawSpec, S},
};
use crate::routes::{
    ClusterState, DEFAULT_AFFINITY_TIMEOUT, EndpointAddr, EndpointTrust, ForkSpec, ForkTarget,
    NodePod, Pod, SandboxRouteObj, SandboxRouteSpec, Selector, Service, ServicePort, SpecField,
    TargetPort, TrafficPolicy,
};

/// Collects diagnostics while converting the raw document.
pub(super) struct Check {
    diagnostics: Vec<Diagnostic>,
}

impl Check {
    pub(super) fn at(
        &mut self,
        loc: Location,
        path: impl fmt::Display,
        message: impl Into<String>,
    ) {
        self.diagnostics.push(Diagnostic {
            line: loc.line(),
            column: loc.column(),
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// A Kubernetes object name: non-empty, and no `/` since `namespace/name` is how objects
    /// are referred to.
    fn name(&mut self, s: &S<String>, path: impl fmt::Display) -> String {
        if s.value.is_empty() || s.value.contains('/') {
            self.at(
                s.referenced,
                path,
                format!("{:?} is not a valid name", s.value),
            );
        }
        s.value.clone()
    }

    fn namespace(&mut self, s: &Option<S<String>>, path: impl fmt::Display) -> String {
        match s {
            Some(ns) => self.name(ns, path),
            None => DEFAULT_NAMESPACE.to_owned(),
        }
    }

    /// `namespace/name` of the object at `path` (`services[3]`), checked, and reported when an
    /// earlier object of the same `kind` in this document has it too (`seen`: id → its line).
    fn object_id(
        &mut self,
        kind: &str,
        seen: &mut HashMap<(String, String), u64>,
        path: &str,
        namespace: &Option<S<String>>,
        name: &S<String>,
    ) -> (String, String) {
        let ns = self.namespace(namespace, format_args!("{path}.namespace"));
        let n = self.name(name, format_args!("{path}.name"));
        if let Some(line) = seen.insert((ns.clone(), n.clone()), name.referenced.line()) {
            self.at(
                name.referenced,
                format_args!("{path}.name"),
                format!("{kind} {ns}/{n} is already defined at line {line}"),
            );
        }
        (ns, n)
    }

    fn port(&mut self, p: &S<u16>, path: impl fmt::Display) -> u16 {
        if p.value == 0 {
            self.at(p.referenced, path, "port 0 is not a valid port");
        }
        p.value
    }
}

/// The state the document describes, and every problem found in it (unsorted).
pub(super) fn to_cluster_state(raw: &RawFile) -> (ClusterState, Vec<Diagnostic>) {
    let mut c = Check {
        diagnostics: Vec::new(),
    };
    let state = convert(raw, &mut c);
    (state, c.diagnostics)
}

fn convert(raw: &RawFile, c: &mut Check) -> ClusterState {
    // The file is the node operator's: its untargeted endpoint addresses are trusted.
    let mut state = ClusterState {
        endpoint_trust: EndpointTrust::Operator,
        ..ClusterState::default()
    };
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    let mut vips: HashMap<IpAddr, (String, u64)> = HashMap::new();
    for (si, s) in raw.services.iter().enumerate() {
        let p = format!("services[{si}]");
        let (ns, name) = c.object_id("service", &mut seen, &p, &s.namespace, &s.name);
        for (ai, a) in s.addresses.iter().enumerate() {
            let ip = a.value.to_canonical();
            if let Some((other, line)) = vips.get(&ip) {
                c.at(
                    a.referenced,
                    format_args!("{p}.addresses[{ai}]"),
                    format!("{ip} is already the address of service {other} (line {line})"),
                );
            } else {
                vips.insert(ip, (format!("{ns}/{name}"), a.referenced.line()));
            }
        }
        let ports = service_ports(&s.ports, &p, c);
        let endpoints = s
            .endpoints
            .iter()
            .enumerate()
            .map(|(ei, e)| endpoint(e, &ports, &format!("{p}.endpoints[{ei}]"), c))
            .collect();
        let client_ip_affinity = affinity(s, &p, c);
        let internal_traffic_policy = s
            .internal_traffic_policy
            .as_ref()
            .map_or(TrafficPolicy::Cluster, |t| t.value);
        if let Some(t) = &s.internal_traffic_policy
            && t.value == TrafficPolicy::Local
            && raw.node.is_none()
        {
            c.at(
                t.referenced,
                format_args!("{p}.internalTrafficPolicy"),
                "Local needs the file's `node:` (the node the agent runs on), to know which endpoints are local",
            );
        }
        state.services.push(Service {
            namespace: ns,
            name,
            addresses: s.addresses.iter().map(|a| a.value).collect(),
            ports,
            endpoints,
            always_steer: s.always_steer.as_ref().is_some_and(|b| b.value),
            client_ip_affinity,
            internal_traffic_policy,
        });
    }

    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    for (pi, pod) in raw.pods.iter().enumerate() {
        let p = format!("pods[{pi}]");
        let (ns, name) = c.object_id("pod", &mut seen, &p, &pod.namespace, &pod.name);
        let container_ports = pod
            .ports
            .iter()
            .map(|(k, v)| (k.clone(), c.port(v, format_args!("{p}.ports.{k}"))))
            .collect();
        state.pods.push(Pod {
            namespace: ns,
            name,
            ips: pod.ips.iter().map(|a| a.value).collect(),
            labels: pod.labels.clone(),
            ready: pod.ready,
            container_ports,
        });
    }

    state.node = raw.node.as_ref().map(|n| c.name(n, "node"));
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    for (pi, pod) in raw.node_pods.iter().enumerate() {
        let p = format!("nodePods[{pi}]");
        let (ns, name) = c.object_id("pod", &mut seen, &p, &pod.namespace, &pod.name);
        state.node_pods.push(NodePod {
            namespace: ns,
            name,
            uid: pod.uid.clone(),
            ips: pod.ips.iter().map(|a| a.value).collect(),
            labels: pod.labels.clone(),
            netns: pod.netns.as_ref().map(|n| {
                if !n.value.is_absolute() {
                    c.at(
                        n.referenced,
                        format!("{p}.netns"),
                        "must be an absolute path (/run/netns/NAME, /proc/PID/ns/net)",
                    );
                }
                n.value.clone()
            }),
        });
    }
    state
        .node_pods
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    let mut keys: HashMap<(String, String), (String, u64)> = HashMap::new();
    for (ri, r) in raw.routes.iter().enumerate() {
        let p = format!("routes[{ri}]");
        let (ns, name) = c.object_id("route", &mut seen, &p, &r.namespace, &r.name);
        let raw_spec = &r.spec.value;
        let spec = SandboxRouteSpec {
            routing_key: raw_spec.routing_key.value.clone(),
            forks: raw_spec
                .forks
                .iter()
                .map(|f| ForkSpec {
                    service: f.value.service.value.clone(),
                    to: ForkTarget {
                        selector: f
                            .value
                            .to
                            .value
                            .selector
                            .as_ref()
                            .map(|s| Selector::from(&s.value)),
                        service: f.value.to.value.service.as_ref().map(|s| s.value.clone()),
                    },
                    ports: f.value.ports.clone(),
                })
                .collect(),
            fallback: raw_spec.fallback,
            expires_at: raw_spec.expires_at,
            inject_key: true,
        };
        for problem in spec.problems(&ns) {
            let (loc, field) = span_of(raw_spec, &r.spec, problem.field);
            c.at(loc, format_args!("{p}.spec.{field}"), problem.message);
        }
        // The computation would let the older route win, but a file has no creation times: two
        // routes with one key are ambiguous, so the file says so.
        let key_loc = raw_spec.routing_key.referenced;
        let claim = (ns.clone(), spec.routing_key.clone());
        if let Some((other, line)) = keys.get(&claim) {
            c.at(
                key_loc,
                format_args!("{p}.spec.routingKey"),
                format!(
                    "routing key {:?} is already used by route {other} (line {line}); keys must be unique per namespace",
                    spec.routing_key
                ),
            );
        } else {
            keys.insert(claim, (format!("{ns}/{name}"), key_loc.line()));
        }
        state.routes.push(Arc::new(SandboxRouteObj {
            namespace: ns,
            name,
            // A file has no history: all routes are equally old, and key clashes are rejected
            // above, so the value never decides anything.
            creation_timestamp: Timestamp::UNIX_EPOCH,
            generation: 1,
            spec,
        }));
    }
    state.sources = super::sources::convert(&raw.sources, c);
    state
}

fn service_ports(ports: &[S<RawServicePort>], p: &str, c: &mut Check) -> Vec<ServicePort> {
    let mut out: Vec<ServicePort> = Vec::new();
    for (i, sp) in ports.iter().enumerate() {
        let pp = format!("{p}.ports[{i}]");
        let port = c.port(&sp.value.port, format_args!("{pp}.port"));
        let name = sp.value.name.as_ref().map(|n| {
            if n.value.is_empty() {
                c.at(n.referenced, format_args!("{pp}.name"), "must not be empty");
            }
            n.value.clone()
        });
        if out.iter().any(|o| o.port == port) {
            c.at(
                sp.value.port.referenced,
                format_args!("{pp}.port"),
                format!("port {port} is listed twice"),
            );
        }
        if let Some(n) = &name
            && out.iter().any(|o| o.name.as_ref() == Some(n))
        {
            c.at(
                sp.referenced,
                format_args!("{pp}.name"),
                format!("port name {n:?} is used twice"),
            );
        }
        if name.is_none() && ports.len() > 1 {
            // Endpoints name their ports after the service port; with several unnamed ports
            // there is no way to tell which is which (Kubernetes has the same rule).
            c.at(
                sp.referenced,
                format_args!("{pp}.name"),
                "a service with several ports must name each of them",
            );
        }
        let target_port = sp
            .value
            .target_port
            .as_ref()
            .map_or(TargetPort::Number(port), |t| t.value.clone());
        out.push(ServicePort {
            name,
            port,
            target_port,
        });
    }
    out
}

fn endpoint(e: &S<RawEndpoint>, ports: &[ServicePort], p: &str, c: &mut Check) -> EndpointAddr {
    let mut resolved = BTreeMap::new();
    for (k, v) in &e.value.ports {
        let port = c.port(v, format_args!("{p}.ports.{k}"));
        if ports.iter().any(|sp| sp.slice_key() == k) {
            resolved.insert(k.clone(), port);
        } else {
            let names: Vec<&str> = ports.iter().map(ServicePort::slice_key).collect();
            c.at(
                v.referenced,
                format_args!("{p}.ports.{k}"),
                format!("the service has no port named {k:?} (its ports: {names:?})"),
            );
        }
    }
    // A named targetPort can only be resolved by the endpoint itself.
    for sp in ports {
        if let TargetPort::Name(target) = &sp.target_port
            && !resolved.contains_key(sp.slice_key())
        {
            c.at(
                e.referenced,
                format_args!("{p}.ports"),
                format!(
                    "service port {:?} has targetPort {target:?}; say which port this endpoint serves it on (ports: {{ {}: N }})",
                    sp.slice_key(),
                    sp.slice_key()
                ),
            );
        }
    }
    EndpointAddr {
        ip: e.value.ip.value,
        ready: e.value.ready,
        ports: resolved,
        target_ref: e.value.target_ref.clone(),
        node_name: e.value.node_name.clone(),
    }
}

/// `sessionAffinity: ClientIP` with its timeout (Kubernetes' default when not given).
fn affinity(s: &RawService, p: &str, c: &mut Check) -> Option<Duration> {
    let timeout = s.session_affinity_config.as_ref().map(|cfg| {
        let t = &cfg.client_ip.timeout_seconds;
        // Kubernetes' bounds: 0 < timeoutSeconds <= 86400.
        if t.value == 0 || t.value > 86_400 {
            c.at(
                t.referenced,
                format_args!("{p}.sessionAffinityConfig.clientIP.timeoutSeconds"),
                format!("{} is not in 1..=86400", t.value),
            );
        }
        Duration::from_secs(u64::from(t.value))
    });
    match s.session_affinity.as_ref().map(|a| (a, a.value.as_str())) {
        Some((_, "ClientIP")) => Some(timeout.unwrap_or(DEFAULT_AFFINITY_TIMEOUT)),
        None | Some((_, "None")) => None,
        Some((a, other)) => {
            c.at(
                a.referenced,
                format_args!("{p}.sessionAffinity"),
                format!("{other:?} is not a session affinity (ClientIP or None)"),
            );
            None
        }
    }
}

/// Where a spec field is in the file, and its path below `spec.`.
fn span_of(spec: &RawSpec, whole: &S<RawSpec>, field: SpecField) -> (Location, String) {
    let fork = |i: usize| spec.forks.get(i);
    let loc = match field {
        SpecField::RoutingKey => Some(spec.routing_key.referenced),
        SpecField::ForkService(i) => fork(i).map(|f| f.value.service.referenced),
        SpecField::ForkTo(i) => fork(i).map(|f| f.value.to.referenced),
        SpecField::ForkSelector(i) => fork(i).map(|f| {
            f.value
                .to
                .value
                .selector
                .as_ref()
                .map_or(f.value.to.referenced, |s| s.referenced)
        }),
        SpecField::ForkTargetService(i) => fork(i).map(|f| {
            f.value
                .to
                .value
                .service
                .as_ref()
                .map_or(f.value.to.referenced, |s| s.referenced)
        }),
    };
    (loc.unwrap_or(whole.referenced), field.to_string())
}
