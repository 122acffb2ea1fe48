//! `shunt mcp`, driven over stdio by a real third-party MCP client: the official Python SDK
//! (`pip install mcp`, installed on first use into `target/mcp-venv`) running
//! `tests/mcp_client.py`.
//!
//! - no-cluster mode against a netns mini-cluster with the real agent and eBPF capture:
//!   frontend → reviews (v1 baseline, v2 sandbox pod for key pr-42) → ratings, each tier a
//!   `demo-app` process in a captured pod that propagates the baggage header;
//! - cluster mode against the fake API server (SandboxRoute tools);
//! - cluster mode end to end: the real agent with `--kube` on a netns node, send_test_request's
//!   pods run by a fake kubelet in a captured pod, the agents' decisions and topology through
//!   the traffic API (aggregated behind the fake API server), as the admin and as a tenant with
//!   only a Role in `shop`.
//!
//! Without PyPI (no venv can be made) the tests skip with a message, unless
//! `SHUNT_REQUIRE_KERNEL_TESTS=1`, where that is a failure.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    bins,
    fake_apiserver::FakeApiServer,
    harness::{DEBUG_PORT, Env},
    mcp_cluster::{
        self, assert_api_calls_within_mcp_access, assert_calls_within_mcp_access,
        reviews_endpoints, reviews_service, with_peer,
    },
    mcp_world::node_mcp_server,
    netns::Topology,
    process::{ChildGuard, spawn_in},
    shop_cluster::ShopCluster,
};

const SERVICE_PORT: u16 = 9080;
const POD_PORT: u16 = 8080;

use tests::mcp_driver::{err, mcp_client, ok, python_with_mcp};

const TOOLS: [&str; 15] = [
    "compare_with_baseline",
    "create_sandbox",
    "create_sandbox_route",
    "delete_sandbox",
    "delete_sandbox_route",
    "get_decisions",
    "get_dependencies",
    "get_logs",
    "get_sandbox",
    "list_sandbox_routes",
    "list_sandboxes",
    "list_services",
    "resolve_port",
    "run_tests",
    "send_test_request",
];

fn check_tools(o: &Value) {
    assert_eq!(o["server"]["name"], "shunt");
    assert!(
        o["server"]["instructions"]
            .as_str()
            .is_some_and(|i| i.contains("send_test_request")),
        "{}",
        o["server"]
    );
    let tools = o["tools"].as_object().expect("tools");
    let mut names: Vec<&str> = tools.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, TOOLS);
    for (name, t) in tools {
        assert!(
            t["description"].as_str().is_some_and(|d| d.len() > 40),
            "{name}: {t}"
        );
        assert_eq!(t["input_schema"]["type"], "object", "{name}");
        assert_eq!(t["has_output_schema"], true, "{name}");
    }
    let create = &tools["create_sandbox_route"]["input_schema"];
    assert_eq!(create["required"], json!(["key", "forks"]), "{create}");
}

// ---------------------------------------------------------------------------------------------
// No-cluster mode: netns mini-cluster

/// Pods: 0 client, 1 frontend-v1, 2 reviews-v1, 3 reviews-v2 (sandbox pod for pr-42),
/// 4 ratings-v1. (service, version, calls)
const APPS: [(usize, &str, &str, &str, Option<&str>); 4] = [
    (1, "frontend-v1", "frontend", "v1", Some("reviews")),
    (2, "reviews-v1", "reviews", "v1", Some("ratings")),
    (3, "reviews-v2", "reviews", "v2", Some("ratings")),
    (4, "ratings-v1", "ratings", "v1", None),
];

fn vip(service: &str) -> Ipv4Addr {
    match service {
        "frontend" => Ipv4Addr::new(198, 19, 10, 6),
        "reviews" => Ipv4Addr::new(198, 19, 10, 7),
        _ => Ipv4Addr::new(198, 19, 10, 8),
    }
}

/// Three Services on virtual addresses the agent serves (alwaysSteer: no kube-proxy here), the
/// sandbox pod, and no route yet: the MCP client creates it.
fn routes_yaml(topo: &Topology) -> String {
    let mut out = String::from("# written by tests/tests/mcp.rs\nservices:\n");
    for svc in ["frontend", "reviews", "ratings"] {
        out.push_str(&format!(
            "  - name: {svc}\n    namespace: shop\n    addresses: [{}]\n    alwaysSteer: true\n    \
             ports: [{{ name: http, port: {SERVICE_PORT}, targetPort: http }}]\n    endpoints:\n",
            vip(svc)
        ));
        for (i, name, s, _, _) in APPS {
            if s == svc && name != "reviews-v2" {
                out.push_str(&format!(
                    "      - {{ ip: {}, ports: {{ http: {POD_PORT} }} }}\n",
                    topo.pods[i].ip4
                ));
            }
        }
    }
    out.push_str(&format!(
        "pods:\n  - name: reviews-v2\n    namespace: shop\n    ips: [{}]\n    \
         labels: {{ app: reviews-v2, shunt.dev/sandbox: pr-42 }}\n    ports: {{ http: {POD_PORT} }}\n\
         # Routes are created by the MCP client.\nroutes: []\n",
        topo.pods[3].ip4
    ));
    out
}

fn start_apps(env: &Env) -> Vec<ChildGuard> {
    let mut apps = Vec::new();
    for (i, name, service, version, calls) in APPS {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo-app"));
        cmd.args(["serve", "--service", service, "--version", version])
            .args(["--pod", name])
            .args(["--listen", &env.topo.pods[i].addr4(POD_PORT).to_string()]);
        if let Some(callee) = calls {
            cmd.args([
                "--call",
                &format!("http://{}/", SocketAddr::from((vip(callee), SERVICE_PORT))),
            ]);
        }
        let log = fs::File::create(env.run.path.join(format!("{name}.log"))).expect("log");
        cmd.stdout(log.try_clone().expect("log")).stderr(log);
        apps.push(
            spawn_in(
                name,
                cmd,
                Some(&env.topo.pods[i].netns),
                Some(env.cgroup.path()),
            )
            .expect("starting demo-app"),
        );
    }
    for (i, name, ..) in APPS {
        let addr = env.topo.pods[i].addr4(POD_PORT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !env
            .node()
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
            .unwrap_or(false)
        {
            assert!(Instant::now() < deadline, "{name} is not listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    apps
}

fn hops(step: &Value) -> Vec<(String, String, String, String)> {
    step["hops"]
        .as_array()
        .unwrap_or_else(|| panic!("no hops: {step:#}"))
        .iter()
        .map(|h| {
            let s = |k: &str| h[k].as_str().unwrap_or("-").to_string();
            (s("from"), s("service"), s("decision"), s("upstream_owner"))
        })
        .collect()
}

fn t(a: &str, b: &str, c: &str, d: &str) -> (String, String, String, String) {
    (a.into(), b.into(), c.into(), d.into())
}

#[test]
fn mcp_client_drives_a_sandbox_through_the_mini_cluster() {
    let test = "mcp_client_drives_a_sandbox_through_the_mini_cluster";
    let Some(env) = Env::new(test, 5, bins!()) else {
        return;
    };
    let Some(python) = python_with_mcp(test) else {
        return;
    };
    let routes = env.run.path.join("routes.yaml");
    fs::write(&routes, routes_yaml(&env.topo)).expect("routes file");
    let _apps = start_apps(&env);
    let agent = env.start_agent(
        &[
            "--routes".into(),
            routes.display().to_string(),
            "--routes-poll-interval".into(),
            "100ms".into(),
        ],
        None,
    );
    let server = node_mcp_server(&env, &routes, &[]);
    let o = mcp_client(&python, "netns", &server);
    let ctx = || format!("agent log:\n{}", agent.log_text());
    check_tools(&o);

    // list_services: the three services, their ports, the sandbox pod, no forks yet.
    let ls = ok(&o, "list_services");
    assert_eq!(ls["mode"], "no-cluster");
    let names: Vec<&str> = ls["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["frontend", "reviews", "ratings"]);
    let reviews = &ls["services"][1];
    assert_eq!(
        reviews["ports"],
        json!([{ "name": "http", "port": 9080, "target_port": "http" }])
    );
    assert_eq!(reviews["url"], "http://198.19.10.7:9080/");
    assert_eq!(reviews["forks"], json!([]));
    assert_eq!(ls["sandbox_pods"][0]["name"], "reviews-v2");

    // Unkeyed requests (by service name) go baseline all the way, hop by hop.
    for path in o["unkeyed_before_paths"].as_array().expect("paths") {
        assert_eq!(path, &json!(["frontend-v1", "reviews-v1", "ratings-v1"]));
    }
    let first = &o["unkeyed_before"][0];
    assert_eq!(first["is_error"], false, "{first:#}");
    let client = env.topo.pods[0].ip4.to_string();
    assert_eq!(
        hops(&first["result"]),
        [
            t(&client, "shop/frontend", "baseline", "shop/frontend"),
            t("shop/frontend", "shop/reviews", "baseline", "shop/reviews"),
            t("shop/reviews", "shop/ratings", "baseline", "shop/ratings"),
        ],
        "{}",
        ctx()
    );
    assert_eq!(first["result"]["hops"][1]["reason"], "no_key");
    assert_eq!(first["result"]["connected_to"], "198.19.10.6:9080");

    // get_dependencies: the observed three-tier graph, with the counts of the traffic sent
    // (3 requests, one connection per hop each).
    let edge =
        |from: &str, to: &str| json!({ "from": from, "to": to, "port": 9080, "connections": 3 });
    let strip = |edges: &Value| -> Vec<Value> {
        edges
            .as_array()
            .expect("edges")
            .iter()
            .map(|e| json!({ "from": e["from"], "to": e["to"], "port": e["port"], "connections": e["connections"] }))
            .collect()
    };
    let dep = ok(&o, "dependencies_reviews");
    assert_eq!(dep["service"], "shop/reviews");
    assert_eq!(
        strip(&dep["callers"]),
        [edge("shop/frontend", "shop/reviews")]
    );
    assert_eq!(
        strip(&dep["callees"]),
        [edge("shop/reviews", "shop/ratings")]
    );
    let all = ok(&o, "dependencies_all");
    let mut edges = strip(&all["edges"]);
    edges.sort_by_key(|e| e["from"].to_string());
    assert_eq!(
        edges,
        [
            edge(&client, "shop/frontend"),
            edge("shop/frontend", "shop/reviews"),
            edge("shop/reviews", "shop/ratings"),
        ],
        "{}",
        ctx()
    );

    // `shunt topology` shows the same graph.
    let mut cmd = Command::new(&env.bins.agent);
    cmd.args([
        "topology",
        "--debug-addr",
        &format!("127.0.0.1:{DEBUG_PORT}"),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let (_, tree, _) = spawn_in("topology", cmd, Some(env.node()), None)
        .expect("shunt topology")
        .output_timeout(Duration::from_secs(10))
        .expect("shunt topology finished");
    for line in [
        "shop/frontend\n  └─▶ shop/reviews :9080  (",
        "shop/reviews\n  └─▶ shop/ratings :9080  (",
    ] {
        assert!(tree.contains(line), "{line:?} in:\n{tree}");
    }

    // resolve_port: a name resolves; the pod's port is refused, naming the right one.
    let rp = ok(&o, "resolve_port_ok");
    assert_eq!(rp["port"], 9080);
    assert_eq!(rp["url"], "http://198.19.10.7:9080/");
    let e = err(&o, "resolve_port_wrong", "wrong_port");
    assert_eq!(e["details"]["suggested_port"], 9080);
    assert_eq!(e["details"]["valid_ports"][0]["port"], 9080);
    err(&o, "wrong_port_request", "wrong_port");

    // create_sandbox_route: a selector without shunt.dev/sandbox is refused with candidates;
    // the right one is applied by the agent and Ready; a second one with the key is refused.
    let e = err(&o, "create_bad_selector", "invalid_input");
    assert_eq!(e["details"]["sandbox_pods"][0]["pod"], "reviews-v2");
    let c = ok(&o, "create");
    assert_eq!(c["applied"], true, "{c:#}\n{}", ctx());
    assert_eq!(c["route"]["ready"], true, "{c:#}");
    assert_eq!(c["route"]["reason"], "EndpointsReady");
    assert!(c["next_step"].as_str().is_some_and(|s| s.contains("pr-42")));
    err(&o, "create_again", "key_exists");
    let lr = ok(&o, "list_routes");
    assert_eq!(lr["routes"].as_array().map(Vec::len), Some(1));
    assert_eq!(lr["routes"][0]["key"], "pr-42");
    let forked = ok(&o, "list_services_forked");
    let rv = &forked["services"][1];
    assert_eq!(rv["name"], "reviews");
    assert_eq!(rv["forks"][0]["key"], "pr-42");
    assert_eq!(rv["forks"][0]["ready"], true);

    // The keyed request reaches the sandbox for reviews and only there; the unkeyed one stays
    // on baseline.
    assert_eq!(
        o["keyed_path"],
        json!(["frontend-v1", "reviews-v2", "ratings-v1"]),
        "{:#}\n{}",
        o["keyed"],
        ctx()
    );
    let keyed = ok(&o, "keyed");
    assert_eq!(
        hops(keyed),
        [
            t(&client, "shop/frontend", "baseline", "shop/frontend"),
            t(
                "shop/frontend",
                "shop/reviews",
                "sandbox",
                "shop/reviews-v2"
            ),
            t(
                "shop/reviews-v2",
                "shop/ratings",
                "baseline",
                "shop/ratings"
            ),
        ]
    );
    let h = &keyed["hops"];
    assert_eq!(h[1]["reason"], "key_matched");
    assert_eq!(h[1]["route"], "shop/pr-42");
    assert_eq!(h[2]["reason"], "key_not_forked");
    assert_eq!(h[2]["parent"], 2);
    for hop in h.as_array().expect("hops") {
        assert_eq!(hop["key"], "pr-42", "{hop}");
        assert_eq!(hop["key_lost"], false, "{hop}");
    }
    assert_eq!(keyed["response"]["status"], 200);
    assert_eq!(
        keyed["response"]["body_json"]["downstream"]["baggage"],
        "sd-routing-key=pr-42"
    );
    assert_eq!(
        o["unkeyed_path"],
        json!(["frontend-v1", "reviews-v1", "ratings-v1"])
    );

    // get_decisions: the keyed request's decisions with reasons and hints.
    let d = ok(&o, "decisions");
    let ds = d["decisions"].as_array().expect("decisions");
    assert!(
        ds.iter().any(|x| x["decision"] == "sandbox"
            && x["reason"] == "key_matched"
            && x["upstream_owner"] == "shop/reviews-v2"),
        "{d:#}"
    );
    assert!(ds.iter().all(|x| x["key"] == "pr-42"));
    assert_eq!(d["summary"]["sandbox"], 1, "{d:#}");
    assert!(
        d["hints"]
            .as_array()
            .expect("hints")
            .iter()
            .any(|x| x["reason"] == "key_not_forked")
    );

    // delete_sandbox_route: the agent stops applying it; the key then stays on baseline.
    let del = ok(&o, "delete");
    assert_eq!(del["deleted"], "shop/pr-42");
    assert_eq!(del["applied"], true, "{del:#}");
    err(&o, "delete_again", "route_not_found");
    assert_eq!(
        o["keyed_after_delete_path"],
        json!(["frontend-v1", "reviews-v1", "ratings-v1"])
    );

    // The routes file still holds everything else, comments included.
    let text = fs::read_to_string(&routes).expect("routes file");
    assert!(
        text.starts_with("# written by tests/tests/mcp.rs\n"),
        "{text}"
    );
    let state = agent::routes::file::parse_routes(&text, "routes.yaml").expect("valid file");
    assert_eq!(state.services.len(), 3);
    assert_eq!(state.pods.len(), 1);
    assert!(state.routes.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Cluster mode: the fake API server

/// The cluster the SandboxRoute tools work on: `reviews` and its sandbox pod, Running.
fn shop_cluster() -> ShopCluster {
    let cluster = ShopCluster::start([
        reviews_service(),
        reviews_endpoints(),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "reviews-v2-abc", "namespace": "shop",
                          "labels": { "app": "reviews-v2", "shunt.dev/sandbox": "pr-42" } },
            "spec": { "containers": [{ "name": "app", "image": "reviews:2",
                                       "ports": [{ "name": "http", "containerPort": 8080 }] }] },
        }),
    ]);
    let mut pod = cluster
        .api
        .get("v1", "Pod", Some("shop"), "reviews-v2-abc")
        .expect("pod");
    pod["status"] = json!({
        "phase": "Running", "podIP": "10.1.0.9", "podIPs": [{ "ip": "10.1.0.9" }],
        "conditions": [{ "type": "Ready", "status": "True" }],
    });
    cluster.api.replace_status(pod).expect("pod status");
    cluster
}

/// `shunt mcp --kube` on `cluster`, then `extra`.
fn kube_server(cluster: &ShopCluster, extra: &[&str]) -> Vec<String> {
    cluster.server(Path::new(env!("CARGO_BIN_EXE_shunt-under-test")), extra)
}

/// Plays the agents' leader: marks every SandboxRoute without a status Ready. Returns the
/// routes it saw, as created.
fn fake_leader(api: &FakeApiServer, stop: &AtomicBool) -> Vec<Value> {
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for mut r in api.list("shunt.dev/v1alpha1", "SandboxRoute", Some("shop")) {
            if r.get("status").is_some_and(|s| !s.is_null()) {
                continue;
            }
            seen.push(r.clone());
            let generation = r["metadata"]["generation"].clone();
            r["status"] = json!({
                "observedGeneration": generation,
                "conditions": [{ "type": "Ready", "status": "True", "reason": "EndpointsReady",
                                 "message": "1 fork(s) have ready sandbox endpoints",
                                 "observedGeneration": generation }],
                "forks": [{ "service": "reviews", "reason": "EndpointsReady", "readyEndpoints": 1 }],
            });
            let _ = api.replace_status(r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

#[test]
fn mcp_cluster_mode_manages_sandbox_routes_through_the_api() {
    let test = "mcp_cluster_mode_manages_sandbox_routes_through_the_api";
    let Some(python) = python_with_mcp(test) else {
        return;
    };
    let cluster = shop_cluster();
    let (o, seen) = with_peer(&cluster.api, fake_leader, || {
        mcp_client(&python, "kube", &kube_server(&cluster, &[]))
    });
    check_tools(&o);

    let ls = ok(&o, "list_services");
    assert_eq!(ls["mode"], "cluster");
    let reviews = &ls["services"][0];
    assert_eq!(reviews["name"], "reviews");
    assert_eq!(reviews["dns"], "reviews.shop.svc.cluster.local");
    assert_eq!(
        reviews["url"],
        "http://reviews.shop.svc.cluster.local:9080/"
    );
    assert_eq!(
        reviews["baseline_endpoints"][0]["pod"],
        "shop/reviews-v1-xyz"
    );
    assert_eq!(reviews["baseline_endpoints"][0]["ports"]["http"], 8080);
    assert_eq!(ls["sandbox_pods"][0]["name"], "reviews-v2-abc");
    let e = err(&o, "resolve_port_wrong", "wrong_port");
    assert_eq!(e["details"]["suggested_port"], 9080);
    assert_eq!(ok(&o, "list_routes_before")["routes"], json!([]));

    // create: a SandboxRoute object, with expiresAt from the ttl, Ready once the leader says so.
    let c = ok(&o, "create");
    assert_eq!(c["applied"], true, "{c:#}");
    assert_eq!(c["route"]["ready"], true);
    assert_eq!(c["route"]["name"], "pr-42");
    let route = seen
        .iter()
        .find(|r| r["metadata"]["name"] == "pr-42")
        .expect("the route was created");
    assert_eq!(route["spec"]["routingKey"], "pr-42");
    assert_eq!(
        route["spec"]["forks"],
        json!([{ "service": "reviews", "to": { "selector": { "app": "reviews-v2", "shunt.dev/sandbox": "pr-42" } } }])
    );
    let expires: jiff::Timestamp = route["spec"]["expiresAt"]
        .as_str()
        .expect("expiresAt")
        .parse()
        .expect("a timestamp");
    let in_1h = jiff::Timestamp::now().as_second() + 3600;
    assert!((in_1h - expires.as_second()).abs() < 300, "{expires}");
    err(&o, "create_again", "key_exists");
    err(&o, "create_missing_service", "service_not_found");
    let lr = ok(&o, "list_routes");
    assert_eq!(lr["routes"][0]["key"], "pr-42");
    assert_eq!(lr["routes"][0]["reason"], "EndpointsReady");
    assert_eq!(lr["routes"][0]["forks"][0]["ready_sandbox_endpoints"], 1);
    let forked = ok(&o, "list_services_forked");
    assert_eq!(forked["services"][0]["forks"][0]["key"], "pr-42");
    // No agent pod to take the request image from, and no --request-image: said so, with a fix.
    let e = err(&o, "send", "unsupported");
    assert!(
        e["fix"]
            .as_str()
            .is_some_and(|f| f.contains("--request-image")),
        "{e}"
    );
    // No agent pods in shunt-system here: said so, with a fix.
    let e = err(&o, "dependencies", "agent_unreachable");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("shunt-system")),
        "{e}"
    );

    // delete: the object is gone.
    assert_eq!(ok(&o, "delete")["deleted"], "shop/pr-42");
    assert!(
        cluster
            .api
            .get("shunt.dev/v1alpha1", "SandboxRoute", Some("shop"), "pr-42")
            .is_none()
    );
    assert_eq!(ok(&o, "list_routes_after")["routes"], json!([]));
    // Only the MCP server spoke HTTP to the API here: each of its calls is in MCP_ACCESS.
    assert_api_calls_within_mcp_access(&cluster.api, &[]);
}

/// Plays a kubelet that cannot pull any request pod's image. Returns the pods' names.
fn kubelet_that_cannot_pull(api: &FakeApiServer, stop: &AtomicBool) -> Vec<String> {
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for mut p in api.list("v1", "Pod", Some("shop")) {
            let name = p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if p["metadata"]["labels"]["app.kubernetes.io/component"] != "test-request"
                || seen.contains(&name)
            {
                continue;
            }
            seen.push(name);
            p["status"] = json!({
                "phase": "Pending",
                "containerStatuses": [{ "name": "request", "image": p["spec"]["containers"][0]["image"],
                    "imageID": "", "ready": false, "restartCount": 0,
                    "state": { "waiting": { "reason": "ErrImagePull",
                        "message": "pull access denied for nope/shunt" } } }],
            });
            let _ = api.replace_status(p);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

#[test]
fn mcp_cluster_mode_request_pod_with_an_unpullable_image_is_an_error_naming_the_fix() {
    let test = "mcp_cluster_mode_request_pod_with_an_unpullable_image_is_an_error_naming_the_fix";
    let Some(python) = python_with_mcp(test) else {
        return;
    };
    let cluster = shop_cluster();
    let server = kube_server(&cluster, &["--request-image", "nope/shunt:1"]);
    let (o, pods) = with_peer(&cluster.api, kubelet_that_cannot_pull, || {
        mcp_client(&python, "kube_bad_image", &server)
    });
    let e = err(&o, "send", "request_failed");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("nope/shunt:1") && message.contains("ErrImagePull"),
        "{e}"
    );
    assert!(
        e["fix"]
            .as_str()
            .is_some_and(|f| f.contains("--request-image")),
        "{e}"
    );
    // The failed pod does not stay behind.
    assert_eq!(pods.len(), 1, "{pods:?}");
    tests::kube_world::wait_for(
        "the request pod's deletion",
        Duration::from_secs(10),
        || {
            cluster
                .api
                .get("v1", "Pod", Some("shop"), &pods[0])
                .is_none()
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Cluster mode end to end: the real agent (`--kube`, eBPF capture) on a netns node, the fake API
// server, request pods run by a fake kubelet, the agents' data through the traffic API.

const AGENT_IMAGE: &str = "registry.example/shunt:test";

/// Plays the kubelet of pod 0 for send_test_request's pods: marks each Running with pod 0's
/// address, runs its container (this build's shunt binary with the pod's args and env) in pod
/// 0's network namespace and the captured cgroup, then stores its output as the pod's log and
/// marks it Succeeded or Failed. Returns the pods, as created.
fn fake_kubelet(api: &FakeApiServer, env: &Env, stop: &AtomicBool) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    let ip = env.topo.pods[0].ip4.to_string();
    while !stop.load(Ordering::Relaxed) {
        for pod in api.list("v1", "Pod", Some("shop")) {
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if pod["metadata"]["labels"]["app.kubernetes.io/component"] != "test-request"
                || seen.iter().any(|p| p["metadata"]["name"] == name.as_str())
            {
                continue;
            }
            seen.push(pod.clone());
            let c = &pod["spec"]["containers"][0];
            let status = |phase: &str, state: Value| {
                let mut p = api
                    .get("v1", "Pod", Some("shop"), &name)
                    .expect("request pod");
                p["status"] = json!({
                    "phase": phase, "podIP": ip, "podIPs": [{ "ip": ip }],
                    "containerStatuses": [{ "name": c["name"], "image": c["image"], "imageID": "",
                        "ready": phase == "Running", "restartCount": 0, "state": state }],
                });
                api.replace_status(p).expect("request pod status");
            };
            status(
                "Running",
                json!({ "running": { "startedAt": "2026-12-06T00:00:00Z" } }),
            );
            let mut cmd = Command::new(&env.bins.agent);
            for a in c["args"].as_array().into_iter().flatten() {
                cmd.arg(a.as_str().expect("string arg"));
            }
            for e in c["env"].as_array().into_iter().flatten() {
                // A variable from a Secret is read as the kubelet reads it, at start.
                let value = match e["valueFrom"]["secretKeyRef"].as_object() {
                    Some(r) => {
                        let secret = api
                            .get(
                                "v1",
                                "Secret",
                                Some("shop"),
                                r["name"].as_str().unwrap_or(""),
                            )
                            .expect("the request pod's Secret exists before the pod");
                        let key = r["key"].as_str().unwrap_or("");
                        match secret["data"][key].as_str() {
                            Some(b64) => String::from_utf8(
                                base64::Engine::decode(
                                    &base64::engine::general_purpose::STANDARD,
                                    b64,
                                )
                                .expect("base64"),
                            )
                            .expect("utf-8"),
                            None => secret["stringData"][key].as_str().unwrap_or("").to_string(),
                        }
                    }
                    None => e["value"].as_str().unwrap_or_default().to_string(),
                };
                cmd.env(e["name"].as_str().expect("env name"), value);
            }
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let (code, log) = match spawn_in(
                &name,
                cmd,
                Some(&env.topo.pods[0].netns),
                Some(env.cgroup.path()),
            )
            .and_then(|child| child.output_timeout(Duration::from_secs(60)))
            {
                // A container log holds both streams; the response is printed last.
                Ok((st, out, err)) => (st.code().unwrap_or(1), format!("{err}{out}")),
                Err(e) => (1, format!("kubelet: {e:#}\n")),
            };
            api.set_pod_log("shop", &name, log);
            status(
                if code == 0 { "Succeeded" } else { "Failed" },
                json!({ "terminated": { "exitCode": code, "reason": "Completed" } }),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

/// One run of the `kube_request` scenario: the real agent (`--kube`) on a netns node, the
/// traffic API behind the fake API server's aggregation, request pods run by a fake kubelet,
/// and the MCP server with `kubeconfig`'s user (`server_args` added).
struct KubeRequestRun {
    o: Value,
    request_pods: Vec<Value>,
    cluster: tests::kube_world::FakeCluster,
    node: tests::kube_world::KubeNode,
    agent: tests::harness::AgentProc,
    traffic: tests::traffic_world::TrafficApi,
}

impl KubeRequestRun {
    fn ctx(&self) -> String {
        format!(
            "{:#}\nagent log:\n{}\ntraffic-api log:\n{}",
            self.o,
            self.agent.log_text(),
            self.traffic.log_text()
        )
    }
}

/// `None` when the test cannot run here. `user`: None for the unrestricted admin, or a tenant
/// name whose only grant is a Role in `shop` with exactly MCP_ACCESS.
fn kube_request_run(test: &str, user: Option<&str>) -> Option<KubeRequestRun> {
    kube_request_run_in(test, user, false)
}

/// [`kube_request_run`], with `shop` enforcing the `restricted` Pod Security level when
/// `restricted`.
fn kube_request_run_in(test: &str, user: Option<&str>, restricted: bool) -> Option<KubeRequestRun> {
    let cluster = tests::kube_world::FakeCluster::start(true).expect("fake API server");
    let node = tests::kube_world::KubeNode::new(test, &cluster, bins!())?;
    let python = python_with_mcp(test)?;
    node.standard_objects(&cluster);
    if restricted {
        let mut ns = cluster
            .api
            .get("v1", "Namespace", None, "shop")
            .expect("namespace shop");
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = json!("restricted");
        cluster.api.replace(ns).expect("labelling shop restricted");
    }
    // The traffic API, and the agent's pod as the DaemonSet would make it; the agent's debug
    // listener is on the node address, with the token only it and the traffic API hold.
    let traffic = tests::traffic_world::TrafficApi::start(&cluster, &node);
    let mut extra: Vec<String> = vec!["--kube-debounce".into(), "10ms".into()];
    extra.extend(traffic.agent_args());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut agent = node.start_agent("node-a", &extra);
    agent.wait_ready(Duration::from_secs(20));

    let kubeconfig = node.env.run.path.join("kubeconfig-mcp");
    let server = match user {
        None => {
            cluster
                .api
                .write_kubeconfig(&kubeconfig)
                .expect("kubeconfig");
            mcp_cluster::kube_server(
                Path::new(env!("CARGO_BIN_EXE_shunt-under-test")),
                &kubeconfig,
                &[],
            )
        }
        Some(name) => {
            let token = format!("{name}-token");
            cluster.api.add_token(&token, name, &[]);
            tests::traffic_world::grant(
                &cluster,
                Some("shop"),
                "shunt-mcp-user",
                agent::kube::rbac::MCP_ACCESS,
                tests::traffic_world::user(name),
            );
            cluster
                .api
                .write_kubeconfig_with_token(&kubeconfig, &token)
                .expect("kubeconfig");
            // No access to shunt-system: the request image is given.
            mcp_cluster::kube_server(
                Path::new(env!("CARGO_BIN_EXE_shunt-under-test")),
                &kubeconfig,
                &["--request-image", AGENT_IMAGE],
            )
        }
    };
    let (o, request_pods) = with_peer(
        &cluster.api,
        |api, stop| fake_kubelet(api, &node.env, stop),
        || mcp_client(&python, "kube_request", &server),
    );
    Some(KubeRequestRun {
        o,
        request_pods,
        cluster,
        node,
        agent,
        traffic,
    })
}

/// The keyed and unkeyed requests went where they should, and their hops say so.
fn check_hops(run: &KubeRequestRun) {
    let (o, node) = (&run.o, &run.node);
    let ctx = || run.ctx();
    // The route is created through the API and the real agent (the leader) reports it Ready.
    let c = ok(o, "create");
    assert_eq!(c["applied"], true, "{}", ctx());
    assert_eq!(c["route"]["ready"], true, "{}", ctx());
    // Keyed: the sandbox, and the hop says so (read from the agent through the traffic API).
    let client_ip = node.ip(0).to_string();
    let keyed = ok(o, "keyed");
    assert_eq!(keyed["response"]["status"], 200, "{}", ctx());
    assert_eq!(keyed["response"]["headers"]["x-served-by"], "reviews-v2");
    assert!(
        keyed["sent_from"]
            .as_str()
            .is_some_and(|s| s.starts_with("pod shop/shunt-request-") && s.contains(&client_ip)),
        "{keyed:#}"
    );
    assert_eq!(
        hops(keyed),
        [t(&client_ip, "shop/reviews", "sandbox", "shop/reviews-v2")],
        "{}",
        ctx()
    );
    assert_eq!(keyed["hops"][0]["reason"], "key_matched");
    assert_eq!(keyed["hops"][0]["route"], "shop/pr-42");
    // Unkeyed: the baseline.
    let unkeyed = ok(o, "unkeyed");
    assert_eq!(unkeyed["response"]["headers"]["x-served-by"], "reviews-v1");
    assert_eq!(
        hops(unkeyed),
        // The baseline endpoint is named by its slice's targetRef: the Pod behind it.
        [t(
            &client_ip,
            "shop/reviews",
            "baseline",
            &format!(
                "shop/{}",
                tests::kube_world::slice_pod_name("reviews", node.ip(1))
            )
        )],
        "{}",
        ctx()
    );
    assert_eq!(unkeyed["hops"][0]["reason"], "no_key");
    // Topology and decisions through the traffic API: the two connections the pods made, and
    // the keyed decision with its reason.
    let dep = ok(o, "dependencies");
    let callers = dep["callers"].as_array().expect("callers");
    assert_eq!(callers.len(), 1, "{dep:#}");
    assert_eq!(callers[0]["from"], client_ip.as_str());
    assert_eq!(callers[0]["to"], "shop/reviews");
    assert_eq!(callers[0]["connections"], 2, "{dep:#}");
    let d = ok(o, "decisions");
    assert_eq!(d["summary"]["sandbox"], 1, "{d:#}");
    assert!(
        d["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .all(|x| x["key"] == "pr-42" && x["agent"] == "shunt-node-a"),
        "{d:#}"
    );
    assert_eq!(ok(o, "delete")["deleted"], "shop/pr-42");
    assert!(run.cluster.route("pr-42").is_none());
}

/// The MCP server's calls: every request but the agent's and the traffic API's own.
fn mcp_calls(run: &KubeRequestRun) -> std::collections::BTreeSet<(String, String, String)> {
    use agent::kube::rbac;
    let mut others = tests::kube_world::granted(rbac::AGENT_ACCESS);
    for a in [
        rbac::TRAFFIC_API_ACCESS,
        rbac::TRAFFIC_API_AGENT_NAMESPACE_ACCESS,
        rbac::TRAFFIC_API_KUBE_SYSTEM_ACCESS,
    ] {
        others.extend(tests::kube_world::granted(a));
    }
    tests::kube_world::api_calls(&run.cluster.api)
        .difference(&others)
        .cloned()
        .collect()
}

#[test]
fn mcp_cluster_mode_sends_a_keyed_request_from_a_pod_and_reads_its_hops() {
    let test = "mcp_cluster_mode_sends_a_keyed_request_from_a_pod_and_reads_its_hops";
    let Some(run) = kube_request_run(test, None) else {
        return;
    };
    let ctx = || run.ctx();
    check_hops(&run);

    // Each request ran as its own pod in the service's namespace, with the agents' image, no
    // token and no privileges, and was deleted afterwards.
    assert_eq!(run.request_pods.len(), 2, "{}", ctx());
    for p in &run.request_pods {
        let spec = &p["spec"];
        assert_eq!(p["metadata"]["namespace"], "shop");
        assert_eq!(spec["containers"][0]["image"], AGENT_IMAGE);
        assert_eq!(
            spec["containers"][0]["args"],
            json!(["mcp", "--internal-request"])
        );
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["restartPolicy"], "Never");
        let sc = &spec["containers"][0]["securityContext"];
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["runAsNonRoot"], true);
        let name = p["metadata"]["name"].as_str().expect("name");
        tests::kube_world::wait_for(
            "the request pod's deletion",
            Duration::from_secs(10),
            || {
                run.cluster
                    .api
                    .get("v1", "Pod", Some("shop"), name)
                    .is_none()
            },
        );
    }

    // What the MCP server called is in MCP_ACCESS, and the request pods' verbs and the traffic
    // reads are among them.
    assert_calls_within_mcp_access(
        &mcp_calls(&run),
        &[
            ("", "pods", "create"),
            ("", "pods", "get"),
            ("", "pods", "delete"),
            ("", "pods/log", "get"),
            ("traffic.shunt.dev", "decisions", "list"),
            ("traffic.shunt.dev", "topology", "list"),
        ],
    );
    // Every traffic read was for the namespace of the services, through the aggregated API.
    let traffic: Vec<String> = run
        .cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.contains("traffic.shunt.dev"))
        .collect();
    assert!(
        !traffic.is_empty()
            && traffic
                .iter()
                .all(|r| r.starts_with("GET /apis/traffic.shunt.dev/v1alpha1/namespaces/shop/")),
        "{traffic:?}"
    );
}

#[test]
fn mcp_send_test_request_returns_hops_for_a_tenant_without_node_permissions() {
    let test = "mcp_send_test_request_returns_hops_for_a_tenant_without_node_permissions";
    let Some(run) = kube_request_run(test, Some("carol")) else {
        return;
    };
    // carol's only grant: a Role in shop with MCP_ACCESS, which has nothing node-level.
    let node_level = [
        "pods/proxy",
        "pods/portforward",
        "nodes/proxy",
        "services/proxy",
    ];
    for a in agent::kube::rbac::MCP_ACCESS {
        assert!(
            !node_level.contains(&a.resource),
            "MCP_ACCESS grants {}",
            a.resource
        );
    }
    check_hops(&run);
    // Nothing reached an agent or a node through the API server's proxies.
    let proxied: Vec<String> = run
        .cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.contains("/proxy") || r.contains("/portforward"))
        .collect();
    assert!(proxied.is_empty(), "{proxied:?}");
    // Every call the MCP server made is in MCP_ACCESS (carol's Role), and it read the
    // traffic API.
    let calls = mcp_calls(&run);
    let allowed = tests::kube_world::granted(agent::kube::rbac::MCP_ACCESS);
    let missing: Vec<_> = calls.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(
        missing.is_empty(),
        "calls missing from MCP_ACCESS: {missing:?}\n{}",
        run.ctx()
    );
    assert!(calls.contains(&(
        "traffic.shunt.dev".to_string(),
        "decisions".to_string(),
        "list".to_string()
    )));
}

/// The credential the `kube_request` scenario's keyed request carries.
const REQUEST_CREDENTIAL: &str = "Bearer s3cr3t-7f3a-do-not-log";

#[test]
fn request_pod_passes_restricted_pod_security() {
    let test = "request_pod_passes_restricted_pod_security";
    let Some(run) = kube_request_run_in(test, None, true) else {
        return;
    };
    // The fake API server enforces `restricted` in shop (as Pod Security admission does), and
    // both request pods were admitted, ran and answered.
    check_hops(&run);
    assert_eq!(run.request_pods.len(), 2, "{}", run.ctx());
    for p in &run.request_pods {
        assert_eq!(
            p["spec"]["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
    }
    // A pod that does not meet the level gets the plugin's 403, which is admission, not RBAC.
    let refused = run.cluster.api.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "loose", "namespace": "shop" },
        "spec": { "containers": [{ "name": "c", "image": "x" }] },
    }));
    let e = format!(
        "{:?}",
        refused.expect_err("admitted a pod that violates restricted")
    );
    assert!(
        e.contains("violates PodSecurity") && e.contains("seccompProfile"),
        "{e}"
    );
}

#[test]
fn request_headers_never_appear_in_the_pod_spec() {
    let test = "request_headers_never_appear_in_the_pod_spec";
    let Some(run) = kube_request_run(test, None) else {
        return;
    };
    check_hops(&run);
    let secret_word = REQUEST_CREDENTIAL.rsplit(' ').next().expect("token");
    assert_eq!(run.request_pods.len(), 2, "{}", run.ctx());
    for p in &run.request_pods {
        assert!(
            !p.to_string().contains(secret_word),
            "the request pod's spec shows the credential: {p:#}"
        );
    }
    // It travelled in a Secret owned by its pod (so the garbage collector deletes it with the
    // pod), and the request did carry it.
    let secrets = run.cluster.api.list("v1", "Secret", Some("shop"));
    let carried: Vec<&Value> = secrets
        .iter()
        .filter(|s| s.to_string().contains(secret_word))
        .collect();
    assert_eq!(carried.len(), 1, "{secrets:#?}");
    let owner = &carried[0]["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Pod", "{:#}", carried[0]);
    assert!(
        run.request_pods
            .iter()
            .any(|p| p["metadata"]["name"] == owner["name"] && p["metadata"]["uid"] == owner["uid"]),
        "{:#}",
        carried[0]
    );
}
