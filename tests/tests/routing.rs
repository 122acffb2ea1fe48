//! The L7 proxy: per-request routing by key over HTTP/1.1, HTTP/2 and websockets, opaque
//! passthrough, fallback, bad input, routes-file reload, shutdown and the watchdog.
//! Real agent, real eBPF capture, real sockets, between network namespaces.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    backends::Backend,
    bins,
    harness::AgentProc,
    routes_fixture::{POD_PORT, RATINGS_VIP, RoutesSpec, SERVICE_PORT},
    routing_world::{World, keyed, reviews, served_by},
};

fn world(test: &str, spec: RoutesSpec) -> Option<World> {
    World::new(test, bins!(), spec)
}

#[test]
fn keyed_request_reaches_sandbox() {
    let Some(w) = world("keyed_request_reaches_sandbox", RoutesSpec::default()) else {
        return;
    };
    let agent = w.agent(&[]);
    let lines = w.http(reviews(), &[], json!([keyed("pr-42")]));
    assert_eq!(served_by(&lines[0]), "reviews-v2", "{}", lines[0]);
    // The sandbox still sees the key, to propagate it to its own calls.
    assert_eq!(
        lines[0]["served"]["headers"]["baggage"],
        "sd-routing-key=pr-42"
    );
    let (_, decisions) = agent.debug_get("/decisions?key=pr-42").unwrap();
    let decisions: Vec<Value> = serde_json::from_str(&decisions).unwrap();
    assert_eq!(decisions.last().unwrap()["decision"], "sandbox");
    assert_eq!(decisions.last().unwrap()["reason"], "key_matched");
    assert_eq!(decisions.last().unwrap()["route"], "shop/pr-42");
}

#[test]
fn unkeyed_request_stays_on_baseline() {
    let Some(w) = world("unkeyed_request_stays_on_baseline", RoutesSpec::default()) else {
        return;
    };
    let _agent = w.agent(&[]);
    let lines = w.http(reviews(), &[], json!([{ "path": "/" }, { "path": "/x" }]));
    for l in &lines {
        assert_eq!(served_by(l), "reviews-v1", "{l}");
    }
}

#[test]
fn key_for_other_service_stays_on_baseline() {
    let Some(w) = world(
        "key_for_other_service_stays_on_baseline",
        RoutesSpec::default(),
    ) else {
        return;
    };
    let agent = w.agent(&[]);
    // ratings is forked only under pr-99; a pr-42 request to it stays on ratings' baseline.
    let lines = w.http(
        SocketAddr::from((RATINGS_VIP, SERVICE_PORT)),
        &[],
        json!([keyed("pr-42")]),
    );
    assert_eq!(served_by(&lines[0]), "ratings-v1", "{}", lines[0]);
    let (_, d) = agent.debug_get("/decisions?key=pr-42").unwrap();
    assert!(d.contains("key_not_forked"), "{d}");
}

#[test]
fn alternating_keys_on_one_keepalive_connection_route_each_request() {
    let Some(w) = world(
        "alternating_keys_on_one_keepalive_connection",
        RoutesSpec::default(),
    ) else {
        return;
    };
    let _agent = w.agent(&[]);
    let reqs =
        json!([keyed("pr-42"), { "path": "/" }, keyed("pr-42"), { "path": "/" }, keyed("nope")]);
    let lines = w.http(reviews(), &[], reqs);
    let got: Vec<&str> = lines.iter().map(served_by).collect();
    assert_eq!(
        got,
        [
            "reviews-v2",
            "reviews-v1",
            "reviews-v2",
            "reviews-v1",
            "reviews-v1"
        ]
    );
    // All on one client connection: the backend saw them from the proxy's pooled upstreams.
    assert!(lines.iter().all(|l| l["version"] == "HTTP/1.1"));
}

#[test]
fn h2_streams_with_different_keys_multiplexed_on_one_connection() {
    let Some(w) = world(
        "h2_streams_with_different_keys_multiplexed",
        RoutesSpec::default(),
    ) else {
        return;
    };
    let _agent = w.agent(&[]);
    let mut reqs = Vec::new();
    for i in 0..10 {
        reqs.push(if i % 2 == 0 {
            keyed("pr-42")
        } else {
            json!({ "path": "/slow?ms=200" })
        });
    }
    let started = Instant::now();
    let lines = w.http(reviews(), &["--h2", "--concurrent"], Value::Array(reqs));
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["version"], "HTTP/2.0");
        let want = if i % 2 == 0 {
            "reviews-v2"
        } else {
            "reviews-v1"
        };
        assert_eq!(served_by(l), want, "stream {i}: {l}");
    }
    // Five 200 ms requests multiplexed, not serialized.
    assert!(started.elapsed() < Duration::from_millis(5 * 200 + 2000));
}

#[test]
fn websocket_upgrade_follows_key() {
    let Some(w) = world("websocket_upgrade_follows_key", RoutesSpec::default()) else {
        return;
    };
    let _agent = w.agent(&[]);
    let dst = reviews().to_string();
    let keyed = w.env.peer(
        0,
        &["ws", &dst, r#"{"baggage":"sd-routing-key=pr-42"}"#, "hi"],
    );
    assert_eq!(keyed[0]["served_by"], "reviews-v2");
    assert_eq!(
        keyed[0]["replies"],
        json!(["reviews-v2: hi 0", "reviews-v2: hi 1", "reviews-v2: hi 2"])
    );
    let plain = w.env.peer(0, &["ws", &dst, "{}", "hi"]);
    assert_eq!(plain[0]["replies"][0], "reviews-v1: hi 0");
}

#[test]
fn tls_and_opaque_tcp_pass_through_to_baseline() {
    let Some(w) = world(
        "tls_and_opaque_tcp_pass_through_to_baseline",
        RoutesSpec::default(),
    ) else {
        return;
    };
    // Line-echo backends behind `reviews` on another port: baseline pod 1, sandbox pod 2.
    let port = POD_PORT + 1;
    let _b1 = Backend::tcp(
        &w.env.topo.pods[1].netns,
        "echo-v1",
        w.env.topo.pods[1].addr4(port),
    )
    .unwrap();
    let _b2 = Backend::tcp(
        &w.env.topo.pods[2].netns,
        "echo-v2",
        w.env.topo.pods[2].addr4(port),
    )
    .unwrap();
    let agent = w.agent(&[]);
    // Steered (reviews has a fork) but not HTTP: copied opaquely to the original destination.
    let dst = w.env.topo.pods[1].addr4(port).to_string();
    let opaque = w.env.client(0, true, &["tcp", &dst]);
    assert_eq!(opaque[0].reply().server, "echo-v1");
    assert_eq!(
        opaque[0].reply().peer.ip(),
        w.env.topo.pods[1].node_ip4,
        "went through the proxy"
    );
    let tls = w
        .env
        .peer(0, &["raw", &dst, "\u{16}\u{3}\u{1}\u{2} client hello\n"]);
    assert!(
        tls[0]["response"].as_str().unwrap().contains("echo-v1"),
        "{}",
        tls[0]
    );
    assert!(
        agent.metric("shunt_requests_total{decision=\"baseline\",reason=\"opaque_protocol\"}")
            >= 2.0
    );
}

#[test]
fn server_speaks_first_protocol_is_not_stalled_forever() {
    let Some(w) = world(
        "server_speaks_first_protocol_is_not_stalled",
        RoutesSpec::default(),
    ) else {
        return;
    };
    let port = POD_PORT + 2;
    let _greeter = Backend::greeter(
        &w.env.topo.pods[1].netns,
        "greeter",
        w.env.topo.pods[1].addr4(port),
    )
    .unwrap();
    let _agent = w.agent(&["--detect-timeout", "200ms"]);
    // The client sends nothing and waits for the server's banner: detection gives up after
    // 200 ms, relays opaquely, and the banner arrives.
    let dst = w.env.topo.pods[1].addr4(port).to_string();
    let line = w.env.peer(0, &["raw", &dst, "", "--until-line"]);
    assert_eq!(line[0]["response"], "220 greeter ready\n", "{}", line[0]);
    assert!(line[0]["after_ms"].as_u64().unwrap() < 3000, "{}", line[0]);
}

#[test]
fn sandbox_down_falls_back_to_baseline() {
    let spec = RoutesSpec {
        sandbox_pod: 4,
        ..RoutesSpec::default()
    };
    let Some(w) = world("sandbox_down_falls_back_to_baseline", spec) else {
        return;
    };
    let agent = w.agent(&[]);
    let lines = w.http(reviews(), &[], json!([keyed("pr-42"), { "method": "POST", "path": "/p", "body": "x=1", "headers": { "baggage": "sd-routing-key=pr-42" } }]));
    for l in &lines {
        assert_eq!(served_by(l), "reviews-v1", "{l}");
    }
    assert_eq!(
        lines[1]["served"]["body_len"], 3,
        "the replayed body arrived whole"
    );
    let (_, d) = agent.debug_get("/decisions?key=pr-42").unwrap();
    assert!(d.contains("sandbox_unreachable"), "{d}");
}

#[test]
fn reject_policy_returns_503_naming_the_route() {
    let spec = RoutesSpec {
        reviews_fallback: "Reject",
        sandbox_ready: false,
        ..RoutesSpec::default()
    };
    let Some(w) = world("reject_policy_returns_503_naming_the_route", spec) else {
        return;
    };
    let _agent = w.agent(&[]);
    let lines = w.http(reviews(), &[], json!([keyed("pr-42"), { "path": "/" }]));
    assert_eq!(lines[0]["status"], 503);
    assert!(
        lines[0]["body"].as_str().unwrap().contains("shop/pr-42"),
        "{}",
        lines[0]
    );
    assert_eq!(
        served_by(&lines[1]),
        "reviews-v1",
        "unkeyed traffic is unaffected"
    );
}

#[test]
fn bad_input_gets_a_clear_status_and_harms_no_one_else() {
    let Some(w) = world("bad_input_gets_a_clear_status", RoutesSpec::default()) else {
        return;
    };
    let _agent = w.agent(&["--header-read-timeout", "1s"]);
    let dst = reviews().to_string();
    let status_of = |line: &Value| -> String {
        line["response"]
            .as_str()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    // Malformed request line.
    let l = w
        .env
        .peer(0, &["raw", &dst, "GET /\u{1} HTTP/1.1 extra\r\n\r\n"]);
    assert!(status_of(&l[0]).contains(" 400 "), "{}", l[0]);
    // Headers over 64 KiB.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let l = w.env.peer(0, &["raw", &dst, &big]);
    assert!(status_of(&l[0]).contains(" 431 "), "{}", l[0]);
    // Too many headers.
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let l = w.env.peer(
        0,
        &[
            "raw",
            &dst,
            &format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n"),
        ],
    );
    assert!(status_of(&l[0]).contains(" 431 "), "{}", l[0]);
    // Slowloris: half a request, then silence: our header-read timer answers 408.
    let l = w
        .env
        .peer(0, &["raw", &dst, "GET / HTTP/1.1\r\nhost: x\r\n"]);
    assert!(status_of(&l[0]).contains(" 408 "), "{}", l[0]);
    // Invalid baggage: no key, routed to baseline.
    let lines = w.http(
        reviews(),
        &[],
        json!([{ "path": "/", "headers": { "baggage": "sd-routing-key=bad key!!" } }]),
    );
    assert_eq!(served_by(&lines[0]), "reviews-v1");
    // A client that resets mid-body.
    let l = w.env.peer(
        0,
        &[
            "raw",
            &dst,
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\npartial",
            "--stall-ms",
            "200",
            "--reset",
        ],
    );
    assert_eq!(l[0]["reset"], true);
    // Other connections are unaffected throughout.
    let lines = w.http(reviews(), &[], json!([keyed("pr-42")]));
    assert_eq!(served_by(&lines[0]), "reviews-v2");
}

#[test]
fn upstream_reset_gets_502() {
    let Some(w) = world("upstream_reset_gets_502", RoutesSpec::default()) else {
        return;
    };
    // reviews' baseline endpoint on another port accepts and closes at once without answering.
    let port = POD_PORT + 3;
    let listener = w.env.topo.pods[1]
        .netns
        .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            tests::process::set_linger_zero(&c);
            std::thread::sleep(Duration::from_millis(50));
            drop(c);
        }
    });
    let _agent = w.agent(&[]);
    let dst = w.env.topo.pods[1].addr4(port);
    let lines = w.http(dst, &[], json!([{ "path": "/" }]));
    assert_eq!(lines[0]["status"], 502, "{}", lines[0]);
}

/// Replaces a file the way editors and ConfigMap updates do (write a sibling, rename over), so
/// the agent's poll never reads a half-written file: `fs::write` truncates first, and a poll in
/// between would load an empty (valid) routes file.
fn replace_file(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn routes_file_reload_applies_diff_and_keeps_last_good_on_error() {
    let Some(w) = world("routes_file_reload_applies_diff", RoutesSpec::default()) else {
        return;
    };
    let agent = w.agent(&["--routes-poll-interval", "100ms"]);
    let steered = |agent: &AgentProc| {
        let _ = agent;
        let (m, _) = agent::capture::open_pinned(&w.env.run.bpffs()).unwrap();
        let mut e = m.entries().into_iter().map(|(a, _)| a).collect::<Vec<_>>();
        e.sort();
        e
    };
    let reviews_ep = w.env.topo.pods[1].addr4(POD_PORT);
    assert!(steered(&agent).contains(&reviews()));
    assert!(steered(&agent).contains(&reviews_ep));

    // Remove the pr-42 route: reviews loses its only fork and is no longer steered.
    let yaml = std::fs::read_to_string(&w.routes).unwrap();
    let without: String = yaml.split("  - name: pr-42").next().unwrap().to_string()
        + "  - name: pr-99"
        + yaml.split("  - name: pr-99").nth(1).unwrap();
    replace_file(&w.routes, &without);
    wait_until(Duration::from_secs(5), || {
        !steered(&agent).contains(&reviews())
    });
    assert!(!steered(&agent).contains(&reviews_ep));
    assert!(
        steered(&agent).contains(&SocketAddr::from((RATINGS_VIP, SERVICE_PORT))),
        "ratings untouched"
    );

    // A bad edit keeps the last good table and says why, with the line.
    replace_file(
        &w.routes,
        &format!("{without}\n  - name: broken\n    spec: {{ routingKey: \"bad key\" }}\n"),
    );
    wait_until(Duration::from_secs(5), || {
        agent.metric("shunt_route_table_reload_errors_total") >= 1.0
    });
    // Line-precise error in the log (written when the version is rejected; the wait bounds the
    // race between reading the metric and the log line reaching the file).
    wait_until(Duration::from_secs(5), || {
        agent.log_text().contains("routes.yaml:")
    });
    assert!(steered(&agent).contains(&SocketAddr::from((RATINGS_VIP, SERVICE_PORT))));

    // Restoring the route steers reviews again.
    replace_file(&w.routes, &yaml);
    wait_until(Duration::from_secs(5), || {
        steered(&agent).contains(&reviews())
    });
    let lines = w.http(reviews(), &[], json!([keyed("pr-42")]));
    assert_eq!(served_by(&lines[0]), "reviews-v2");
}

#[test]
fn sigterm_drains_and_fails_open() {
    let Some(w) = world("sigterm_drains_and_fails_open", RoutesSpec::default()) else {
        return;
    };
    let mut agent = w.agent(&["--shutdown-grace", "5s"]);
    let dst = w.env.topo.pods[1].addr4(POD_PORT);
    // A slow request is in flight through the proxy when SIGTERM arrives.
    let slow_req = json!([{ "path": "/slow?ms=1500" }]).to_string();
    let slow = w
        .env
        .peer_in_background(0, &["http", &dst.to_string(), &slow_req]);
    std::thread::sleep(Duration::from_millis(400));
    agent.child.signal(libc::SIGTERM);
    // New connections go direct at once (STEERED is cleared first)...
    wait_until(Duration::from_secs(3), || {
        let l = w.env.client_http_peer(dst);
        l.starts_with(&w.env.topo.pods[0].ip4.to_string())
    });
    // ...while the in-flight request completes through the proxy.
    let out = slow.join().unwrap();
    let line: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(
        line["served"]["peer"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap(),
        w.env.topo.pods[1].node_ip4.to_string()
    );
    let status = agent.child.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "agent exits cleanly: {status}");
}

#[test]
fn wedged_proxy_fails_open() {
    let Some(w) = world("wedged_proxy_fails_open", RoutesSpec::default()) else {
        return;
    };
    let agent = w.agent(&["--max-connections", "1", "--watchdog-interval", "200ms"]);
    let dst = w.env.topo.pods[1].addr4(POD_PORT);
    // One slow request occupies the only connection slot; the next connection waits in the
    // accept queue: the proxy has stopped accepting.
    let hold_req = json!([{ "path": "/slow?ms=3000" }]).to_string();
    let hold = w
        .env
        .peer_in_background(0, &["http", &dst.to_string(), &hold_req]);
    std::thread::sleep(Duration::from_millis(300));
    let queued = w
        .env
        .peer_in_background(0, &["http", &dst.to_string(), r#"[{"path":"/"}]"#]);
    // The watchdog notices within a few intervals and fails open: new connections go direct.
    wait_until(Duration::from_secs(3), || {
        agent.metric("shunt_watchdog_trips_total") >= 1.0
    });
    let direct = w.env.client_http_peer(dst);
    assert!(
        direct.starts_with(&w.env.topo.pods[0].ip4.to_string()),
        "went direct: {direct}"
    );
    // Nothing was lost: the held and the queued request both complete.
    assert!(hold.join().unwrap().contains("\"status\":200"));
    assert!(queued.join().unwrap().contains("\"status\":200"));
    // And once the proxy accepts again, steering is restored.
    wait_until(Duration::from_secs(5), || {
        w.env
            .client_http_peer(dst)
            .starts_with(&w.env.topo.pods[1].node_ip4.to_string())
    });
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn grpc_unary_and_server_streaming_through_sandbox_with_trailers() {
    use tests::grpc_backend::{GrpcBackend, service_name};
    let Some(w) = world(
        "grpc_unary_and_server_streaming_through_sandbox",
        RoutesSpec::default(),
    ) else {
        return;
    };
    // gRPC backends behind reviews' named port `grpc`: the fork resolves it per sandbox pod.
    let port = POD_PORT + 5;
    let _g1 = GrpcBackend::start(
        &w.env.topo.pods[1].netns,
        "v1",
        w.env.topo.pods[1].addr4(port),
    )
    .unwrap();
    let _g2 = GrpcBackend::start(
        &w.env.topo.pods[2].netns,
        "v2",
        w.env.topo.pods[2].addr4(port),
    )
    .unwrap();
    let _agent = w.agent(&[]);
    // Dial the baseline endpoint directly: it is steered because reviews has a fork.
    let dst = w.env.topo.pods[1].addr4(port).to_string();
    let v2 = service_name("v2");

    let keyed = w.env.peer(0, &["grpc", &dst, &v2, "sd-routing-key=pr-42"]);
    // Unary answered by the sandbox (it knows its own name)...
    assert!(keyed[0]["unary"]["ok"].is_i64(), "{}", keyed[0]);
    // ...and server streaming passes several messages through.
    let msgs = keyed[0]["watch"]["messages"].as_array().unwrap();
    assert!(msgs.len() >= 2, "streamed messages: {}", keyed[0]);

    // Unkeyed: baseline does not know v2's name: NOT_FOUND arrives as grpc-status in trailers.
    let plain = w.env.peer(0, &["grpc", &dst, &v2, "-"]);
    assert_eq!(plain[0]["unary"]["code"], "NotFound", "{}", plain[0]);
}

#[test]
fn topology_counts_steered_and_unsteered_connections() {
    let Some(w) = world(
        "topology_counts_steered_and_unsteered",
        RoutesSpec::default(),
    ) else {
        return;
    };
    let agent = w.agent(&[]);
    // Two connections to reviews' virtual address (steered), one straight to a port of a
    // reviews pod that no Service declares (not steered, still counted).
    w.http(reviews(), &[], json!([keyed("pr-42")]));
    w.http(reviews(), &[], json!([{ "path": "/" }]));
    let other = w.env.topo.pods[1].addr4(9999);
    let _b = Backend::tcp(&w.env.topo.pods[1].netns, "other", other).unwrap();
    assert_eq!(
        w.env.client(0, true, &["tcp", &other.to_string()])[0]
            .reply()
            .server,
        "other"
    );

    let (_, body) = agent.debug_get("/topology").unwrap();
    let topo: Value = serde_json::from_str(&body).unwrap();
    let edges = topo["edges"].as_array().unwrap();
    let client = w.env.topo.pods[0].ip4.to_string();
    let find = |to: &str, port: u16| {
        edges
            .iter()
            .find(|e| e["from"] == client.as_str() && e["to"] == to && e["port"] == port)
            .unwrap_or_else(|| panic!("no edge {client} -> {to}:{port} in {body}"))
    };
    assert_eq!(find("shop/reviews", SERVICE_PORT)["connections"], 2);
    assert_eq!(find("shop/reviews", 9999)["connections"], 1);
    // The agent's own upstream connections are not part of the graph.
    assert!(
        edges
            .iter()
            .all(|e| e["from"] != w.env.topo.pods[1].node_ip4.to_string().as_str())
    );

    // `shunt topology` renders the same graph.
    let mut cmd = std::process::Command::new(&w.env.bins.agent);
    cmd.args(["topology", "--debug-addr", "127.0.0.1:9465"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = tests::process::spawn_in("topology", cmd, Some(w.env.node()), None).unwrap();
    let (status, out, err) = child.output_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{err}");
    assert!(out.starts_with(&format!("{client}\n")), "{out}");
    assert!(
        out.contains(&format!("shop/reviews :{SERVICE_PORT}  (2 connections)")),
        "{out}"
    );
}
