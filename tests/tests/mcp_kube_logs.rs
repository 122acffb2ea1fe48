//! Cluster mode against the fake API server: `get_logs` reads `pods/log` of one pod, a
//! service's baseline pods or a sandbox's pods; `get_sandbox` on a crash-looping sandbox pod
//! returns its restarts, termination reason, why it waits and its Events; only calls MCP_ACCESS
//! lists, and the ones these tools need.
use serde_json::json;
use std::path::Path;

use tests::{
    mcp_cluster::{assert_api_calls_within_mcp_access, reviews_endpoints, reviews_service},
    mcp_driver::{err, mcp_client, ok, python_with_mcp},
    shop_cluster::ShopCluster,
};

#[test]
fn mcp_cluster_mode_get_logs_reads_pods_log_and_get_sandbox_explains_a_crash_loop() {
    let test = "mcp_cluster_mode_get_logs_reads_pods_log_and_get_sandbox_explains_a_crash_loop";
    let Some(python) = python_with_mcp(test) else {
        return;
    };
    let cluster = ShopCluster::start([
        reviews_service(),
        reviews_endpoints(),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "reviews-v1-xyz", "namespace": "shop", "labels": { "app": "reviews" } },
            "spec": { "containers": [{ "name": "app", "image": "reviews:1" }] },
        }),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "reviews-v2-abc", "namespace": "shop",
                          "labels": { "app": "reviews-v2", "shunt.dev/sandbox": "pr-42" } },
            "spec": { "containers": [{ "name": "app", "image": "reviews:2" }] },
        }),
    ]);
    let api = &cluster.api;
    // The sandbox pod crash-loops, as a kubelet would report it.
    let mut pod = api
        .get("v1", "Pod", Some("shop"), "reviews-v2-abc")
        .expect("pod");
    pod["status"] = json!({
        "phase": "Running", "podIP": "10.1.0.9",
        "conditions": [{ "type": "Ready", "status": "False" }],
        "containerStatuses": [{
            "name": "app", "image": "reviews:2", "imageID": "", "ready": false,
            "restartCount": 4,
            "state": { "waiting": { "reason": "CrashLoopBackOff",
                                    "message": "back-off 1m20s restarting failed container" } },
            "lastState": { "terminated": { "reason": "Error", "exitCode": 2,
                                           "message": "panic: stars() nil" } },
        }],
    });
    api.replace_status(pod).expect("pod status");
    api.create(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": { "name": "reviews-v2-abc.1", "namespace": "shop" },
        "involvedObject": { "kind": "Pod", "name": "reviews-v2-abc", "namespace": "shop" },
        "type": "Warning", "reason": "BackOff",
        "message": "Back-off restarting failed container app",
    }))
    .expect("event");
    api.set_pod_log(
        "shop",
        "reviews-v1-xyz",
        "v1 started\nGET / -> 200\nGET /x -> 200\n",
    );
    api.set_pod_log(
        "shop",
        "reviews-v2-abc",
        "v2 started\nGET / -> 500: ERROR stars() nil\nGET / -> 500: ERROR stars() nil\n",
    );
    let server = cluster.server(Path::new(env!("CARGO_BIN_EXE_shunt-under-test")), &[]);
    let o = mcp_client(&python, "kube_logs", &server);

    let pod = ok(&o, "pod");
    assert_eq!(pod["pods"][0]["pod"], "reviews-v2-abc");
    assert_eq!(
        pod["pods"][0]["lines"],
        json!([
            "GET / -> 500: ERROR stars() nil",
            "GET / -> 500: ERROR stars() nil"
        ]),
        "{pod:#}"
    );
    let svc = ok(&o, "service");
    assert_eq!(svc["pods"].as_array().map(Vec::len), Some(1), "{svc:#}");
    assert_eq!(svc["pods"][0]["pod"], "reviews-v1-xyz");
    assert_eq!(svc["pods"][0]["lines"], json!(["GET /x -> 200"]));
    let key = ok(&o, "sandbox_key");
    assert_eq!(key["pods"][0]["pod"], "reviews-v2-abc");
    assert_eq!(key["pods"][0]["lines"].as_array().map(Vec::len), Some(3));
    err(&o, "missing", "sandbox_not_found");
    let sb = ok(&o, "get_sandbox");
    assert_eq!(sb["key"], "pr-42");
    assert_eq!(sb["ready"], false, "{sb:#}");
    assert_eq!(sb["restarts"], 4, "{sb:#}");
    assert_eq!(
        sb["last_termination"],
        "reviews-v2-abc: container app: Error (exit code 2): panic: stars() nil"
    );
    assert_eq!(
        sb["waiting"],
        "reviews-v2-abc: CrashLoopBackOff: back-off 1m20s restarting failed container"
    );
    assert_eq!(
        sb["events"],
        json!(["reviews-v2-abc: Warning BackOff: Back-off restarting failed container app"])
    );
    assert!(
        sb["recent_logs"].as_array().is_some_and(|l| l.len() == 3),
        "{sb:#}"
    );

    // Every call is in MCP_ACCESS, and pods/log is what was read.
    assert_api_calls_within_mcp_access(
        api,
        &[
            ("", "pods/log", "get"),
            ("", "events", "list"),
            ("", "pods", "list"),
        ],
    );
}
