//! Parameters and results of the sandbox, log and comparison tools (what an agent reads in
//! `tools/list`).
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::{Hop, SendRequestParams, SendRequestResult};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateSandboxParams {
    /// The sandbox's name, `[a-z0-9-]{1,40}` (also its pod's name), e.g. `reviews-fix`.
    pub name: String,
    /// The service it forks: `name` or `namespace/name` (from list_services).
    pub service: String,
    /// The routing key whose requests for `service` go to this sandbox, e.g. `pr-42`.
    pub key: String,
    /// No-cluster mode: the executable to run (your build of the service). It gets the env
    /// POD_IP, PORT, POD_NAME, POD_NAMESPACE and SHUNT_SANDBOX_KEY, and `$(VAR)` in `args` is
    /// replaced by them (as in Kubernetes). It must listen on PORT.
    #[serde(default)]
    pub command: Option<String>,
    /// Arguments of `command`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables (with --kube: set in the forked container).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// With --kube: the image of your build; the Deployment is forked with it (as `shunt
    /// sandbox create` does). The sandbox is then known by its `key` (get_sandbox,
    /// delete_sandbox name=KEY).
    #[serde(default)]
    pub image: Option<String>,
    /// With --kube: the Deployment to fork. Default: the one named like `service`.
    #[serde(default)]
    pub deployment: Option<String>,
    /// With --kube: the container whose image is replaced. Default: the first.
    #[serde(default)]
    pub container: Option<String>,
    /// The port it listens on. Default: the service's target port on its baseline pods.
    #[serde(default)]
    pub port: Option<u16>,
    /// How long to wait until it accepts connections (Ready). Default 30 (with --kube: until
    /// the agents report its route Ready, default 120).
    #[serde(default)]
    pub ready_timeout_seconds: Option<u64>,
    /// Keep it (and its route) after this MCP session ends. Default false: it is deleted when
    /// the session ends, or expires --session-ttl after the session stops renewing it.
    #[serde(default)]
    pub keep: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SandboxNameParams {
    /// The sandbox's name (list_sandboxes shows them); in cluster mode, its routing key.
    pub name: String,
    /// delete_sandbox only: also delete a sandbox that another session or a person created.
    /// Never needed for your own.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct ListSandboxesParams {}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SandboxInfo {
    pub name: String,
    pub namespace: String,
    /// The forked service.
    pub service: String,
    pub key: String,
    /// Accepts connections on its port.
    pub ready: bool,
    /// Running | Exited.
    pub phase: String,
    /// Restarts so far (no-cluster sandboxes are never restarted: 0).
    pub restarts: u32,
    /// How its process ended last, e.g. `exited with code 1`.
    pub last_termination: Option<String>,
    pub ip: Option<String>,
    pub port: u16,
    /// The SandboxRoute forking `service` to it.
    pub route: String,
    /// The MCP session that created it.
    pub session: String,
    /// True when this session created it (only then may it be deleted without `force`).
    pub owned_by_this_session: bool,
    pub keep: bool,
    pub expires_unix_ms: Option<u64>,
    /// Its last log lines (get_logs reads more).
    pub recent_logs: Vec<String>,
    /// Why a container waits (cluster mode), e.g. `CrashLoopBackOff: back-off 40s ...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Recent Events of its pods (cluster mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CreateSandboxResult {
    pub sandbox: SandboxInfo,
    /// Whether the agent applies the route already.
    pub applied: bool,
    pub next_step: String,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListSandboxesResult {
    pub sandboxes: Vec<SandboxInfo>,
    /// This session's id (its sandboxes carry the label shunt.dev/session with it).
    pub session: String,
    /// How many live sandboxes this session may have.
    pub session_limit: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DeleteSandboxResult {
    pub deleted: String,
    /// The route's fork to it was removed (and the route, when it had no other fork).
    pub route_updated: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct GetLogsParams {
    /// A sandbox's name (cluster mode: its routing key), a service (`reviews`: its baseline
    /// pods) or a pod's name; `namespace/...` in cluster mode for another namespace.
    pub target: String,
    /// Only lines at or after this time (unix milliseconds); lines are dated by their leading
    /// RFC 3339 timestamp, undated lines follow the line before them.
    #[serde(default)]
    pub since_unix_ms: Option<u64>,
    /// At most this many of the last lines per pod. Default 100.
    #[serde(default)]
    pub tail: Option<usize>,
    /// Only lines containing this text.
    #[serde(default)]
    pub grep: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PodLogs {
    pub pod: String,
    pub lines: Vec<String>,
    /// Lines were left out (tail, byte bound).
    pub truncated: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct GetLogsResult {
    pub target: String,
    pub pods: Vec<PodLogs>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CompareParams {
    #[serde(flatten)]
    pub request: SendRequestParams,
    /// More JSON body paths to ignore, dotted (`items.0.id`; `*` is any one segment, a leading
    /// `**.` any depth, e.g. `**.baggage`), and header names.
    #[serde(default)]
    pub ignore: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Difference {
    /// `status`, `header.NAME` or `body.PATH`.
    pub path: String,
    /// With the key (absent: missing there).
    pub keyed: Option<Value>,
    /// Without the key.
    pub baseline: Option<Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HopSummary {
    pub service: Option<String>,
    pub decision: String,
    /// The pod (or baseline service) that served it.
    pub served_by: Option<String>,
    pub status: Option<u16>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CompareResult {
    /// Same status, headers and body once volatile fields are ignored.
    pub identical: bool,
    /// One line: `identical` or what differs.
    pub summary: String,
    pub differences: Vec<Difference>,
    /// Which services and pods each version called, with their statuses.
    pub keyed_hops: Vec<HopSummary>,
    pub baseline_hops: Vec<HopSummary>,
    /// Hops that differ: `service: keyed served_by (status) vs baseline served_by (status)`.
    pub hop_differences: Vec<String>,
    /// What was ignored by default (volatile headers and body fields).
    pub ignored_by_default: Vec<String>,
    /// Both requests in full (left out when identical).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyed: Option<SendRequestResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<SendRequestResult>,
}

impl From<&Hop> for HopSummary {
    fn from(h: &Hop) -> Self {
        HopSummary {
            service: h.service.clone(),
            decision: h.decision.clone(),
            served_by: h.upstream_owner.clone().or_else(|| h.upstream.clone()),
            status: h.status,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunTestsParams {
    /// The test runner's image (pytest, k6, curl, your test suite).
    pub image: String,
    /// The command to run in it (the container's command, one argument per item), e.g.
    /// `["pytest", "-q", "tests/e2e"]` or `["sh", "-c", "curl -sf http://frontend:9080/"]`.
    /// It needs no routing-key header: Shunt adds the key to every HTTP request it sends that
    /// carries none.
    pub command: Vec<String>,
    /// The routing key its requests carry. A SandboxRoute with this key must exist in
    /// `namespace`.
    pub key: String,
    /// Where the test pod runs. Default: --namespace (or the kubeconfig context's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Extra environment variables of the test container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How long the test may run, in seconds (default 600, at most 3600); the pod is then
    /// stopped and the error has its log so far.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RunTestsResult {
    /// `namespace/name` of the test pod (deleted by now).
    pub pod: String,
    /// The node it ran on; that node's agent added the key.
    pub node: Option<String>,
    pub key: String,
    /// The command's exit code (0: the tests passed).
    pub exit_code: Option<i32>,
    /// The container's termination reason (`Completed`, `Error`, `OOMKilled`, ...).
    pub reason: Option<String>,
    /// The command's output (stdout and stderr), at most the last 256 KiB.
    pub log: String,
    /// What the pod's init step saw when the agent had marked it.
    pub marked: Option<String>,
    pub elapsed_ms: u64,
    pub warnings: Vec<String>,
}
