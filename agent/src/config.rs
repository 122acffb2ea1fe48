//! What `shunt run` runs with: [`RunConfig`], plain values the CLI (or a test, or an embedding
//! program) builds. `run` takes this, never the CLI's types, so the CLI can change its flags
//! without touching the agent.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The node agent's configuration. Field by field what `shunt run --help` documents; the
/// defaults live with the flags.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// cgroup v2 directory whose processes are captured.
    pub cgroup: PathBuf,
    /// Where steered IPv4 connects go (the node proxy's listener).
    pub proxy_addr: SocketAddr,
    /// Where steered IPv6 connects go; none: IPv6 destinations stay direct.
    pub proxy_addr6: Option<SocketAddr>,
    /// bpffs directory where maps are pinned.
    pub bpffs_dir: PathBuf,
    /// Admin API (health, readiness, metrics).
    pub admin_addr: SocketAddr,
    /// Debug API (routes, decisions, topology).
    pub debug_addr: SocketAddr,
    /// The token the debug API requires; needed when `debug_addr` is not loopback.
    pub debug_token_file: Option<PathBuf>,
    /// Connections each admin listener serves at once.
    pub admin_max_connections: usize,
    /// Time an admin client has to send its request headers.
    pub admin_header_timeout: Duration,
    /// Routes file, hot-reloaded.
    pub routes: Option<PathBuf>,
    /// Routes from the Kubernetes API instead.
    pub kube: bool,
    /// Kubeconfig for `kube` (none: in-cluster, else KUBECONFIG or ~/.kube/config).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name, the agent's identity in the status Lease (none: the host name).
    pub node_name: Option<String>,
    /// Namespace of the status Lease.
    pub lease_namespace: String,
    pub lease_duration: Duration,
    /// Quiet time after a Kubernetes change before the route table is recomputed.
    pub kube_debounce: Duration,
    pub routes_poll_interval: Duration,
    /// Destinations steered whatever the route source says.
    pub steer: Vec<SocketAddr>,
    /// SO_MARK exempt from capture, besides the agent's own cgroup.
    pub agent_mark: Option<u32>,
    pub steered_max_entries: u32,
    pub orig_max_entries: u32,
    pub flows_max_entries: u32,
    /// Proxy worker threads (0: one per CPU; 1: a current-thread runtime).
    pub worker_threads: usize,
    pub connect_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub detect_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Extra routing-key header names, checked by `run` (so a bad one is a startup error there).
    pub key_header: Vec<String>,
    /// Bound of the decision log, in bytes.
    pub decision_log_bytes: usize,
    pub watchdog_interval: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}
