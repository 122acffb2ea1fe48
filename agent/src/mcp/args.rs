//! The flags of `shunt mcp`.
use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

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

    /// No-cluster mode: the mini-cluster's run directory (`cargo xtask demo` uses
    /// /run/shunt-demo): its pods' records (`pods/NAME.json`) and logs (`NAME.log`), read by
    /// get_logs and send_test_request's per-hop logs. create_sandbox starts sandboxes there:
    /// their network namespaces attach to --node-netns, their cgroups go under --client-cgroup.
    #[arg(long, value_name = "DIR", requires = "routes")]
    pub cluster_dir: Option<PathBuf>,

    /// No-cluster mode: the node's network namespace, where sandbox pods' links attach.
    /// Default: --debug-netns.
    #[arg(long, value_name = "PATH", requires = "cluster_dir")]
    pub node_netns: Option<PathBuf>,

    /// What this session creates expires this long after the session stops renewing it (it
    /// renews every third of it, and deletes what it made when it ends).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::duration::parse_duration)]
    pub session_ttl: std::time::Duration,

    /// Live sandboxes one session may have.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_sandboxes_per_session: usize,

    /// Internal: be send_test_request's client (request in SHUNT_REQUEST or on stdin, response
    /// on stdout).
    #[arg(long, hide = true)]
    pub internal_request: bool,

    /// Internal: be run_tests' init step (wait until this pod is marked; key in
    /// SHUNT_INJECT_KEY, the pod's IP in POD_IP).
    #[arg(long, hide = true)]
    pub internal_wait_marked: bool,
}
