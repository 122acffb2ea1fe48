//! What `shunt run` runs with: [`RunConfig`]. `run` takes this value, never the CLI's types;
//! the CLI parses it (clap's derive lives here, with the flags' defaults and help), and a test
//! or an embedding program can build it directly.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use crate::{capture::CgroupSelector, duration::parse_duration};

/// The node agent's configuration: the flags of `shunt run`, parsed by the CLI and handed to
/// `run` whole (one definition, so a flag and the value `run` reads cannot drift apart). Each
/// also reads an environment variable (`SHUNT_` and the flag's name, `NODE_NAME` for
/// --node-name, as the DaemonSet sets it); the command line wins.
#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// cgroup v2 directory whose processes are captured, or `auto`: the node's pods' cgroup
    /// (`kubepods` or `kubepods.slice`) found under --cgroup-root, never the root itself (the
    /// kubelet, the runtime and host processes stay uncaptured). Default with --kube: auto.
    #[arg(
        long,
        env = "SHUNT_CGROUP",
        value_name = "PATH|auto",
        required_unless_present = "kube"
    )]
    pub cgroup: Option<CgroupSelector>,

    /// The node's cgroup mount, where --cgroup auto looks for the pods' cgroup: a cgroup v2
    /// mount, or a hybrid layout's tmpfs with the cgroup v2 hierarchy at `unified/`.
    #[arg(
        long,
        env = "SHUNT_CGROUP_ROOT",
        value_name = "DIR",
        default_value = "/sys/fs/cgroup"
    )]
    pub cgroup_root: PathBuf,

    /// IPv4 address and port the node proxy listens on; steered IPv4 connects go here.
    #[arg(long, env = "SHUNT_PROXY_ADDR", value_name = "IP:PORT")]
    pub proxy_addr: SocketAddr,

    /// IPv6 address and port for steered IPv6 connects (none: IPv6 destinations stay direct).
    #[arg(long, env = "SHUNT_PROXY_ADDR6", value_name = "[IP]:PORT")]
    pub proxy_addr6: Option<SocketAddr>,

    /// Listen backlog of the proxy, admin and debug listeners: connections the kernel queues
    /// before the agent accepts them. Capped by `net.core.somaxconn` (4096 by default); 4096
    /// absorbs a node's connect bursts where 128 dropped SYNs and clients waited a second.
    #[arg(
        long,
        env = "SHUNT_LISTEN_BACKLOG",
        value_name = "N",
        default_value_t = crate::proxy::listen::DEFAULT_BACKLOG
    )]
    pub listen_backlog: u32,

    /// bpffs directory where maps are pinned. Mounted there if missing, unless --kube.
    #[arg(
        long,
        env = "SHUNT_BPFFS_DIR",
        value_name = "DIR",
        default_value = "/sys/fs/bpf/shunt"
    )]
    pub bpffs_dir: PathBuf,

    /// Admin API (health, readiness, metrics).
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

    /// Quiet time after a route source changes (Kubernetes or the routes file) before the route
    /// table is recomputed; under constant churn it is applied after ten of these at most.
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

    /// Count every connection of the captured pods for the service graph (`/topology`). Off
    /// (`--count-flows false`), each connect() skips the flow map update in the kernel (about a
    /// third of the capture hooks' time per connect; see the README's performance section) and
    /// `/topology` shows no edges.
    #[arg(long, env = "SHUNT_COUNT_FLOWS", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub count_flows: bool,

    /// Capacity of the per-CPU flow counters behind `/topology` (least recently used age out).
    #[arg(long, env = "SHUNT_FLOWS_MAX_ENTRIES", value_name = "N", default_value_t = agent_common::flows::DEFAULT_MAX_ENTRIES)]
    pub flows_max_entries: u32,

    /// Capacity of the marked-sources map (sandbox pods and test runners whose requests get
    /// their key added).
    #[arg(long, env = "SHUNT_MARKED_MAX_ENTRIES", value_name = "N", default_value_t = agent_common::marked::DEFAULT_MAX_ENTRIES)]
    pub marked_max_entries: u32,

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

    /// Also read the key from the `sd-routing-key` query parameter (then moved to baggage).
    /// Off by default: a link carrying a key would reach sandbox code from anywhere it travels,
    /// through an ingress included.
    #[arg(long, env = "SHUNT_KEY_FROM_QUERY")]
    pub key_from_query: bool,

    /// Clients (CIDR, repeatable; comma-separated in the variable) whose requests lose every
    /// routing key before they are decided and forwarded, for example an ingress controller's
    /// pods: keys then come only from inside the cluster.
    #[arg(
        long,
        env = "SHUNT_STRIP_KEYS_FROM",
        value_name = "CIDR",
        value_delimiter = ',',
        value_parser = parse_cidr
    )]
    pub strip_keys_from: Vec<ipnet::IpNet>,

    /// With --kube: this node's pods in namespace NS (repeatable; comma-separated in the
    /// variable) lose every routing key like the clients of --strip-keys-from, for example the
    /// ingress controller's namespace. A client is mapped to its namespace by its address,
    /// through the node's Pod watch.
    #[arg(
        long,
        env = "SHUNT_STRIP_KEYS_FROM_NAMESPACE",
        value_name = "NS",
        value_delimiter = ',',
        value_parser = parse_namespace,
        requires = "kube"
    )]
    pub strip_keys_from_namespace: Vec<String>,

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

    /// Maximum concurrent proxied connections (each listener). At the cap the proxy stops
    /// accepting: new clients wait in the accept queue, and the watchdog fails open after one
    /// --watchdog-interval, so newer connections go direct.
    #[arg(
        long,
        env = "SHUNT_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 16_384
    )]
    pub max_connections: usize,

    /// Where the proxy's upstream connections leave from: `pod`, the client pod's own network
    /// namespace, so backends and NetworkPolicy see the pod's address as without Shunt (needs
    /// CAP_SYS_ADMIN to enter it, and with --kube the node's PID namespace to find it; a pod
    /// whose namespace cannot be entered falls back to the node, counted); `node`, the node's.
    #[arg(
        long,
        env = "SHUNT_UPSTREAM_SOURCE",
        value_name = "pod|node",
        default_value = "pod"
    )]
    pub upstream_source: UpstreamSourceMode,

    /// Maximum concurrent proxied connections from one client address (a pod), upgraded
    /// tunnels included. Over it a new connection is reset (and counted), so one client cannot
    /// fill the connection cap for everyone.
    #[arg(
        long,
        env = "SHUNT_MAX_CLIENT_CONNECTIONS",
        value_name = "N",
        default_value_t = 1024
    )]
    pub max_client_connections: usize,

    /// An opaque connection (TLS, unknown bytes) or upgraded tunnel (websocket, CONNECT) with no
    /// byte either way for this long is closed.
    /// A direct connection has no such limit (kube-proxy's conntrack keeps an idle one 24h).
    #[arg(long, env = "SHUNT_OPAQUE_IDLE_TIMEOUT", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub opaque_idle_timeout: Duration,

    /// Time a sandbox has to send a request's response headers; then the route's fallback
    /// applies (baseline when the request can be sent again, else 504; Reject: 503). Requests to
    /// baseline get no such timeout, as a direct connection would not.
    #[arg(long, env = "SHUNT_RESPONSE_HEADER_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub response_header_timeout: Duration,

    /// Concurrent HTTP/2 streams a client connection may open (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(
        long,
        env = "SHUNT_MAX_CONCURRENT_STREAMS",
        value_name = "N",
        default_value_t = 200
    )]
    pub max_concurrent_streams: u32,

    /// Largest request body kept in memory so a sandbox-bound request can be sent to its
    /// fallback; a bigger body is streamed, and that request has no fallback (its decision says
    /// so).
    #[arg(
        long,
        env = "SHUNT_MAX_REQUEST_BUFFER",
        value_name = "BYTES",
        default_value_t = crate::proxy::buffer_budget::DEFAULT_REQUEST_BUFFER
    )]
    pub max_request_buffer: usize,

    /// Bytes one client connection's in-flight sandbox-bound requests may hold (kept bodies
    /// plus a fixed charge per request); past it new sandbox-bound requests are refused
    /// (HTTP/2: REFUSED_STREAM, which clients retry).
    #[arg(
        long,
        env = "SHUNT_MAX_CONNECTION_BUFFER",
        value_name = "BYTES",
        default_value_t = crate::proxy::buffer_budget::DEFAULT_CONNECTION_BUFFER
    )]
    pub max_connection_buffer: usize,

    /// Bytes all in-flight sandbox-bound requests may hold together; past it new ones get a 503
    /// (HTTP/2: REFUSED_STREAM). Baseline requests keep no body and are never refused for it.
    #[arg(
        long,
        env = "SHUNT_MAX_BUFFERED_BYTES",
        value_name = "BYTES",
        default_value_t = crate::proxy::buffer_budget::DEFAULT_TOTAL_BUFFER
    )]
    pub max_buffered_bytes: usize,

    /// How long in-flight connections may finish after SIGTERM.
    #[arg(long, env = "SHUNT_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// `--upstream-source`: where upstream connections leave from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamSourceMode {
    /// The client pod's network namespace (source identity preserved).
    Pod,
    /// The node's network namespace.
    Node,
}

impl RunConfig {
    /// What --cgroup selects: as given, else `auto` (the default with --kube; without it the flag
    /// is required).
    pub fn cgroup_selector(&self) -> CgroupSelector {
        self.cgroup.clone().unwrap_or(CgroupSelector::Auto)
    }
}

/// A CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address (`10.1.2.3`, a /32 or /128).
/// A namespace name: an RFC 1123 label (what the API server accepts).
fn parse_namespace(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a namespace name (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)"
        ))
    }
}

fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither a CIDR (10.0.0.0/8) nor an IP address"))
}
