//! The route table: [`ClusterState`] in, fast lookups for the proxy and the steered set for BPF out.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use jiff::Timestamp;
use serde::Serialize;

use super::{
    ClusterState, Fallback, ForkSpec, ForkStatus, Pod, PortRef, Reason, RouteStatus, RoutingKey,
    SandboxRouteObj, Service, ServicePort, TargetPort, addr::canonical, model::local_name,
};

/// A Service as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ServiceRef {
    /// Stable id (see [`service_id`]); this is what `STEERED` stores.
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `namespace/name`, made once per table: every routing decision names its service, and a
    /// shared string costs a reference count instead of an allocation per request.
    #[serde(skip)]
    pub label: Arc<str>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ServicePortRef {
    pub name: Option<String>,
    /// The Service port (not the target port).
    pub port: u16,
}

/// The sandbox side of one (service, key) pair.
#[derive(Debug)]
pub struct ForkRoute {
    /// `namespace/name` of the SandboxRoute (shared with every decision that names it).
    route: Arc<str>,
    key: RoutingKey,
    fallback: Fallback,
    ports: Vec<ForkPort>,
}

#[derive(Debug)]
struct ForkPort {
    /// Service port number.
    port: u16,
    /// Ready sandbox endpoints, sorted, target port resolved per pod.
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl ForkRoute {
    /// The SandboxRoute this fork comes from, `namespace/name`.
    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    pub fn key(&self) -> &RoutingKey {
        &self.key
    }

    pub fn fallback(&self) -> Fallback {
        self.fallback
    }

    /// Whether the fork applies to this Service port. A port it does not cover goes to the
    /// baseline whatever the fallback says (the route never claimed it).
    pub fn covers(&self, port: u16) -> bool {
        self.port(port).is_some()
    }

    /// Ready sandbox endpoints for a Service port (empty when none or not covered).
    pub fn endpoints(&self, port: u16) -> &[SocketAddr] {
        self.port(port).map_or(&[], |p| &p.endpoints)
    }

    /// Round-robin over the ready sandbox endpoints of a Service port. `None` on a covered port
    /// means the fallback applies.
    pub fn pick_sandbox(&self, port: u16) -> Option<SocketAddr> {
        self.port(port)
            .and_then(|p| round_robin(&p.endpoints, &p.next))
    }

    fn port(&self, port: u16) -> Option<&ForkPort> {
        // A Service has a handful of ports: a scan beats hashing.
        self.ports.iter().find(|p| p.port == port)
    }
}

#[derive(Debug)]
struct ServiceEntry {
    svc: ServiceRef,
    ports: Vec<PortEntry>,
}

#[derive(Debug)]
struct PortEntry {
    port: ServicePortRef,
    /// Ready baseline endpoints, sorted.
    ready: Vec<SocketAddr>,
    /// Every baseline endpoint (ready or not): still reachable by connections opened earlier or
    /// addressed directly, so they are recognised and steered too.
    all: Vec<SocketAddr>,
    next: AtomicUsize,
}

/// The computed routes. Immutable once built (the round-robin counters aside): a new cluster
/// state gives a new table, which the proxy swaps in whole.
#[derive(Debug, Default)]
pub struct RouteTable {
    services: HashMap<u32, ServiceEntry>,
    /// ClusterIP:port and endpoint ip:targetPort → (service id, index into its ports).
    by_addr: HashMap<SocketAddr, (u32, usize)>,
    forks: HashMap<u32, HashMap<RoutingKey, ForkRoute>>,
    steered: BTreeMap<SocketAddr, u32>,
    routes: Vec<RouteView>,
    next_expiry: Option<Timestamp>,
    /// Who an IP address is, for the service graph: a sandbox pod (`ns/pod`) or else the Service
    /// whose endpoint it is (`ns/service`).
    owners: HashMap<IpAddr, String>,
}

/// One route for the admin `/routes` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    pub namespace: String,
    pub name: String,
    pub routing_key: String,
    pub fallback: Fallback,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    pub ready: bool,
    pub reason: Reason,
    pub message: String,
    pub applied: bool,
    pub forks: Vec<ForkView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkView {
    pub service: String,
    /// `None` when the Service was not found.
    pub service_id: Option<u32>,
    pub reason: Reason,
    pub message: String,
    pub ready_endpoints: usize,
    pub ports: Vec<ForkPortView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkPortView {
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub endpoints: Vec<SocketAddr>,
}

/// FNV-1a (32 bit) of `namespace/name`: the id a Service gets unless it collides.
///
/// Ids are derived from the name rather than numbered in order so they do not shift when other
/// Services come and go: they are stored in the `STEERED` BPF map and in `ORIG_DST` entries that
/// outlive a table, and a pinned map survives an agent restart.
pub fn service_id(namespace: &str, name: &str) -> u32 {
    fnv1a(&[namespace.as_bytes(), b"/", name.as_bytes()])
}

fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Ids for a set of Services, visited in (namespace, name) order.
///
/// Collisions: 0 is reserved ("no service"), and two names can hash alike (for a few thousand
/// Services the odds are around n²/2³³, about 1 in 2000 at n = 4000). The first name in
/// (namespace, name) order keeps its plain hash; a later one takes the FNV-1a of
/// `namespace/name#1`, `#2`, ... until free. So only a colliding pair can ever be affected, and
/// the result depends only on the set of names, never on input order.
fn assign_ids<'a>(names: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<u32> {
    let mut used = HashSet::new();
    let mut out = Vec::new();
    for (ns, name) in names {
        let mut id = service_id(ns, name);
        let mut attempt = 0u32;
        while id == 0 || used.contains(&id) {
            attempt += 1;
            let suffix = format!("#{attempt}");
            id = fnv1a(&[ns.as_bytes(), b"/", name.as_bytes(), suffix.as_bytes()]);
        }
        used.insert(id);
        out.push(id);
    }
    out
}

fn round_robin(list: &[SocketAddr], next: &AtomicUsize) -> Option<SocketAddr> {
    if list.is_empty() {
        return None;
    }
    // Relaxed: fairness across threads only needs the counter to move, not ordering.
    let i = next.fetch_add(1, Ordering::Relaxed) % list.len();
    list.get(i).copied()
}

/// The port an endpoint serves a Service port on: as the EndpointSlice resolved it, else the
/// numeric target port (a routes file may leave endpoint ports out).
fn endpoint_port(ep_ports: &BTreeMap<String, u16>, sp: &ServicePort) -> Option<u16> {
    ep_ports
        .get(sp.slice_key())
        .copied()
        .or(match sp.target_port {
            TargetPort::Number(n) => Some(n),
            TargetPort::Name(_) => None,
        })
}

fn baseline_addrs(svc: &Service, sp: &ServicePort, only_ready: bool) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = svc
        .endpoints
        .iter()
        .filter(|ep| ep.ready || !only_ready)
        .filter_map(|ep| endpoint_port(&ep.ports, sp).map(|p| canonical(SocketAddr::new(ep.ip, p))))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// A fork after resolving it against the cluster.
struct ResolvedFork {
    service_id: Option<u32>,
    /// (index into the Service's ports, ready sandbox endpoints).
    ports: Vec<(usize, Vec<SocketAddr>)>,
    status: ForkStatus,
}

/// Read-only indexes over a [`ClusterState`] used while computing.
struct Index<'a> {
    /// Sorted by (namespace, name); first occurrence wins on duplicates.
    services: BTreeMap<(&'a str, &'a str), (u32, &'a Service)>,
    by_id: HashMap<u32, &'a Service>,
    pods: BTreeMap<&'a str, Vec<&'a Pod>>,
}

impl<'a> Index<'a> {
    fn new(state: &'a ClusterState) -> Self {
        let mut by_name: BTreeMap<(&str, &str), &Service> = BTreeMap::new();
        for s in &state.services {
            by_name
                .entry((s.namespace.as_str(), s.name.as_str()))
                .or_insert(s);
        }
        let ids = assign_ids(by_name.keys().copied());
        let services: BTreeMap<_, _> = by_name
            .into_iter()
            .zip(ids)
            .map(|((k, s), id)| (k, (id, s)))
            .collect();
        let by_id = services.values().copied().collect();
        let mut pods: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for p in &state.pods {
            pods.entry(p.namespace.as_str()).or_default().push(p);
        }
        Index {
            services,
            by_id,
            pods,
        }
    }

    fn service(&self, ns: &str, name: &str) -> Option<(u32, &'a Service)> {
        self.services.get(&(ns, name)).copied()
    }

    fn resolve_fork(&self, ns: &str, fork: &ForkSpec) -> ResolvedFork {
        let mut status = ForkStatus {
            service: fork.service.clone(),
            reason: Reason::EndpointsReady,
            message: String::new(),
            ready_endpoints: 0,
        };
        let fail = |mut status: ForkStatus, reason, message| {
            status.reason = reason;
            status.message = message;
            ResolvedFork {
                service_id: None,
                ports: Vec::new(),
                status,
            }
        };
        let name = match local_name(ns, &fork.service) {
            Ok(n) => n,
            // Static problems were handled before; kept total for safety.
            Err((reason, msg)) => return fail(status, reason, msg),
        };
        let Some((id, svc)) = self.service(ns, name) else {
            return fail(
                status,
                Reason::ServiceNotFound,
                format!("service {ns}/{name} not found"),
            );
        };

        // Which of the Service's ports the fork covers.
        let mut problems: Vec<(Reason, String)> = Vec::new();
        let covered: Vec<usize> = match &fork.ports {
            None => (0..svc.ports.len()).collect(),
            Some(refs) => refs
                .iter()
                .filter_map(|r| {
                    let found = svc.ports.iter().position(|p| match r {
                        PortRef::Number(n) => p.port == *n,
                        PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
                    });
                    if found.is_none() {
                        problems.push((
                            Reason::PortNotFound,
                            format!("service {ns}/{name} has no port {}", port_ref_str(r)),
                        ));
                    }
                    found
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        if svc.ports.is_empty() {
            problems.push((
                Reason::PortNotFound,
                format!("service {ns}/{name} has no ports"),
            ));
        }

        let mut ports: Vec<(usize, Vec<SocketAddr>)> = Vec::new();
        match (&fork.to.selector, &fork.to.service) {
            (Some(selector), _) => {
                let matches = |p: &&Pod| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v));
                let local: Vec<&Pod> = self
                    .pods
                    .get(ns)
                    .map(|v| v.iter().copied().filter(matches).collect())
                    .unwrap_or_default();
                if local.is_empty() {
                    let elsewhere: BTreeSet<&str> = self
                        .pods
                        .iter()
                        .filter(|(other, pods)| **other != ns && pods.iter().any(matches))
                        .map(|(other, _)| *other)
                        .collect();
                    if !elsewhere.is_empty() {
                        problems.push((
                            Reason::CrossNamespace,
                            format!(
                                "selector matches pods only in namespace(s) {}; forks may only target namespace {ns:?}",
                                elsewhere.into_iter().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                }
                for &i in &covered {
                    let sp = &svc.ports[i];
                    let mut eps: Vec<SocketAddr> = local
                        .iter()
                        .filter(|p| p.ready)
                        .filter_map(|p| {
                            // The primary IP: the proxy dials it itself, so either family works,
                            // and one address per pod keeps round-robin even.
                            let ip = *p.ips.first()?;
                            let port = match &sp.target_port {
                                TargetPort::Number(n) => *n,
                                TargetPort::Name(n) => *p.container_ports.get(n)?,
                            };
                            Some(canonical(SocketAddr::new(ip, port)))
                        })
                        .collect();
                    eps.sort_unstable();
                    eps.dedup();
                    ports.push((i, eps));
                }
            }
            (None, Some(target)) => {
                let tname = local_name(ns, target).unwrap_or(target);
                match self.service(ns, tname) {
                    None => {
                        problems.push((
                            Reason::ServiceNotFound,
                            format!("target service {ns}/{tname} not found"),
                        ));
                        ports.extend(covered.iter().map(|&i| (i, Vec::new())));
                    }
                    Some((_, tsvc)) => {
                        for &i in &covered {
                            let sp = &svc.ports[i];
                            match target_port_for(tsvc, sp) {
                                Some(tp) => ports.push((i, baseline_addrs(tsvc, tp, true))),
                                None => {
                                    problems.push((
                                        Reason::PortNotFound,
                                        format!(
                                            "target service {ns}/{tname} has no port matching {}",
                                            port_label(sp)
                                        ),
                                    ));
                                    ports.push((i, Vec::new()));
                                }
                            }
                        }
                    }
                }
            }
            // Rejected by `problems()`; nothing to route to.
            (None, None) => ports.extend(covered.iter().map(|&i| (i, Vec::new()))),
        }

        let ips: BTreeSet<IpAddr> = ports
            .iter()
            .flat_map(|(_, eps)| eps.iter().map(|a| a.ip()))
            .collect();
        status.ready_endpoints = ips.len();
        if let Some((i, _)) = ports.iter().find(|(_, eps)| eps.is_empty()) {
            problems.push((
                Reason::NoReadyEndpoints,
                format!(
                    "no ready sandbox endpoint for {}; fallback applies",
                    port_label(&svc.ports[*i])
                ),
            ));
        }
        if let Some((reason, message)) = problems.into_iter().min_by_key(|(r, _)| severity(*r)) {
            status.reason = reason;
            status.message = message;
        }
        ResolvedFork {
            service_id: Some(id),
            ports,
            status,
        }
    }
}

/// The sandbox Service's port for a baseline port: same name, else same number, else its only
/// port. (A sandbox Service is usually a copy of the baseline one, but need not be.)
fn target_port_for<'s>(tsvc: &'s Service, sp: &ServicePort) -> Option<&'s ServicePort> {
    sp.name
        .as_ref()
        .and_then(|n| tsvc.ports.iter().find(|p| p.name.as_ref() == Some(n)))
        .or_else(|| tsvc.ports.iter().find(|p| p.port == sp.port))
        .or(match tsvc.ports.as_slice() {
            [only] => Some(only),
            _ => None,
        })
}

fn port_ref_str(r: &PortRef) -> String {
    match r {
        PortRef::Number(n) => n.to_string(),
        PortRef::Name(n) => format!("{n:?}"),
    }
}

fn port_label(sp: &ServicePort) -> String {
    match &sp.name {
        Some(n) => format!("port {} ({n})", sp.port),
        None => format!("port {}", sp.port),
    }
}

/// Lower is reported first when a fork or route has several problems.
fn severity(r: Reason) -> u8 {
    match r {
        Reason::InvalidKey => 0,
        Reason::InvalidSelector => 1,
        Reason::InvalidTarget => 2,
        Reason::CrossNamespace => 3,
        Reason::Expired => 4,
        Reason::DuplicateKey => 5,
        Reason::ServiceNotFound => 6,
        Reason::PortNotFound => 7,
        Reason::NoReadyEndpoints => 8,
        Reason::EndpointsReady => 9,
    }
}

impl RouteTable {
    /// Computes the table and the status of every route (in `state.routes` order).
    ///
    /// Each route is judged on its own: a bad route gets a not-ready status and changes nothing
    /// else, except that the older of two routes claiming a key in a namespace wins (ties broken
    /// by name). Routes with spec errors or past `expiresAt` claim nothing.
    pub fn compute(state: &ClusterState, now: Timestamp) -> (RouteTable, Vec<RouteStatus>) {
        let ix = Index::new(state);
        let mut statuses: Vec<Option<RouteStatus>> = vec![None; state.routes.len()];
        let status = |r: &SandboxRouteObj, reason: Reason, message: String| RouteStatus {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            observed_generation: r.generation,
            ready: reason == Reason::EndpointsReady,
            reason,
            message,
            applied: false,
            forks: Vec::new(),
        };

        // 1. Static checks and expiry; survivors compete for their key, oldest first.
        let mut order: Vec<usize> = (0..state.routes.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&state.routes[a], &state.routes[b]);
            (a.creation_timestamp, &a.namespace, &a.name).cmp(&(
                b.creation_timestamp,
                &b.namespace,
                &b.name,
            ))
        });
        let mut claims: HashMap<(&str, &str), usize> = HashMap::new();
        let mut next_expiry: Option<Timestamp> = None;
        for &i in &order {
            let r = &state.routes[i];
            if let Some(at) = r.spec.expires_at {
                if at <= now {
                    statuses[i] = Some(status(r, Reason::Expired, format!("expired at {at}")));
                    continue;
                }
                next_expiry = Some(next_expiry.map_or(at, |n| n.min(at)));
            }
            let problems = r.spec.problems(&r.namespace);
            if let Some(p) = problems.iter().min_by_key(|p| severity(p.reason)) {
                statuses[i] = Some(status(r, p.reason, format!("{}: {}", p.field, p.message)));
                continue;
            }
            let claim = (r.namespace.as_str(), r.spec.routing_key.as_str());
            if let Some(&winner) = claims.get(&claim) {
                statuses[i] = Some(status(
                    r,
                    Reason::DuplicateKey,
                    format!(
                        "routing key {:?} is already used by the older route {}",
                        r.spec.routing_key,
                        state.routes[winner].id()
                    ),
                ));
                continue;
            }
            claims.insert(claim, i);
        }

        // 2. Resolve the winners' forks against the cluster.
        let mut owners = HashMap::new();
        for svc in &state.services {
            for ep in &svc.endpoints {
                owners
                    .entry(ep.ip.to_canonical())
                    .or_insert_with(|| format!("{}/{}", svc.namespace, svc.name));
            }
        }
        // Pods are more specific than the Service they back: they win.
        for pod in &state.pods {
            for ip in &pod.ips {
                owners.insert(ip.to_canonical(), format!("{}/{}", pod.namespace, pod.name));
            }
        }
        let mut table = RouteTable {
            next_expiry,
            owners,
            ..RouteTable::default()
        };
        let mut views: Vec<RouteView> = Vec::new();
        let mut covered_ports: BTreeMap<u32, BTreeSet<usize>> = BTreeMap::new();
        let mut winners: Vec<usize> = claims.into_values().collect();
        winners.sort_unstable();
        let mut viewed = vec![false; state.routes.len()];
        for i in winners {
            viewed[i] = true;
            let r = &state.routes[i];
            // `problems()` was empty, so the key parses.
            let Ok(key) = RoutingKey::parse(&r.spec.routing_key) else {
                continue;
            };
            let resolved: Vec<ResolvedFork> = r
                .spec
                .forks
                .iter()
                .map(|f| ix.resolve_fork(&r.namespace, f))
                .collect();

            // Merge forks of the same Service (e.g. one per port); the first to claim a port
            // keeps it.
            let mut merged: BTreeMap<u32, Vec<ForkPort>> = BTreeMap::new();
            for f in &resolved {
                let Some(id) = f.service_id else { continue };
                let Some(svc) = ix.by_id.get(&id) else {
                    continue;
                };
                let ports = merged.entry(id).or_default();
                for (pi, eps) in &f.ports {
                    let port = svc.ports[*pi].port;
                    if ports.iter().all(|p| p.port != port) {
                        ports.push(ForkPort {
                            port,
                            endpoints: eps.clone(),
                            next: AtomicUsize::new(0),
                        });
                        covered_ports.entry(id).or_default().insert(*pi);
                    }
                }
            }
            let mut applied = false;
            for (id, ports) in merged {
                if ports.is_empty() {
                    continue;
                }
                applied = true;
                table.forks.entry(id).or_default().insert(
                    key.clone(),
                    ForkRoute {
                        route: r.id().into(),
                        key: key.clone(),
                        fallback: r.spec.fallback,
                        ports,
                    },
                );
            }

            let worst = resolved
                .iter()
                .map(|f| &f.status)
                .enumerate()
                .min_by_key(|(_, s)| severity(s.reason));
            let (reason, message) = match worst {
                Some((i, s)) if s.reason != Reason::EndpointsReady => (
                    s.reason,
                    format!("forks[{i}] ({}): {}", s.service, s.message),
                ),
                Some(_) => (
                    Reason::EndpointsReady,
                    format!("{} fork(s) have ready sandbox endpoints", resolved.len()),
                ),
                None => (Reason::EndpointsReady, "route has no forks".into()),
            };
            let mut st = status(r, reason, message);
            st.applied = applied;
            st.forks = resolved.iter().map(|f| f.status.clone()).collect();
            views.push(view_of(r, &st, &resolved, &ix));
            statuses[i] = Some(st);
        }

        // 3. Services, address index and the steered set.
        for ((ns, name), (id, svc)) in &ix.services {
            let mut ports: Vec<PortEntry> = Vec::new();
            for sp in &svc.ports {
                // A duplicate port number would make lookups ambiguous; the first one wins.
                if ports.iter().any(|p| p.port.port == sp.port) {
                    continue;
                }
                ports.push(PortEntry {
                    port: ServicePortRef {
                        name: sp.name.clone(),
                        port: sp.port,
                    },
                    ready: baseline_addrs(svc, sp, true),
                    all: baseline_addrs(svc, sp, false),
                    next: AtomicUsize::new(0),
                });
            }
            table.services.insert(
                *id,
                ServiceEntry {
                    svc: ServiceRef {
                        id: *id,
                        namespace: (*ns).to_owned(),
                        name: (*name).to_owned(),
                        label: format!("{ns}/{name}").into(),
                    },
                    ports,
                },
            );
        }
        table.index_addresses(&ix, &covered_ports);

        // Routes that lost or never competed for their key are shown too, with their reason.
        for ((status, r), viewed) in statuses.iter().zip(&state.routes).zip(&viewed) {
            if let (Some(s), false) = (status, viewed) {
                views.push(view_of(r, s, &[], &ix));
            }
        }
        views.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        table.routes = views;

        let statuses = statuses
            .into_iter()
            .zip(&state.routes)
            .map(|(s, r)| {
                s.unwrap_or_else(|| {
                    // Unreachable: every route got a status above. Stay total regardless.
                    status(r, Reason::InvalidTarget, "not evaluated".into())
                })
            })
            .collect();
        (table, statuses)
    }

    /// Fills `by_addr` and `steered`. ClusterIPs are unique to a Service; endpoint addresses may
    /// be shared (two Services selecting the same pods), and then a Service with forks wins, then
    /// (namespace, name) order, so `service_for` and `STEERED` always agree.
    fn index_addresses(&mut self, ix: &Index<'_>, covered: &BTreeMap<u32, BTreeSet<usize>>) {
        for (id, svc) in ix.services.values() {
            let Some(entry) = self.services.get(id) else {
                continue;
            };
            for ip in &svc.addresses {
                for (pi, p) in entry.ports.iter().enumerate() {
                    let addr = canonical(SocketAddr::new(*ip, p.port.port));
                    self.by_addr.entry(addr).or_insert((*id, pi));
                }
            }
        }
        let forked_first = ix
            .services
            .values()
            .filter(|(id, _)| covered.contains_key(id))
            .chain(
                ix.services
                    .values()
                    .filter(|(id, _)| !covered.contains_key(id)),
            );
        for (id, _) in forked_first {
            let Some(entry) = self.services.get(id) else {
                continue;
            };
            for (pi, p) in entry.ports.iter().enumerate() {
                for addr in &p.all {
                    self.by_addr.entry(*addr).or_insert((*id, pi));
                }
            }
        }

        for (id, svc_port_indexes) in covered {
            let (Some(entry), Some(svc)) = (self.services.get(id), ix.by_id.get(id)) else {
                continue;
            };
            // `covered` holds indexes into the spec's ports; map them to entry ports by number.
            for spi in svc_port_indexes {
                let Some(sp) = svc.ports.get(*spi) else {
                    continue;
                };
                let Some((pi, p)) = entry
                    .ports
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.port.port == sp.port)
                else {
                    continue;
                };
                let vips = svc
                    .addresses
                    .iter()
                    .map(|ip| canonical(SocketAddr::new(*ip, p.port.port)));
                for addr in vips.chain(p.all.iter().copied()) {
                    if self.by_addr.get(&addr) == Some(&(*id, pi)) {
                        self.steered.insert(addr, *id);
                    }
                }
            }
        }

        // Services load-balanced by the agent itself (no kube-proxy): their virtual addresses
        // are steered with or without forks.
        for (id, svc) in ix.services.values().filter(|(_, s)| s.always_steer) {
            let Some(entry) = self.services.get(id) else {
                continue;
            };
            for (pi, p) in entry.ports.iter().enumerate() {
                for ip in &svc.addresses {
                    let addr = canonical(SocketAddr::new(*ip, p.port.port));
                    if self.by_addr.get(&addr) == Some(&(*id, pi)) {
                        self.steered.insert(addr, *id);
                    }
                }
            }
        }
    }

    /// The Service and port a connection's original destination belongs to: a ClusterIP:port,
    /// or a baseline endpoint ip:targetPort (when another hook translated the ClusterIP first).
    pub fn service_for(&self, dst: SocketAddr) -> Option<(&ServiceRef, &ServicePortRef)> {
        let (id, pi) = self.by_addr.get(&canonical(dst))?;
        let entry = self.services.get(id)?;
        Some((&entry.svc, &entry.ports.get(*pi)?.port))
    }

    /// The port of Service `id` that `dst` addresses, with capture's word (`id`) for which
    /// Service was meant: the port `dst` is indexed under when that is this Service; the port
    /// `dst` is a baseline endpoint of when the endpoint is shared with another Service; the
    /// Service port numbered like `dst` when this table does not know the address at all.
    /// `None` otherwise (the current table gives the address to another Service).
    pub fn service_port(&self, id: u32, dst: SocketAddr) -> Option<(&ServiceRef, &ServicePortRef)> {
        let dst = canonical(dst);
        let entry = self.services.get(&id)?;
        let pi = match self.by_addr.get(&dst) {
            Some(&(owner, pi)) if owner == id => pi,
            Some(_) => entry.ports.iter().position(|p| p.all.contains(&dst))?,
            None => entry.ports.iter().position(|p| p.port.port == dst.port())?,
        };
        Some((&entry.svc, &entry.ports.get(pi)?.port))
    }

    /// A Service by id.
    pub fn service(&self, id: u32) -> Option<&ServiceRef> {
        self.services.get(&id).map(|e| &e.svc)
    }

    /// The fork of a Service for a key, if some route installed one.
    pub fn fork(&self, service_id: u32, key: &RoutingKey) -> Option<&ForkRoute> {
        self.forks.get(&service_id)?.get(key.as_str())
    }

    /// Ready baseline endpoints of a Service port (target port resolved).
    pub fn baseline(&self, service_id: u32, port: u16) -> &[SocketAddr] {
        self.port_entry(service_id, port).map_or(&[], |p| &p.ready)
    }

    /// Round-robin over [`RouteTable::baseline`].
    pub fn pick_baseline(&self, service_id: u32, port: u16) -> Option<SocketAddr> {
        self.port_entry(service_id, port)
            .and_then(|p| round_robin(&p.ready, &p.next))
    }

    fn port_entry(&self, service_id: u32, port: u16) -> Option<&PortEntry> {
        self.services
            .get(&service_id)?
            .ports
            .iter()
            .find(|p| p.port.port == port)
    }

    /// Destinations to capture: for every Service with at least one installed fork, each
    /// ClusterIP:port and baseline endpoint ip:targetPort of its forked ports → service id.
    pub fn steered(&self) -> &BTreeMap<SocketAddr, u32> {
        &self.steered
    }

    /// Every route with its status and installed endpoints, sorted by namespace/name.
    pub fn routes(&self) -> &[RouteView] {
        &self.routes
    }

    /// Who owns an IP address: a known pod, else the Service it is an endpoint of.
    pub fn owner_of(&self, ip: IpAddr) -> Option<&str> {
        self.owners.get(&ip.to_canonical()).map(String::as_str)
    }

    /// The earliest future `expiresAt`: recompute then, since expiry needs no cluster change.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.next_expiry
    }
}

fn view_of(
    r: &SandboxRouteObj,
    st: &RouteStatus,
    resolved: &[ResolvedFork],
    ix: &Index<'_>,
) -> RouteView {
    let forks = resolved
        .iter()
        .map(|f| {
            let svc = f.service_id.and_then(|id| ix.by_id.get(&id));
            ForkView {
                service: f.status.service.clone(),
                service_id: f.service_id,
                reason: f.status.reason,
                message: f.status.message.clone(),
                ready_endpoints: f.status.ready_endpoints,
                ports: f
                    .ports
                    .iter()
                    .filter_map(|(pi, eps)| {
                        let sp = svc?.ports.get(*pi)?;
                        Some(ForkPortView {
                            port: sp.port,
                            name: sp.name.clone(),
                            endpoints: eps.clone(),
                        })
                    })
                    .collect(),
            }
        })
        .collect();
    RouteView {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        routing_key: r.spec.routing_key.clone(),
        fallback: r.spec.fallback,
        expires_at: r.spec.expires_at,
        ready: st.ready,
        reason: st.reason,
        message: st.message.clone(),
        applied: st.applied,
        forks,
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
