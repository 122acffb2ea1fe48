//! Cluster mode against the fake API server: `create_sandbox` forks the Deployment as `shunt
//! sandbox create` does (one implementation), labelled with the MCP session; on a crash-looping
//! pod it fails with the termination reason, which get_sandbox shows too; a session never
//! deletes a person's sandbox; the session renews its routes' expiry, and its end deletes what
//! it created, except what it created with `keep`. Every API call is in MCP_ACCESS, and every
//! permission this adds is used.
use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use serde_json::{Value, json};
use tests::{
    fake_apiserver::FakeApiServer,
    mcp_cluster::{assert_api_calls_within_mcp_access, reviews_service, with_peer},
    mcp_driver::{err, mcp_client, ok, python_with_mcp},
    shop_cluster::ShopCluster,
};

const ROUTES: &str = "shunt.dev/v1alpha1";

/// Plays the kubelet (a pod for each sandbox Deployment, with its template's labels: the
/// broken build `pr-bad` crash-loops, the others run) and the agents' leader (marks the route
/// of a running sandbox Ready).
fn fake_kubelet_and_leader(api: &FakeApiServer, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        for d in api.list("apps/v1", "Deployment", Some("shop")) {
            let Some(key) = d["metadata"]["labels"]["shunt.dev/sandbox"].as_str() else {
                continue;
            };
            let name = format!("{}-abc", d["metadata"]["name"].as_str().unwrap_or_default());
            if api.get("v1", "Pod", Some("shop"), &name).is_some() {
                continue;
            }
            let template = &d["spec"]["template"];
            let created = api.create(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": "shop",
                              "labels": template["metadata"]["labels"].clone() },
                "spec": template["spec"].clone(),
            }));
            let Ok(mut pod) = created else { continue };
            pod["status"] = if key == "pr-bad" {
                api.set_pod_log(
                    "shop",
                    &name,
                    "starting\npanic: STARS=on needs RATINGS_URL\n",
                );
                json!({
                    "phase": "Running", "podIP": "10.1.0.9",
                    "conditions": [{ "type": "Ready", "status": "False" }],
                    "containerStatuses": [{
                        "name": "main", "image": "reviews:broken", "imageID": "", "ready": false,
                        "restartCount": 3,
                        "state": { "waiting": { "reason": "CrashLoopBackOff",
                                                "message": "back-off 40s restarting failed container" } },
                        "lastState": { "terminated": { "reason": "Error", "exitCode": 2,
                                                       "message": "panic: STARS=on needs RATINGS_URL" } },
                    }],
                })
            } else {
                json!({ "phase": "Running", "podIP": "10.1.0.10",
                        "conditions": [{ "type": "Ready", "status": "True" }] })
            };
            let _ = api.replace_status(pod);
        }
        for mut r in api.list(ROUTES, "SandboxRoute", Some("shop")) {
            let key = r["spec"]["routingKey"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if key == "pr-bad"
                || key == "pr-person"
                || r.get("status").is_some_and(|s| !s.is_null())
            {
                continue;
            }
            r["status"] = json!({
                "observedGeneration": r["metadata"]["generation"].clone(),
                "conditions": [{ "type": "Ready", "status": "True", "reason": "EndpointsReady",
                                 "message": "1 fork(s) have ready sandbox endpoints" }],
            });
            let _ = api.replace_status(r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn route_for(api: &FakeApiServer, key: &str) -> Option<Value> {
    api.list(ROUTES, "SandboxRoute", Some("shop"))
        .into_iter()
        .find(|r| r["spec"]["routingKey"] == key)
}

#[test]
fn mcp_cluster_mode_create_sandbox_forks_the_deployment_and_the_session_cleans_up() {
    let test = "mcp_cluster_mode_create_sandbox_forks_the_deployment_and_the_session_cleans_up";
    let Some(python) = python_with_mcp(test) else {
        return;
    };
    let cluster = ShopCluster::start([
        reviews_service(),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "reviews", "namespace": "shop", "labels": { "app": "reviews" } },
            "spec": {
                "replicas": 2,
                "selector": { "matchLabels": { "app": "reviews" } },
                "template": {
                    "metadata": { "labels": { "app": "reviews" } },
                    "spec": { "containers": [{
                        "name": "main", "image": "reviews:1",
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                    }] },
                },
            },
        }),
        // A person's sandbox (`shunt sandbox create`, no session label).
        json!({
            "apiVersion": ROUTES, "kind": "SandboxRoute",
            "metadata": { "name": "pr-person", "namespace": "shop",
                          "labels": { "shunt.dev/sandbox": "pr-person" } },
            "spec": { "routingKey": "pr-person", "forks": [{ "service": "reviews",
                      "to": { "selector": { "shunt.dev/sandbox": "pr-person" } } }] },
        }),
    ]);
    let api = &cluster.api;
    let server = cluster.server(
        Path::new(env!("CARGO_BIN_EXE_shunt-under-test")),
        &["--session-ttl", "3s"],
    );
    let (o, ()) = with_peer(api, fake_kubelet_and_leader, || {
        mcp_client(&python, "kube_sandbox", &server)
    });

    err(&o, "create_no_image", "invalid_input");
    // The crash-looping build: the error names the termination reason and carries get_sandbox.
    let bad = err(&o, "create_bad", "sandbox_not_ready");
    let message = bad["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("CrashLoopBackOff")
            && message.contains("Error (exit code 2): panic: STARS=on needs RATINGS_URL"),
        "{bad:#}"
    );
    assert_eq!(bad["details"]["sandbox"]["restarts"], 3, "{bad:#}");
    let got = ok(&o, "get_bad");
    assert_eq!(
        got["last_termination"],
        "reviews-pr-bad-abc: container main: Error (exit code 2): panic: STARS=on needs RATINGS_URL"
    );
    assert_eq!(got["owned_by_this_session"], true, "{got:#}");
    assert!(
        got["recent_logs"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x.as_str().unwrap_or("").contains("panic"))),
        "{got:#}"
    );
    let session = got["session"].as_str().expect("session id").to_string();

    let keep = ok(&o, "create_keep");
    assert_eq!(keep["sandbox"]["key"], "pr-keep", "{keep:#}");
    let list = ok(&o, "list");
    let keys: Vec<&str> = list["sandboxes"]
        .as_array()
        .expect("sandboxes")
        .iter()
        .filter_map(|s| s["key"].as_str())
        .collect();
    for k in ["pr-bad", "pr-keep", "pr-person"] {
        assert!(keys.contains(&k), "{k} not listed: {list:#}");
    }
    err(&o, "delete_persons", "not_owned");

    // The session ended (stdin EOF): what it created without keep is gone; its kept sandbox
    // and the person's remain.
    assert!(route_for(api, "pr-bad").is_none(), "pr-bad route left");
    assert!(
        api.get("apps/v1", "Deployment", Some("shop"), "reviews-pr-bad")
            .is_none(),
        "pr-bad clone left"
    );
    let kept = route_for(api, "pr-keep").expect("kept route");
    assert_eq!(kept["metadata"]["labels"]["shunt.dev/session"], session);
    assert!(kept["spec"].get("expiresAt").is_none_or(Value::is_null));
    let clone = api
        .get("apps/v1", "Deployment", Some("shop"), "reviews-pr-keep")
        .expect("kept clone");
    assert_eq!(clone["metadata"]["labels"]["shunt.dev/session"], session);
    assert_eq!(
        clone["spec"]["template"]["metadata"]["labels"]["shunt.dev/session"],
        session
    );
    assert_eq!(
        clone["spec"]["template"]["spec"]["containers"][0]["image"],
        "reviews:2"
    );
    assert!(route_for(api, "pr-person").is_some(), "a person's route");

    // Every call is in MCP_ACCESS; and the permissions create/delete_sandbox need were used.
    assert_api_calls_within_mcp_access(
        api,
        &[
            ("apps", "deployments", "get"),
            ("apps", "deployments", "create"),
            ("apps", "deployments", "delete"),
            ("shunt.dev", "sandboxroutes", "create"),
            ("shunt.dev", "sandboxroutes", "delete"),
            ("shunt.dev", "sandboxroutes", "patch"),
        ],
    );
}
