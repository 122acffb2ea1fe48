//! The services tools: what can be called (list_services), who calls whom (get_dependencies) and
//! which port to call (resolve_port).
use std::collections::{BTreeMap, BTreeSet};

use super::{find_port, find_service, fork_service_name, port_infos, svc_id, url_for};
use crate::{
    admin::topology::Topology,
    mcp::{
        backend::Backend,
        error::{ToolError, ToolErrorKind, ToolResult},
        types::*,
    },
    routes::SANDBOX_LABEL,
};

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

    async fn topology(&self, namespace: Option<&str>) -> ToolResult<(Vec<EdgeInfo>, Vec<String>)> {
        let (replies, warnings) = self.debug_get("/topology", namespace).await?;
        let mut merged: BTreeMap<(String, String, u16), (u64, u64)> = BTreeMap::new();
        for r in replies {
            let topo: Topology = serde_json::from_str(&r.body).map_err(|e| {
                ToolError::new(
                    ToolErrorKind::AgentError,
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
            let (edges, warnings) = self.topology(p.namespace.as_deref()).await?;
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
                snap.state
                    .pods
                    .iter()
                    .filter(move |pod| pod.namespace == svc.namespace && sel.matches(&pod.labels))
            })
            .map(|pod| format!("{}/{}", pod.namespace, pod.name))
            .collect();
        let (edges, warnings) = self.topology(p.namespace.as_deref()).await?;
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
}
