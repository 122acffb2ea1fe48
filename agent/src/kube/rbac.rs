//! Every Kubernetes API call the agent makes, in one place. The deploy manifests' ClusterRole must
//! grant exactly these (a test in `tests/` checks it), so any new call is added here first.

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
        verbs: &["get", "list", "watch"],
        why: "sandbox pods (label-selector watch on shunt.dev/sandbox only)",
    },
    ApiAccess {
        group: "",
        resource: "services",
        verbs: &["get", "list", "watch"],
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
        verbs: &["get", "list", "watch"],
        why: "baseline endpoints, per-endpoint ports",
    },
    ApiAccess {
        group: "shunt.dev",
        resource: "sandboxroutes",
        verbs: &["get", "list", "watch", "delete"],
        why: "the routes; delete for expiry (leader only)",
    },
    ApiAccess {
        group: "shunt.dev",
        resource: "sandboxroutes/status",
        verbs: &["patch"],
        why: "Ready condition and per-fork endpoint counts (leader only)",
    },
];
