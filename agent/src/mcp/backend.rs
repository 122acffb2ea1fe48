//! Where the tools get their facts, per mode:
//!
//! - no cluster ([`Local`]): services, sandbox pods and routes from the routes file (route
//!   status computed with the agent's own [`RouteTable::compute`]); topology and decisions
//!   from the agent's debug API (`--debug-addr`, loopback); routes created and deleted by editing the file, which the
//!   agent hot-reloads.
//! - cluster ([`super::cluster::Cluster`]): the Kubernetes API with the user's kubeconfig;
//!   the agents' debug data through the traffic API ([`crate::traffic`]), for the namespaces the
//!   user's RBAC grants.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::sync::Mutex;

use super::{
    cluster::Cluster,
    error::{ToolError, ToolErrorKind, ToolResult},
    types::{FallbackParam, ForkTargetInfo, PortValue, RouteForkInfo, RouteInfo},
};
use crate::routes::{ClusterState, Fallback, RouteStatus, RouteTable, SandboxRouteObj, Selector};

/// What a mode knows about the cluster at one moment.
pub struct Snapshot {
    /// The namespace it is of (cluster mode); traffic data is read for it.
    pub namespace: Option<String>,
    pub state: ClusterState,
    /// One per `state.routes` entry, same order.
    pub statuses: Vec<Option<RouteStatus>>,
    /// Endpoint IP → pod name (cluster mode, from EndpointSlice targetRefs).
    pub pod_names: HashMap<IpAddr, String>,
    /// In-cluster DNS names are meaningful (cluster mode).
    pub cluster_dns: bool,
    pub warnings: Vec<String>,
}

impl Snapshot {
    pub fn route_infos(&self) -> Vec<RouteInfo> {
        self.state
            .routes
            .iter()
            .zip(&self.statuses)
            .map(|(r, s)| route_info(r, s.as_ref()))
            .collect()
    }

    /// The route table the agent computes from this state (names owners of addresses).
    pub fn table(&self) -> RouteTable {
        RouteTable::compute(&self.state, jiff::Timestamp::now()).0
    }
}

pub fn route_info(r: &SandboxRouteObj, st: Option<&RouteStatus>) -> RouteInfo {
    RouteInfo {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        key: r.spec.routing_key.clone(),
        fallback: match r.spec.fallback {
            Fallback::Baseline => FallbackParam::Baseline,
            Fallback::Reject => FallbackParam::Reject,
        },
        expires_at: r.spec.expires_at.map(|t| t.to_string()),
        ready: st.map(|s| s.ready),
        reason: st.map(|s| s.reason.as_str().to_string()),
        message: st.map(|s| s.message.clone()),
        forks: r
            .spec
            .forks
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let fs = st.and_then(|s| s.forks.get(i));
                RouteForkInfo {
                    service: f.service.clone(),
                    to: ForkTargetInfo {
                        selector: f.to.selector.as_ref().map(Selector::to_map),
                        service: f.to.service.clone(),
                    },
                    ports: f
                        .ports
                        .as_ref()
                        .map(|ps| ps.iter().map(PortValue::from).collect()),
                    reason: fs.map(|f| f.reason.as_str().to_string()),
                    message: fs.map(|f| f.message.clone()),
                    ready_sandbox_endpoints: fs
                        .map(|f| u32::try_from(f.ready_endpoints).unwrap_or(u32::MAX)),
                }
            })
            .collect(),
    }
}

/// One agent's answer on its debug API.
pub struct AgentReply {
    /// The agent pod (cluster mode).
    pub agent: Option<String>,
    pub body: String,
}

pub enum Backend {
    Local(Local),
    Cluster(Cluster),
}

impl Backend {
    pub async fn snapshot(&self, namespace: Option<&str>) -> ToolResult<Snapshot> {
        match self {
            Backend::Local(l) => l.snapshot(),
            Backend::Cluster(c) => c.snapshot(namespace).await,
        }
    }

    /// GETs `path` (`/decisions?...`, `/topology`, `/routes`) from every agent, for `namespace`
    /// in cluster mode (default: the default namespace). Fails only when no agent answered.
    pub async fn debug_get(
        &self,
        path: &str,
        namespace: Option<&str>,
    ) -> ToolResult<(Vec<AgentReply>, Vec<String>)> {
        match self {
            Backend::Local(l) => l.debug_get(path).await.map(|b| {
                (
                    vec![AgentReply {
                        agent: None,
                        body: b,
                    }],
                    Vec::new(),
                )
            }),
            Backend::Cluster(c) => c.debug_get(path, namespace).await,
        }
    }

    /// Stores a new route; returns whether the agent(s) apply it already, the route's status if
    /// known, and warnings.
    pub async fn create_route(
        &self,
        route: SandboxRouteObj,
    ) -> ToolResult<(RouteInfo, bool, Vec<String>)> {
        match self {
            Backend::Local(l) => l.create_route(route).await,
            Backend::Cluster(c) => c.create_route(route).await,
        }
    }

    pub async fn delete_route(&self, route: &SandboxRouteObj) -> ToolResult<(bool, Vec<String>)> {
        match self {
            Backend::Local(l) => l.delete_route(route).await,
            Backend::Cluster(c) => c.delete_route(route).await,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }
}

/// No-cluster mode.
pub struct Local {
    pub routes_file: PathBuf,
    pub debug_addr: SocketAddr,
    /// Serializes edits of the routes file.
    pub edit_lock: Mutex<()>,
    /// The mini-cluster sandboxes are started in (`--cluster-dir`), if given.
    pub mini: Option<crate::sandbox::local::MiniCluster>,
}

/// How long create/delete wait for the agent to reload the routes file.
const RELOAD_WAIT: Duration = Duration::from_secs(6);

impl Local {
    fn file_error(&self, e: impl std::fmt::Display) -> ToolError {
        ToolError::new(
            ToolErrorKind::RoutesFile,
            format!("{}: {e}", self.routes_file.display()),
            "fix the routes file (the agent keeps its last good version meanwhile), or point \
             --routes at the file the agent reads",
        )
    }

    pub fn snapshot(&self) -> ToolResult<Snapshot> {
        let state = crate::routes::file::load_routes(&self.routes_file)
            .map_err(|e| self.file_error(format!("{:#}", anyhow::Error::from(e))))?;
        let (_, statuses) = RouteTable::compute(&state, jiff::Timestamp::now());
        Ok(Snapshot {
            namespace: None,
            statuses: statuses.into_iter().map(Some).collect(),
            state,
            pod_names: HashMap::new(),
            cluster_dns: false,
            warnings: Vec::new(),
        })
    }

    pub async fn debug_get(&self, path: &str) -> ToolResult<String> {
        crate::admin::client::get(self.debug_addr, path)
            .await
            .map_err(|e| {
                ToolError::new(
                    ToolErrorKind::AgentUnreachable,
                    format!("{e:#}"),
                    "start the agent (`shunt run --routes FILE`), or give `shunt mcp` its \
                     --debug-addr (and --debug-netns when it listens in another network \
                     namespace)",
                )
            })
    }

    /// Polls `/routes` until `pred` holds for the route list, up to [`RELOAD_WAIT`].
    async fn wait_agent(&self, pred: impl Fn(&[Value]) -> bool) -> ToolResult<bool> {
        let deadline = Instant::now() + RELOAD_WAIT;
        loop {
            let body = self.debug_get("/routes").await?;
            let routes: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
            if pred(&routes) {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn has_route(routes: &[Value], r: &SandboxRouteObj) -> bool {
        routes.iter().any(|v| {
            v["namespace"] == r.namespace.as_str()
                && v["name"] == r.name.as_str()
                && v["routingKey"] == r.spec.routing_key.as_str()
        })
    }

    pub(crate) async fn applied(&self, r: &SandboxRouteObj, present: bool) -> (bool, Vec<String>) {
        match self
            .wait_agent(|routes| Self::has_route(routes, r) == present)
            .await
        {
            Ok(true) => (true, Vec::new()),
            Ok(false) => (
                false,
                vec![format!(
                    "the agent at {} had not reloaded the routes file after {RELOAD_WAIT:?}; \
                     is it running with --routes {}?",
                    self.debug_addr,
                    self.routes_file.display()
                )],
            ),
            Err(e) => (
                false,
                vec![format!(
                    "could not ask the agent whether it applies the change: {}",
                    e.message
                )],
            ),
        }
    }

    pub async fn create_route(
        &self,
        route: SandboxRouteObj,
    ) -> ToolResult<(RouteInfo, bool, Vec<String>)> {
        let state = {
            let _guard = self.edit_lock.lock().await;
            let r = route.clone();
            let path = self.routes_file.clone();
            tokio::task::spawn_blocking(move || {
                super::edit::edit_routes(&path, move |routes| {
                    routes.push(r);
                    Ok(())
                })
            })
            .await
            .map_err(|e| self.file_error(e))?
            .map_err(|e| self.file_error(format!("{e:#}")))?
        };
        let (_, statuses) = RouteTable::compute(&state, jiff::Timestamp::now());
        let st = state
            .routes
            .iter()
            .zip(&statuses)
            .find(|(r, _)| r.namespace == route.namespace && r.name == route.name)
            .map(|(_, s)| s.clone());
        let info = route_info(&route, st.as_ref());
        let (applied, warnings) = self.applied(&route, true).await;
        Ok((info, applied, warnings))
    }

    /// Applies `change` to the file's sandbox pods and routes (validated, atomically).
    pub async fn edit(
        &self,
        change: impl FnOnce(
            &mut Vec<crate::routes::Pod>,
            &mut Vec<SandboxRouteObj>,
        ) -> anyhow::Result<()>
        + Send
        + 'static,
    ) -> ToolResult<crate::routes::ClusterState> {
        let _guard = self.edit_lock.lock().await;
        let path = self.routes_file.clone();
        tokio::task::spawn_blocking(move || super::edit::edit_pods_and_routes(&path, change))
            .await
            .map_err(|e| self.file_error(e))?
            .map_err(|e| self.file_error(format!("{e:#}")))
    }

    pub async fn delete_route(&self, route: &SandboxRouteObj) -> ToolResult<(bool, Vec<String>)> {
        {
            let _guard = self.edit_lock.lock().await;
            let (ns, name) = (route.namespace.clone(), route.name.clone());
            let path = self.routes_file.clone();
            tokio::task::spawn_blocking(move || {
                super::edit::edit_routes(&path, move |routes| {
                    routes.retain(|r| !(r.namespace == ns && r.name == name));
                    Ok(())
                })
            })
            .await
            .map_err(|e| self.file_error(e))?
            .map_err(|e| self.file_error(format!("{e:#}")))?;
        }
        Ok(self.applied(route, false).await)
    }
}
