//! Who may read traffic data: the traffic API, an aggregated Kubernetes API
//! (`traffic.shunt.dev/v1alpha1`, APIService `v1alpha1.traffic.shunt.dev`) in front of the
//! agents' debug listeners.
//!
//! A user reads `/apis/traffic.shunt.dev/v1alpha1/namespaces/NS/{decisions,topology,routes}`
//! with their own kubeconfig. The API server authenticates them, authorizes `list` on that
//! resource in `NS` with RBAC, and proxies the request to `shunt traffic-api` ([`server`]) with
//! the user in front-proxy headers, over TLS with its front-proxy client certificate. The
//! traffic API trusts those headers only from a client certificate of the cluster's
//! requestheader CA, checks the permission again with a SubjectAccessReview, and fans out to
//! every agent's debug listener with the debug token ([`agents`]), asking each for `NS` only.
//! So a tenant reads the hops, decisions and topology edges of the namespaces RBAC grants it,
//! with no node-level permission (no `pods/proxy`, `pods/portforward` or `nodes/proxy`), and
//! nothing else reaches the agents' raw data. [`client`] is the reading side, for `shunt mcp
//! --kube`, `shunt routes --kube` and `shunt topology --kube`.
//!
//! Why an aggregated API and not a Service reached through `services/proxy`: the API server
//! does not forward the user's credentials through `services/proxy`, so such a service would
//! need the user's token in another header (client-certificate users could not use it at all),
//! and would hold every user's token. Aggregation forwards the authenticated identity instead.
#[cfg(feature = "node")]
pub mod agents;
pub mod client;
#[cfg(feature = "node")]
pub mod server;

#[cfg(feature = "node")]
pub use server::{TrafficApiArgs, run};

/// The API group the traffic API serves.
pub const GROUP: &str = "traffic.shunt.dev";
/// Its one version.
pub const VERSION: &str = "v1alpha1";
/// The APIService's name.
pub const API_SERVICE: &str = "v1alpha1.traffic.shunt.dev";
/// The namespaced resources it serves, each read with the verb [`VERB`].
pub const RESOURCES: [&str; 3] = ["decisions", "topology", "routes"];
/// The verb reading a resource's collection takes in RBAC.
pub const VERB: &str = "list";

/// The path of `resource` in `namespace`, with `query` (may be empty).
pub fn path(namespace: &str, resource: &str, query: &str) -> String {
    let mut p = format!("/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{resource}");
    if !query.is_empty() {
        p.push('?');
        p.push_str(query);
    }
    p
}
