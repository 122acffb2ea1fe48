//! The route table: [`ClusterState`] in, fast lookups for the proxy and the steered set for BPF out.
//!
//! [`RouteTable::compute`] is here; the lookups the proxy makes per request are in [`lookups`].
//! The steps the computation takes live beside it: [`ids`] names Services with stable ids,
//! [`resolve`] resolves each fork against the cluster (ports, sandbox endpoints, the problems
//! found), [`memo`] keeps what it found per route for the next computation, [`steered`] indexes
//! addresses and picks the steered set, and [`views`] is the `/routes` view of each route.
mod baseline;
mod ids;
mod lookups;
mod memo;
mod owned;
mod resolve;
mod steered;
mod views;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use jiff::Timestamp;
use serde::Serialize;

use super::{
    ClusterState, Fallback, RouteReason, RouteStatus, RoutingKey, SandboxRouteObj, TrafficPolicy,
};
use resolve::{Index, ResolvedFork, baseline_addrs, endpoint_addrs, severity};
use views::ViewSource;

pub use baseline::VirtualPick;
pub use ids::service_id;
pub use memo::ResolveMemo;
pub use views::{ForkPortView, ForkView, RouteView};

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
    /// Sized exactly: one per route and Service, thousands of them.
    ports: Box<[ForkPort]>,
}

#[derive(Debug)]
struct ForkPort {
    /// Service port number.
    port: u16,
    /// Ready sandbox endpoints, sorted, target port resolved per pod.
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct ServiceEntry {
    svc: ServiceRef,
    ports: Vec<PortEntry>,
    /// Its virtual addresses (ClusterIPs), canonical: only these get an endpoint picked.
    vips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP` and its timeout.
    affinity: Option<Duration>,
    /// `internalTrafficPolicy: Local`: `candidates` holds only this node's endpoints.
    local_only: bool,
    /// Its ports as declared, duplicates included: what resolved forks' port indexes point
    /// into, for the `/routes` view.
    declared_ports: Box<[ServicePortRef]>,
}

#[derive(Debug)]
struct PortEntry {
    port: ServicePortRef,
    /// Ready baseline endpoints, sorted.
    ready: Vec<SocketAddr>,
    /// Every baseline endpoint (ready or not): still reachable by connections opened earlier or
    /// addressed directly, so they are recognised and steered too.
    all: Vec<SocketAddr>,
    /// What a connection to a virtual address may be sent to: the ready endpoints, only this
    /// node's under `internalTrafficPolicy: Local`. Sorted.
    candidates: Vec<SocketAddr>,
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
    /// What the `/routes` view is built from.
    views: ViewSource,
    next_expiry: Option<Timestamp>,
    /// Who an IP address is, for the service graph: a sandbox pod (`ns/pod`) or else the Service
    /// whose endpoint it is (`ns/service`).
    owners: HashMap<IpAddr, String>,
    /// Endpoint addresses of more than one Service port → each (service id, port index), in
    /// (namespace, name) order: which fork a keyed request dialled to one of them follows.
    shared: HashMap<SocketAddr, Vec<(u32, usize)>>,
    /// This node's pod IPs → the namespaces of the pods with that IP (several only for
    /// host-network pods): who a client is, for `--strip-keys-from-namespace`.
    node_pod_namespaces: HashMap<IpAddr, Vec<Arc<str>>>,
}

impl RouteTable {
    /// Computes the table and the status of every route (in `state.routes` order).
    ///
    /// Each route is judged on its own: a bad route gets a not-ready status and changes nothing
    /// else, except that the older of two routes claiming a key in a namespace wins (ties broken
    /// by name). Routes with spec errors or past `expiresAt` claim nothing.
    pub fn compute(state: &ClusterState, now: Timestamp) -> (RouteTable, Vec<RouteStatus>) {
        let (table, statuses, _) = Self::compute_remembering(state, now, HashMap::new());
        (table, statuses.as_ref().clone())
    }

    /// [`Self::compute`], reusing from `memo` what the last computation found for each route
    /// that has not changed (its check always, its forks when nothing but routes changed), and
    /// leaving there what this one found. The result is the same as [`Self::compute`]'s; the
    /// statuses are shared with the table's `/routes` view.
    pub fn compute_with(
        state: &Arc<ClusterState>,
        now: Timestamp,
        memo: &mut ResolveMemo,
    ) -> (RouteTable, Arc<Vec<RouteStatus>>) {
        let remembered = memo.take_for(state);
        let (table, statuses, remembered) = Self::compute_remembering(state, now, remembered);
        memo.keep(state.clone(), remembered);
        (table, statuses)
    }

    fn compute_remembering(
        state: &ClusterState,
        now: Timestamp,
        mut remembered: HashMap<usize, memo::Remembered>,
    ) -> (
        RouteTable,
        Arc<Vec<RouteStatus>>,
        HashMap<usize, memo::Remembered>,
    ) {
        let mut mine: Vec<memo::Remembered> = state
            .routes
            .iter()
            .map(|r| remembered.remove(&memo::route_key(r)).unwrap_or_default())
            .collect();
        drop(remembered);
        // A namespace steers only what it owns: every later step sees only owned addresses.
        let known = owned::KnownPods::new(state);
        let owned = owned::owned_endpoints(state, &known);
        let ix = Index::new(state, &owned, &known);
        let mut statuses: Vec<Option<RouteStatus>> = vec![None; state.routes.len()];
        let status = |r: &SandboxRouteObj, reason: RouteReason, message: String| RouteStatus {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            observed_generation: r.generation,
            ready: reason == RouteReason::EndpointsReady,
            reason,
            message,
            applied: false,
            forks: Vec::new(),
        };

        // 1. Static checks and expiry; survivors compete for their key, oldest first.
        let mut order: Vec<usize> = (0..state.routes.len()).collect();
        // Sources list routes by (namespace, name): then a stable sort on the creation time
        // alone gives the same order, without comparing names at every step (at 10,000 routes
        // the comparisons were a good part of the computation).
        let by_name = state
            .routes
            .windows(2)
            .all(|w| (&w[0].namespace, &w[0].name) <= (&w[1].namespace, &w[1].name));
        if by_name {
            order.sort_by_key(|&i| state.routes[i].creation_timestamp);
        } else {
            order.sort_by(|&a, &b| {
                let (a, b) = (&state.routes[a], &state.routes[b]);
                (a.creation_timestamp, &a.namespace, &a.name).cmp(&(
                    b.creation_timestamp,
                    &b.namespace,
                    &b.name,
                ))
            });
        }
        let mut claims: HashMap<(&str, &str), usize> = HashMap::with_capacity(state.routes.len());
        let mut next_expiry: Option<Timestamp> = None;
        for &i in &order {
            let r = &state.routes[i];
            if let Some(at) = r.spec.expires_at {
                if at <= now {
                    statuses[i] = Some(status(r, RouteReason::Expired, format!("expired at {at}")));
                    continue;
                }
                next_expiry = Some(next_expiry.map_or(at, |n| n.min(at)));
            }
            let checked = mine[i].checked.get_or_insert_with(|| {
                let problems = r.spec.problems(&r.namespace);
                let worst = problems.into_iter().min_by_key(|p| severity(p.reason));
                worst.map(|p| (p.reason, format!("{}: {}", p.field, p.message)))
            });
            if let Some((reason, message)) = checked {
                statuses[i] = Some(status(r, *reason, message.clone()));
                continue;
            }
            let claim = (r.namespace.as_str(), r.spec.routing_key.as_str());
            if let Some(&winner) = claims.get(&claim) {
                statuses[i] = Some(status(
                    r,
                    RouteReason::DuplicateKey,
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
        let mut table = RouteTable {
            next_expiry,
            owners: owned::address_owners(&owned, state),
            node_pod_namespaces: owned::node_pod_namespaces(state),
            ..RouteTable::default()
        };
        // The forks each winner resolved, for the `/routes` view.
        let mut resolved_of: Vec<Option<Arc<[ResolvedFork]>>> = vec![None; state.routes.len()];
        let mut covered_ports: BTreeMap<u32, BTreeSet<usize>> = BTreeMap::new();
        let mut winners: Vec<usize> = claims.into_values().collect();
        winners.sort_unstable();
        // (service id, fork) of every winner, put in `table.forks` at the end with each
        // Service's map sized once: growing thousands of small maps one insert at a time was a
        // tenth of the computation at 10,000 routes.
        let mut installed: Vec<(u32, ForkRoute)> = Vec::with_capacity(winners.len());
        for i in winners {
            let r = &state.routes[i];
            // `problems()` was empty, so the key parses.
            let Ok(key) = RoutingKey::parse(&r.spec.routing_key) else {
                continue;
            };
            let resolved: Arc<[ResolvedFork]> = mine[i]
                .resolved
                .get_or_insert_with(|| {
                    let ns = &r.namespace;
                    r.spec
                        .forks
                        .iter()
                        .map(|f| ix.resolve_fork(ns, f))
                        .collect()
                })
                .clone();

            // Merge forks of the same Service (e.g. one per port); the first to claim a port
            // keeps it.
            let mut merged: BTreeMap<u32, Vec<ForkPort>> = BTreeMap::new();
            for f in resolved.iter() {
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
                installed.push((
                    id,
                    ForkRoute {
                        route: r.id().into(),
                        key: key.clone(),
                        fallback: r.spec.fallback,
                        ports: ports.into_boxed_slice(),
                    },
                ));
            }

            let worst = resolved
                .iter()
                .map(|f| &f.status)
                .enumerate()
                .min_by_key(|(_, s)| severity(s.reason));
            let (reason, message) = match worst {
                Some((i, s)) if s.reason != RouteReason::EndpointsReady => (
                    s.reason,
                    format!("forks[{i}] ({}): {}", s.service, s.message),
                ),
                Some(_) => (
                    RouteReason::EndpointsReady,
                    format!("{} fork(s) have ready sandbox endpoints", resolved.len()),
                ),
                None => (RouteReason::EndpointsReady, "route has no forks".into()),
            };
            let mut st = status(r, reason, message);
            st.applied = applied;
            st.forks = resolved.iter().map(|f| f.status.clone()).collect();
            resolved_of[i] = Some(resolved);
            statuses[i] = Some(st);
        }

        let mut per_service: HashMap<u32, usize> = HashMap::new();
        for (id, _) in &installed {
            *per_service.entry(*id).or_default() += 1;
        }
        table.forks.reserve(per_service.len());
        for (id, fork) in installed {
            table
                .forks
                .entry(id)
                .or_insert_with(|| HashMap::with_capacity(per_service[&id]))
                .insert(fork.key.clone(), fork);
        }

        // 3. Services, address index and the steered set.
        for ((ns, name), (id, svc)) in &ix.services {
            let mut ports: Vec<PortEntry> = Vec::new();
            for sp in &svc.ports {
                // A duplicate port number would make lookups ambiguous; the first one wins.
                if ports.iter().any(|p| p.port.port == sp.port) {
                    continue;
                }
                let local_only = svc.internal_traffic_policy == TrafficPolicy::Local;
                ports.push(PortEntry {
                    port: ServicePortRef {
                        name: sp.name.clone(),
                        port: sp.port,
                    },
                    ready: baseline_addrs(svc, sp, true),
                    all: baseline_addrs(svc, sp, false),
                    candidates: endpoint_addrs(svc, sp, |ep| {
                        ep.ready
                            && (!local_only
                                || (ep.node_name.is_some() && ep.node_name == state.node))
                    }),
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
                    vips: svc.addresses.iter().map(IpAddr::to_canonical).collect(),
                    affinity: svc.client_ip_affinity,
                    local_only: svc.internal_traffic_policy == TrafficPolicy::Local,
                    declared_ports: svc
                        .ports
                        .iter()
                        .map(|sp| ServicePortRef {
                            name: sp.name.clone(),
                            port: sp.port,
                        })
                        .collect(),
                },
            );
        }
        table.index_addresses(&ix, &covered_ports);
        table.index_shared();
        for (route, note) in table.shared_fork_notes() {
            let Some(st) = statuses
                .iter_mut()
                .flatten()
                .find(|s| route.split_once('/') == Some((s.namespace.as_str(), s.name.as_str())))
            else {
                continue;
            };
            st.message = format!("{}; {note}", st.message);
        }

        let statuses: Arc<Vec<RouteStatus>> = Arc::new(
            statuses
                .into_iter()
                .zip(&state.routes)
                .map(|(s, r)| {
                    s.unwrap_or_else(|| {
                        // Unreachable: every route got a status above. Stay total regardless.
                        status(r, RouteReason::InvalidTarget, "not evaluated".into())
                    })
                })
                .collect(),
        );
        table.views = ViewSource {
            routes: state.routes.clone(),
            statuses: statuses.clone(),
            resolved: resolved_of,
        };
        let remembered = state.routes.iter().map(memo::route_key).zip(mine).collect();
        (table, statuses, remembered)
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
