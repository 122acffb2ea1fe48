//! Resolving forks against the cluster: which Service ports a fork covers, its ready sandbox
//! endpoints (by selector or through a sandbox Service), and the problems found on the way.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use super::{
    super::addr::canonical,
    ids::assign_ids,
    owned::{KnownPods, Owned, Refusal, describe},
};
use crate::routes::{
    ClusterState, EndpointAddr, EndpointTrust, ForkSpec, ForkStatus, Pod, PortRef, RouteReason,
    Service, ServicePort, TargetPort, model::local_name,
};

/// How many refused addresses a status names before it says "and N more".
const NAMED_REFUSALS: usize = 8;

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

pub(super) fn baseline_addrs(svc: &Service, sp: &ServicePort, only_ready: bool) -> Vec<SocketAddr> {
    endpoint_addrs(svc, sp, |ep| ep.ready || !only_ready)
}

/// The addresses (ip:port serving `sp`) of the endpoints `keep` accepts, sorted.
pub(super) fn endpoint_addrs(
    svc: &Service,
    sp: &ServicePort,
    keep: impl Fn(&EndpointAddr) -> bool,
) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = svc
        .endpoints
        .iter()
        .filter(|ep| keep(ep))
        .filter_map(|ep| endpoint_port(&ep.ports, sp).map(|p| canonical(SocketAddr::new(ep.ip, p))))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// A fork after resolving it against the cluster.
pub(super) struct ResolvedFork {
    pub(super) service_id: Option<u32>,
    /// (index into the Service's ports, ready sandbox endpoints).
    pub(super) ports: Vec<(usize, Vec<SocketAddr>)>,
    pub(super) status: ForkStatus,
}

/// Read-only indexes over a [`ClusterState`] used while computing.
pub(super) struct Index<'a> {
    /// Sorted by (namespace, name); first occurrence wins on duplicates.
    pub(super) services: BTreeMap<(&'a str, &'a str), (u32, &'a Service)>,
    pub(super) by_id: HashMap<u32, &'a Service>,
    pods: BTreeMap<&'a str, Vec<&'a Pod>>,
    known: &'a KnownPods<'a>,
    refused: &'a HashMap<(String, String), Vec<Refusal>>,
    trust: EndpointTrust,
}

impl<'a> Index<'a> {
    /// Services come from `owned` (only their own endpoint addresses), pods from `state`.
    pub(super) fn new(state: &'a ClusterState, owned: &'a Owned, known: &'a KnownPods<'a>) -> Self {
        let mut by_name: BTreeMap<(&str, &str), &Service> = BTreeMap::new();
        for s in &owned.services {
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
            known,
            refused: &owned.refused,
            trust: state.endpoint_trust,
        }
    }

    fn refused(&self, ns: &str, name: &str) -> &'a [Refusal] {
        // Asked once per fork: without any refusal (the usual case) the owned key it would take
        // is not built.
        if self.refused.is_empty() {
            return &[];
        }
        self.refused
            .get(&(ns.to_owned(), name.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    /// The ready endpoint IPs of sandbox Service `tsvc` (in `ns`, the route's namespace) that
    /// are Pods of `ns` by the Pod objects themselves, not by what a slice says; and the others.
    fn sandbox_service_pods(&self, ns: &str, tsvc: &Service) -> (BTreeSet<IpAddr>, Vec<Refusal>) {
        let mut refused: Vec<Refusal> = self.refused(ns, &tsvc.name).to_vec();
        let mut ok = BTreeSet::new();
        for ep in tsvc.endpoints.iter().filter(|ep| ep.ready) {
            let known = match &ep.target_ref {
                // Only the operator's file may list an untargeted address (see EndpointTrust).
                None => self.trust == EndpointTrust::Operator,
                Some(t) => t.kind == "Pod" && self.known.has(ep.ip, ns, &t.name),
            };
            if known {
                ok.insert(ep.ip.to_canonical());
            } else {
                let what = ep.target_ref.as_ref().map_or_else(
                    || "it".to_owned(),
                    |t| format!("{}/{}", t.namespace, t.name),
                );
                refused.push(Refusal {
                    ip: ep.ip,
                    why: format!(
                        "is not a known Pod of namespace {ns:?} (no Pod object for {what} at this address)"
                    ),
                });
            }
        }
        (ok, refused)
    }

    fn service(&self, ns: &str, name: &str) -> Option<(u32, &'a Service)> {
        self.services.get(&(ns, name)).copied()
    }

    pub(super) fn resolve_fork(&self, ns: &str, fork: &ForkSpec) -> ResolvedFork {
        let mut status = ForkStatus {
            service: fork.service.clone(),
            reason: RouteReason::EndpointsReady,
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
                RouteReason::ServiceNotFound,
                format!("service {ns}/{name} not found"),
            );
        };
        // Steering a Service whose slices list addresses it does not own would either capture
        // them (another namespace's traffic) or change its baseline (without them): do neither.
        let foreign = self.refused(ns, name);
        if !foreign.is_empty() {
            return fail(
                status,
                RouteReason::ForeignEndpoints,
                format!(
                    "service {ns}/{name} is not forked: its endpoints list addresses that are not Pods of namespace {ns:?}, which are never steered: {}",
                    describe(foreign, NAMED_REFUSALS)
                ),
            );
        }

        // Which of the Service's ports the fork covers.
        let mut problems: Vec<(RouteReason, String)> = Vec::new();
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
                            RouteReason::PortNotFound,
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
                RouteReason::PortNotFound,
                format!("service {ns}/{name} has no ports"),
            ));
        }

        let mut ports: Vec<(usize, Vec<SocketAddr>)> = Vec::new();
        match (&fork.to.selector, &fork.to.service) {
            (Some(selector), _) => {
                let matches = |p: &&Pod| selector.matches(&p.labels);
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
                            RouteReason::CrossNamespace,
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
                            RouteReason::ServiceNotFound,
                            format!("target service {ns}/{tname} not found"),
                        ));
                        ports.extend(covered.iter().map(|&i| (i, Vec::new())));
                    }
                    Some((_, tsvc)) => {
                        let (pods, refused) = self.sandbox_service_pods(ns, tsvc);
                        if !refused.is_empty() {
                            problems.push((
                                RouteReason::ForeignEndpoints,
                                format!(
                                    "target service {ns}/{tname}: addresses that are not Pods of namespace {ns:?} are never sandbox endpoints: {}",
                                    describe(&refused, NAMED_REFUSALS)
                                ),
                            ));
                        }
                        for &i in &covered {
                            let sp = &svc.ports[i];
                            match target_port_for(tsvc, sp) {
                                Some(tp) => {
                                    let mut eps = baseline_addrs(tsvc, tp, true);
                                    eps.retain(|a| pods.contains(&a.ip().to_canonical()));
                                    ports.push((i, eps));
                                }
                                None => {
                                    problems.push((
                                        RouteReason::PortNotFound,
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
                RouteReason::NoReadyEndpoints,
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
pub(super) fn severity(r: RouteReason) -> u8 {
    match r {
        RouteReason::InvalidKey => 0,
        RouteReason::InvalidSelector => 1,
        RouteReason::InvalidTarget => 2,
        RouteReason::CrossNamespace => 3,
        RouteReason::ForeignEndpoints => 4,
        RouteReason::Expired => 5,
        RouteReason::DuplicateKey => 6,
        RouteReason::ServiceNotFound => 7,
        RouteReason::PortNotFound => 8,
        RouteReason::NoReadyEndpoints => 9,
        // Never computed here (the kube status writer's), ranked as not-ready-yet.
        RouteReason::NotAppliedOnNodes => 9,
        RouteReason::EndpointsReady => 10,
    }
}
