use super::*;
use serde_json::json;

fn pod(name: &str, node: Option<&str>, ready: bool, waiting: Option<&str>) -> Pod {
    let mut status = json!({
        "phase": "Running",
        "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
    });
    if node == Some("node-e") {
        // Not reported on by its kubelet yet.
        status = json!({ "phase": "Pending" });
    }
    if let Some(reason) = waiting {
        status["containerStatuses"] = json!([{
            "name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
            "state": { "waiting": { "reason": reason } },
        }]);
    }
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": "shunt-system" },
        "spec": { "containers": [], "nodeName": node },
        "status": status,
    }))
    .expect("pod")
}

#[test]
fn nodes_without_a_ready_agent_are_named_with_why() {
    let pods = [
        pod("a-1", Some("node-a"), true, None),
        pod("b-1", Some("node-b"), false, Some("CrashLoopBackOff")),
        // A rolling update: the old pod is not Ready, the new one is.
        pod("c-old", Some("node-c"), false, None),
        pod("c-new", Some("node-c"), true, None),
        pod("d-1", Some("node-d"), false, None),
        pod("unscheduled", None, false, None),
        pod("e-1", Some("node-e"), false, None),
    ];
    let unready = unready_agents(pods.iter());
    assert_eq!(
        unready,
        BTreeMap::from([
            (
                "node-b".to_string(),
                "agent pod b-1 not Ready (CrashLoopBackOff)".to_string()
            ),
            (
                "node-d".to_string(),
                "agent pod d-1 not Ready (Running)".to_string()
            ),
        ])
    );
}
