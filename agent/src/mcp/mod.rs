//! `shunt mcp`: an MCP server (stdio) for coding agents. An agent changes a service, puts the
//! change in a sandbox, sends keyed test traffic through the real cluster, reads where each hop
//! went and why, and fixes its change — without a human.
//!
//! Tools (each with a JSON schema; results are structured JSON, errors are
//! `{"error": {"kind", "message", "fix"}}` with `isError: true`):
//! `list_services`, `get_dependencies`, `resolve_port`, `list_sandbox_routes`,
//! `create_sandbox_route`, `delete_sandbox_route`, `send_test_request`, `get_decisions`.
//!
//! Modes: no cluster (`--routes FILE --debug-addr ADDR`, see [`backend::Local`]) and cluster
//! (`--kube`, see [`cluster::Cluster`]).
//!
//! - [`types`]: parameters and results (their schemas are what agents read).
//! - [`tools`]: what each tool does, on a [`backend::Backend`].
//! - [`edit`]: rewriting the routes file's `routes:` section.
//! - [`request`]: send_test_request's client process, placed in the client pod.
//! - [`request_pod`]: in cluster mode that client runs as a short-lived Pod.
pub mod args;
pub mod backend;
pub mod cluster;
pub mod edit;
pub mod error;
pub mod loop_tools;
pub mod mark_probe;
pub mod request;
pub mod request_pod;
pub mod sandbox_types;
pub mod session;
pub mod test_pod;
pub mod tools;
pub mod types;

pub use args::McpArgs;

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use rmcp::{
    Json, ServerHandler, ServiceExt as _,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    tool, tool_handler, tool_router,
};

use self::{
    backend::{Backend, Local},
    error::{ErrorBody, ToolResult},
    request::ClientPlacement,
    session::Session,
    types::*,
};

const INSTRUCTIONS: &str = "Shunt routes requests that carry a routing key (W3C baggage \
`sd-routing-key=KEY`) to sandbox pods of the services a SandboxRoute forks; every other request \
stays on the baseline. Typical loop: list_services (services, ports, sandbox pods, forks) → \
create_sandbox_route(key, forks=[{service, selector: {..., \"shunt.dev/sandbox\": ...}}]) → \
send_test_request(url, key) and read `hops` (where each hop went and why) and the response → \
fix the code, redeploy the sandbox, repeat → delete_sandbox_route(key). Use resolve_port before \
calling a service: a wrong port bypasses routing. get_dependencies shows who calls what \
(observed traffic). get_decisions(key) explains every routing decision for a key. With a \
cluster, run_tests(image, command, key) runs a test suite whose requests get the key from Shunt \
(no header needed). Errors come as \
{\"error\": {\"kind\", \"message\", \"fix\"}}: do what `fix` says.";

/// The MCP server.
#[derive(Clone)]
pub struct ShuntMcp {
    backend: Arc<Backend>,
    placement: ClientPlacement,
    session: Arc<Session>,
    tool_router: ToolRouter<Self>,
}

// Tool signatures spell out `Result<Json<T>, Json<ErrorBody>>`: the `#[tool]` macro derives the
// output schema from that exact shape, not through an alias.
fn out<T>(r: ToolResult<T>) -> Result<Json<T>, Json<ErrorBody>> {
    r.map(Json).map_err(|e| Json(e.body()))
}

#[tool_router]
impl ShuntMcp {
    pub fn new(backend: Arc<Backend>, placement: ClientPlacement, session: Arc<Session>) -> Self {
        Self {
            backend,
            placement,
            session,
            tool_router: Self::tool_router() + Self::loop_router(),
        }
    }

    /// The services, with their ports, baseline endpoints and existing forks, and the sandbox
    /// pods.
    #[tool(
        description = "List the services requests can be routed for: each with its addresses, \
        ports (service port vs targetPort: always call the service port), baseline endpoints, \
        a ready-made URL, and its existing forks (routing key → sandbox, with readiness). Also \
        lists the sandbox pods (labelled shunt.dev/sandbox) you can point a fork's selector at. \
        Start here."
    )]
    async fn list_services(
        &self,
        Parameters(p): Parameters<NamespaceParams>,
    ) -> Result<Json<ListServicesResult>, Json<ErrorBody>> {
        out(self.backend.list_services(p).await)
    }

    #[tool(
        description = "Observed dependencies of a service, from real connections counted by the \
        agent: `callers` (who calls it, with connection counts) and `callees` (what it and its \
        sandbox pods call). Omit `service` for the whole graph (`edges`). Use it to find which \
        services a change can affect and which entry point to send test traffic to."
    )]
    async fn get_dependencies(
        &self,
        Parameters(p): Parameters<DependenciesParams>,
    ) -> Result<Json<DependenciesResult>, Json<ErrorBody>> {
        out(self.backend.get_dependencies(p).await)
    }

    #[tool(
        description = "Resolve a port name or number to the service port to call (and its \
        targetPort). Requests to a wrong port silently land on the baseline or nowhere, so a \
        wrong port is an error naming the right one (`details.suggested_port`) and listing \
        `valid_ports`. Returns a URL for send_test_request."
    )]
    async fn resolve_port(
        &self,
        Parameters(p): Parameters<ResolvePortParams>,
    ) -> Result<Json<ResolvePortResult>, Json<ErrorBody>> {
        out(self.backend.resolve_port(p).await)
    }

    #[tool(
        description = "List the SandboxRoutes: routing key, forks (service → sandbox selector or \
        service), fallback, expiry, and status (ready, reason: EndpointsReady, NoReadyEndpoints, \
        ServiceNotFound, DuplicateKey, ...)."
    )]
    async fn list_sandbox_routes(
        &self,
        Parameters(p): Parameters<NamespaceParams>,
    ) -> Result<Json<ListRoutesResult>, Json<ErrorBody>> {
        out(self.backend.list_sandbox_routes(p).await)
    }

    #[tool(
        description = "Create a SandboxRoute: requests carrying `key` (baggage \
        sd-routing-key=KEY) to each fork's `service` go to the sandbox pods its `selector` \
        matches (the selector must include shunt.dev/sandbox) or to its `target_service`; \
        everything else stays on the baseline. Returns the route's status and how to test it. \
        The route is deleted when this MCP session ends unless `keep: true`. Errors: key_exists, \
        service_not_found, wrong_port, invalid_input (with the fix)."
    )]
    async fn create_sandbox_route(
        &self,
        Parameters(mut p): Parameters<CreateRouteParams>,
    ) -> Result<Json<CreateRouteResult>, Json<ErrorBody>> {
        let local = !self.backend.is_cluster();
        let own_ttl = p.ttl.is_some();
        if local && !own_ttl && !p.keep {
            p.ttl = Some(format!("{}ms", self.session.ttl.as_millis()));
        }
        let keep = p.keep;
        let r = self.backend.create_sandbox_route(p).await;
        if let (true, Ok(c)) = (local, &r) {
            let id = format!("{}/{}", c.route.namespace, c.route.name);
            if own_ttl && !keep {
                self.session.add_route_with_ttl(&id);
            } else {
                self.session.add_route(&id, keep);
            }
        }
        out(r)
    }

    #[tool(
        description = "Delete the SandboxRoute of a routing key; keyed requests go back to the \
        baseline. In no-cluster mode it deletes only routes this session created, unless \
        `force: true` (never use force on another session's or a person's route without being \
        asked to)."
    )]
    async fn delete_sandbox_route(
        &self,
        Parameters(p): Parameters<KeyParams>,
    ) -> Result<Json<DeleteRouteResult>, Json<ErrorBody>> {
        if !self.backend.is_cluster() && !p.force {
            let owned = self.backend.snapshot(None).await.map(|snap| {
                snap.state
                    .routes
                    .iter()
                    .filter(|r| r.spec.routing_key == p.key)
                    .filter(|r| p.namespace.as_ref().is_none_or(|n| *n == r.namespace))
                    .map(|r| r.id())
                    .find(|id| !self.session.owns_route(id))
            });
            if let Ok(Some(id)) = owned {
                return out(Err(error::ToolError::new(
                    error::ToolErrorKind::NotOwned,
                    format!(
                        "route {id} was not created by this session ({}): another session or a \
                         person made it",
                        self.session.id
                    ),
                    "leave it to its owner; only if you must, delete_sandbox_route with force: true",
                )));
            }
        }
        let r = self.backend.delete_sandbox_route(p).await;
        if let Ok(d) = &r {
            self.session.remove_route(&d.deleted);
        }
        out(r)
    }

    #[tool(
        description = "Send one HTTP request from inside the cluster (a client pod whose \
        connections are captured; with a cluster, a short-lived pod in the service's namespace \
        that is deleted afterwards), with `key` injected as baggage (omit it for unkeyed traffic). \
        Returns the response (status, headers, body, body_json) and `hops`: every routing \
        decision the request caused, hop by hop (from → service: sandbox|baseline (reason) → \
        pod), including calls made by the services it reached, plus hints when something looks \
        wrong (e.g. a service that drops the key)."
    )]
    async fn send_test_request(
        &self,
        Parameters(p): Parameters<SendRequestParams>,
    ) -> Result<Json<SendRequestResult>, Json<ErrorBody>> {
        out(self.backend.send_test_request(p, &self.placement).await)
    }

    #[tool(
        description = "Every routing decision the agents logged for a key (optionally since a \
        time, e.g. a send_test_request's started_unix_ms): service, decision \
        (sandbox|baseline|passthrough|reject), reason, upstream pod, status, latency, with a \
        summary and a hint per reason (why a keyed request landed on the baseline)."
    )]
    async fn get_decisions(
        &self,
        Parameters(p): Parameters<DecisionsParams>,
    ) -> Result<Json<DecisionsResult>, Json<ErrorBody>> {
        out(self.backend.get_decisions(p).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ShuntMcp {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(
            rmcp::model::ServerCapabilities::builder()
                .enable_tools()
                .build(),
        )
        .with_server_info(rmcp::model::Implementation::new(
            "shunt",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(INSTRUCTIONS)
    }
}

/// `shunt mcp`.
pub fn run(args: McpArgs) -> anyhow::Result<()> {
    if args.internal_request {
        return request::child_main();
    }
    if args.internal_wait_marked {
        return mark_probe::child_main();
    }
    // clap's `requires = "kube"` is not enforced next to --routes (which conflicts with it).
    if args.routes.is_some() {
        let kube_only = [
            ("--kubeconfig", args.kubeconfig.is_some()),
            ("--namespace", args.namespace.is_some()),
            ("--request-image", args.request_image.is_some()),
            ("--request-namespace", args.request_namespace.is_some()),
        ];
        if let Some((flag, _)) = kube_only.iter().find(|(_, set)| *set) {
            anyhow::bail!("{flag} applies to cluster mode only (--kube), not with --routes");
        }
    }
    if args.routes.is_none() && !args.kube {
        anyhow::bail!(
            "say where routes come from: --routes FILE (no cluster, with the agent at \
             --debug-addr) or --kube (Kubernetes API)"
        );
    }
    // Before any thread exists, so every thread of the runtime is in it.
    if let Some(ns) = &args.debug_netns {
        enter_netns(ns)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        let backend = match &args.routes {
            Some(file) => {
                // Fail now, not at the first tool call, on a file that does not parse.
                crate::routes::file::load_routes(file)?;
                Backend::Local(Local {
                    routes_file: file.clone(),
                    debug_addr: args.debug_addr,
                    edit_lock: tokio::sync::Mutex::new(()),
                    mini: mini_cluster(&args)?,
                })
            }
            None => {
                let (client, namespace) =
                    crate::kube::client::load(args.kubeconfig.as_deref()).await?;
                Backend::Cluster(cluster::Cluster {
                    client,
                    namespace: args.namespace.clone().unwrap_or(namespace),
                    agent_namespace: args.agents.agent_namespace.clone(),
                    agent_selector: args.agents.agent_selector.clone(),
                    request_image: args.request_image.clone(),
                    request_namespace: args.request_namespace.clone(),
                    request_pod_timeout: args.request_pod_timeout,
                })
            }
        };
        let backend = Arc::new(backend);
        let session = Arc::new(Session::new(
            args.session_ttl,
            args.max_sandboxes_per_session,
        ));
        // What dead sessions left to expire goes first.
        backend.renew_session(&session).await;
        let server = ShuntMcp::new(backend.clone(), placement(&args), session.clone());
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .context("starting the MCP session on stdio")?;
        tracing::info!(session = %session.id, "MCP server ready on stdio");
        let renewer = {
            let (backend, session) = (backend.clone(), session.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(session.renew_every()).await;
                    backend.renew_session(&session).await;
                }
            })
        };
        let token = running.cancellation_token();
        let ended = tokio::select! {
            r = running.waiting() => r.map(|_| "stdin closed".to_string()).map_err(anyhow::Error::from),
            s = end_signal() => {
                token.cancel();
                s.map(|s| format!("{s} received"))
            }
        };
        renewer.abort();
        let why = ended?;
        let deleted = backend.end_session(&session).await;
        tracing::info!(session = %session.id, "session ended ({why}); deleted: {}", if deleted.is_empty() { "nothing".into() } else { deleted.join(", ") });
        anyhow::Ok(())
    });
    // Not a plain drop: that would wait for the thread blocked reading stdin, which a signal
    // does not close.
    rt.shutdown_background();
    result
}

/// Waits for SIGINT, SIGTERM or SIGHUP; returns its name.
async fn end_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    })
}

fn mini_cluster(args: &McpArgs) -> anyhow::Result<Option<crate::sandbox::local::MiniCluster>> {
    let Some(dir) = &args.cluster_dir else {
        return Ok(None);
    };
    let node = args
        .node_netns
        .clone()
        .or_else(|| args.debug_netns.clone())
        .context(
            "--cluster-dir needs --node-netns (or --debug-netns): where sandbox pods attach",
        )?;
    let captured = args
        .client_cgroup
        .clone()
        .context("--cluster-dir needs --client-cgroup: the captured cgroup sandboxes run under")?;
    // Sandbox namespaces are named after the node's (`shunt-demo-node` → `shunt-demo-sbx-*`),
    // so whatever tears the mini-cluster down by name finds them.
    let node_name = node
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "shunt".into());
    let prefix = node_name
        .strip_suffix("-node")
        .unwrap_or(&node_name)
        .to_string();
    Ok(Some(crate::sandbox::local::MiniCluster {
        dir: dir.clone(),
        node_netns: node,
        captured,
        netns_prefix: prefix,
        routes: args.routes.clone(),
    }))
}

fn placement(args: &McpArgs) -> ClientPlacement {
    ClientPlacement {
        netns: args.client_netns.clone(),
        cgroup: args.client_cgroup.clone(),
    }
}

fn enter_netns(path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("--debug-netns: opening {}", path.display()))?;
    // Affects only the calling (so far only) thread.
    crate::placement::enter_netns(&f)
        .with_context(|| format!("--debug-netns: entering {}", path.display()))?;
    Ok(())
}
