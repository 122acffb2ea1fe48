//! The demo's routes file: three Services on virtual addresses, the sandbox pods, one route per
//! sandbox key forking each of its services to its pod, every pod as a node pod naming its network
//! namespace, and the sandbox pods as marked sources.
use std::{collections::BTreeMap, path::Path};

use tests::netns::Topology;

use crate::cluster::{POD_PORT, PODS, SERVICE_PORT, SERVICES};

/// The file; with `sources`, the sandbox pods' cgroups (under `captured`) are marked with their
/// key, so Shunt adds it to the requests they send without one.
pub fn yaml(topo: &Topology, captured: &Path, sources: bool) -> String {
    let mut out = String::from(
        "# Written by `cargo xtask demo` (tests/src/bin/shunt-demo). No kube-proxy here:\n\
         # alwaysSteer makes the agent serve each Service's virtual address, fork or no fork.\n\
         services:\n",
    );
    for svc in &SERVICES {
        out.push_str(&format!(
            "  - name: {name}\n    namespace: shop\n    addresses: [{vip}]\n    alwaysSteer: true\n    \
             ports: [{{ name: http, port: {SERVICE_PORT}, targetPort: http }}]\n    endpoints:\n",
            name = svc.name,
            vip = svc.vip,
        ));
        for (i, pod) in PODS.iter().enumerate() {
            if pod.service == svc.name && pod.sandbox.is_none() {
                out.push_str(&format!(
                    "      - {{ ip: {}, ports: {{ http: {POD_PORT} }} }}\n",
                    topo.pods[i].ip4
                ));
            }
        }
    }
    out.push_str("pods:\n");
    for (i, pod) in PODS.iter().enumerate() {
        if let Some(key) = pod.sandbox {
            out.push_str(&format!(
                "  - name: {name}\n    namespace: shop\n    ips: [{ip}]\n    \
                 labels: {{ app: {svc}, version: {ver}, shunt.dev/sandbox: {key} }}\n    \
                 ports: {{ http: {POD_PORT} }}\n",
                name = pod.name,
                ip = topo.pods[i].ip4,
                svc = pod.service,
                ver = pod.version,
            ));
        }
    }
    // key → its sandbox pods' services, in pod order.
    let mut keys: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for pod in &PODS {
        if let Some(key) = pod.sandbox {
            keys.entry(key).or_default().push(pod.service);
        }
    }
    out.push_str("routes:\n");
    for (key, services) in &keys {
        out.push_str(&format!(
            "  - name: {key}\n    namespace: shop\n    spec:\n      routingKey: {key}\n      \
             forks:\n"
        ));
        for svc in services {
            out.push_str(&format!(
                "        - service: {svc}\n          \
                 to: {{ selector: {{ app: {svc}, shunt.dev/sandbox: {key} }} }}\n"
            ));
        }
        out.push_str("      fallback: Baseline\n");
    }
    // Every pod is a node pod naming its network namespace, so the agent's upstream connections
    // leave from the calling pod's own address (source identity).
    let node_pods: Vec<(usize, &str, &str)> = PODS
        .iter()
        .enumerate()
        .map(|(i, pod)| (i, "shop", pod.name))
        .collect();
    out.push_str(&tests::source_world::node_pods_yaml(topo, &node_pods));
    if sources {
        out.push_str("sources:\n");
        for pod in &PODS {
            if let Some(key) = pod.sandbox {
                out.push_str(&format!(
                    "  - {{ cgroup: {}, key: {key} }}\n",
                    captured.join(pod.name).display()
                ));
            }
        }
    }
    out
}
