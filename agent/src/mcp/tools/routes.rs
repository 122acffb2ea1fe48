//! The sandbox route tools: list, create (every fork checked against the services, with the fix
//! in the error) and delete.
use serde_json::json;

use super::{find_port, find_service, url_for};
use crate::{
    mcp::{
        backend::Backend,
        error::{ToolError, ToolErrorKind, ToolResult},
        types::*,
    },
    routes::{
        ClusterState, Fallback, ForkSpec, ForkTarget, PortRef, RoutingKey, SANDBOX_LABEL,
        SandboxRouteObj, SandboxRouteSpec,
    },
};

impl Backend {
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
                ToolErrorKind::KeyExists,
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
                        selector: Some(sel.into()),
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
                let d = crate::duration::parse_duration(t).map_err(|e| {
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
                inject_key: true,
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
            .map(|r| &**r)
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
                    ToolErrorKind::RouteNotFound,
                    format!("no sandbox route with key {:?}", p.key),
                    "list_sandbox_routes shows the existing keys",
                )
                .with_details(json!({ "routes": keys })));
            }
            many => {
                return Err(ToolError::new(
                    ToolErrorKind::AmbiguousKey,
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
}

/// A route name for `key`: the key when it is a valid object name and free, else a sanitized
/// form with a numeric suffix.
pub(super) fn route_name(key: &str, state: &ClusterState, ns: &str) -> String {
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
