//! Cluster mode: the Kubernetes API with the user's own kubeconfig. SandboxRoutes are created and
//! deleted through the API (the agents watch them); the agents' admin APIs (`/topology`,
//! `/decisions`) are reached through the API server's pod proxy, and send_test_request runs as a
//! Pod (`request_pod`), so nothing but the API server needs to be reachable from where `shunt
//! mcp` runs.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::FutureExt as _;
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};

use super::{
    backend::{AgentReply, Snapshot, route_info},
    error::{ToolError, ToolResult},
    types::RouteInfo,
};
use crate::{
    kube::{convert, crd},
    routes::{self, ForkStatus, RouteReason, RouteStatus, SANDBOX_LABEL, SandboxRouteObj},
};

/// How long create_sandbox_route waits for the agents' status.
const STATUS_WAIT: Duration = Duration::from_secs(10);

pub struct Cluster {
    pub client: Client,
    /// Default namespace (--namespace, else the kubeconfig context's).
    pub namespace: String,
    pub agent_namespace: String,
    pub agent_selector: String,
    pub agent_port: u16,
    /// send_test_request's pod image (default: the agents').
    pub request_image: Option<String>,
    /// send_test_request's pod namespace (default: the called service's).
    pub request_namespace: Option<String>,
    /// How long a request pod may take to be scheduled, pulled and started.
    pub request_pod_timeout: Duration,
}

fn reason_of(s: &str) -> RouteReason {
    match s {
        "EndpointsReady" => RouteReason::EndpointsReady,
        "ServiceNotFound" => RouteReason::ServiceNotFound,
        "PortNotFound" => RouteReason::PortNotFound,
        "DuplicateKey" => RouteReason::DuplicateKey,
        "Expired" => RouteReason::Expired,
        "CrossNamespace" => RouteReason::CrossNamespace,
        "InvalidKey" => RouteReason::InvalidKey,
        "InvalidSelector" => RouteReason::InvalidSelector,
        "InvalidTarget" => RouteReason::InvalidTarget,
        _ => RouteReason::NoReadyEndpoints,
    }
}

/// The status the agents wrote on a SandboxRoute, if any.
pub fn status_of(r: &crd::SandboxRoute) -> Option<RouteStatus> {
    let status = r.status.as_ref()?;
    let cond = status.conditions.iter().find(|c| c.type_ == crd::READY)?;
    Some(RouteStatus {
        namespace: r.namespace().unwrap_or_default(),
        name: r.name_any(),
        observed_generation: status.observed_generation.unwrap_or(0),
        ready: cond.status == "True",
        reason: reason_of(&cond.reason),
        message: cond.message.clone(),
        applied: cond.status == "True",
        forks: status
            .forks
            .iter()
            .map(|f| ForkStatus {
                service: f.service.clone(),
                reason: reason_of(&f.reason),
                message: f.message.clone(),
                ready_endpoints: f.ready_endpoints as usize,
            })
            .collect(),
    })
}

/// The CRD spec for a routes spec (the two serialize identically).
pub fn crd_spec(spec: &routes::SandboxRouteSpec) -> anyhow::Result<crd::SandboxRouteSpec> {
    Ok(serde_json::from_value(serde_json::to_value(spec)?)?)
}

impl Cluster {
    fn ns<'a>(&'a self, namespace: Option<&'a str>) -> &'a str {
        namespace.unwrap_or(&self.namespace)
    }

    pub async fn snapshot(&self, namespace: Option<&str>) -> ToolResult<Snapshot> {
        let ns = self.ns(namespace);
        let lp = ListParams::default();
        let services = Api::<Service>::namespaced(self.client.clone(), ns)
            .list(&lp)
            .await
            .map_err(ToolError::api)?;
        let slices = Api::<EndpointSlice>::namespaced(self.client.clone(), ns)
            .list(&lp)
            .await
            .map_err(ToolError::api)?;
        let pods = Api::<Pod>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default().labels(SANDBOX_LABEL))
            .await
            .map_err(ToolError::api)?;
        let mut warnings = Vec::new();
        let crs = match Api::<crd::SandboxRoute>::namespaced(self.client.clone(), ns)
            .list(&lp)
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                warnings.push(format!(
                    "listing SandboxRoutes failed ({e}); is the CRD installed (`shunt crd | kubectl apply -f -`)?"
                ));
                Vec::new()
            }
        };
        let state = convert::cluster_state(&services.items, &slices.items, &pods.items, &crs);
        let by_name: HashMap<(String, String), &crd::SandboxRoute> = crs
            .iter()
            .map(|r| ((r.namespace().unwrap_or_default(), r.name_any()), r))
            .collect();
        let statuses = state
            .routes
            .iter()
            .map(|r| {
                by_name
                    .get(&(r.namespace.clone(), r.name.clone()))
                    .and_then(|cr| status_of(cr))
            })
            .collect();
        let mut pod_names = HashMap::new();
        for s in &slices.items {
            for ep in &s.endpoints {
                if let Some(t) = &ep.target_ref
                    && t.kind.as_deref() == Some("Pod")
                    && let Some(name) = &t.name
                {
                    for a in &ep.addresses {
                        if let Ok(ip) = a.parse() {
                            pod_names.insert(ip, format!("{ns}/{name}"));
                        }
                    }
                }
            }
        }
        Ok(Snapshot {
            state,
            statuses,
            pod_names,
            cluster_dns: true,
            warnings,
        })
    }

    /// The agent pods, by name.
    async fn agents(&self) -> ToolResult<Vec<String>> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.agent_namespace)
            .list(&ListParams::default().labels(&self.agent_selector))
            .await
            .map_err(ToolError::api)?;
        Ok(pods
            .items
            .iter()
            .filter(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.metadata.deletion_timestamp.is_none()
            })
            .map(|p| p.name_any())
            .collect())
    }

    pub async fn admin_get(&self, path: &str) -> ToolResult<(Vec<AgentReply>, Vec<String>)> {
        let agents = self.agents().await?;
        if agents.is_empty() {
            return Err(ToolError::new(
                "agent_unreachable",
                format!(
                    "no running agent pod in namespace {} with labels {}",
                    self.agent_namespace, self.agent_selector
                ),
                "install the agent (deploy/), or point --agent-namespace/--agent-selector at it",
            ));
        }
        // All agents at once: one slow node must not add up.
        let answers = futures::future::join_all(agents.into_iter().map(|agent| {
            let url = format!(
                "/api/v1/namespaces/{}/pods/{agent}:{}/proxy{path}",
                self.agent_namespace, self.agent_port
            );
            async move {
                let req = http::Request::get(&url)
                    .body(Vec::new())
                    .map_err(|e| e.to_string())?;
                let body =
                    tokio::time::timeout(Duration::from_secs(10), self.client.request_text(req))
                        .await
                        .map_err(|_| "timed out after 10s".to_string())?
                        .map_err(|e| e.to_string())?;
                Ok::<_, String>(body)
            }
            .map(move |r| (agent, r))
        }))
        .await;
        let mut replies = Vec::new();
        let mut warnings = Vec::new();
        for (agent, r) in answers {
            match r {
                Ok(body) => replies.push(AgentReply {
                    agent: Some(agent),
                    body,
                }),
                Err(e) => warnings.push(format!(
                    "agent {agent}: {e} (your user needs `get` on pods/proxy in {})",
                    self.agent_namespace
                )),
            }
        }
        if replies.is_empty() {
            return Err(ToolError::new(
                "agent_unreachable",
                format!("no agent answered: {}", warnings.join("; ")),
                format!(
                    "check that your user may `get pods/proxy` in {} and that the agents are \
                     ready",
                    self.agent_namespace
                ),
            ));
        }
        Ok((replies, warnings))
    }

    pub async fn create_route(
        &self,
        route: SandboxRouteObj,
    ) -> ToolResult<(RouteInfo, bool, Vec<String>)> {
        let api = Api::<crd::SandboxRoute>::namespaced(self.client.clone(), &route.namespace);
        let spec = crd_spec(&route.spec).map_err(|e| ToolError::invalid(e.to_string(), ""))?;
        let obj = crd::SandboxRoute {
            metadata: ObjectMeta {
                name: Some(route.name.clone()),
                namespace: Some(route.namespace.clone()),
                labels: Some([(SANDBOX_LABEL.to_string(), route.spec.routing_key.clone())].into()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        };
        let created = api
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 409 => ToolError::new(
                    "key_exists",
                    format!(
                        "a SandboxRoute named {}/{} already exists",
                        route.namespace, route.name
                    ),
                    "delete it first (delete_sandbox_route) or use another key",
                ),
                _ => ToolError::api(e),
            })?;
        let generation = created.metadata.generation.unwrap_or(0);
        // The leader agent writes status; wait a little for it, so the answer says whether the
        // route is usable.
        let deadline = Instant::now() + STATUS_WAIT;
        let mut last = created;
        loop {
            if let Some(st) = status_of(&last)
                && st.observed_generation >= generation
            {
                let info = route_info(&route, Some(&st));
                return Ok((info, true, Vec::new()));
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            match api.get(&route.name).await {
                Ok(r) => last = r,
                Err(e) => return Err(ToolError::api(e)),
            }
        }
        Ok((
            route_info(&route, None),
            false,
            vec![format!(
                "no agent reported a status within {STATUS_WAIT:?}; the agents may be down or \
                 not running with --kube (list_sandbox_routes shows the status once written)"
            )],
        ))
    }

    pub async fn delete_route(&self, route: &SandboxRouteObj) -> ToolResult<(bool, Vec<String>)> {
        let api = Api::<crd::SandboxRoute>::namespaced(self.client.clone(), &route.namespace);
        api.delete(&route.name, &DeleteParams::background())
            .await
            .map_err(ToolError::api)?;
        // The agents stop applying a route as soon as their watch sees the deletion.
        Ok((true, Vec::new()))
    }
}
