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
pub mod backend;
pub mod cluster;
pub mod edit;
pub mod error;
pub mod request;
pub mod request_pod;
pub mod tools;
pub mod types;

use std::{
    net::SocketAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use clap::Args;
use rmcp::{
    Json, ServerHandler, ServiceExt as _,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    tool, tool_handler, tool_router,
};

use self::{
    backend::{Backend, Local},
    error::{ErrorBody, ToolResult},
    request::ClientPlacement,
    types::*,
};

/// Flags of `shunt mcp`.
#[derive(Debug, Clone, Args)]
pub struct McpArgs {
    /// No-cluster mode: the routes file the agent runs with (`shunt run --routes FILE`).
    /// create/delete_sandbox_route edit it; the agent hot-reloads it.
    #[arg(long, value_name = "FILE", conflicts_with = "kube")]
    pub routes: Option<PathBuf>,

    /// No-cluster mode: the agent's debug API (`shunt run --debug-addr`: routes, topology and
    /// routing decisions).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465")]
    pub debug_addr: SocketAddr,

    /// Network namespace (e.g. /run/netns/NAME) where --debug-addr is reachable; the server
    /// runs in it. Default: this process's.
    #[arg(long, value_name = "PATH")]
    pub debug_netns: Option<PathBuf>,

    /// send_test_request: the client pod's network namespace (e.g. /run/netns/NAME). Default:
    /// the server's (see --debug-netns).
    #[arg(long, value_name = "PATH")]
    pub client_netns: Option<PathBuf>,

    /// send_test_request: the cgroup v2 directory the agent captures (--cgroup of `shunt run`);
    /// the request's client process joins it so its connection is routed like a pod's.
    #[arg(long, value_name = "PATH")]
    pub client_cgroup: Option<PathBuf>,

    /// Cluster mode: SandboxRoutes through the Kubernetes API, the agents' decisions and
    /// topology through the traffic API (traffic.shunt.dev), with your kubeconfig's credentials.
    #[arg(long)]
    pub kube: bool,

    /// Kubeconfig for --kube (default: KUBECONFIG or ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "PATH", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,

    /// Default namespace for --kube (default: the kubeconfig context's).
    #[arg(long, value_name = "NS", requires = "kube")]
    pub namespace: Option<String>,

    #[command(flatten)]
    pub agents: crate::kube::agents::AgentPodsArgs,

    /// send_test_request in cluster mode runs its client as a short-lived Pod with this image
    /// (its entrypoint must be the shunt binary). Default: the image of a running agent pod.
    #[arg(long, value_name = "IMAGE", requires = "kube")]
    pub request_image: Option<String>,

    /// Namespace of send_test_request's pod (--kube). Default: the called service's namespace,
    /// so the request leaves from where that service's own clients live.
    #[arg(long, value_name = "NS", requires = "kube")]
    pub request_namespace: Option<String>,

    /// How long send_test_request's pod may take to be scheduled and started (--kube), on top
    /// of the request's own timeout.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::duration::parse_duration)]
    pub request_pod_timeout: std::time::Duration,

    /// Internal: be send_test_request's client (request in SHUNT_REQUEST or on stdin, response
    /// on stdout).
    #[arg(long, hide = true)]
    pub internal_request: bool,
}

const INSTRUCTIONS: &str = "Shunt routes requests that carry a routing key (W3C baggage \
`sd-routing-key=KEY`) to sandbox pods of the services a SandboxRoute forks; every other request \
stays on the baseline. Typical loop: list_services (services, ports, sandbox pods, forks) → \
create_sandbox_route(key, forks=[{service, selector: {..., \"shunt.dev/sandbox\": ...}}]) → \
send_test_request(url, key) and read `hops` (where each hop went and why) and the response → \
fix the code, redeploy the sandbox, repeat → delete_sandbox_route(key). Use resolve_port before \
calling a service: a wrong port bypasses routing. get_dependencies shows who calls what \
(observed traffic). get_decisions(key) explains every routing decision for a key. Errors come as \
{\"error\": {\"kind\", \"message\", \"fix\"}}: do what `fix` says.";

/// The MCP server.
#[derive(Clone)]
pub struct ShuntMcp {
    backend: Arc<Backend>,
    placement: ClientPlacement,
    tool_router: ToolRouter<Self>,
}

// Tool signatures spell out `Result<Json<T>, Json<ErrorBody>>`: the `#[tool]` macro derives the
// output schema from that exact shape, not through an alias.
fn out<T>(r: ToolResult<T>) -> Result<Json<T>, Json<ErrorBody>> {
    r.map(Json).map_err(|e| Json(e.body()))
}

#[tool_router]
impl ShuntMcp {
    pub fn new(backend: Backend, placement: ClientPlacement) -> Self {
        Self {
            backend: Arc::new(backend),
            placement,
            tool_router: Self::tool_router(),
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
        Errors: key_exists, service_not_found, wrong_port, invalid_input (with the fix)."
    )]
    async fn create_sandbox_route(
        &self,
        Parameters(p): Parameters<CreateRouteParams>,
    ) -> Result<Json<CreateRouteResult>, Json<ErrorBody>> {
        out(self.backend.create_sandbox_route(p).await)
    }

    #[tool(
        description = "Delete the SandboxRoute of a routing key; keyed requests go back to the \
        baseline."
    )]
    async fn delete_sandbox_route(
        &self,
        Parameters(p): Parameters<KeyParams>,
    ) -> Result<Json<DeleteRouteResult>, Json<ErrorBody>> {
        out(self.backend.delete_sandbox_route(p).await)
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
    rt.block_on(async move {
        let backend = match &args.routes {
            Some(file) => {
                // Fail now, not at the first tool call, on a file that does not parse.
                crate::routes::file::load_routes(file)?;
                Backend::Local(Local {
                    routes_file: file.clone(),
                    debug_addr: args.debug_addr,
                    edit_lock: tokio::sync::Mutex::new(()),
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
        let server = ShuntMcp::new(backend, placement(&args));
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .context("starting the MCP session on stdio")?;
        tracing::info!("MCP server ready on stdio");
        running.waiting().await?;
        anyhow::Ok(())
    })
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
    // SAFETY: a valid namespace fd; affects only the calling (so far only) thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("--debug-netns: entering {}", path.display()));
    }
    Ok(())
}
