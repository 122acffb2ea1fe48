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

/// The agent's permissions. Keep sorted by group, then resource. `deploy/README.md` shows them
/// as [`markdown_table`] renders them (a test in `tests/tests/deploy.rs` checks it).
pub const AGENT_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        why: "sandbox pods (label-selector watch on shunt.dev/sandbox): a fork's targets, checked against the Pod objects; this node's pods (field-selector watch on spec.nodeName): whose an address is, so a namespace steers only its own pods, internalTrafficPolicy Local, and --strip-keys-from-namespace; the agent pods, whose Ready condition the status leader reports (label-selector watch in the Lease's namespace, leader only)",
    },
    ApiAccess {
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
        why: "baseline and sandbox Services: the ClusterIPs and ports a fork steers",
    },
    ApiAccess {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        why: "electing the one agent that writes SandboxRoute status and deletes expired routes (a Role in the agent's namespace only)",
    },
    ApiAccess {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
        why: "baseline endpoints: per-endpoint ports, nodeName, and the targetRef that says whether an address is a Pod of the Service's namespace",
    },
    ApiAccess {
        group: "shunt.dev",
        resource: "sandboxroutes",
        verbs: &["list", "watch", "delete"],
        why: "the routes (list and watch); delete, by the leader only, once expiresAt has passed",
    },
    ApiAccess {
        group: "shunt.dev",
        resource: "sandboxroutes/status",
        verbs: &["patch"],
        why: "the Ready condition, its reason (refused addresses, nodes not applying the route named) and per-fork endpoint counts, by the leader only; each agent's own entry in status.nodes[] (server-side apply)",
    },
];

/// What a user (a person, or a coding agent) of `shunt mcp --kube` needs, with their own
/// credentials; the agent daemon needs none of it. Nothing node-level: traffic data comes
/// through the traffic API, per namespace. `tests/tests/mcp.rs` checks the MCP server's
/// requests against it. Keep sorted by group, then resource.
pub const MCP_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "",
        resource: "events",
        verbs: &["list"],
        why: "get_sandbox shows the recent Events of a sandbox's pods",
    },
    ApiAccess {
        group: "",
        resource: "pods",
        verbs: &["list", "get", "create", "delete"],
        why: "sandbox pods and the agent pods (list); send_test_request's request pod and \
              run_tests' test pod (create, get while it runs, delete)",
    },
    ApiAccess {
        group: "",
        resource: "pods/log",
        verbs: &["get"],
        why: "send_test_request reads the response from its request pod's log, run_tests its \
              test pod's; get_logs and get_sandbox read pods' logs",
    },
    ApiAccess {
        group: "",
        resource: "secrets",
        verbs: &["create", "patch", "delete"],
        why: "send_test_request's request travels in a Secret (its headers may hold credentials), \
              owned by the request pod (patch) so it goes with it; delete when the pod was refused",
    },
    ApiAccess {
        group: "",
        resource: "services",
        verbs: &["list"],
        why: "services, ports and addresses",
    },
    ApiAccess {
        group: "apps",
        resource: "deployments",
        verbs: &["get", "list", "create", "delete"],
        why: "create_sandbox forks a Deployment (get the baseline, create the clone; list to \
              name the candidates when it is missing); delete_sandbox and the session's end \
              delete the clone",
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
        verbs: &["list", "get", "create", "delete", "patch"],
        why: "the sandbox route tools and create_sandbox's route; patch: the session renews \
              its sandboxes' expiresAt",
    },
    ApiAccess {
        group: "traffic.shunt.dev",
        resource: "decisions",
        verbs: &["list"],
        why: "get_decisions and send_test_request's hops, through the traffic API, per namespace",
    },
    ApiAccess {
        group: "traffic.shunt.dev",
        resource: "topology",
        verbs: &["list"],
        why: "get_dependencies, through the traffic API, per namespace",
    },
];

/// What a user needs to read traffic data of a namespace (`shunt mcp --kube`'s hops, decisions
/// and dependencies, `shunt routes --kube`, `shunt topology --kube`): the ClusterRole
/// `shunt-traffic-reader`, bound with a RoleBinding in each namespace the user may read.
/// The API server checks it on the URL, and the traffic API checks it again
/// (SubjectAccessReview). Keep sorted by resource.
pub const TRAFFIC_READER_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "traffic.shunt.dev",
        resource: "decisions",
        verbs: &["list"],
        why: "routing decisions for the namespace's services: hops and their reasons",
    },
    ApiAccess {
        group: "traffic.shunt.dev",
        resource: "routes",
        verbs: &["list"],
        why: "the agents' route table, the namespace's routes only",
    },
    ApiAccess {
        group: "traffic.shunt.dev",
        resource: "topology",
        verbs: &["list"],
        why: "observed connections with an end in the namespace",
    },
];

/// The traffic API's cluster-wide permissions (`shunt traffic-api`, ClusterRole
/// `shunt-traffic-api`). `tests/tests/traffic.rs` runs it with exactly these (and the two
/// lists below) against the fake API server's RBAC.
pub const TRAFFIC_API_ACCESS: &[ApiAccess] = &[ApiAccess {
    group: "authorization.k8s.io",
    resource: "subjectaccessreviews",
    verbs: &["create"],
    why: "asking the API server whether the requesting user may read the namespace",
}];

/// The traffic API's permissions in the agents' namespace (Role `shunt-traffic-api`).
pub const TRAFFIC_API_AGENT_NAMESPACE_ACCESS: &[ApiAccess] = &[ApiAccess {
    group: "",
    resource: "pods",
    verbs: &["list"],
    why: "the agent pods: whom to fan out to, at their (node) addresses",
}];

/// The traffic API's permission in kube-system, granted by the built-in Role
/// `extension-apiserver-authentication-reader` (as for every aggregated API server).
pub const TRAFFIC_API_KUBE_SYSTEM_ACCESS: &[ApiAccess] = &[ApiAccess {
    group: "",
    resource: "configmaps",
    verbs: &["get"],
    why: "the front-proxy CA in extension-apiserver-authentication: whose X-Remote-User to trust",
}];

/// `access` as the Markdown table `deploy/README.md` shows: group, resource, verbs, why.
pub fn markdown_table(access: &[ApiAccess]) -> String {
    let mut out = String::from("| group | resource | verbs | why |\n|---|---|---|---|\n");
    for a in access {
        let group = if a.group.is_empty() { "core" } else { a.group };
        out.push_str(&format!(
            "| `{group}` | `{}` | {} | {} |\n",
            a.resource,
            a.verbs.join(", "),
            a.why
        ));
    }
    out
}
