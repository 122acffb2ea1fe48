//! Keys without code changes (issue 21): a marked source's requests get its routing key added
//! by the proxy when they carry none. Real eBPF (MARKED, connect4/6), the real agent on a routes
//! file, real sockets.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    bins,
    harness::AgentProc,
    http_backend::HttpBackend,
    process::spawn_in,
    routes_fixture::{POD_PORT, RoutesSpec},
    routing_world::{World, reviews, served_by},
};

/// The routing world, with `sources:` marking `marked` (a child of the captured cgroup) with
/// key pr-42 when `mark` is set, and an HTTP backend in pod 4 that no Service knows.
fn world(test: &str, mark: bool) -> Option<(World, PathBuf, HttpBackend)> {
    let w = World::new(test, bins!(), RoutesSpec::default())?;
    let marked = w.env.cgroup.child("marked").expect("marked cgroup");
    if mark {
        let mut text = std::fs::read_to_string(&w.routes).expect("routes");
        text.push_str(&format!(
            "sources:\n  - {{ cgroup: {}, key: pr-42, origin: tester }}\n",
            marked.display()
        ));
        std::fs::write(&w.routes, text).expect("routes");
    }
    let unknown = HttpBackend::start(
        &w.env.topo.pods[4].netns,
        "unknown",
        w.env.topo.pods[4].addr4(POD_PORT),
    )
    .expect("backend in pod 4");
    Some((w, marked, unknown))
}

/// netpeer's HTTP client in pod 0, in `cgroup`.
fn http_in(w: &World, cgroup: &Path, dst: SocketAddr, flags: &[&str], reqs: Value) -> Vec<Value> {
    let (dst, reqs) = (dst.to_string(), reqs.to_string());
    let mut cmd = Command::new(&w.env.bins.netpeer);
    cmd.arg("http").arg(&dst).args(flags).arg(&reqs);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = spawn_in(
        "netpeer",
        cmd,
        Some(&w.env.topo.pods[0].netns),
        Some(cgroup),
    )
    .expect("spawning netpeer");
    let (status, out, err) = child
        .output_timeout(Duration::from_secs(60))
        .expect("netpeer finished in time");
    assert!(status.success(), "netpeer failed: {err}");
    tests::harness::netpeer_lines(&out)
}

fn baggage(line: &Value) -> Option<&str> {
    line["served"]["headers"]["baggage"].as_str()
}

/// Waits until the agent lists `cgroup` as an applied source.
fn wait_marked(agent: &AgentProc, cgroup: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, body)) = agent.debug_get("/routes/sources") {
            let list: Vec<Value> = serde_json::from_str(&body).expect("sources JSON");
            if list
                .iter()
                .any(|s| s["cgroup"].as_str() == Some(&cgroup.display().to_string()))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "source {} never applied:\n{}",
            cgroup.display(),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn decisions(agent: &AgentProc, key: &str) -> Vec<Value> {
    let (status, body) = agent
        .debug_get(&format!("/decisions?key={key}"))
        .expect("decisions");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("decisions JSON")
}

#[test]
fn injected_key_is_merged_into_existing_baggage() {
    let Some((w, marked, _unknown)) = world("injected_key_is_merged_into_existing_baggage", true)
    else {
        return;
    };
    let agent = w.agent(&[]);
    wait_marked(&agent, &marked);
    let reqs = json!([
        { "path": "/", "headers": { "baggage": "userId=alice,tenant=t1" } },
        { "path": "/" },
    ]);
    for flags in [&[][..], &["--h2"][..]] {
        let lines = http_in(&w, &marked, reviews(), flags, reqs.clone());
        assert_eq!(lines.len(), 2, "{lines:?}");
        for l in &lines {
            assert_eq!(served_by(l), "reviews-v2", "{flags:?}: {l}");
        }
        assert_eq!(
            baggage(&lines[0]),
            Some("userId=alice,tenant=t1,sd-routing-key=pr-42"),
            "{flags:?}: other members intact, the key appended"
        );
        assert_eq!(baggage(&lines[1]), Some("sd-routing-key=pr-42"));
    }
    let logged = decisions(&agent, "pr-42");
    assert_eq!(logged.len(), 4, "{logged:?}");
    for d in &logged {
        assert_eq!(d["key_injected"], true, "{d}");
        assert_eq!(d["marked_source"], "tester", "{d}");
        assert_eq!(d["decision"], "sandbox", "{d}");
    }
}

#[test]
fn request_with_its_own_key_keeps_it() {
    let Some((w, marked, _unknown)) = world("request_with_its_own_key_keeps_it", true) else {
        return;
    };
    let agent = w.agent(&[]);
    wait_marked(&agent, &marked);
    let reqs = json!([
        { "path": "/", "headers": { "baggage": "userId=alice,sd-routing-key=pr-7" } },
        { "path": "/", "headers": { "uberctx-sd-routing-key": "pr-7" } },
    ]);
    for flags in [&[][..], &["--h2"][..]] {
        let lines = http_in(&w, &marked, reviews(), flags, reqs.clone());
        assert_eq!(lines.len(), 2, "{lines:?}");
        for l in &lines {
            assert_eq!(served_by(l), "reviews-v1", "pr-7 has no fork: {l}");
        }
        assert_eq!(baggage(&lines[0]), Some("userId=alice,sd-routing-key=pr-7"));
        assert_eq!(baggage(&lines[1]), None, "no baggage added: {}", lines[1]);
    }
    let logged = decisions(&agent, "pr-7");
    assert_eq!(logged.len(), 4, "{logged:?}");
    for d in &logged {
        assert_eq!(d["key_injected"], false, "{d}");
        assert!(d.get("marked_source").is_none(), "{d}");
    }
    assert!(decisions(&agent, "pr-42").is_empty());
}

#[test]
fn marked_source_reaches_unknown_destinations_opaquely() {
    let Some((w, marked, unknown)) =
        world("marked_source_reaches_unknown_destinations_opaquely", true)
    else {
        return;
    };
    let agent = w.agent(&[]);
    wait_marked(&agent, &marked);
    let lines = http_in(&w, &marked, unknown.addr, &[], json!([{ "path": "/" }]));
    assert_eq!(served_by(&lines[0]), "unknown");
    assert_eq!(
        baggage(&lines[0]),
        None,
        "an unknown destination is not touched"
    );
    let peer: SocketAddr = lines[0]["served"]["peer"]
        .as_str()
        .expect("peer")
        .parse()
        .expect("peer addr");
    assert_eq!(
        peer.ip(),
        w.env.topo.pods[4].node_ip4,
        "relayed by the node proxy"
    );
    assert!(agent.metric("shunt_capture_events_total{event=\"marked_source\"}") >= 1.0);
}

#[test]
fn unmarked_sources_are_untouched() {
    for mark in [false, true] {
        let Some((w, marked, unknown)) = world("unmarked_sources_are_untouched", mark) else {
            return;
        };
        let agent = w.agent(&[]);
        let map = agent::capture::open_pinned_marked(&w.env.run.bpffs()).expect("MARKED");
        if mark {
            wait_marked(&agent, &marked);
            let id = agent::capture::cgroup_id(&marked).expect("id");
            assert_eq!(map.entries(), vec![(id, "pr-42".to_string())]);
            assert_eq!(
                map.levels().expect("levels"),
                1 << 2,
                "the marked cgroup's level only"
            );
        } else {
            assert!(map.entries().is_empty());
            assert_eq!(
                map.levels().expect("levels"),
                0,
                "nothing marked: no lookup"
            );
        }
        // The captured cgroup itself, not the marked child: as before the issue.
        let unmarked = w.env.cgroup.path();
        let lines = http_in(&w, unmarked, reviews(), &[], json!([{ "path": "/" }]));
        assert_eq!(served_by(&lines[0]), "reviews-v1");
        assert_eq!(baggage(&lines[0]), None);
        let lines = http_in(&w, unmarked, unknown.addr, &[], json!([{ "path": "/" }]));
        let peer: SocketAddr = lines[0]["served"]["peer"]
            .as_str()
            .expect("peer")
            .parse()
            .expect("peer addr");
        assert_eq!(
            peer.ip(),
            w.env.topo.pods[0].ip4,
            "mark={mark}: an unsteered destination is reached directly"
        );
        assert_eq!(
            agent.metric("shunt_capture_events_total{event=\"marked_source\"}"),
            0.0,
            "mark={mark}"
        );
    }
}

/// `shunt test` in the routing world: COMMAND in a child of the captured cgroup, in pod 0.
fn shunt_test(
    w: &World,
    key: &str,
    command: &[&str],
) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new(&w.env.bins.agent);
    cmd.args(["test", "--key", key, "--routes"])
        .arg(&w.routes)
        .arg("--client-cgroup")
        .arg(w.env.cgroup.path())
        .args(["--client-netns", &w.env.topo.pods[0].netns.path()])
        .args(["--debug-netns", &w.env.node().path()])
        .arg("--")
        .args(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_in("shunt test", cmd, None, None)
        .expect("spawning shunt test")
        .output_timeout(Duration::from_secs(60))
        .expect("shunt test finished in time")
}

#[test]
fn test_runner_without_key_headers_reaches_the_sandbox() {
    let Some((w, _marked, _unknown)) =
        world("test_runner_without_key_headers_reaches_the_sandbox", false)
    else {
        return;
    };
    let agent = w.agent(&["--routes-poll-interval", "100ms"]);
    let netpeer = w.env.bins.netpeer.display().to_string();
    let dst = reviews().to_string();
    let client = [
        netpeer.as_str(),
        "http",
        &dst,
        r#"[{"path":"/"},{"path":"/"}]"#,
    ];

    let (status, out, err) = shunt_test(&w, "pr-42", &client);
    assert!(
        status.success(),
        "shunt test failed: {err}\n{}",
        agent.log_text()
    );
    let lines: Vec<Value> = tests::harness::netpeer_lines(&out);
    assert_eq!(lines.len(), 2, "{out}");
    for l in &lines {
        assert_eq!(served_by(l), "reviews-v2", "{l}");
        assert_eq!(baggage(l), Some("sd-routing-key=pr-42"));
    }
    // The same command without `shunt test`: baseline.
    let plain = http_in(
        &w,
        w.env.cgroup.path(),
        reviews(),
        &[],
        json!([{ "path": "/" }]),
    );
    assert_eq!(served_by(&plain[0]), "reviews-v1");
    assert_eq!(baggage(&plain[0]), None);

    // Nothing left behind: the entry, the child cgroup.
    let text = std::fs::read_to_string(&w.routes).expect("routes");
    assert!(text.contains("sources: []"), "{text}");
    let children: Vec<String> = std::fs::read_dir(w.env.cgroup.path())
        .expect("cgroup")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        children,
        vec!["marked".to_string()],
        "shunt test's cgroup removed"
    );

    // COMMAND's exit status is shunt test's.
    let (status, _, err) = shunt_test(&w, "pr-42", &["sh", "-c", "exit 7"]);
    assert_eq!(status.code(), Some(7), "{err}");
    let (status, _, err) = shunt_test(&w, "bad key", &["true"]);
    assert_eq!(status.code(), Some(125));
    assert!(err.contains("--key"), "{err}");
}

/// The mini-cluster's apps (mcp_world: 0 client, 1 frontend-v1, 2 reviews-v1, 3 ratings-v1)
/// and two sandboxes under key pr-42 started as the mini-cluster starts them (their own pod,
/// cgroup and `sources:` entry): reviews-v2, a build that drops baggage, and ratings-v2.
#[test]
fn sandbox_that_drops_the_key_still_reaches_downstream_sandboxes() {
    use agent::sandbox::local::{MiniCluster, StartSpec};
    use tests::{
        harness::Env,
        mcp_world::{SandboxSweep, routes_yaml, start_apps, vip, wait},
    };
    let test = "sandbox_that_drops_the_key_still_reaches_downstream_sandboxes";
    let Some(env) = Env::new(test, 4, bins!()) else {
        return;
    };
    let demo_app = Path::new(env!("CARGO_BIN_EXE_demo-app"));
    let _sweep = SandboxSweep(&env);
    let routes = env.run.path.join("routes.yaml");
    let services = routes_yaml(&env);
    let services = services.split("pods: []").next().expect("services");
    std::fs::write(&routes, format!("{services}pods: []\nroutes: []\n")).expect("routes");
    let _apps = start_apps(&env, demo_app);
    let agent = env.start_agent(
        &[
            "--routes".into(),
            routes.display().to_string(),
            "--routes-poll-interval".into(),
            "100ms".into(),
        ],
        None,
    );
    let node = env.node().name.clone();
    let mini = MiniCluster {
        dir: env.run.path.clone(),
        node_netns: env.node().path().into(),
        captured: env.cgroup.path().to_path_buf(),
        netns_prefix: node.strip_suffix("-node").unwrap_or(&node).to_string(),
        routes: Some(routes.clone()),
    };
    let start = |service: &str, extra: &[&str]| {
        let name = format!("{service}-v2");
        let mut args: Vec<String> = ["serve", "--service", service, "--version", "v2"]
            .map(String::from)
            .to_vec();
        args.extend(["--pod".into(), name.clone()]);
        args.extend(["--listen".into(), "$(POD_IP):8080".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        mini.start(StartSpec {
            name,
            namespace: "shop".into(),
            service: service.into(),
            key: "pr-42".into(),
            session: "inject-test".into(),
            keep: false,
            expires_unix_ms: None,
            command: demo_app.display().to_string(),
            args,
            env: Default::default(),
            port: 8080,
            route: "shop/pr-42".into(),
        })
        .expect("sandbox started")
    };
    let ratings_url = format!("http://{}/", vip("ratings"));
    let reviews_v2 = start("reviews", &["--call", &ratings_url, "--drop-baggage"]);
    let ratings_v2 = start("ratings", &[]);
    for rec in [&reviews_v2, &ratings_v2] {
        assert!(
            mini.wait_ready(rec, Duration::from_secs(10)),
            "{} not ready",
            rec.name
        );
    }
    // The sandbox pods and the route forking both services, as create_sandbox writes them.
    let text = std::fs::read_to_string(&routes).expect("routes");
    let pod = |r: &agent::sandbox::local::PodRecord, app: &str| {
        format!(
            "  - {{ name: {}, namespace: shop, ips: [{}], ports: {{ http: 8080 }}, labels: {{ app: {app}, shunt.dev/sandbox: pr-42 }} }}\n",
            r.name, r.ips[0]
        )
    };
    let text = text.replace(
        "pods: []\nroutes: []\n",
        &format!(
            "pods:\n{}{}routes:\n  - name: pr-42\n    namespace: shop\n    spec:\n      routingKey: pr-42\n      forks:\n        - {{ service: reviews, to: {{ selector: {{ app: reviews-v2, shunt.dev/sandbox: pr-42 }} }} }}\n        - {{ service: ratings, to: {{ selector: {{ app: ratings-v2, shunt.dev/sandbox: pr-42 }} }} }}\n",
            pod(&reviews_v2, "reviews-v2"),
            pod(&ratings_v2, "ratings-v2")
        ),
    );
    assert!(
        text.contains("sources:"),
        "the mini-cluster listed its sandbox pods: {text}"
    );
    std::fs::write(&routes, &text).expect("routes");

    let frontend = format!("http://{}/", vip("frontend"));
    let get = |headers: &[&str]| -> Value {
        let mut cmd = Command::new(demo_app);
        cmd.arg("get").arg(&frontend);
        for h in headers {
            cmd.args(["-H", h]);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let (status, out, err) = spawn_in(
            "demo-app get",
            cmd,
            Some(&env.topo.pods[0].netns),
            Some(env.cgroup.path()),
        )
        .expect("client")
        .output_timeout(Duration::from_secs(30))
        .expect("client finished");
        assert!(status.success(), "{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let path = |v: &Value| -> Vec<String> {
        let mut out = Vec::new();
        let mut b = v;
        while let Some(pod) = b["pod"].as_str() {
            out.push(pod.to_string());
            b = &b["downstream"];
        }
        out
    };
    let keyed = ["baggage: sd-routing-key=pr-42"];
    wait(Duration::from_secs(10), "the route applied", || {
        path(&get(&keyed)).get(1).map(String::as_str) == Some("reviews-v2")
    });
    for _ in 0..3 {
        let v = get(&keyed);
        assert_eq!(
            path(&v),
            ["frontend-v1", "reviews-v2", "ratings-v2"],
            "{v:#}\n{}",
            agent.log_text()
        );
        let ratings = &v["downstream"]["downstream"];
        assert_eq!(
            ratings["baggage"], "sd-routing-key=pr-42",
            "the key reviews-v2 dropped, added by Shunt"
        );
        assert!(v["downstream"]["baggage"].is_string());
        let unkeyed = get(&[]);
        assert_eq!(path(&unkeyed), ["frontend-v1", "reviews-v1", "ratings-v1"]);
        assert!(unkeyed["downstream"]["downstream"]["baggage"].is_null());
    }
    let logged = decisions(&agent, "pr-42");
    let injected: Vec<&Value> = logged
        .iter()
        .filter(|d| d["key_injected"] == true)
        .collect();
    assert!(!injected.is_empty(), "{logged:#?}");
    for d in injected {
        assert_eq!(d["service"], "shop/ratings", "{d}");
        assert_eq!(d["decision"], "sandbox", "{d}");
        assert_eq!(d["marked_source"], "pod shop/reviews-v2", "{d}");
    }

    // Stopped, the sandbox pod is no longer a marked source.
    mini.stop(&reviews_v2);
    let text = std::fs::read_to_string(&routes).expect("routes");
    assert!(!text.contains("sandbox-reviews-v2"), "{text}");
    assert!(text.contains("sandbox-ratings-v2"), "{text}");
    mini.stop(&ratings_v2);
}
