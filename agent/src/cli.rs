//! The `shunt` command line.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

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
    /// Print the agent's current route table (from its admin API).
    Routes(AdminArgs),
    /// Print the service graph observed from real traffic (from the agent's admin API).
    Topology(TopologyArgs),
    /// Print the SandboxRoute CustomResourceDefinition (YAML), for `kubectl apply -f -`.
    Crd,
    /// MCP server (stdio) for coding agents: services, sandbox routes, keyed test requests and
    /// the routing decisions they caused.
    Mcp(crate::mcp::McpArgs),
    /// Fork a Deployment into a sandbox with its SandboxRoute (create, list, delete).
    Sandbox(crate::sandbox::SandboxArgs),
}

/// Where the agent's admin API is.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,
}

#[derive(Debug, Clone, Args)]
pub struct TopologyArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Print a Mermaid flowchart instead of a tree.
    #[arg(long)]
    pub mermaid: bool,
    /// Print the raw JSON.
    #[arg(long, conflicts_with = "mermaid")]
    pub json: bool,
}

/// Flags of `shunt run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// cgroup v2 directory whose processes are captured (the cgroup v2 root on a node).
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,

    /// IPv4 address and port the node proxy listens on; steered IPv4 connects go here.
    #[arg(long, value_name = "IP:PORT")]
    pub proxy_addr: SocketAddr,

    /// IPv6 address and port for steered IPv6 connects (none: IPv6 destinations stay direct).
    #[arg(long, value_name = "[IP]:PORT")]
    pub proxy_addr6: Option<SocketAddr>,

    /// bpffs directory where maps are pinned. Mounted there if missing, unless --kube.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/shunt")]
    pub bpffs_dir: PathBuf,

    /// Admin API (health, readiness, metrics).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,

    /// Routes file (YAML: services, sandbox pods and SandboxRoutes), hot-reloaded on change.
    #[arg(long, value_name = "FILE")]
    pub routes: Option<PathBuf>,

    /// Take routes from the Kubernetes API (SandboxRoutes, Services, EndpointSlices, sandbox
    /// Pods). bpffs is then never mounted: the node's must be mounted in.
    #[arg(long, conflicts_with = "routes")]
    pub kube: bool,

    /// Kubeconfig for --kube (default: in-cluster config, else KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "PATH", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,

    /// This node's name: the agent's identity in the status Lease (default: the host name).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Namespace of the Lease that elects the one agent writing SandboxRoute status.
    #[arg(long, value_name = "NS", default_value = "shunt-system")]
    pub lease_namespace: String,

    /// How long the status Lease holds without renewal before another agent takes over.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// Quiet time after a Kubernetes change before the route table is recomputed.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration)]
    pub kube_debounce: Duration,

    /// How often the routes file is checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub routes_poll_interval: Duration,

    /// Steer this destination to the proxy (repeatable). Route sources add their own.
    #[arg(long, value_name = "IP:PORT")]
    pub steer: Vec<SocketAddr>,

    /// Also exempt sockets carrying this SO_MARK from capture. Off by default: mark bits collide
    /// with kube-proxy (0x4000/0x8000) and CNI marks. The agent's cgroup is always exempt.
    #[arg(long, value_name = "MARK")]
    pub agent_mark: Option<u32>,

    /// Capacity of the steered-destinations map.
    #[arg(long, value_name = "N", default_value_t = agent_common::steered::DEFAULT_MAX_ENTRIES)]
    pub steered_max_entries: u32,

    /// Capacity of each original-destination LRU map.
    #[arg(long, value_name = "N", default_value_t = agent_common::orig::DEFAULT_MAX_ENTRIES)]
    pub orig_max_entries: u32,

    /// Capacity of the per-CPU flow counters behind `/topology` (least recently used age out).
    #[arg(long, value_name = "N", default_value_t = agent_common::flows::DEFAULT_MAX_ENTRIES)]
    pub flows_max_entries: u32,

    /// Proxy worker threads (0: one per CPU; 1: a single-threaded runtime, the agent then uses
    /// one core for everything).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub worker_threads: usize,

    /// Upstream connect timeout.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time a client has to send a request's headers (HTTP/1.1); slower clients get a 408.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Idle timeout of pooled upstream connections and of HTTP/2 keep-alive.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long to wait for a client's first bytes before treating the connection as opaque
    /// (server-speaks-first protocols send nothing).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub detect_timeout: Duration,

    /// Largest request header block accepted (bigger gets 431).
    #[arg(long, value_name = "BYTES", default_value_t = 65_536)]
    pub max_header_bytes: usize,

    /// Most request headers accepted (more gets 431).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_headers: usize,

    /// Extra header carrying the routing key (repeatable), read after the standard ones
    /// (baggage, tracestate, uberctx-sd-routing-key, ot-baggage-sd-routing-key).
    #[arg(long, value_name = "NAME")]
    pub key_header: Vec<String>,

    /// Routing decisions kept for `/decisions`.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub decision_log_size: usize,

    /// How often the watchdog checks that the proxy accepts; a wedged proxy fails open.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub watchdog_interval: Duration,

    /// Maximum concurrent proxied connections; further clients wait in the accept queue.
    #[arg(long, value_name = "N", default_value_t = 16_384)]
    pub max_connections: usize,

    /// How long in-flight connections may finish after SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// Parses "250ms", "5s", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number then ms|s|m|h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("`{s}`: unknown unit `{unit}`, expected ms|s|m|h")),
    }
}

/// Entry point of the `shunt` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Run(args) => crate::run::run(*args),
        Command::Routes(a) => admin_cli(a.admin_addr, "/routes").map(|t| print!("{t}")),
        Command::Topology(t) => admin_cli(t.admin.admin_addr, "/topology").and_then(|text| {
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

fn admin_cli(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(crate::admin::client::get(addr, path))
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
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "shunt",
            "run",
            "--cgroup",
            "/sys/fs/cgroup",
            "--proxy-addr",
            "10.0.0.1:15001",
            "--proxy-addr6",
            "[fd00::1]:15001",
            "--steer",
            "10.96.0.7:9080",
            "--steer",
            "[fd00::7]:80",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.steer.len(), 2);
        assert_eq!(args.bpffs_dir, PathBuf::from("/sys/fs/bpf/shunt"));
        assert!(!args.kube);
    }

    #[test]
    fn kube_flags_parse_and_conflict_with_routes() {
        let base = [
            "shunt",
            "run",
            "--cgroup",
            "/sys/fs/cgroup",
            "--proxy-addr",
            "10.0.0.1:15001",
        ];
        let cli = Cli::try_parse_from(base.iter().copied().chain([
            "--kube",
            "--kubeconfig",
            "/k",
            "--node-name",
            "n1",
            "--lease-duration",
            "3s",
        ]))
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert!(args.kube);
        assert_eq!(args.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(args.node_name.as_deref(), Some("n1"));
        assert_eq!(args.lease_namespace, "shunt-system");
        assert_eq!(args.lease_duration, Duration::from_secs(3));
        assert_eq!(args.kube_debounce, Duration::from_millis(50));
        assert!(
            Cli::try_parse_from(base.iter().copied().chain(["--kube", "--routes", "/r"])).is_err()
        );
        assert!(
            Cli::try_parse_from(base.iter().copied().chain(["--kubeconfig", "/k"])).is_err(),
            "--kubeconfig needs --kube"
        );
        assert!(matches!(
            Cli::try_parse_from(["shunt", "crd"])
                .expect("parses")
                .command,
            Command::Crd
        ));
    }
}
