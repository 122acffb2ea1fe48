//! The `shunt` command line: parses flags and hands each subcommand plain values (`run` gets a
//! [`RunConfig`]); `mcp` and `sandbox` own their flags and are only dispatched to from here.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{config::RunConfig, duration::parse_duration};

#[derive(Debug, Parser)]
#[command(
    name = "shunt",
    version,
    about = "eBPF traffic steering for Kubernetes sandboxes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at startup: a large `Run` variant costs nothing worth boxing it for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: capture, node proxy and admin API (the DaemonSet entry point).
    Run(Box<RunArgs>),
    /// Print the agent's current route table (from its debug API, or with --kube through the
    /// traffic API for one namespace).
    Routes(DebugArgs),
    /// Print the service graph observed from real traffic (from the agent's debug API).
    Topology(TopologyArgs),
    /// Print the SandboxRoute CustomResourceDefinition (YAML), for `kubectl apply -f -`.
    Crd,
    /// MCP server (stdio) for coding agents: services, sandbox routes, keyed test requests and
    /// the routing decisions they caused.
    Mcp(crate::mcp::McpArgs),
    /// Fork a Deployment into a sandbox with its SandboxRoute (create, list, delete).
    Sandbox(crate::sandbox::SandboxArgs),
    /// The traffic API (an aggregated Kubernetes API): serves the agents' decisions, topology
    /// and routes per namespace to users whose RBAC grants it (the Deployment's entry point).
    TrafficApi(crate::traffic::TrafficApiArgs),
}

/// Where the agents' debug data is read.
#[derive(Debug, Clone, Args)]
pub struct DebugArgs {
    /// No cluster: the agent's debug API (`shunt run --debug-addr`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465")]
    pub debug_addr: SocketAddr,
    /// Cluster: read every agent's answer for one namespace through the traffic API
    /// (traffic.shunt.dev), with your kubeconfig and RBAC.
    #[arg(long)]
    pub kube: bool,
    /// Kubeconfig for --kube (default: KUBECONFIG or ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "PATH", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace for --kube (default: the kubeconfig context's).
    #[arg(long, short = 'n', value_name = "NS", requires = "kube")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct TopologyArgs {
    #[command(flatten)]
    pub debug: DebugArgs,
    /// Print a Mermaid flowchart instead of a tree.
    #[arg(long)]
    pub mermaid: bool,
    /// Print the raw JSON.
    #[arg(long, conflicts_with = "mermaid")]
    pub json: bool,
}

/// Flags of `shunt run`. Each also reads an environment variable (`SHUNT_` and the flag's name,
/// `NODE_NAME` for --node-name, as the DaemonSet sets it); the command line wins.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// cgroup v2 directory whose processes are captured (the cgroup v2 root on a node).
    #[arg(long, env = "SHUNT_CGROUP", value_name = "PATH")]
    pub cgroup: PathBuf,

    /// IPv4 address and port the node proxy listens on; steered IPv4 connects go here.
    #[arg(long, env = "SHUNT_PROXY_ADDR", value_name = "IP:PORT")]
    pub proxy_addr: SocketAddr,

    /// IPv6 address and port for steered IPv6 connects (none: IPv6 destinations stay direct).
    #[arg(long, env = "SHUNT_PROXY_ADDR6", value_name = "[IP]:PORT")]
    pub proxy_addr6: Option<SocketAddr>,

    /// bpffs directory where maps are pinned. Mounted there if missing, unless --kube.
    #[arg(
        long,
        env = "SHUNT_BPFFS_DIR",
        value_name = "DIR",
        default_value = "/sys/fs/bpf/shunt"
    )]
    pub bpffs_dir: PathBuf,

    /// Admin API: /healthz, /readyz and /metrics only (in a cluster, the node address).
    #[arg(
        long,
        env = "SHUNT_ADMIN_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub admin_addr: SocketAddr,

    /// Debug API: /routes, /decisions and /topology (what the agent saw of everyone's
    /// traffic). Loopback only, unless --debug-token-file is set.
    #[arg(
        long,
        env = "SHUNT_DEBUG_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:9465"
    )]
    pub debug_addr: SocketAddr,

    /// File holding the token every debug API request must carry as a bearer token (a Secret
    /// only the agents and the traffic API mount). Required for a non-loopback --debug-addr.
    #[arg(long, env = "SHUNT_DEBUG_TOKEN_FILE", value_name = "PATH")]
    pub debug_token_file: Option<PathBuf>,

    /// Connections each of the admin and debug listeners serves at once.
    #[arg(
        long,
        env = "SHUNT_ADMIN_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 64
    )]
    pub admin_max_connections: usize,

    /// Time a client of the admin and debug listeners has to send its request headers.
    #[arg(long, env = "SHUNT_ADMIN_HEADER_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub admin_header_timeout: Duration,

    /// Routes file (YAML: services, sandbox pods and SandboxRoutes), hot-reloaded on change.
    #[arg(long, env = "SHUNT_ROUTES", value_name = "FILE")]
    pub routes: Option<PathBuf>,

    /// Take routes from the Kubernetes API (SandboxRoutes, Services, EndpointSlices, sandbox
    /// Pods). bpffs is then never mounted: the node's must be mounted in.
    #[arg(long, env = "SHUNT_KUBE", conflicts_with = "routes")]
    pub kube: bool,

    /// Kubeconfig for --kube (default: in-cluster config, else KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "SHUNT_KUBECONFIG", value_name = "PATH", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,

    /// This node's name: the agent's identity in the status Lease (default: the host name).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Namespace of the Lease that elects the one agent writing SandboxRoute status.
    #[arg(
        long,
        env = "SHUNT_LEASE_NAMESPACE",
        value_name = "NS",
        default_value = "shunt-system"
    )]
    pub lease_namespace: String,

    /// How long the status Lease holds without renewal before another agent takes over.
    #[arg(long, env = "SHUNT_LEASE_DURATION", value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// Quiet time after a Kubernetes change before the route table is recomputed.
    #[arg(long, env = "SHUNT_KUBE_DEBOUNCE", value_name = "DURATION", default_value = "50ms", value_parser = parse_duration)]
    pub kube_debounce: Duration,

    /// How often the routes file is checked for changes.
    #[arg(long, env = "SHUNT_ROUTES_POLL_INTERVAL", value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub routes_poll_interval: Duration,

    /// Steer this destination to the proxy (repeatable; comma-separated in the variable). Route
    /// sources add their own.
    #[arg(
        long,
        env = "SHUNT_STEER",
        value_name = "IP:PORT",
        value_delimiter = ','
    )]
    pub steer: Vec<SocketAddr>,

    /// Also exempt sockets carrying this SO_MARK from capture. Off by default: mark bits collide
    /// with kube-proxy (0x4000/0x8000) and CNI marks. The agent's cgroup is always exempt.
    #[arg(long, env = "SHUNT_AGENT_MARK", value_name = "MARK")]
    pub agent_mark: Option<u32>,

    /// Capacity of the steered-destinations map.
    #[arg(long, env = "SHUNT_STEERED_MAX_ENTRIES", value_name = "N", default_value_t = agent_common::steered::DEFAULT_MAX_ENTRIES)]
    pub steered_max_entries: u32,

    /// Capacity of each original-destination LRU map.
    #[arg(long, env = "SHUNT_ORIG_MAX_ENTRIES", value_name = "N", default_value_t = agent_common::orig::DEFAULT_MAX_ENTRIES)]
    pub orig_max_entries: u32,

    /// Capacity of the per-CPU flow counters behind `/topology` (least recently used age out).
    #[arg(long, env = "SHUNT_FLOWS_MAX_ENTRIES", value_name = "N", default_value_t = agent_common::flows::DEFAULT_MAX_ENTRIES)]
    pub flows_max_entries: u32,

    /// Proxy worker threads (0: one per CPU; 1: a single-threaded runtime, the agent then uses
    /// one core for everything).
    #[arg(
        long,
        env = "SHUNT_WORKER_THREADS",
        value_name = "N",
        default_value_t = 0
    )]
    pub worker_threads: usize,

    /// Upstream connect timeout.
    #[arg(long, env = "SHUNT_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time a client has to send a request's headers (HTTP/1.1); slower clients get a 408.
    #[arg(long, env = "SHUNT_HEADER_READ_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Idle timeout of pooled upstream connections and of HTTP/2 keep-alive.
    #[arg(long, env = "SHUNT_IDLE_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long to wait for a client's first bytes before treating the connection as opaque
    /// (server-speaks-first protocols send nothing).
    #[arg(long, env = "SHUNT_DETECT_TIMEOUT", value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub detect_timeout: Duration,

    /// Largest request header block accepted (bigger gets 431).
    #[arg(
        long,
        env = "SHUNT_MAX_HEADER_BYTES",
        value_name = "BYTES",
        default_value_t = 65_536
    )]
    pub max_header_bytes: usize,

    /// Most request headers accepted (more gets 431).
    #[arg(
        long,
        env = "SHUNT_MAX_HEADERS",
        value_name = "N",
        default_value_t = 128
    )]
    pub max_headers: usize,

    /// Extra header carrying the routing key (repeatable; comma-separated in the variable), read
    /// after the standard ones (baggage, tracestate, uberctx-sd-routing-key,
    /// ot-baggage-sd-routing-key).
    #[arg(
        long,
        env = "SHUNT_KEY_HEADER",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub key_header: Vec<String>,

    /// Bytes of routing decisions kept for the debug API's `/decisions` (paths are stored cut
    /// to 512 bytes; the oldest decisions go first).
    #[arg(
        long,
        env = "SHUNT_DECISION_LOG_BYTES",
        value_name = "BYTES",
        default_value_t = crate::proxy::decision_log::DEFAULT_LOG_BYTES
    )]
    pub decision_log_bytes: usize,

    /// How often the watchdog checks that the proxy accepts; a wedged proxy fails open.
    #[arg(long, env = "SHUNT_WATCHDOG_INTERVAL", value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub watchdog_interval: Duration,

    /// Maximum concurrent proxied connections; further clients wait in the accept queue.
    #[arg(
        long,
        env = "SHUNT_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 16_384
    )]
    pub max_connections: usize,

    /// How long in-flight connections may finish after SIGTERM.
    #[arg(long, env = "SHUNT_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl From<RunArgs> for RunConfig {
    fn from(a: RunArgs) -> Self {
        // Destructured, so a flag added to one and not the other fails to compile.
        let RunArgs {
            cgroup,
            proxy_addr,
            proxy_addr6,
            bpffs_dir,
            admin_addr,
            debug_addr,
            debug_token_file,
            admin_max_connections,
            admin_header_timeout,
            routes,
            kube,
            kubeconfig,
            node_name,
            lease_namespace,
            lease_duration,
            kube_debounce,
            routes_poll_interval,
            steer,
            agent_mark,
            steered_max_entries,
            orig_max_entries,
            flows_max_entries,
            worker_threads,
            connect_timeout,
            header_read_timeout,
            idle_timeout,
            detect_timeout,
            max_header_bytes,
            max_headers,
            key_header,
            decision_log_bytes,
            watchdog_interval,
            max_connections,
            shutdown_grace,
        } = a;
        RunConfig {
            cgroup,
            proxy_addr,
            proxy_addr6,
            bpffs_dir,
            admin_addr,
            debug_addr,
            debug_token_file,
            admin_max_connections,
            admin_header_timeout,
            routes,
            kube,
            kubeconfig,
            node_name,
            lease_namespace,
            lease_duration,
            kube_debounce,
            routes_poll_interval,
            steer,
            agent_mark,
            steered_max_entries,
            orig_max_entries,
            flows_max_entries,
            worker_threads,
            connect_timeout,
            header_read_timeout,
            idle_timeout,
            detect_timeout,
            max_header_bytes,
            max_headers,
            key_header,
            decision_log_bytes,
            watchdog_interval,
            max_connections,
            shutdown_grace,
        }
    }
}

/// Entry point of the `shunt` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Run(args) => crate::run::run(RunConfig::from(*args)),
        Command::Routes(a) => debug_cli(&a, "routes").map(|t| print!("{t}")),
        Command::Topology(t) => debug_cli(&t.debug, "topology").and_then(|text| {
            if t.json {
                print!("{text}");
                return Ok(());
            }
            let topo: crate::admin::topology::Topology = serde_json::from_str(&text)?;
            if t.mermaid {
                print!("{}", topo.render_mermaid());
            } else if topo.edges.is_empty() {
                println!("no connections observed yet");
            } else {
                print!("{}", topo.render_tree());
            }
            Ok(())
        }),
        Command::Crd => {
            print!("{}", crate::kube::crd::crd_yaml());
            Ok(())
        }
        Command::Mcp(args) => crate::mcp::run(args),
        Command::Sandbox(args) => crate::sandbox::run(args),
        Command::TrafficApi(args) => crate::traffic::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error chain, outermost first.
            eprintln!("shunt: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The agents' `resource` (`routes`, `topology`) as JSON text: from the local debug API, or
/// through the traffic API (every agent's answer for the namespace, merged).
fn debug_cli(a: &DebugArgs, resource: &str) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if !a.kube {
        return rt.block_on(crate::admin::client::get(
            a.debug_addr,
            &format!("/{resource}"),
        ));
    }
    rt.block_on(async {
        let (client, default_ns) = crate::kube::client::load(a.kubeconfig.as_deref()).await?;
        let ns = a.namespace.clone().unwrap_or(default_ns);
        let answers = crate::traffic::client::get(&client, &ns, resource, "").await?;
        for w in &answers.warnings {
            eprintln!("shunt: warning: {w}");
        }
        let merged = if resource == "topology" {
            let mut edges = Vec::new();
            for item in answers.items {
                let t: crate::admin::topology::Topology = serde_json::from_value(item.body)?;
                edges.extend(t.edges);
            }
            serde_json::to_value(crate::admin::topology::Topology::merged(edges))?
        } else {
            // Every agent holds the same table: the first answer is the table.
            answers
                .items
                .into_iter()
                .next()
                .map(|i| i.body)
                .unwrap_or_else(|| serde_json::json!([]))
        };
        let mut text = serde_json::to_string_pretty(&merged)?;
        text.push('\n');
        anyhow::Ok(text)
    })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHUNT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
