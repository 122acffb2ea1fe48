//! Cluster mode: the Kubernetes API with the user's own kubeconfig. SandboxRoutes are created and
//! deleted through the API (the agents watch them); the agents' topology and decisions are read
//! through the traffic API (`/apis/traffic.shunt.dev`, see [`crate::traffic`]) for one namespace
//! with the user's own RBAC, and send_test_request runs as a Pod (`request_pod`), so nothing but
//! the API server needs to be reachable from where `shunt mcp` runs, and no node-level
//! permission is needed.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

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
    error::{ToolError, ToolErrorKind, ToolResult},
    types::RouteInfo,
};
use crate::{
    kube::{convert, crd, route_status::route_status},
    routes::{SANDBOX_LABEL, SandboxRouteObj},
    traffic::client::TrafficError,
};

/// How long create_sandbox_route waits for the agents' status.
const STATUS_WAIT: Duration = Duration::from_secs(10);

pub struct Cluster {
    pub client: Client,
    /// Default namespace (--namespace, else the kubeconfig context's).
    pub namespace: String,
    pub agent_namespace: String,
    pub agent_selector: String,
    /// send_test_request's pod image (default: the agents').
    pub request_image: Option<String>,
    /// send_test_request's pod namespace (default: the called service's).
    pub request_namespace: Option<String>,
    /// How long a request pod may take to be scheduled, pulled and started.
    pub request_pod_timeout: Duration,
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
                    .and_then(|cr| route_status(cr))
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
            namespace: Some(ns.to_string()),
            state,
            statuses,
            pod_names,
            cluster_dns: true,
            warnings,
        })
    }

    /// GETs `path` (`/decisions?...`, `/topology`) from every agent through the traffic API,
    /// for `namespace` (default: the default namespace).
    pub async fn debug_get(
        &self,
        path: &str,
        namespace: Option<&str>,
    ) -> ToolResult<(Vec<AgentReply>, Vec<String>)> {
        let path = path.trim_start_matches('/');
        let (resource, query) = path.split_once('?').unwrap_or((path, ""));
        let ns = self.ns(namespace);
        let answers = crate::traffic::client::get(&self.client, ns, resource, query)
            .await
            .map_err(|e| match e {
                TrafficError::Forbidden(message) => ToolError::new(
                    ToolErrorKind::Forbidden,
                    message,
                    format!(
                        "ask an admin for `{verb}` on {resources} in API group {group} in \
                         namespace {ns} (ClusterRole shunt-traffic-reader, bound with a \
                         RoleBinding in {ns}; see the README)",
                        verb = crate::traffic::VERB,
                        resources = crate::traffic::RESOURCES.join(", "),
                        group = crate::traffic::GROUP,
                    ),
                ),
                other => ToolError::new(
                    ToolErrorKind::AgentUnreachable,
                    format!("{:#}", anyhow::Error::from(other)),
                    "install Shunt with its traffic API (kubectl apply -k \
                     deploy/overlays/default), and check that its pod in shunt-system and the \
                     agents are ready",
                ),
            })?;
        if answers.items.is_empty() {
            return Err(ToolError::new(
                ToolErrorKind::AgentUnreachable,
                format!("no agent answered: {}", answers.warnings.join("; ")),
                "check that the agents in shunt-system are ready",
            ));
        }
        let replies = answers
            .items
            .into_iter()
            .map(|a| AgentReply {
                agent: Some(a.agent),
                body: a.body.to_string(),
            })
            .collect();
        Ok((replies, answers.warnings))
    }

    pub async fn create_route(
        &self,
        route: SandboxRouteObj,
    ) -> ToolResult<(RouteInfo, bool, Vec<String>)> {
        let api = Api::<crd::SandboxRoute>::namespaced(self.client.clone(), &route.namespace);
        let obj = crd::SandboxRoute {
            metadata: ObjectMeta {
                name: Some(route.name.clone()),
                namespace: Some(route.namespace.clone()),
                labels: Some([(SANDBOX_LABEL.to_string(), route.spec.routing_key.clone())].into()),
                ..ObjectMeta::default()
            },
            spec: crd::SandboxRouteSpec::from(&route.spec),
            status: None,
        };
        let created = api
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 409 => ToolError::new(
                    ToolErrorKind::KeyExists,
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
            if let Some(st) = route_status(&last)
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
