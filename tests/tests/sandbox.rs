//! `shunt sandbox create|list|delete` against the fake API server: the clone Deployment (labels
//! no baseline Service selects, image, env, ownerReference to its SandboxRoute), the route (forks,
//! selector, expiresAt), waiting for Ready, and one-line errors that name the fix.
//!
//! The fake API server has no controllers and no garbage collector: a background thread plays
//! the agents' leader (writes Ready on new routes), image pull errors come from a Pod the test
//! creates, and garbage collection is checked as the ownerReference that would drive it.
use std::{
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tests::{fake_apiserver::FakeApiServer, process::spawn_in, shop_cluster::ShopCluster};

const ROUTES: &str = "shunt.dev/v1alpha1";

/// The cluster the tests start from: Services `reviews` and `ratings`, and the `reviews`
/// Deployment a sandbox clones.
fn cluster() -> ShopCluster {
    ShopCluster::start([
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "reviews", "namespace": "shop" },
            "spec": { "selector": { "app": "reviews" },
                      "ports": [{ "name": "http", "port": 9080, "targetPort": "http" }] },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "ratings", "namespace": "shop" },
            "spec": { "selector": { "app": "ratings" }, "ports": [{ "port": 9080 }] },
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "reviews", "namespace": "shop", "labels": { "app": "reviews" },
                          "annotations": { "deployment.kubernetes.io/revision": "3" } },
            "spec": {
                "replicas": 3,
                "selector": { "matchLabels": { "app": "reviews" } },
                "template": {
                    "metadata": { "labels": { "app": "reviews", "version": "v1" } },
                    "spec": { "containers": [{
                        "name": "main", "image": "reviews:1",
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                        "env": [{ "name": "X", "value": "1" }],
                    }] },
                },
            },
        }),
    ])
}

/// `shunt` run against the cluster's kubeconfig, and reads of what it wrote in `shop`.
trait ShuntOnCluster {
    fn shunt(&self, args: &[&str]) -> (bool, String, String);
    fn get(&self, api_version: &str, kind: &str, name: &str) -> Option<Value>;
}

impl ShuntOnCluster for ShopCluster {
    /// `shunt ARGS... --kubeconfig K`: (success, stdout, stderr).
    fn shunt(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shunt-under-test"));
        cmd.args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("SHUNT_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (status, out, err) = spawn_in("shunt", cmd, None, None)
            .expect("spawning shunt")
            .output_timeout(Duration::from_secs(60))
            .expect("shunt finished in time");
        (status.success(), out, err)
    }

    fn get(&self, api_version: &str, kind: &str, name: &str) -> Option<Value> {
        self.api.get(api_version, kind, Some("shop"), name)
    }
}

/// Plays the agents' leader: marks every SandboxRoute without a status Ready.
fn fake_leader(api: &FakeApiServer, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        for mut r in api.list(ROUTES, "SandboxRoute", Some("shop")) {
            if r.get("status").is_some_and(|s| !s.is_null()) {
                continue;
            }
            let generation = r["metadata"]["generation"].clone();
            r["status"] = json!({
                "observedGeneration": generation,
                "conditions": [{ "type": "Ready", "status": "True", "reason": "EndpointsReady",
                                 "message": "1 fork(s) have ready sandbox endpoints" }],
            });
            let _ = api.replace_status(r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The error line of a failed command: exactly one line, `shunt: ...`, naming a fix.
fn one_line_error(what: &str, (success, out, err): (bool, String, String)) -> String {
    assert!(!success, "{what} should fail:\n{out}\n{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("==>") && !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{what}: one error line expected:\n{err}");
    let line = lines[0];
    assert!(line.starts_with("shunt: "), "{what}: {line}");
    assert!(
        line.contains("fix:"),
        "{what}: the error must name the fix: {line}"
    );
    line.to_string()
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .expect("selector")
        .iter()
        .all(|(k, v)| &labels[k] == v)
}

#[test]
fn sandbox_create_clones_the_deployment_and_routes_the_key() {
    let c = Arc::new(cluster());
    let stop = Arc::new(AtomicBool::new(false));
    let leader = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || fake_leader(&c.api, &stop))
    };
    let (success, out, err) = c.shunt(&[
        "sandbox",
        "create",
        "--fork",
        "deployment/reviews",
        "--image",
        "reviews:2",
        "--env",
        "A=1",
        "--env",
        "X=2",
        "--key",
        "pr-42",
        "--ttl",
        "2h",
        "-n",
        "shop",
        "--timeout",
        "30s",
    ]);
    stop.store(true, Ordering::Relaxed);
    leader.join().expect("fake leader");
    assert!(success, "create failed:\n{out}\n{err}");
    assert!(out.contains("sandbox pr-42 is ready"), "{out}");
    assert!(out.contains("\nkey: pr-42\n"), "{out}");
    assert!(
        out.contains(
            "curl -H 'baggage: sd-routing-key=pr-42' http://reviews.shop.svc.cluster.local:9080/"
        ),
        "{out}"
    );
    assert!(
        err.contains("==> creating SandboxRoute shop/pr-42"),
        "{err}"
    );

    // The route: forks the Service selecting the baseline pods to the clone's pod labels.
    let route = c.get(ROUTES, "SandboxRoute", "pr-42").expect("route");
    let uid = route["metadata"]["uid"].as_str().expect("uid").to_string();
    let pod_labels =
        json!({ "app": "reviews-pr-42", "version": "v1", "shunt.dev/sandbox": "pr-42" });
    assert_eq!(route["spec"]["routingKey"], "pr-42");
    assert_eq!(
        route["spec"]["forks"],
        json!([{ "service": "reviews", "to": { "selector": pod_labels } }])
    );
    assert_eq!(route["spec"]["fallback"], "Baseline");
    let expires: jiff::Timestamp = route["spec"]["expiresAt"]
        .as_str()
        .expect("expiresAt")
        .parse()
        .expect("timestamp");
    let in_2h = jiff::Timestamp::now().as_second() + 2 * 3600;
    assert!((in_2h - expires.as_second()).abs() < 300, "{expires}");

    // The clone: new name, image and env; labels the baseline Service never selects; owned by
    // the route (so deleting the route garbage-collects it).
    let d = c
        .get("apps/v1", "Deployment", "reviews-pr-42")
        .expect("clone deployment");
    let tmpl = &d["spec"]["template"];
    assert_eq!(tmpl["metadata"]["labels"], pod_labels);
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        json!({ "app": "reviews-pr-42", "shunt.dev/sandbox": "pr-42" })
    );
    let svc = c.get("v1", "Service", "reviews").expect("service");
    assert!(!labels_match(
        &svc["spec"]["selector"],
        &tmpl["metadata"]["labels"]
    ));
    assert!(labels_match(
        &route["spec"]["forks"][0]["to"]["selector"],
        &tmpl["metadata"]["labels"]
    ));
    assert_eq!(d["spec"]["replicas"], 1);
    let container = &tmpl["spec"]["containers"][0];
    assert_eq!(container["image"], "reviews:2");
    assert_eq!(
        container["env"],
        json!([{ "name": "X", "value": "2" }, { "name": "A", "value": "1" }])
    );
    assert_eq!(container["ports"][0]["name"], "http");
    assert_eq!(
        d["metadata"]["ownerReferences"],
        json!([{ "apiVersion": "shunt.dev/v1alpha1", "kind": "SandboxRoute", "name": "pr-42",
                 "uid": uid, "controller": true, "blockOwnerDeletion": false }])
    );
    assert_eq!(
        d["metadata"]["annotations"]["shunt.dev/forked-from"],
        "deployment/reviews"
    );
    assert!(
        d["metadata"]["annotations"]
            .get("deployment.kubernetes.io/revision")
            .is_none()
    );
    // The baseline is untouched.
    let base = c.get("apps/v1", "Deployment", "reviews").expect("baseline");
    assert_eq!(base["spec"]["replicas"], 3);
    assert_eq!(
        base["spec"]["template"]["spec"]["containers"][0]["image"],
        "reviews:1"
    );

    // list shows it; a second sandbox with the key is refused.
    let (success, out, err) = c.shunt(&["sandbox", "list", "-n", "shop"]);
    assert!(success, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("pr-42"))
        .unwrap_or_else(|| panic!("{out}"));
    for col in ["shop", "reviews", "reviews-pr-42", "True", "EndpointsReady"] {
        assert!(row.split_whitespace().any(|c| c == col), "{col} in {row}");
    }
    let line = one_line_error(
        "create with a used key",
        c.shunt(&[
            "sandbox",
            "create",
            "--fork",
            "deployment/reviews",
            "--image",
            "reviews:3",
            "--key",
            "pr-42",
            "-n",
            "shop",
            "--no-wait",
        ]),
    );
    assert!(line.contains("key pr-42 is already used"), "{line}");
    assert!(
        line.contains("shunt sandbox delete pr-42 -n shop"),
        "{line}"
    );

    // delete removes the clone and the route, nothing else.
    let (success, out, err) = c.shunt(&["sandbox", "delete", "pr-42", "-n", "shop"]);
    assert!(success, "{out}\n{err}");
    assert!(
        out.contains("deployment shop/reviews-pr-42") && out.contains("sandboxroute shop/pr-42"),
        "{out}"
    );
    assert!(c.get("apps/v1", "Deployment", "reviews-pr-42").is_none());
    assert!(c.get(ROUTES, "SandboxRoute", "pr-42").is_none());
    assert!(c.get("apps/v1", "Deployment", "reviews").is_some());
    let line = one_line_error(
        "delete again",
        c.shunt(&["sandbox", "delete", "pr-42", "-n", "shop"]),
    );
    assert!(line.contains("no sandbox with key pr-42"), "{line}");
}

#[test]
fn sandbox_bad_inputs_get_one_line_errors() {
    let c = cluster();
    let create = |extra: &[&str]| {
        let mut args = vec!["sandbox", "create", "-n", "shop", "--timeout", "20s"];
        if !extra.contains(&"--image") {
            args.extend_from_slice(&["--image", "reviews:2"]);
        }
        args.extend_from_slice(extra);
        c.shunt(&args)
    };

    let line = one_line_error(
        "missing deployment",
        create(&["--fork", "deployment/nope", "--key", "k1"]),
    );
    assert!(
        line.contains("deployment/nope not found in namespace shop (deployments there: reviews)"),
        "{line}"
    );
    let line = one_line_error("bad --fork", create(&["--fork", "reviews"]));
    assert!(line.contains("expected deployment/NAME"), "{line}");
    let line = one_line_error(
        "bad --env",
        create(&["--fork", "deployment/reviews", "--env", "NOVALUE"]),
    );
    assert!(line.contains("expected NAME=VALUE"), "{line}");
    let line = one_line_error(
        "bad --key",
        create(&["--fork", "deployment/reviews", "--key", "pr-42."]),
    );
    assert!(line.contains("is not usable"), "{line}");
    let line = one_line_error(
        "unknown container",
        create(&[
            "--fork",
            "deployment/reviews",
            "--key",
            "k2",
            "--container",
            "side",
        ]),
    );
    assert!(
        line.contains("has no container \"side\" (containers: main)"),
        "{line}"
    );
    assert!(c.get(ROUTES, "SandboxRoute", "k2").is_none());

    // An image that cannot be pulled: the sandbox pod reports ErrImagePull, and the sandbox is
    // removed again.
    c.api
        .create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "reviews-pr-7-abc", "namespace": "shop",
                          "labels": { "app": "reviews-pr-7", "version": "v1", "shunt.dev/sandbox": "pr-7" } },
            "spec": { "containers": [{ "name": "main", "image": "nope:1" }] },
        }))
        .expect("pod");
    let mut pod = c.get("v1", "Pod", "reviews-pr-7-abc").expect("pod");
    pod["status"] = json!({
        "phase": "Pending",
        "containerStatuses": [{
            "name": "main", "image": "nope:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": "ErrImagePull",
                                    "message": "pull access denied for nope" } },
        }],
    });
    c.api.replace_status(pod).expect("pod status");
    let line = one_line_error(
        "image pull error",
        create(&[
            "--fork",
            "deployment/reviews",
            "--key",
            "pr-7",
            "--image",
            "nope:1",
        ]),
    );
    assert!(
        line.contains("image nope:1 cannot be pulled (ErrImagePull: pull access denied for nope)"),
        "{line}"
    );
    assert!(
        c.get(ROUTES, "SandboxRoute", "pr-7").is_none(),
        "route removed"
    );
    assert!(
        c.get("apps/v1", "Deployment", "reviews-pr-7").is_none(),
        "deployment removed"
    );

    // --no-wait returns at once; the route then has no status yet.
    let (success, out, err) =
        create(&["--fork", "deployment/reviews", "--key", "pr-8", "--no-wait"]);
    assert!(success, "{out}\n{err}");
    assert!(out.contains("sandbox pr-8 created (not waiting"), "{out}");
    let (_, list, _) = c.shunt(&["sandbox", "list", "-n", "shop"]);
    let row = list
        .lines()
        .find(|l| l.starts_with("pr-8"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains("Unknown"), "{row}");
}
