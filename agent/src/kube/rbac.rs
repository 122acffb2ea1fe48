//! Every Kubernetes API call the agent makes, in one place. The deploy manifests' ClusterRole must
//! grant exactly these (a test in `tests/` checks it), so any new call is added here first.
//!
//! The kube source only lists and watches (kube-runtime reflectors, `source.rs`),
//! gets/creates/updates its Lease (`lease.rs`), patches `/status` and deletes expired routes
//! (`status.rs`). `tests/tests/kube.rs` checks the real agent's requests against this list.

/// One API permission: group, resource (with subresource, like `sandboxroutes/status`), verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiAccess {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// Why the agent needs it.
    pub why: &'static str,
}

/// The agent's permissions. Keep sorted by group, then resource.
pub const AGENT_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        why: "sandbox pods (label-selector watch on shunt.dev/sandbox only)",
    },
    ApiAccess {
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
        why: "baseline and sandbox Services: ClusterIPs and ports",
    },
    ApiAccess {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        why: "electing the one agent that writes SandboxRoute status and deletes expired routes",
    },
    ApiAccess {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
        why: "baseline endpoints, per-endpoint ports",
    },
    ApiAccess {
        group: "shunt.dev",
        resource: "sandboxroutes",
        verbs: &["list", "watch", "delete"],
        why: "the routes (reflector list+watch); delete for expiry (leader only)",
    },
    ApiAccess {
        group: "shunt.dev",
        resource: "sandboxroutes/status",
        verbs: &["patch"],
        why: "Ready condition and per-fork endpoint counts (leader only)",
    },
];

/// What a user (a person, or a coding agent) of `shunt mcp --kube` needs, with their own
/// credentials; the agent daemon needs none of it. `tests/tests/mcp.rs` checks the MCP server's
/// requests against it. Keep sorted by group, then resource.
pub const MCP_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "",
        resource: "pods",
        verbs: &["list", "get", "create", "delete"],
        why: "sandbox pods and the agent pods (list); send_test_request's request pod (create, \
              get while it runs, delete)",
    },
    ApiAccess {
        group: "",
        resource: "pods/log",
        verbs: &["get"],
        why: "send_test_request reads the response from its request pod's log",
    },
    ApiAccess {
        group: "",
        resource: "pods/proxy",
        verbs: &["get"],
        why: "the agents' /topology and /decisions, in the agents' namespace only",
    },
    ApiAccess {
        group: "",
        resource: "services",
        verbs: &["list"],
        why: "services, ports and addresses",
    },
    ApiAccess {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list"],
        why: "baseline endpoints and their pods",
    },
    ApiAccess {
        group: "shunt.dev",
        resource: "sandboxroutes",
        verbs: &["list", "get", "create", "delete"],
        why: "the sandbox route tools",
    },
];
