//! Route status tells the truth per node (issue 15): a route is not Ready while some node does
//! not apply it, and its status names those nodes.
//!
//! - `node_that_cannot_apply_a_route_is_named_in_its_status`: two real agents (real BPF maps,
//!   netns topologies) against the fake API server, each with a `STEERED` map too small for the
//!   route. Each writes its own `status.nodes[]` entry (server-side apply, its own field
//!   manager, so the entries coexist), the leader's Ready condition names both nodes and a
//!   third whose agent pod is crash-looping, and once the route fits, the entries go and the
//!   route is Ready again.
use std::time::Duration;

use serde_json::{Value, json};
use tests::{
    bins,
    kube_world::{FakeCluster, KubeNode, LEASE_NS, NS, selector_spec, wait_for},
};

const DEADLINE: Duration = Duration::from_secs(20);

/// An agent pod of the DaemonSet on `node`, Ready or crash-looping.
fn agent_pod(c: &FakeCluster, name: &str, node: &str, ready: bool) {
    c.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": LEASE_NS, "labels": {
            "app.kubernetes.io/name": "shunt", "app.kubernetes.io/component": "agent" } },
        "spec": { "nodeName": node, "containers": [{ "name": "agent", "image": "shunt" }] },
    }));
    set_agent_pod_ready(c, name, ready);
}

fn set_agent_pod_ready(c: &FakeCluster, name: &str, ready: bool) {
    let state = if ready {
        json!({ "running": {} })
    } else {
        json!({ "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 5m0s" } })
    };
    c.api
        .replace_status(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": LEASE_NS },
            "status": {
                "phase": "Running",
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
                "containerStatuses": [{ "name": "agent", "image": "shunt", "imageID": "",
                    "ready": ready, "restartCount": 7, "state": state }],
            },
        }))
        .unwrap_or_else(|e| panic!("agent pod status {name}: {e}"));
}

/// The route's Ready condition.
fn ready_condition(c: &FakeCluster, name: &str) -> Option<Value> {
    let r = c.route(name)?;
    r["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
}

/// The names in the route's `status.nodes[]`.
fn node_entries(c: &FakeCluster, name: &str) -> Vec<(String, String)> {
    c.route(name)
        .and_then(|r| r["status"]["nodes"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                n["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn node_that_cannot_apply_a_route_is_named_in_its_status() {
    let test = "node_that_cannot_apply_a_route";
    if !tests::kernel::available(test) {
        return;
    }
    let c = FakeCluster::start(true).expect("fake API server");
    let (Some(a), Some(b)) = (
        KubeNode::new(test, &c, bins!()),
        KubeNode::new(test, &c, bins!()),
    ) else {
        return;
    };
    // Both topologies use the same addresses, so one set of objects describes both nodes.
    a.standard_objects(&c);
    agent_pod(&c, "shunt-agent-a", "node-a", true);
    agent_pod(&c, "shunt-agent-c", "node-c", false);
    // pr-42 forks `reviews`: its ClusterIP and its endpoint are steered, two entries; each
    // node's STEERED holds one.
    let small = ["--steered-max-entries", "1", "--lease-duration", "2s"];
    let agent_a = a.start_agent("node-a", &small);
    let agent_b = b.start_agent("node-b", &small);
    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));

    let mut last = Value::Null;
    wait_for(
        "both nodes' entries and the Ready message",
        DEADLINE,
        || {
            last = ready_condition(&c, "pr-42").unwrap_or_default();
            let msg = last["message"].as_str().unwrap_or_default();
            node_entries(&c, "pr-42").len() == 2
                && msg.contains("node-a (SteeredMapFull")
                && msg.contains("node-b (SteeredMapFull")
                && msg.contains("node-c (agent pod shunt-agent-c not Ready (CrashLoopBackOff))")
        },
    );
    let mut entries = node_entries(&c, "pr-42");
    entries.sort();
    assert_eq!(
        entries,
        [
            ("node-a".to_string(), "SteeredMapFull".to_string()),
            ("node-b".to_string(), "SteeredMapFull".to_string()),
        ],
        "each agent's own entry, side by side (in the order they were written)"
    );
    assert_eq!(last["status"], "False", "{last}");
    assert_eq!(last["reason"], "NotAppliedOnNodes", "{last}");
    let msg = last["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("not applied on 3 node(s): node-a") && msg.contains("--steered-max-entries"),
        "{msg}"
    );
    assert!(
        !msg.contains("shunt-agent-a"),
        "a node whose agent is Ready is not named for it: {msg}"
    );
    for agent in [&agent_a, &agent_b] {
        assert_eq!(agent.metric("shunt_routes_not_applied"), 1.0);
        assert!(agent.metric("shunt_steer_insert_failures_total") >= 1.0);
    }
    let route = c.route("pr-42").expect("route");
    let status = &route["status"];
    assert_eq!(
        status["forks"][0]["reason"], "EndpointsReady",
        "the routes themselves are fine: {status}"
    );

    // The route fits once `reviews` has no endpoint (its ClusterIP alone is steered), and the
    // crash-looping agent recovers: each agent takes its entry back, and the route is Ready.
    c.set_slice("reviews", &[]);
    set_agent_pod_ready(&c, "shunt-agent-c", true);
    wait_for("entries gone and Ready again", DEADLINE, || {
        node_entries(&c, "pr-42").is_empty()
            && ready_condition(&c, "pr-42").is_some_and(|r| r["status"] == "True")
    });
    let ready = ready_condition(&c, "pr-42").unwrap_or_default();
    assert_eq!(ready["reason"], "EndpointsReady", "{ready}");
    for agent in [&agent_a, &agent_b] {
        assert_eq!(agent.metric("shunt_routes_not_applied"), 0.0);
    }
    assert!(
        c.route("pr-42")
            .is_some_and(|r| r["metadata"]["namespace"] == NS)
    );
}
