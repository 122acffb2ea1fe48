//! The tools that close the agent's loop: sandboxes of its own builds, their logs, and a diff
//! against baseline (a second tool router, merged into [`ShuntMcp`]'s).
use rmcp::{Json, handler::server::wrapper::Parameters, tool, tool_router};

use super::{
    ShuntMcp,
    backend::Backend,
    error::{ErrorBody, ToolError, ToolErrorKind},
    out,
    sandbox_types::*,
};

#[tool_router(router = loop_router, vis = "pub(crate)")]
impl ShuntMcp {
    #[tool(
        description = "Create a sandbox of a service from your own build and route a key to it. \
        No-cluster mode: `command` (with `args`, `env`) starts as a new pod of the mini-cluster \
        (its own network namespace and cgroup, stdout/stderr as its log; it must listen on \
        $(PORT) at $(POD_IP)); the key's requests for `service` then go to it. Waits until it \
        accepts connections (Ready); if it does not, the error has its exit status and last log \
        lines. It lives while this MCP session lives and is deleted when the session ends, \
        unless `keep: true`. With --kube: the same fork as `shunt sandbox create`: the \
        Deployment behind `service` (or `deployment`) cloned with `image` and `env`, labelled \
        with this session, its route expiring --session-ttl after the session's last renewal; \
        waits until the agents report it Ready; if its pods do not start, the error has the \
        last termination reason and get_sandbox's view. A session may have \
        --max-sandboxes-per-session (default 5) live sandboxes: beyond that the error names the \
        ones to delete."
    )]
    async fn create_sandbox(
        &self,
        Parameters(p): Parameters<CreateSandboxParams>,
    ) -> Result<Json<CreateSandboxResult>, Json<ErrorBody>> {
        out(self.backend.create_sandbox(p, &self.session).await)
    }

    #[tool(
        description = "One sandbox: ready, phase, restarts, last termination (exit code or \
        signal: why a build crashed), its route, owner session, expiry and recent log lines; \
        with --kube (`name` is its routing key) also why a container waits (CrashLoopBackOff) \
        and its pods' recent Events."
    )]
    async fn get_sandbox(
        &self,
        Parameters(p): Parameters<SandboxNameParams>,
    ) -> Result<Json<SandboxInfo>, Json<ErrorBody>> {
        out(self.backend.get_sandbox(p, &self.session).await)
    }

    #[tool(
        description = "Every sandbox (of every session and person), with readiness, owner \
        session (owned_by_this_session) and expiry; and this session's id and sandbox limit."
    )]
    async fn list_sandboxes(
        &self,
        Parameters(_): Parameters<ListSandboxesParams>,
    ) -> Result<Json<ListSandboxesResult>, Json<ErrorBody>> {
        out(self.backend.list_sandboxes(&self.session).await)
    }

    #[tool(
        description = "Delete a sandbox: its process, pod and its fork in the key's route (the \
        route too when it was its last fork); with --kube (`name` is its routing key) its \
        cloned Deployment and its route. Only sandboxes this session created, unless \
        `force: true`: never force-delete another session's or a person's sandbox without \
        being asked to."
    )]
    async fn delete_sandbox(
        &self,
        Parameters(p): Parameters<SandboxNameParams>,
    ) -> Result<Json<DeleteSandboxResult>, Json<ErrorBody>> {
        out(self.backend.delete_sandbox(p, &self.session).await)
    }

    #[tool(
        description = "Read logs: of a sandbox (its name; with --kube, its routing key), of a \
        service's baseline pods (the service's name) or of one pod (`namespace/pod` with \
        --kube). With --kube it reads pods/log. `tail` (default 100 lines), `grep` (a \
        substring), `since_unix_ms` (e.g. a send_test_request's started_unix_ms)."
    )]
    async fn get_logs(
        &self,
        Parameters(p): Parameters<GetLogsParams>,
    ) -> Result<Json<GetLogsResult>, Json<ErrorBody>> {
        out(self.backend.get_logs(p).await)
    }

    #[tool(
        description = "Send the same request twice, with `key` and without it, and report what \
        differs: status, headers and body (JSON-aware; volatile fields such as date, request \
        and trace ids ignored; `ignore` adds body paths like `**.baggage` or header names), and \
        the hops (which services and pods each version called, with their statuses). Identical \
        responses come back as one line in `summary`. Same arguments as send_test_request."
    )]
    async fn compare_with_baseline(
        &self,
        Parameters(p): Parameters<CompareParams>,
    ) -> Result<Json<CompareResult>, Json<ErrorBody>> {
        out(self.backend.compare_with_baseline(p, &self.placement).await)
    }

    #[tool(
        description = "With --kube: run a test command (pytest, k6, curl, a browser test) as a \
        pod whose HTTP requests all carry `key`, without the command sending any key header: \
        the pod is labelled shunt.dev/inject-key=KEY, and the agent of its node adds the key to \
        every HTTP request it sends without one (a request that has a key keeps its own). A \
        SandboxRoute with the key must exist in the pod's namespace. The command starts only \
        once the agent has marked the pod (an init step checks it from inside the pod). Returns \
        the exit code and the log; the pod is deleted afterwards. Runs as uid 65532 without \
        capabilities (Pod Security restricted). Shunt adds the key only to the test's own \
        requests: services on the path must still propagate it (a sandbox's pods get it added \
        too, a baseline service that drops it breaks the chain)."
    )]
    async fn run_tests(
        &self,
        Parameters(p): Parameters<RunTestsParams>,
    ) -> Result<Json<RunTestsResult>, Json<ErrorBody>> {
        out(match &*self.backend {
            Backend::Cluster(c) => c.run_tests(p, &self.session).await,
            Backend::Local(_) => Err(ToolError::new(
                ToolErrorKind::Unsupported,
                "run_tests runs a pod: it needs --kube",
                "without a cluster, run the command on the node with `shunt test --key KEY -- \
                 COMMAND...` (same effect: its requests carry the key)",
            )),
        })
    }
}
