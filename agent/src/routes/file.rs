//! The routes file: a YAML [`ClusterState`] for running without a cluster. The watcher that
//! hot-reloads it is the routes-file source in `crate::sync::file_source`.
//!
//! ```yaml
//! services:
//!   - name: reviews
//!     namespace: shop            # default: "default"
//!     addresses: [10.96.0.7]     # ClusterIPs
//!     ports: [{ name: http, port: 9080, targetPort: http }]   # targetPort: number or name
//!     endpoints: [{ ip: 198.18.2.2, ports: { http: 9080 } }] # ready: true by default
//!     alwaysSteer: false         # true: steer the addresses even without forks (no kube-proxy)
//! pods:
//!   - { name: reviews-v2, namespace: shop, ips: [198.18.3.2], ports: { http: 9080 },
//!       labels: { app: reviews-v2, shunt.dev/sandbox: pr-42 } }
//! routes:
//!   - name: pr-42
//!     namespace: shop
//!     spec: { routingKey: pr-42, fallback: Baseline,
//!             forks: [ { service: reviews, to: { selector: { app: reviews-v2, shunt.dev/sandbox: pr-42 } } } ] }
//! ```
//!
//! The file is validated as a whole and errors point at a line: a file is edited by hand, and a
//! typo should be reported where it is rather than show up later as a route that does nothing.
//! So this is stricter than the route computation: unknown fields, spec errors that the
//! computation would turn into a status (bad key, bad selector, cross-namespace target), and
//! ambiguities (duplicate names, two routes with one key) reject the file. Problems that depend
//! on the cluster (a missing Service, no ready pod) are left to the route statuses.
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use jiff::Timestamp;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::{
    ClusterState, EndpointAddr, Fallback, ForkSpec, ForkTarget, Pod, PortRef, SandboxRouteObj,
    SandboxRouteSpec, Service, ServicePort, SpecField, TargetPort,
};

/// Namespace of objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One problem in a routes file, at a line and column (1-based; 0 when unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: u64,
    pub column: u64,
    /// Where in the document, e.g. `routes[0].spec.routingKey` (empty for syntax errors).
    pub path: String,
    pub message: String,
}

/// Why a routes file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum RoutesFileError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, each rendered as `file:line:column: path: message`.
    #[error("{}", render(file, diagnostics))]
    Invalid {
        file: String,
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(file: &str, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(file);
        if d.line > 0 {
            out.push_str(&format!(":{}:{}", d.line, d.column));
        }
        out.push_str(": ");
        if !d.path.is_empty() {
            out.push_str(&d.path);
            out.push_str(": ");
        }
        out.push_str(&d.message);
    }
    out
}

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    pods: Vec<RawPod>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: S<String>,
    #[serde(default)]
    namespace: Option<S<String>>,
    #[serde(default)]
    addresses: Vec<S<IpAddr>>,
    #[serde(default)]
    ports: Vec<S<RawServicePort>>,
    #[serde(default)]
    endpoints: Vec<S<RawEndpoint>>,
    /// See [`Service::always_steer`].
    #[serde(default, rename = "alwaysSteer")]
    always_steer: Option<S<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServicePort {
    #[serde(default)]
    name: Option<S<String>>,
    port: S<u16>,
    /// Defaults to `port`, as in Kubernetes.
    #[serde(default)]
    target_port: Option<S<TargetPort>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    ip: S<IpAddr>,
    #[serde(default = "yes")]
    ready: bool,
    /// Service port name → port on this endpoint.
    #[serde(default)]
    ports: BTreeMap<String, S<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPod {
    name: S<String>,
    #[serde(default)]
    namespace: Option<S<String>>,
    #[serde(default)]
    ips: Vec<S<IpAddr>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default = "yes")]
    ready: bool,
    /// Container port name → number.
    #[serde(default)]
    ports: BTreeMap<String, S<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: S<String>,
    #[serde(default)]
    namespace: Option<S<String>>,
    spec: S<RawSpec>,
}

/// [`SandboxRouteSpec`] with spans; same field names, so the file and the CRD read alike.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    routing_key: S<String>,
    #[serde(default)]
    forks: Vec<S<RawFork>>,
    #[serde(default)]
    fallback: Fallback,
    #[serde(default)]
    expires_at: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFork {
    service: S<String>,
    to: S<RawTarget>,
    #[serde(default)]
    ports: Option<Vec<PortRef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(default)]
    selector: Option<S<BTreeMap<String, String>>>,
    #[serde(default)]
    service: Option<S<String>>,
}

fn yes() -> bool {
    true
}

/// Collects diagnostics while converting the raw document.
struct Check {
    diagnostics: Vec<Diagnostic>,
}

impl Check {
    fn at(&mut self, loc: Location, path: impl fmt::Display, message: impl Into<String>) {
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

    fn port(&mut self, p: &S<u16>, path: impl fmt::Display) -> u16 {
        if p.value == 0 {
            self.at(p.referenced, path, "port 0 is not a valid port");
        }
        p.value
    }
}

/// Parses and validates a routes file. `file_name` prefixes diagnostics.
pub fn parse_routes(text: &str, file_name: &str) -> Result<ClusterState, RoutesFileError> {
    let invalid = |diagnostics| RoutesFileError::Invalid {
        file: file_name.to_owned(),
        diagnostics,
    };
    // An empty file (or one holding only comments) is an empty cluster, not an error.
    let raw: Option<RawFile> = serde_saphyr::from_str(text).map_err(|e| {
        let e = e.without_snippet();
        let loc = e.location().unwrap_or(Location::UNKNOWN);
        let mut message = e.to_string();
        // The crate appends the location in prose; we print it as `file:line:col` instead.
        let suffix = format!(" at line {}, column {}", loc.line(), loc.column());
        if let Some(m) = message.strip_suffix(&suffix) {
            message = m.to_owned();
        }
        invalid(vec![Diagnostic {
            line: loc.line(),
            column: loc.column(),
            path: String::new(),
            message,
        }])
    })?;
    let raw = raw.unwrap_or(RawFile {
        services: Vec::new(),
        pods: Vec::new(),
        routes: Vec::new(),
    });
    let mut c = Check {
        diagnostics: Vec::new(),
    };
    let state = convert(&raw, &mut c);
    if c.diagnostics.is_empty() {
        Ok(state)
    } else {
        c.diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(invalid(c.diagnostics))
    }
}

/// Reads, parses and validates a routes file.
pub fn load_routes(path: &Path) -> Result<ClusterState, RoutesFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| RoutesFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_routes(&text, &path.display().to_string())
}

fn convert(raw: &RawFile, c: &mut Check) -> ClusterState {
    let mut state = ClusterState::default();
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    let mut vips: HashMap<IpAddr, (String, u64)> = HashMap::new();
    for (si, s) in raw.services.iter().enumerate() {
        let p = format!("services[{si}]");
        let ns = c.namespace(&s.namespace, format_args!("{p}.namespace"));
        let name = c.name(&s.name, format_args!("{p}.name"));
        if let Some(line) = seen.insert((ns.clone(), name.clone()), s.name.referenced.line()) {
            c.at(
                s.name.referenced,
                format_args!("{p}.name"),
                format!("service {ns}/{name} is already defined at line {line}"),
            );
        }
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
        state.services.push(Service {
            namespace: ns,
            name,
            addresses: s.addresses.iter().map(|a| a.value).collect(),
            ports,
            endpoints,
            always_steer: s.always_steer.as_ref().is_some_and(|b| b.value),
        });
    }

    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    for (pi, pod) in raw.pods.iter().enumerate() {
        let p = format!("pods[{pi}]");
        let ns = c.namespace(&pod.namespace, format_args!("{p}.namespace"));
        let name = c.name(&pod.name, format_args!("{p}.name"));
        if let Some(line) = seen.insert((ns.clone(), name.clone()), pod.name.referenced.line()) {
            c.at(
                pod.name.referenced,
                format_args!("{p}.name"),
                format!("pod {ns}/{name} is already defined at line {line}"),
            );
        }
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

    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    let mut keys: HashMap<(String, String), (String, u64)> = HashMap::new();
    for (ri, r) in raw.routes.iter().enumerate() {
        let p = format!("routes[{ri}]");
        let ns = c.namespace(&r.namespace, format_args!("{p}.namespace"));
        let name = c.name(&r.name, format_args!("{p}.name"));
        if let Some(line) = seen.insert((ns.clone(), name.clone()), r.name.referenced.line()) {
            c.at(
                r.name.referenced,
                format_args!("{p}.name"),
                format!("route {ns}/{name} is already defined at line {line}"),
            );
        }
        let raw_spec = &r.spec.value;
        let spec = SandboxRouteSpec {
            routing_key: raw_spec.routing_key.value.clone(),
            forks: raw_spec
                .forks
                .iter()
                .map(|f| ForkSpec {
                    service: f.value.service.value.clone(),
                    to: ForkTarget {
                        selector: f.value.to.value.selector.as_ref().map(|s| s.value.clone()),
                        service: f.value.to.value.service.as_ref().map(|s| s.value.clone()),
                    },
                    ports: f.value.ports.clone(),
                })
                .collect(),
            fallback: raw_spec.fallback,
            expires_at: raw_spec.expires_at,
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
        state.routes.push(SandboxRouteObj {
            namespace: ns,
            name,
            // A file has no history: all routes are equally old, and key clashes are rejected
            // above, so the value never decides anything.
            creation_timestamp: Timestamp::UNIX_EPOCH,
            generation: 1,
            spec,
        });
    }
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

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
