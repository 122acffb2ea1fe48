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
    let child = spawn_in("netpeer", cmd, Some(&w.env.topo.pods[0].netns), Some(cgroup))
        .expect("spawning netpeer");
    let (status, out, err) = child
        .output_timeout(Duration::from_secs(60))
        .expect("netpeer finished in time");
    assert!(status.success(), "netpeer failed: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("netpeer line"))
        .collect()
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
        assert_eq!(d["source"], "tester", "{d}");
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
        assert!(d.get("source").is_none(), "{d}");
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
    assert_eq!(baggage(&lines[0]), None, "an unknown destination is not touched");
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
            assert_eq!(map.levels().expect("levels"), 1 << 2, "the marked cgroup's level only");
        } else {
            assert!(map.entries().is_empty());
            assert_eq!(map.levels().expect("levels"), 0, "nothing marked: no lookup");
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
