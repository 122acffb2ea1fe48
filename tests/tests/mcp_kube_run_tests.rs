//! Cluster mode against the fake API server: `run_tests` runs a test command as a pod labelled
//! `shunt.dev/inject-key` whose init step waits for the node's agent to mark it, returns the
//! command's exit code and log, and deletes the pod; it refuses a key with no route in the
//! namespace, and says so when the pod was never marked. The fake server runs no pods: a thread
//! plays the kubelet (status and log), as a real one would report them.
use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use serde_json::{Value, json};
use tests::{
    fake_apiserver::FakeApiServer,
    mcp_cluster::{assert_api_calls_within_mcp_access, with_peer},
    mcp_driver::{err, mcp_client, ok, python_with_mcp},
    shop_cluster::ShopCluster,
};

const COMPONENT: &str = "test-runner";

/// The route whose key the tests run with.
fn route_pr_42() -> Value {
    json!({
        "apiVersion": "shunt.dev/v1alpha1", "kind": "SandboxRoute",
        "metadata": { "name": "pr-42", "namespace": "shop" },
        "spec": { "routingKey": "pr-42",
                  "forks": [{ "service": "reviews", "to": { "selector": { "shunt.dev/sandbox": "pr-42" } } }] },
    })
}

/// Plays the kubelet for test pods: the init step's verdict and the test container's exit, by
/// the pod's `CASE` variable. Returns the pods as created.
fn kubelet(api: &FakeApiServer, stop: &AtomicBool) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for mut p in api.list("v1", "Pod", Some("shop")) {
            let name = p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if p["metadata"]["labels"]["app.kubernetes.io/component"] != COMPONENT
                || seen.iter().any(|s| s["metadata"]["name"] == name)
            {
                continue;
            }
            seen.push(p.clone());
            let case = p["spec"]["containers"][0]["env"]
                .as_array()
                .and_then(|e| e.iter().find(|v| v["name"] == "CASE"))
                .and_then(|v| v["value"].as_str())
                .unwrap_or_default()
                .to_string();
            let term = |code: i32, reason: &str| json!({ "terminated": { "exitCode": code, "reason": reason } });
            let status = |name: &str, state: Value| {
                json!({ "name": name, "image": "i", "imageID": "", "ready": false,
                        "restartCount": 0, "state": state })
            };
            if case == "unmarked" {
                api.set_pod_log(
                    "shop",
                    &name,
                    "Error: this pod was not marked with key \"pr-42\" within 60s",
                );
                p["status"] = json!({
                    "phase": "Failed", "podIP": "10.1.0.20",
                    "initContainerStatuses": [status("wait-marked", term(1, "Error"))],
                    "containerStatuses": [status("test", json!({ "waiting": { "reason": "PodInitializing" } }))],
                });
            } else {
                api.set_pod_log(
                    "shop",
                    &name,
                    "..F\nFAILED tests/test_reviews.py::test_stars\n1 failed, 2 passed\n",
                );
                p["status"] = json!({
                    "phase": "Failed", "podIP": "10.1.0.21",
                    "initContainerStatuses": [status("wait-marked", term(0, "Completed"))],
                    "containerStatuses": [status("test", term(3, "Error"))],
                });
            }
            let _ = api.replace_status(p);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

#[test]
fn run_tests_runs_a_marked_pod_and_returns_its_exit_code_and_log() {
    let test = "run_tests_runs_a_marked_pod_and_returns_its_exit_code_and_log";
    let Some(python) = python_with_mcp(test) else {
        return;
    };
    let cluster = ShopCluster::start([route_pr_42()]);
    let api = &cluster.api;
    let server = cluster.server(
        Path::new(env!("CARGO_BIN_EXE_shunt-under-test")),
        &["--request-image", "shunt:test"],
    );
    let (o, pods) = with_peer(api, kubelet, || {
        mcp_client(&python, "kube_run_tests", &server)
    });

    // No route of the key in the namespace: refused before any pod exists.
    let e = err(&o, "no_route", "route_not_found");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("pr-9")),
        "{e}"
    );
    assert_eq!(pods.len(), 2, "one pod per run, none for the refused key");

    // The command's own exit code and log come back.
    let run = ok(&o, "run");
    assert_eq!(run["exit_code"], 3, "{run:#}");
    assert_eq!(run["reason"], "Error", "{run:#}");
    assert_eq!(run["key"], "pr-42");
    assert!(
        run["log"]
            .as_str()
            .is_some_and(|l| l.contains("FAILED tests/test_reviews.py::test_stars")),
        "{run:#}"
    );
    assert!(
        run["pod"]
            .as_str()
            .is_some_and(|p| p.starts_with("shop/shunt-test-pr-42-")),
        "{run:#}"
    );

    // The pod: marked by label, the command behind an init step that waits for the mark, no
    // key header anywhere, Pod Security restricted.
    let p = &pods[0];
    assert_eq!(
        p["metadata"]["labels"]["shunt.dev/inject-key"], "pr-42",
        "{p:#}"
    );
    assert!(
        p["metadata"]["labels"]["shunt.dev/session"].is_string(),
        "{p:#}"
    );
    let init = &p["spec"]["initContainers"][0];
    assert_eq!(init["image"], "shunt:test");
    assert_eq!(init["args"], json!(["mcp", "--internal-wait-marked"]));
    let test_c = &p["spec"]["containers"][0];
    assert_eq!(test_c["image"], "tests:1");
    assert_eq!(test_c["command"][0], "sh");
    assert!(
        !p.to_string().contains("sd-routing-key"),
        "no key header: {p}"
    );
    for c in [init, test_c] {
        assert_eq!(c["securityContext"]["runAsNonRoot"], true, "{c}");
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{c}"
        );
    }
    assert_eq!(p["spec"]["automountServiceAccountToken"], false);

    // Never marked: an error that says so, and the command did not run.
    let e = err(&o, "unmarked", "request_failed");
    let m = e["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("never marked") && m.contains("did not run"),
        "{e}"
    );

    // Every test pod is gone, and every call is one MCP_ACCESS grants.
    let left: Vec<Value> = api
        .list("v1", "Pod", Some("shop"))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == COMPONENT)
        .collect();
    assert!(left.is_empty(), "test pods left: {left:?}");
    assert_api_calls_within_mcp_access(api, &[]);
}
