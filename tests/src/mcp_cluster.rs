//! What the cluster-mode MCP tests share: `shunt mcp --kube` against the fake API server with
//! namespace `shop`, its kubeconfig, a fake peer (a kubelet or the agents' leader) run beside the
//! MCP client, the `reviews` Service the scenarios start from, and the check that every API call
//! the MCP server made is one `MCP_ACCESS` grants.
use std::{
    collections::BTreeSet,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use serde_json::{Value, json};

use crate::{
    fake_apiserver::FakeApiServer,
    kube_world::{api_calls, granted},
    shop_cluster::ShopCluster,
};

impl ShopCluster {
    /// `shunt mcp --kube` on this cluster, then `extra`.
    pub fn server(&self, agent: &Path, extra: &[&str]) -> Vec<String> {
        kube_server(agent, &self.kubeconfig, extra)
    }
}

/// `agent mcp --kube --kubeconfig KUBECONFIG --namespace shop`, then `extra`.
pub fn kube_server(agent: &Path, kubeconfig: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        agent.display().to_string(),
        "mcp".into(),
        "--kube".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--namespace".into(),
        "shop".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs `peer` (a stand-in for the agents' leader or a kubelet) beside `run`, until `run` is
/// done; returns both results.
pub fn with_peer<T: Send>(
    api: &FakeApiServer,
    peer: impl FnOnce(&FakeApiServer, &AtomicBool) -> T + Send,
    run: impl FnOnce() -> Value,
) -> (Value, T) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let peer = s.spawn(|| peer(api, &stop));
        let out = run();
        stop.store(true, Ordering::Relaxed);
        (out, peer.join().expect("the fake peer"))
    })
}

/// The `reviews` Service in `shop` (ClusterIP 10.96.0.7, port 9080 → `http`).
pub fn reviews_service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "reviews", "namespace": "shop" },
        "spec": { "clusterIP": "10.96.0.7", "selector": { "app": "reviews" },
                  "ports": [{ "name": "http", "port": 9080, "targetPort": "http" }] },
    })
}

/// The `reviews` EndpointSlice: baseline pod `reviews-v1-xyz` at 10.1.0.5:8080, ready.
pub fn reviews_endpoints() -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "reviews-abc", "namespace": "shop",
                      "labels": { "kubernetes.io/service-name": "reviews" } },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": ["10.1.0.5"], "conditions": { "ready": true },
                        "targetRef": { "kind": "Pod", "name": "reviews-v1-xyz", "namespace": "shop" } }],
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
    })
}

/// `calls` (group, resource, verb) are all granted by `MCP_ACCESS`, and include each of `used`.
pub fn assert_calls_within_mcp_access(
    calls: &BTreeSet<(String, String, String)>,
    used: &[(&str, &str, &str)],
) {
    let allowed = granted(agent::kube::rbac::MCP_ACCESS);
    let missing: Vec<_> = calls.difference(&allowed).collect();
    assert!(
        missing.is_empty(),
        "calls missing from MCP_ACCESS: {missing:?}"
    );
    for (group, res, verb) in used {
        assert!(
            calls.contains(&(group.to_string(), res.to_string(), verb.to_string())),
            "{verb} {group}/{res} not called: {calls:?}"
        );
    }
}

/// [`assert_calls_within_mcp_access`] for every call the fake API server saw.
pub fn assert_api_calls_within_mcp_access(api: &FakeApiServer, used: &[(&str, &str, &str)]) {
    assert_calls_within_mcp_access(&api_calls(api), used);
}
