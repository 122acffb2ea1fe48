//! Who may read traffic data, and what reading it costs the agent (issue 17).
//!
//! - `decision_log_memory_stays_bounded_under_long_paths`: a pod floods the decision log with
//!   long paths and the log is read concurrently; the agent's memory stays bounded and a proxied
//!   request is not stalled meanwhile. Real agent, real capture, between network namespaces.
//! - `tenant_reads_decisions_of_its_own_namespace_only`: the traffic API behind the fake API
//!   server's aggregation, with RBAC: a tenant reads its namespace's hops, and a 403 naming the
//!   permission elsewhere.
use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tests::{
    bins,
    harness::{DEBUG_PORT, Env, http_get},
    http_backend::HttpBackend,
    kube_world::{
        FakeCluster, KubeNode, POD_PORT, ROUTES_API, SERVICE_PORT, selector_spec, wait_for,
    },
    netns::PROXY4,
    process::spawn_in,
    traffic_world::{AGENT_DEBUG_PORT, AGENT_POD, TrafficApi, tenant},
};

const PORT: u16 = 8080;

/// A client that sends `N` keyed GETs of `SIZE`-byte paths on one keep-alive connection
/// (`flood`), or times one request on a fresh connection (`one`, prints milliseconds).
const CLIENT: &str = r#"
import http.client, sys, time
host, port, mode, n, size, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
headers = {"baggage": "sd-routing-key=" + key}
if mode == "flood":
    conn = http.client.HTTPConnection(host, port, timeout=10)
    ok = 0
    for i in range(n):
        prefix = "/%d/" % i
        conn.request("GET", prefix + "a" * (size - len(prefix)), headers=headers)
        r = conn.getresponse()
        r.read()
        ok += r.status == 200
    print(ok)
else:
    t = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/timed", headers=headers)
    r = conn.getresponse()
    r.read()
    print(r.status, (time.monotonic() - t) * 1000)
"#;

/// Runs the client in pod 0 (captured); its stdout.
fn client(env: &Env, dst: SocketAddr, mode: &str, n: usize, size: usize) -> String {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", CLIENT])
        .arg(dst.ip().to_string())
        .arg(dst.port().to_string())
        .args([mode, &n.to_string(), &size.to_string(), "flood-key"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn_in(
        "client",
        cmd,
        Some(&env.topo.pods[0].netns),
        Some(env.cgroup.path()),
    )
    .expect("spawning the client");
    let (status, out, err) = child
        .output_timeout(Duration::from_secs(180))
        .expect("the client finished");
    assert!(status.success(), "client {mode}: {err}");
    out.trim().to_string()
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn decision_log_memory_stays_bounded_under_long_paths() {
    let Some(env) = Env::new(
        "decision_log_memory_stays_bounded_under_long_paths",
        2,
        bins!(),
    ) else {
        return;
    };
    let backend = &env.topo.pods[1];
    let dst = backend.addr4(PORT);
    let _b = HttpBackend::start(&backend.netns, "b", dst).unwrap();
    let agent = env.start_agent(&["--steer".into(), dst.to_string()], None);
    let pid = agent.child.pid();

    // Warm up (allocator arenas, connection pools), then take the baseline.
    assert_eq!(client(&env, dst, "flood", 64, 64), "64");
    let before = rss_kib(pid);

    // 4096 requests with 60 KiB paths: as much path as the old log held (~240 MiB).
    let n = 4096;
    assert_eq!(
        client(&env, dst, "flood", n, 60 * 1024),
        n.to_string(),
        "{}",
        agent.log_text()
    );

    // Four readers of the whole log at once, while a proxied request is timed.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, reads) = (stop.clone(), reads.clone());
            let node = env.node().open().expect("node netns");
            std::thread::spawn(move || {
                // SAFETY: a valid namespace fd; setns affects only this thread.
                use std::os::fd::AsRawFd as _;
                assert_eq!(
                    unsafe { libc::setns(node.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) =
                        http_get(SocketAddr::from(([127, 0, 0, 1], DEBUG_PORT)), "/decisions")
                            .expect("reading /decisions");
                    assert_eq!(status, 200);
                    assert!(body.len() > 2, "{body}");
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let timed = client(&env, dst, "one", 1, 0);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader");
    }
    let after = rss_kib(pid);
    let (_, body) = agent.debug_get("/decisions").expect("/decisions");
    let ds: Vec<serde_json::Value> = serde_json::from_str(&body).expect("decisions JSON");
    let longest = ds
        .iter()
        .map(|d| d["path"].as_str().map_or(0, str::len))
        .max()
        .unwrap_or(0);

    let (status, ms) = timed.split_once(' ').expect("status and time");
    let ms: f64 = ms.parse().expect("milliseconds");
    eprintln!(
        "RSS {before} KiB -> {after} KiB; {} concurrent reads; proxied request {ms:.1} ms; \
         longest stored path {longest} bytes",
        reads.load(Ordering::Relaxed)
    );
    assert_eq!(status, "200");
    assert!(reads.load(Ordering::Relaxed) >= 4, "the readers read");
    assert!(
        longest <= agent::proxy::decision_log::MAX_PATH_BYTES + '…'.len_utf8(),
        "paths are stored cut: {longest}"
    );
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "the agent's RSS grew from {before} KiB to {after} KiB"
    );
    assert!(
        ms < 200.0,
        "a proxied request took {ms} ms during the reads"
    );
}

/// Reads `resource` of `namespace` through the traffic API as the kubeconfig's user.
fn read_traffic(
    cluster: &FakeCluster,
    kubeconfig: &std::path::Path,
    namespace: &str,
    resource: &str,
) -> Result<agent::traffic::client::AgentAnswers, String> {
    cluster.rt.block_on(async {
        let (client, _) = agent::kube::client::load(Some(kubeconfig))
            .await
            .map_err(|e| e.to_string())?;
        agent::traffic::client::get(&client, namespace, resource, "")
            .await
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
    })
}

/// Every decision in the agents' answers.
fn decisions(answers: &agent::traffic::client::AgentAnswers) -> Vec<serde_json::Value> {
    answers
        .items
        .iter()
        .flat_map(|i| i.body.as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn tenant_reads_decisions_of_its_own_namespace_only() {
    let test = "tenant_reads_decisions_of_its_own_namespace_only";
    let cluster = FakeCluster::start(true).expect("fake API server");
    let Some(node) = KubeNode::new(test, &cluster, bins!()) else {
        return;
    };
    node.standard_objects(&cluster);
    // `bank`: a Service `ledger` whose endpoint is pod 5's backend. Pod 5 is then bank's pod,
    // not shop's sandbox pod `ratings-v2`: the agent gives an address only to its Pod's
    // namespace.
    cluster
        .api
        .delete("v1", "Pod", Some("shop"), "ratings-v2")
        .expect("deleting shop's ratings-v2");
    cluster.namespace("bank").unwrap();
    let ledger_ep = node.env.topo.pods[5].addr4(POD_PORT);
    cluster.create(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "ledger", "namespace": "bank" },
        "spec": { "clusterIP": "10.96.100.9", "selector": { "app": "ledger" },
                  "ports": [{ "name": "http", "port": SERVICE_PORT, "targetPort": "http" }] },
    }));
    cluster.create(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "ledger-abcde", "namespace": "bank",
                      "labels": { "kubernetes.io/service-name": "ledger" } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": POD_PORT, "protocol": "TCP" }],
        "endpoints": [{ "addresses": [node.ip(5).to_string()], "conditions": { "ready": true },
                        "targetRef": { "kind": "Pod", "namespace": "bank", "name": "ledger-v1" } }],
    }));
    // Both namespaces get a route, so both Services are steered and their requests logged.
    cluster.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));
    cluster.sandbox_pod("bank", "ledger-v2", node.ip(3), "bank-audit");
    cluster.create(json!({
        "apiVersion": ROUTES_API, "kind": "SandboxRoute",
        "metadata": { "name": "audit", "namespace": "bank" },
        "spec": selector_spec("bank-audit", "ledger", "bank-audit"),
    }));
    let traffic = TrafficApi::start(&cluster, &node);
    let mut extra: Vec<String> = vec!["--kube-debounce".into(), "10ms".into()];
    extra.extend(traffic.agent_args());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut agent = node.start_agent("node-a", &extra);
    agent.wait_ready(Duration::from_secs(20));
    wait_for("both services steered", Duration::from_secs(10), || {
        node.is_steered(node.reviews_endpoint()) && node.is_steered(ledger_ep)
    });
    let ctx = || {
        format!(
            "agent log:\n{}\ntraffic-api log:\n{}",
            agent.log_text(),
            traffic.log_text()
        )
    };
    assert_eq!(
        node.served_by(node.reviews_endpoint(), Some("pr-42")),
        "reviews-v2",
        "{}",
        ctx()
    );
    assert!(
        !node
            .served_by(ledger_ep, Some("bank-secret-key"))
            .starts_with("error")
    );

    let dir = node.env.run.path.clone();
    let alice = tenant(&cluster, &dir, "alice", &["shop"]);
    let bob = tenant(&cluster, &dir, "bob", &[]);

    // alice (the reader Role in shop) sees shop's hops, and nothing of bank's.
    let shop = read_traffic(&cluster, &alice, "shop", "decisions")
        .unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
    assert_eq!(shop.items.len(), 1, "{shop:?}");
    assert_eq!(shop.items[0].agent, AGENT_POD);
    let ds = decisions(&shop);
    assert!(
        ds.iter().any(|d| d["service"] == "shop/reviews"
            && d["key"] == "pr-42"
            && d["decision"] == "sandbox"),
        "{ds:#?}"
    );
    let text = serde_json::to_string(&shop).unwrap();
    assert!(
        ds.iter().all(|d| d["service"]
            .as_str()
            .is_some_and(|s| s.starts_with("shop/"))),
        "{ds:#?}"
    );
    for secret in ["bank", "ledger", &node.ip(5).to_string()] {
        assert!(
            !text.contains(secret),
            "shop's answer shows {secret}: {text}"
        );
    }
    let topo = read_traffic(&cluster, &alice, "shop", "topology").expect("shop's topology");
    let topo_text = serde_json::to_string(&topo).unwrap();
    assert!(topo_text.contains("shop/reviews"), "{topo_text}");
    assert!(!topo_text.contains("bank/"), "{topo_text}");
    let routes = read_traffic(&cluster, &alice, "shop", "routes").expect("shop's routes");
    let routes_text = serde_json::to_string(&routes).unwrap();
    assert!(
        routes_text.contains("pr-42") && !routes_text.contains("bank-audit"),
        "{routes_text}"
    );

    // Not in bank, and bob (no Role) nowhere: a 403 that names the permission.
    for (who, kubeconfig, ns) in [("alice", &alice, "bank"), ("bob", &bob, "shop")] {
        let e = read_traffic(&cluster, kubeconfig, ns, "decisions")
            .map(|a| format!("{a:?}"))
            .expect_err("forbidden");
        assert!(
            e.contains(&format!(
                "User \"{who}\" cannot list resource \"decisions\" in API group \
                 \"traffic.shunt.dev\" in the namespace \"{ns}\""
            )),
            "{e}"
        );
    }
    // The agents' debug data is reachable only with the token: not by a tenant on the node
    // address, nor by a request to the traffic API that does not come from the API server.
    let debug = SocketAddr::from((PROXY4, AGENT_DEBUG_PORT));
    let (status, _) = node
        .env
        .node()
        .run(move || http_get(debug, "/decisions"))
        .unwrap()
        .unwrap();
    assert_eq!(status, 401);
    // The traffic API made only calls its RBAC allows (or it would have failed above), and
    // the SubjectAccessReviews went out.
    assert!(
        cluster
            .api
            .requests()
            .iter()
            .any(|r| r.starts_with("POST /apis/authorization.k8s.io/v1/subjectaccessreviews")),
        "{}",
        ctx()
    );
}
