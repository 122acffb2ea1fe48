//! What each tool does, on top of a [`Backend`]. Mode-independent except for where
//! send_test_request's client runs: a process placed in the client pod (no cluster) or a
//! short-lived Pod (cluster, see `request_pod`).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::json;

use super::{
    backend::{Backend, Snapshot},
    error::{ToolError, ToolResult},
    request::{ChildRequest, ClientPlacement, run_in_child},
    types::*,
};
use crate::{
    admin::topology::Topology,
    routes::{
        ClusterState, Fallback, ForkSpec, ForkTarget, PortRef, RoutingKey, SANDBOX_LABEL,
        SandboxRouteObj, SandboxRouteSpec, Service, ServicePort, TargetPort,
    },
};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn port_infos(svc: &Service) -> Vec<ServicePortInfo> {
    svc.ports
        .iter()
        .map(|p| ServicePortInfo {
            name: p.name.clone(),
            port: p.port,
            target_port: PortValue::from(&p.target_port),
        })
        .collect()
}

fn port_list(svc: &Service) -> String {
    svc.ports
        .iter()
        .map(|p| {
            let target = match &p.target_port {
                TargetPort::Number(n) => n.to_string(),
                TargetPort::Name(n) => n.clone(),
            };
            match &p.name {
                Some(n) => format!("{} ({n}, targetPort {target})", p.port),
                None => format!("{} (targetPort {target})", p.port),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn svc_id(svc: &Service) -> String {
    format!("{}/{}", svc.namespace, svc.name)
}

fn host_of(svc: &Service, cluster_dns: bool) -> Option<String> {
    if cluster_dns {
        return Some(format!("{}.{}.svc.cluster.local", svc.name, svc.namespace));
    }
    svc.addresses.first().map(|ip| match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    })
}

fn url_for(svc: &Service, port: u16, cluster_dns: bool) -> Option<String> {
    host_of(svc, cluster_dns).map(|h| format!("http://{h}:{port}/"))
}

/// Finds a service by `name`, `namespace/name`, or a DNS name (`name.namespace[.svc[...]]`).
pub fn find_service<'a>(
    state: &'a ClusterState,
    service: &str,
    namespace: Option<&str>,
) -> ToolResult<&'a Service> {
    let (ns, name) = match service.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => match service.split_once('.') {
            Some((name, rest)) => (rest.split('.').next().or(namespace), name),
            None => (namespace, service),
        },
    };
    let found: Vec<&Service> = state
        .services
        .iter()
        .filter(|s| s.name == name && ns.is_none_or(|ns| s.namespace == ns))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => {
            let all: Vec<String> = state.services.iter().map(svc_id).collect();
            Err(ToolError::new(
                "service_not_found",
                format!(
                    "no service {service:?}{}",
                    ns.map(|n| format!(" in namespace {n}")).unwrap_or_default()
                ),
                "use one of the services list_services shows (name or namespace/name)",
            )
            .with_details(json!({ "services": all })))
        }
        many => Err(ToolError::new(
            "ambiguous_service",
            format!(
                "{service:?} exists in several namespaces: {}",
                many.iter()
                    .map(|s| svc_id(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "say which one: namespace/name, or pass `namespace`",
        )),
    }
}

/// A port of `svc` by number or name; a wrong one is an error listing the right ones (a request
/// on the wrong port silently goes to the baseline, or nowhere).
pub fn find_port<'a>(svc: &'a Service, port: &PortValue) -> ToolResult<&'a ServicePort> {
    let want: PortRef = port.into();
    let found = svc.ports.iter().find(|p| match &want {
        PortRef::Number(n) => p.port == *n,
        PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
    });
    if let Some(p) = found {
        return Ok(p);
    }
    // Common mistake: the pod's (target) port instead of the service port.
    let as_target = svc.ports.iter().find(|p| match (&want, &p.target_port) {
        (PortRef::Number(n), TargetPort::Number(t)) => t == n,
        (PortRef::Name(n), TargetPort::Name(t)) => t == n,
        (PortRef::Number(n), TargetPort::Name(_)) => svc
            .endpoints
            .iter()
            .any(|e| e.ports.get(p.slice_key()) == Some(n)),
        _ => false,
    });
    let id = svc_id(svc);
    let valid = json!({ "valid_ports": port_infos(svc) });
    match as_target {
        Some(p) => Err(ToolError::new(
            "wrong_port",
            format!(
                "{port} is the target (pod) port behind service port {}{} of {id}, not a service \
                 port; requests to a pod's port bypass the service and are never routed by key",
                p.port,
                p.name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
            format!("connect to the service port {}", p.port),
        )
        .with_details(json!({ "suggested_port": p.port, "valid_ports": port_infos(svc) }))),
        None => Err(ToolError::new(
            "wrong_port",
            format!(
                "{id} has no port {port}; its ports: {}",
                if svc.ports.is_empty() {
                    "none".to_string()
                } else {
                    port_list(svc)
                }
            ),
            "use one of valid_ports (the service port, not the pod's port)",
        )
        .with_details(valid)),
    }
}

/// The Service a fork names (`name` or `namespace/name`), if it is in `ns`.
fn fork_service_name<'a>(ns: &str, service: &'a str) -> Option<&'a str> {
    match service.split_once('/') {
        None => Some(service),
        Some((n, name)) if n == ns => Some(name),
        Some(_) => None,
    }
}

impl Backend {
    pub async fn list_services(&self, p: NamespaceParams) -> ToolResult<ListServicesResult> {
        let snap = self.snapshot(p.namespace.as_deref()).await?;
        let routes = snap.route_infos();
        let mut services = Vec::new();
        for svc in &snap.state.services {
            if p.namespace.as_ref().is_some_and(|n| *n != svc.namespace) {
                continue;
            }
            let forks = routes
                .iter()
                .filter(|r| r.namespace == svc.namespace)
                .flat_map(|r| {
                    r.forks
                        .iter()
                        .filter(|f| {
                            fork_service_name(&r.namespace, &f.service) == Some(svc.name.as_str())
                        })
                        .map(move |f| ServiceForkInfo {
                            key: r.key.clone(),
                            route: format!("{}/{}", r.namespace, r.name),
                            to: ForkTargetInfo {
                                selector: f.to.selector.clone(),
                                service: f.to.service.clone(),
                            },
                            ready: r.ready,
                            reason: f.reason.clone().or_else(|| r.reason.clone()),
                            ready_sandbox_endpoints: f.ready_sandbox_endpoints,
                        })
                })
                .collect();
            services.push(ServiceInfo {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                addresses: svc.addresses.iter().map(|a| a.to_string()).collect(),
                dns: snap
                    .cluster_dns
                    .then(|| format!("{}.{}.svc.cluster.local", svc.name, svc.namespace)),
                ports: port_infos(svc),
                url: svc
                    .ports
                    .first()
                    .and_then(|p| url_for(svc, p.port, snap.cluster_dns)),
                baseline_endpoints: svc
                    .endpoints
                    .iter()
                    .map(|e| EndpointInfo {
                        ip: e.ip.to_string(),
                        ready: e.ready,
                        pod: snap.pod_names.get(&e.ip).cloned(),
                        ports: e.ports.clone(),
                    })
                    .collect(),
                forks,
            });
        }
        let sandbox_pods = snap
            .state
            .pods
            .iter()
            .filter(|pod| p.namespace.as_ref().is_none_or(|n| *n == pod.namespace))
            .filter(|pod| pod.labels.contains_key(SANDBOX_LABEL))
            .map(|pod| PodInfo {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                ips: pod.ips.iter().map(|i| i.to_string()).collect(),
                labels: pod.labels.clone(),
                ready: pod.ready,
            })
            .collect();
        Ok(ListServicesResult {
            mode: if self.is_cluster() {
                "cluster"
            } else {
                "no-cluster"
            }
            .into(),
            services,
            sandbox_pods,
            warnings: snap.warnings,
        })
    }

    async fn topology(&self) -> ToolResult<(Vec<EdgeInfo>, Vec<String>)> {
        let (replies, warnings) = self.admin_get("/topology").await?;
        let mut merged: BTreeMap<(String, String, u16), (u64, u64)> = BTreeMap::new();
        for r in replies {
            let topo: Topology = serde_json::from_str(&r.body).map_err(|e| {
                ToolError::new(
                    "agent_error",
                    format!("the agent's /topology answer did not parse: {e}"),
                    "check that the agent and `shunt mcp` are the same version",
                )
            })?;
            for e in topo.edges {
                let m = merged.entry((e.from, e.to, e.port)).or_default();
                m.0 += e.connections;
                m.1 = m.1.max(e.last_seen_unix_ms);
            }
        }
        let edges = merged
            .into_iter()
            .map(|((from, to, port), (connections, last))| EdgeInfo {
                from,
                to,
                port,
                connections,
                last_seen_unix_ms: last,
            })
            .collect();
        Ok((edges, warnings))
    }

    pub async fn get_dependencies(&self, p: DependenciesParams) -> ToolResult<DependenciesResult> {
        let Some(service) = p.service.as_deref() else {
            let (edges, warnings) = self.topology().await?;
            let note = edges.is_empty().then(|| {
                "no connections observed yet: send traffic first (send_test_request)".to_string()
            });
            return Ok(DependenciesResult {
                service: None,
                callers: Vec::new(),
                callees: Vec::new(),
                edges,
                note,
                warnings,
            });
        };
        let snap = self.snapshot(p.namespace.as_deref()).await?;
        let svc = find_service(&snap.state, service, p.namespace.as_deref())?;
        let id = svc_id(svc);
        // Its sandbox pods count as the service when they call out.
        let sandbox_pods: BTreeSet<String> = snap
            .state
            .routes
            .iter()
            .filter(|r| r.namespace == svc.namespace)
            .flat_map(|r| r.spec.forks.iter())
            .filter(|f| fork_service_name(&svc.namespace, &f.service) == Some(svc.name.as_str()))
            .filter_map(|f| f.to.selector.as_ref())
            .flat_map(|sel| {
                snap.state.pods.iter().filter(move |pod| {
                    pod.namespace == svc.namespace
                        && sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
                })
            })
            .map(|pod| format!("{}/{}", pod.namespace, pod.name))
            .collect();
        let (edges, warnings) = self.topology().await?;
        let callers: Vec<EdgeInfo> = edges.iter().filter(|e| e.to == id).cloned().collect();
        let callees: Vec<EdgeInfo> = edges
            .iter()
            .filter(|e| e.from == id || sandbox_pods.contains(&e.from))
            .cloned()
            .collect();
        let note = (callers.is_empty() && callees.is_empty()).then(|| {
            format!(
                "no connections to or from {id} observed yet: send traffic through it first \
                 (send_test_request); only connections from captured pods are counted"
            )
        });
        Ok(DependenciesResult {
            service: Some(id),
            callers,
            callees,
            edges: Vec::new(),
            note,
            warnings,
        })
    }

    pub async fn resolve_port(&self, p: ResolvePortParams) -> ToolResult<ResolvePortResult> {
        let snap = self.snapshot(p.namespace.as_deref()).await?;
        let svc = find_service(&snap.state, &p.service, p.namespace.as_deref())?;
        let sp = find_port(svc, &p.port)?;
        Ok(ResolvePortResult {
            service: svc_id(svc),
            port: sp.port,
            name: sp.name.clone(),
            target_port: PortValue::from(&sp.target_port),
            url: url_for(svc, sp.port, snap.cluster_dns).unwrap_or_default(),
            valid_ports: port_infos(svc),
        })
    }

    pub async fn list_sandbox_routes(&self, p: NamespaceParams) -> ToolResult<ListRoutesResult> {
        let snap = self.snapshot(p.namespace.as_deref()).await?;
        let routes = snap
            .route_infos()
            .into_iter()
            .filter(|r| p.namespace.as_ref().is_none_or(|n| *n == r.namespace))
            .collect();
        Ok(ListRoutesResult {
            routes,
            warnings: snap.warnings,
        })
    }

    pub async fn create_sandbox_route(
        &self,
        p: CreateRouteParams,
    ) -> ToolResult<CreateRouteResult> {
        if let Err(e) = RoutingKey::parse(&p.key) {
            return Err(ToolError::invalid(
                format!("{:?} is not a valid routing key: {e:?}", p.key),
                format!("use {} (e.g. pr-42)", RoutingKey::SYNTAX),
            ));
        }
        if p.forks.is_empty() {
            return Err(ToolError::invalid(
                "no forks given",
                "give at least one fork: {service, selector: {..., \"shunt.dev/sandbox\": KEY}}",
            ));
        }
        // The namespace: given, or the first fork's service's (in cluster mode the snapshot
        // holds one namespace, so that is the default one).
        let snap = self.snapshot(p.namespace.as_deref()).await?;
        let ns = match &p.namespace {
            Some(ns) => ns.clone(),
            None => find_service(&snap.state, &p.forks[0].service, None)?
                .namespace
                .clone(),
        };
        if let Some(r) = snap
            .state
            .routes
            .iter()
            .find(|r| r.namespace == ns && r.spec.routing_key == p.key)
        {
            return Err(ToolError::new(
                "key_exists",
                format!(
                    "routing key {:?} is already used by route {}/{} in namespace {ns}",
                    p.key, r.namespace, r.name
                ),
                format!(
                    "delete it first (delete_sandbox_route key={:?}) or choose another key",
                    p.key
                ),
            ));
        }
        let mut warnings = Vec::new();
        let mut forks = Vec::new();
        for (i, f) in p.forks.iter().enumerate() {
            let svc = find_service(&snap.state, &f.service, Some(&ns)).map_err(|mut e| {
                e.message = format!("forks[{i}]: {}", e.message);
                e
            })?;
            let candidates = || {
                let pods: Vec<serde_json::Value> = snap
                    .state
                    .pods
                    .iter()
                    .filter(|pod| pod.namespace == ns && pod.labels.contains_key(SANDBOX_LABEL))
                    .map(|pod| json!({ "pod": pod.name, "labels": pod.labels }))
                    .collect();
                json!({ "sandbox_pods": pods })
            };
            let to = match (&f.selector, &f.target_service) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(ToolError::invalid(
                        format!(
                            "forks[{i}] ({}): give exactly one of `selector` or `target_service`",
                            f.service
                        ),
                        "use `selector` with the sandbox pods' labels (including shunt.dev/sandbox); \
                         sandbox_pods in details lists the candidates",
                    )
                    .with_details(candidates()));
                }
                (Some(sel), None) => {
                    if sel.get(SANDBOX_LABEL).is_none_or(|v| v.is_empty()) {
                        return Err(ToolError::invalid(
                            format!(
                                "forks[{i}] ({}): the selector must include the {SANDBOX_LABEL} \
                                 label, so it can never select baseline pods",
                                f.service
                            ),
                            format!(
                                "add \"{SANDBOX_LABEL}\": <the value your sandbox pods carry> to \
                                 the selector (sandbox_pods in details lists them)"
                            ),
                        )
                        .with_details(candidates()));
                    }
                    let matched = snap.state.pods.iter().any(|pod| {
                        pod.namespace == ns && sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
                    });
                    if !matched {
                        warnings.push(format!(
                            "forks[{i}] ({}): no pod matches the selector yet; keyed requests take \
                             the fallback until one is ready",
                            f.service
                        ));
                    }
                    ForkTarget {
                        selector: Some(sel.clone()),
                        service: None,
                    }
                }
                (None, Some(t)) => {
                    let target = find_service(&snap.state, t, Some(&ns))?;
                    if target.name == svc.name {
                        return Err(ToolError::invalid(
                            format!(
                                "forks[{i}]: a fork of {} cannot target the same service",
                                svc.name
                            ),
                            "target the sandbox's own service, or use a selector",
                        ));
                    }
                    ForkTarget {
                        selector: None,
                        service: Some(target.name.clone()),
                    }
                }
            };
            let ports = match &f.ports {
                None => None,
                Some(ps) => {
                    let mut out = Vec::new();
                    for port in ps {
                        let sp = find_port(svc, port)?;
                        out.push(PortRef::Number(sp.port));
                    }
                    Some(out)
                }
            };
            forks.push(ForkSpec {
                service: svc.name.clone(),
                to,
                ports,
            });
        }
        let expires_at = match &p.ttl {
            None => None,
            Some(t) => {
                let d = crate::cli::parse_duration(t).map_err(|e| {
                    ToolError::invalid(format!("ttl: {e}"), "e.g. \"30m\" or \"2h\"")
                })?;
                Some(
                    jiff::Timestamp::now()
                        .round(jiff::Unit::Second)
                        .unwrap_or_else(|_| jiff::Timestamp::now())
                        .checked_add(jiff::SignedDuration::try_from(d).unwrap_or_default())
                        .map_err(|e| ToolError::invalid(format!("ttl: {e}"), "a shorter ttl"))?,
                )
            }
        };
        let name = route_name(&p.key, &snap.state, &ns);
        let route = SandboxRouteObj {
            namespace: ns.clone(),
            name,
            creation_timestamp: jiff::Timestamp::now(),
            generation: 1,
            spec: SandboxRouteSpec {
                routing_key: p.key.clone(),
                forks,
                fallback: match p.fallback.unwrap_or_default() {
                    FallbackParam::Baseline => Fallback::Baseline,
                    FallbackParam::Reject => Fallback::Reject,
                },
                expires_at,
            },
        };
        if let Some(problem) = route.spec.problems(&ns).first() {
            return Err(ToolError::invalid(
                format!("{}: {}", problem.field, problem.message),
                "fix that field and call create_sandbox_route again",
            ));
        }
        let first = &route.spec.forks[0].service;
        let next_step = snap
            .state
            .services
            .iter()
            .find(|s| s.namespace == ns && &s.name == first)
            .and_then(|s| {
                let port = match route.spec.forks[0].ports.as_deref() {
                    Some([PortRef::Number(n), ..]) => Some(*n),
                    _ => s.ports.first().map(|p| p.port),
                }?;
                url_for(s, port, snap.cluster_dns)
            })
            .map(|url| {
                format!(
                    "send_test_request(url={url:?}, key={:?}) — or call any service upstream of \
                     {first} with the key: it follows the request wherever services propagate \
                     the baggage header",
                    p.key
                )
            })
            .unwrap_or_default();
        let (info, applied, mut w) = self.create_route(route).await?;
        warnings.append(&mut w);
        Ok(CreateRouteResult {
            route: info,
            applied,
            next_step,
            warnings,
        })
    }

    pub async fn delete_sandbox_route(&self, p: KeyParams) -> ToolResult<DeleteRouteResult> {
        let snap = self.snapshot(p.namespace.as_deref()).await?;
        let found: Vec<&SandboxRouteObj> = snap
            .state
            .routes
            .iter()
            .filter(|r| p.namespace.as_ref().is_none_or(|n| *n == r.namespace))
            .filter(|r| r.spec.routing_key == p.key)
            .collect();
        let route = match found.as_slice() {
            [one] => *one,
            [] => {
                let keys: Vec<String> = snap
                    .state
                    .routes
                    .iter()
                    .map(|r| format!("{} ({}/{})", r.spec.routing_key, r.namespace, r.name))
                    .collect();
                return Err(ToolError::new(
                    "route_not_found",
                    format!("no sandbox route with key {:?}", p.key),
                    "list_sandbox_routes shows the existing keys",
                )
                .with_details(json!({ "routes": keys })));
            }
            many => {
                return Err(ToolError::new(
                    "ambiguous_key",
                    format!(
                        "key {:?} is used in several namespaces: {}",
                        p.key,
                        many.iter()
                            .map(|r| r.namespace.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "pass `namespace`",
                ));
            }
        };
        let (applied, warnings) = self.delete_route(route).await?;
        Ok(DeleteRouteResult {
            deleted: format!("{}/{}", route.namespace, route.name),
            key: p.key,
            applied,
            warnings,
        })
    }

    /// All decisions since `since` (optionally for one key) from every agent, oldest first,
    /// with owners filled in.
    async fn decisions(
        &self,
        key: Option<&str>,
        since: Option<u64>,
        snap: &Snapshot,
    ) -> ToolResult<(Vec<DecisionInfo>, Vec<String>)> {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(k) = key {
                q.append_pair("key", k);
            }
            if let Some(s) = since {
                q.append_pair("since", &s.to_string());
            }
            q.finish()
        };
        let (replies, warnings) = self.admin_get(&format!("/decisions?{query}")).await?;
        let table = snap.table();
        let owner = |addr: &str| -> Option<String> {
            let sa: SocketAddr = addr.parse().ok()?;
            let ip = sa.ip().to_canonical();
            snap.pod_names
                .get(&ip)
                .cloned()
                .or_else(|| table.owner_of(ip).map(str::to_string))
        };
        let mut out = Vec::new();
        for r in replies {
            let mut ds: Vec<DecisionInfo> = serde_json::from_str(&r.body).map_err(|e| {
                ToolError::new(
                    "agent_error",
                    format!("the agent's /decisions answer did not parse: {e}"),
                    "check that the agent and `shunt mcp` are the same version",
                )
            })?;
            for d in &mut ds {
                d.client_owner = owner(&d.client);
                d.upstream_owner = d.upstream.as_deref().and_then(owner);
                d.agent = r.agent.clone();
            }
            out.extend(ds);
        }
        out.sort_by_key(|d| d.time);
        Ok((out, warnings))
    }

    pub async fn get_decisions(&self, p: DecisionsParams) -> ToolResult<DecisionsResult> {
        let snap = self.snapshot(None).await?;
        let (mut decisions, warnings) =
            self.decisions(Some(&p.key), p.since_unix_ms, &snap).await?;
        let limit = p.limit.unwrap_or(100);
        if decisions.len() > limit {
            decisions.drain(..decisions.len() - limit);
        }
        let mut summary = BTreeMap::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for d in &decisions {
            *summary.entry(d.decision.clone()).or_default() += 1;
            *reasons.entry(d.reason.clone()).or_default() += 1;
        }
        let mut hints: Vec<Hint> = reasons
            .into_iter()
            .map(|(reason, count)| Hint {
                hint: reason_hint(&reason).to_string(),
                reason,
                count,
            })
            .collect();
        if decisions.is_empty() {
            hints.push(Hint {
                reason: "none".into(),
                count: 0,
                hint: format!(
                    "no decision for key {:?}{}: no keyed request reached a steered service. \
                     Send one (send_test_request with key), check that the route exists \
                     (list_sandbox_routes) and that the client runs in a captured pod",
                    p.key,
                    p.since_unix_ms
                        .map(|s| format!(" since {s}"))
                        .unwrap_or_default()
                ),
            });
        }
        Ok(DecisionsResult {
            key: p.key,
            decisions,
            summary,
            hints,
            warnings,
        })
    }

    pub async fn send_test_request(
        &self,
        p: SendRequestParams,
        placement: &ClientPlacement,
    ) -> ToolResult<SendRequestResult> {
        let snap = self.snapshot(None).await?;
        let uri: http::Uri = p.url.parse().map_err(|e| {
            ToolError::invalid(
                format!("{:?} is not a URL: {e}", p.url),
                "use http://HOST:PORT/PATH (HOST: a service address or name from list_services)",
            )
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(ToolError::invalid(
                    "https: TLS traffic is copied opaquely and cannot be routed by key",
                    "call the service over plain http (in-cluster traffic usually is)",
                ));
            }
            _ => {
                return Err(ToolError::invalid(
                    format!("{:?}: expected an http:// URL", p.url),
                    "use http://HOST:PORT/PATH",
                ));
            }
        }
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let port = uri.port_u16().unwrap_or(80);
        let mut warnings = Vec::new();
        let (ip, service) = match host.parse::<IpAddr>() {
            Ok(ip) => (
                ip,
                snap.state
                    .services
                    .iter()
                    .find(|s| s.addresses.contains(&ip)),
            ),
            Err(_) => {
                let svc = find_service(&snap.state, host, None).map_err(|mut e| {
                    e.message = format!("host {host:?}: {}", e.message);
                    e
                })?;
                let Some(ip) = svc.addresses.first() else {
                    return Err(ToolError::invalid(
                        format!("service {} has no address (headless)", svc_id(svc)),
                        "call one of its pods' addresses instead",
                    ));
                };
                (*ip, Some(svc))
            }
        };
        if let Some(svc) = service {
            find_port(svc, &PortValue::Number(port))?;
        } else if !snap
            .state
            .services
            .iter()
            .any(|s| s.endpoints.iter().any(|e| e.ip == ip))
            && !snap.state.pods.iter().any(|pod| pod.ips.contains(&ip))
        {
            warnings.push(format!(
                "{ip} is not a service address the agent knows; the request will not be routed \
                 by key (list_services shows the services)"
            ));
        }
        let method = p.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        if http::Method::from_bytes(method.as_bytes()).is_err() {
            return Err(ToolError::invalid(
                format!("{method:?} is not an HTTP method"),
                "use GET, POST, PUT, DELETE, ...",
            ));
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut baggage: Option<String> = None;
        for (n, v) in p.headers.iter().flatten() {
            if http::HeaderName::from_bytes(n.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                return Err(ToolError::invalid(
                    format!("header {n:?}: {v:?} is not a valid HTTP header"),
                    "use ASCII header names and values",
                ));
            }
            if n.eq_ignore_ascii_case("baggage") {
                baggage = Some(v.clone());
            } else if !n.eq_ignore_ascii_case("host") {
                headers.push((n.clone(), v.clone()));
            }
        }
        if let Some(key) = &p.key {
            if let Err(e) = RoutingKey::parse(key) {
                return Err(ToolError::invalid(
                    format!("{key:?} is not a valid routing key: {e:?}"),
                    format!("use {}", RoutingKey::SYNTAX),
                ));
            }
            baggage = Some(with_key(baggage.as_deref(), key));
        }
        if let Some(b) = baggage {
            headers.push(("baggage".into(), b));
        }
        let timeout_ms = p.timeout_seconds.unwrap_or(10).clamp(1, 120) * 1000;
        let req = ChildRequest {
            method: method.clone(),
            addr: SocketAddr::new(ip, port),
            host: uri
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default(),
            path_and_query: uri
                .path_and_query()
                .map_or("/".to_string(), |pq| pq.as_str().to_string()),
            headers,
            body: p.body.clone(),
            timeout_ms,
        };
        let started_ms = now_ms();
        let started = Instant::now();
        let (resp, sent_from) = match self {
            Backend::Local(_) => {
                let resp = run_in_child(placement, &req).await.map_err(|e| {
                    ToolError::new(
                        "request_failed",
                        format!("{e:#}"),
                        "check --client-netns/--client-cgroup of `shunt mcp` (they must name the \
                         client pod's network namespace and the captured cgroup)",
                    )
                })?;
                (
                    resp,
                    "the client pod (--client-netns, --client-cgroup)".to_string(),
                )
            }
            Backend::Cluster(c) => {
                // From the called service's namespace unless told otherwise: where its own
                // clients usually run (and NetworkPolicies allow them).
                let ns = c
                    .request_namespace
                    .clone()
                    .or_else(|| service.map(|s| s.namespace.clone()))
                    .unwrap_or_else(|| c.namespace.clone());
                let (resp, pod) = c.request_from_pod(&ns, &req).await?;
                let from = format!(
                    "pod {}/{}{}{}",
                    pod.namespace,
                    pod.name,
                    pod.pod_ip.map(|ip| format!(" ({ip})")).unwrap_or_default(),
                    pod.node
                        .map(|n| format!(" on node {n}"))
                        .unwrap_or_default()
                );
                (resp, from)
            }
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if let Some(err) = resp.error.as_deref().filter(|_| resp.status.is_none()) {
            return Err(ToolError::new(
                "request_failed",
                format!("{method} {}: {err}", p.url),
                "check the address and port (list_services, resolve_port); a refused or timed-out \
                 connection to a service address usually means a wrong port or no ready endpoint",
            ));
        }
        let status = resp.status.unwrap_or_default();
        if let Some(err) = &resp.error {
            warnings.push(format!("reading the response: {err}"));
        }
        let (hops, mut hints) = match resp.local {
            Some(local) => self.hops(local, started_ms, p.key.as_deref(), &snap).await,
            None => (Vec::new(), Vec::new()),
        };
        if hops.is_empty() {
            hints.push(if self.is_cluster() {
                "no routing decision was recorded for this request: the destination is not \
                 steered (no fork covers that service and port), or no agent runs on the request \
                 pod's node (see sent_from; the DaemonSet must tolerate that node)"
                    .into()
            } else {
                "no routing decision was recorded for this request: the destination is not \
                 steered (no fork covers that service and port), or the client is not in the \
                 captured cgroup (--client-cgroup)"
                    .into()
            });
        }
        let body_json = serde_json::from_str(&resp.body).ok();
        Ok(SendRequestResult {
            method,
            url: p.url,
            connected_to: req.addr.to_string(),
            sent_from,
            key: p.key,
            started_unix_ms: started_ms,
            elapsed_ms,
            response: ResponseInfo {
                status,
                headers: resp.headers,
                body: resp.body,
                body_json,
                truncated: resp.truncated,
            },
            hops,
            hints,
            warnings,
        })
    }

    /// The decisions a request caused: the one whose client is the request's own socket, then
    /// recursively the calls made by each hop's upstream while that hop was in flight.
    async fn hops(
        &self,
        local: SocketAddr,
        since: u64,
        key: Option<&str>,
        snap: &Snapshot,
    ) -> (Vec<Hop>, Vec<String>) {
        let mut hints = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        let local_s = local.to_string();
        let decisions = loop {
            match self.decisions(None, Some(since), snap).await {
                Ok((ds, _)) if ds.iter().any(|d| d.client == local_s) => break ds,
                Ok((ds, _)) if Instant::now() > deadline => break ds,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    hints.push(format!("routing decisions unavailable: {}", e.message));
                    return (Vec::new(), hints);
                }
            }
        };
        let (hops, mut tree_hints) = hop_tree(&decisions, &local_s, key);
        hints.append(&mut tree_hints);
        (hops, hints)
    }
}

/// The hops of one request among `decisions`: the decision whose client is the request's own
/// socket (`local`), then, recursively, the calls each hop's upstream made while that hop was in
/// flight. Hops are numbered breadth first; a hop without the key under a keyed parent is
/// flagged `key_lost`.
fn hop_tree(
    decisions: &[DecisionInfo],
    local_s: &str,
    key: Option<&str>,
) -> (Vec<Hop>, Vec<String>) {
    let mut hints = Vec::new();
    // (start, end) in microseconds; the log's time is when the response headers came back.
    let span = |d: &DecisionInfo| {
        let end = d.time * 1000;
        (end.saturating_sub(d.latency_us), end)
    };
    let mut hops: Vec<Hop> = Vec::new();
    let mut used = vec![false; decisions.len()];
    let Some(first) = decisions.iter().position(|d| d.client == local_s) else {
        return (hops, hints);
    };
    used[first] = true;
    let mut queue = vec![(first, None::<usize>, key.map(str::to_string))];
    while let Some((i, parent, parent_key)) = (!queue.is_empty()).then(|| queue.remove(0)) {
        let d = &decisions[i];
        let n = hops.len() + 1;
        let key_lost = parent.is_some() && parent_key.is_some() && d.key.is_none();
        if key_lost {
            hints.push(format!(
                "hop {n}: {} called {} without the routing key: it does not propagate the \
                 `baggage` header from its incoming request to its outgoing calls",
                d.client_owner.as_deref().unwrap_or(&d.client),
                d.service.as_deref().unwrap_or(&d.original_dst)
            ));
        }
        let from = d.client_owner.clone().unwrap_or_else(|| {
            d.client
                .parse::<SocketAddr>()
                .map_or_else(|_| d.client.clone(), |a| a.ip().to_string())
        });
        let summary = format!(
            "{from} → {}: {} ({}) → {}",
            d.service.as_deref().unwrap_or(&d.original_dst),
            d.decision,
            d.reason,
            d.upstream_owner
                .as_deref()
                .or(d.upstream.as_deref())
                .unwrap_or("-")
        );
        hops.push(Hop {
            hop: n,
            parent,
            key: d.key.clone(),
            key_lost,
            from,
            service: d.service.clone(),
            decision: d.decision.clone(),
            reason: d.reason.clone(),
            route: d.route.clone(),
            upstream: d.upstream.clone(),
            upstream_owner: d.upstream_owner.clone(),
            status: d.status,
            latency_us: d.latency_us,
            summary,
        });
        if d.reason != "key_matched" && d.key.is_some() {
            hints.push(format!("hop {n}: {}", reason_hint(&d.reason)));
        }
        let Some(up) = d
            .upstream
            .as_deref()
            .and_then(|u| u.parse::<SocketAddr>().ok())
        else {
            continue;
        };
        let (start, end) = span(d);
        // Calls made by the upstream while this hop was in flight (1 ms of slack: the log
        // has millisecond times).
        let mut children: Vec<usize> = (0..decisions.len())
            .filter(|&j| !used[j])
            .filter(|&j| {
                let c = &decisions[j];
                let (cs, ce) = span(c);
                c.client
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.ip().to_canonical() == up.ip().to_canonical())
                    && cs + 1000 >= start
                    && ce <= end + 1000
            })
            .collect();
        children.sort_by_key(|&j| span(&decisions[j]).0);
        for j in children {
            used[j] = true;
            queue.push((j, Some(n), d.key.clone()));
        }
    }
    (hops, hints)
}

/// `baggage` with `sd-routing-key=KEY` set (replacing any previous value of that member).
fn with_key(baggage: Option<&str>, key: &str) -> String {
    crate::routes::key::baggage_with_key(baggage, key)
}

/// A route name for `key`: the key when it is a valid object name and free, else a sanitized
/// form with a numeric suffix.
fn route_name(key: &str, state: &ClusterState, ns: &str) -> String {
    let mut base: String = key
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    base = base.trim_matches(['-', '.']).to_string();
    if base.is_empty() {
        base = "route".into();
    }
    let taken = |n: &str| {
        state
            .routes
            .iter()
            .any(|r| r.namespace == ns && r.name == n)
    };
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken(n))
        .unwrap_or(base)
}

/// What a decision reason means and what to do about it.
pub fn reason_hint(reason: &str) -> &'static str {
    match reason {
        "key_matched" => "routed to the sandbox: the key has a fork for this service",
        "no_key" => {
            "the request carried no routing key; it went to the baseline. If an earlier hop had \
             the key, the service in between does not propagate the baggage header"
        }
        "invalid_key" => "the routing key is malformed ([A-Za-z0-9._-]{1,64}); treated as no key",
        "key_not_forked" => {
            "the key has no fork for this service, so it went to the baseline (expected for \
             services you did not change); to fork it, add it with create_sandbox_route"
        }
        "unknown_service" => {
            "the destination is not a known service address; check the address and port with \
             resolve_port"
        }
        "no_ready_sandbox" => {
            "the fork has no ready sandbox pod, so the fallback applied (baseline or 503); check \
             the sandbox pods (list_services → sandbox_pods, forks[].ready_sandbox_endpoints)"
        }
        "sandbox_unreachable" => {
            "the sandbox pod refused the connection; is it listening on the service's \
             targetPort?"
        }
        "opaque_protocol" => {
            "not plain HTTP (TLS or another protocol): copied to the baseline as is; routing by \
             key needs plaintext HTTP/1.1, HTTP/2 or gRPC"
        }
        _ => "see the agent documentation",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_added_to_baggage_replacing_an_old_one() {
        assert_eq!(with_key(None, "pr-1"), "sd-routing-key=pr-1");
        assert_eq!(
            with_key(Some("a=1, sd-routing-key=old ,b=2"), "pr-1"),
            "a=1,b=2,sd-routing-key=pr-1"
        );
    }

    fn state() -> ClusterState {
        crate::routes::file::parse_routes(
            "services:\n  - { name: reviews, namespace: shop, addresses: [10.96.0.7], \
             ports: [{ name: http, port: 9080, targetPort: 8080 }, { name: grpc, port: 9090, targetPort: grpc }], \
             endpoints: [{ ip: 10.0.0.1, ports: { http: 8080, grpc: 7000 } }] }\n  \
             - { name: reviews, namespace: other, addresses: [10.96.0.8], ports: [{ port: 80 }] }\n\
             routes:\n  - { name: pr-1, namespace: shop, spec: { routingKey: pr-1 } }\n",
            "t",
        )
        .expect("valid")
    }

    #[test]
    fn services_resolve_by_name_namespace_and_dns() {
        let s = state();
        assert!(
            find_service(&s, "reviews", None)
                .unwrap_err()
                .kind
                .contains("ambiguous")
        );
        assert_eq!(
            find_service(&s, "shop/reviews", None).unwrap().namespace,
            "shop"
        );
        assert_eq!(
            find_service(&s, "reviews", Some("other"))
                .unwrap()
                .namespace,
            "other"
        );
        assert_eq!(
            find_service(&s, "reviews.shop.svc.cluster.local", None)
                .unwrap()
                .namespace,
            "shop"
        );
        let e = find_service(&s, "nope", None).unwrap_err();
        assert_eq!(e.kind, "service_not_found");
        assert_eq!(
            e.details.unwrap()["services"],
            json!(["shop/reviews", "other/reviews"])
        );
    }

    #[test]
    fn wrong_ports_name_the_right_one() {
        let s = state();
        let svc = find_service(&s, "shop/reviews", None).unwrap();
        assert_eq!(
            find_port(svc, &PortValue::Name("grpc".into()))
                .unwrap()
                .port,
            9090
        );
        assert_eq!(
            find_port(svc, &PortValue::Name("9080".into()))
                .unwrap()
                .port,
            9080
        );
        let e = find_port(svc, &PortValue::Number(8080)).unwrap_err();
        assert_eq!(e.kind, "wrong_port");
        assert_eq!(e.details.as_ref().unwrap()["suggested_port"], 9080);
        assert!(e.message.contains("target (pod) port"), "{}", e.message);
        // A named target port resolved on an endpoint.
        let e = find_port(svc, &PortValue::Number(7000)).unwrap_err();
        assert_eq!(e.details.as_ref().unwrap()["suggested_port"], 9090);
        let e = find_port(svc, &PortValue::Number(1)).unwrap_err();
        assert!(
            e.message
                .contains("9080 (http, targetPort 8080), 9090 (grpc, targetPort grpc)"),
            "{}",
            e.message
        );
        assert_eq!(
            e.details.unwrap()["valid_ports"].as_array().unwrap().len(),
            2
        );
    }

    fn decision(
        time: u64,
        latency_us: u64,
        client: &str,
        key: Option<&str>,
        service: &str,
        upstream: &str,
    ) -> DecisionInfo {
        DecisionInfo {
            time,
            client: client.into(),
            client_owner: None,
            original_dst: "10.96.0.1:80".into(),
            protocol: "http1".into(),
            method: Some("GET".into()),
            path: Some("/".into()),
            service: Some(service.into()),
            key: key.map(str::to_string),
            decision: "baseline".into(),
            reason: if key.is_some() {
                "key_not_forked"
            } else {
                "no_key"
            }
            .into(),
            route: None,
            upstream: Some(upstream.into()),
            upstream_owner: None,
            status: Some(200),
            latency_us,
            agent: None,
        }
    }

    #[test]
    fn hops_follow_upstreams_in_time_and_flag_a_lost_key() {
        // client → frontend (10.0.0.2) → reviews (10.0.0.3) → ratings; reviews drops the key.
        // Logged innermost first; another request from the frontend pod, later, is ignored.
        let ds = vec![
            decision(
                1_000,
                2_000,
                "10.0.0.3:5000",
                None,
                "shop/ratings",
                "10.0.0.4:80",
            ),
            decision(
                1_001,
                5_000,
                "10.0.0.2:4000",
                Some("k"),
                "shop/reviews",
                "10.0.0.3:80",
            ),
            decision(
                1_002,
                8_000,
                "10.0.0.1:3000",
                Some("k"),
                "shop/frontend",
                "10.0.0.2:80",
            ),
            decision(
                1_500,
                1_000,
                "10.0.0.2:4001",
                Some("k"),
                "shop/reviews",
                "10.0.0.3:80",
            ),
        ];
        let (hops, hints) = hop_tree(&ds, "10.0.0.1:3000", Some("k"));
        let got: Vec<(usize, Option<usize>, &str, bool)> = hops
            .iter()
            .map(|h| {
                (
                    h.hop,
                    h.parent,
                    h.service.as_deref().unwrap_or(""),
                    h.key_lost,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, None, "shop/frontend", false),
                (2, Some(1), "shop/reviews", false),
                (3, Some(2), "shop/ratings", true),
            ]
        );
        assert_eq!(hops[0].from, "10.0.0.1");
        assert!(
            hints.iter().any(|h| h
                .starts_with("hop 3: 10.0.0.3:5000 called shop/ratings without the routing key")),
            "{hints:?}"
        );
        assert!(hop_tree(&ds, "10.0.0.9:1", None).0.is_empty());
    }

    #[test]
    fn route_names_are_sanitized_and_unique() {
        let s = state();
        assert_eq!(route_name("PR_2", &s, "shop"), "pr-2");
        assert_eq!(route_name("pr-1", &s, "shop"), "pr-1-2");
        assert_eq!(route_name("pr-1", &s, "other"), "pr-1");
    }
}
