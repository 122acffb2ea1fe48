//! Flapping dependencies: the API server going away and coming back again and again, and a
//! sandbox pod whose process and readiness come and go. The real agent with real BPF maps in a
//! netns topology, against the fake API server (see `tests::kube_world`).
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    bins,
    http_backend::HttpBackend,
    kube_world::{FakeCluster, KubeNode, NS, POD_PORT, selector_spec, wait_for},
};

fn world(test: &str) -> Option<(FakeCluster, KubeNode)> {
    tests::kube_world::standard_world(test, true, bins!())
}

fn sorted(mut v: Vec<(SocketAddr, u32)>) -> Vec<(SocketAddr, u32)> {
    v.sort();
    v
}

#[test]
fn api_server_flapping_keeps_last_good_routes() {
    let Some((c, n)) = world("api_server_flapping_keeps_last_good_routes") else {
        return;
    };
    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));
    c.sandbox_route("pr-99", selector_spec("pr-99", "ratings", "pr-99"));
    let agent = n.start_agent("node-a", &[]);
    wait_for("both routes steered", Duration::from_secs(15), || {
        n.is_steered(n.reviews_endpoint()) && n.is_steered(n.ratings_endpoint())
    });

    // Each outage: the last-good table holds while the server is gone, even though the cluster
    // changed meanwhile (pr-99 deleted, then created again); once the server is back the change
    // applies, and nothing of the old table survives it.
    for (outage, pr99_after) in [(1, false), (2, true), (3, false)] {
        let last_good = sorted(n.steered());
        c.rt.block_on(c.api.faults().stop());
        if pr99_after {
            c.sandbox_route("pr-99", selector_spec("pr-99", "ratings", "pr-99"));
        } else {
            c.delete_route("pr-99");
        }
        let down = Instant::now();
        while down.elapsed() < Duration::from_secs(2) {
            assert_eq!(
                sorted(n.steered()),
                last_good,
                "outage {outage}: the last-good table changed while the server was down"
            );
            assert_eq!(
                n.served_by(n.reviews_endpoint(), Some("pr-42")),
                "reviews-v2",
                "outage {outage}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c.rt.block_on(c.api.faults().restart()).expect("restart");
        wait_for(
            &format!("outage {outage}: the change made while down applied"),
            Duration::from_secs(45),
            || n.is_steered(n.ratings_endpoint()) == pr99_after,
        );
        assert!(n.is_steered(n.reviews_endpoint()), "outage {outage}");
        let expect_ratings = if pr99_after {
            "ratings-v2"
        } else {
            "ratings-v1"
        };
        assert_eq!(
            n.served_by(n.ratings_endpoint(), Some("pr-99")),
            expect_ratings,
            "outage {outage}: no stale route once the server is back"
        );
    }
    assert!(
        agent.log_text().contains("keeping the last-good routes"),
        "{}",
        agent.log_text()
    );
}

/// How the sandbox pod flaps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flap {
    /// As a pod restart with a readiness probe: unready first (its endpoint leaves the route),
    /// then the process stops; it starts again, then turns ready.
    ReadinessFirst,
    /// As a crash: the process dies while the pod still reads ready (connects are refused, and
    /// requests in flight are reset), and readiness catches up later.
    ProcessFirst,
}

#[test]
fn flapping_sandbox_pod_with_fallback_baseline_never_errors() {
    sandbox_flaps_and_every_request_is_served(
        "flapping_sandbox_pod_with_fallback_baseline_never_errors",
        Flap::ReadinessFirst,
    );
}

#[test]
fn crashing_sandbox_pod_with_fallback_baseline_never_errors() {
    sandbox_flaps_and_every_request_is_served(
        "crashing_sandbox_pod_with_fallback_baseline_never_errors",
        Flap::ProcessFirst,
    );
}

fn sandbox_flaps_and_every_request_is_served(test: &str, flap: Flap) {
    let Some((c, mut n)) = world(test) else {
        return;
    };
    // Fallback Baseline is the default.
    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));
    let agent = n.start_agent("node-a", &[]);
    wait_for(
        "a keyed request served by the sandbox",
        Duration::from_secs(15),
        || n.served_by(n.reviews_endpoint(), Some("pr-42")) == "reviews-v2",
    );

    // Keyed requests, each on a new connection, while the sandbox pod flaps.
    let load = n.env.peer_in_background(
        0,
        &[
            "churn",
            &n.reviews_endpoint().to_string(),
            "8",
            "baggage:sd-routing-key=pr-42",
            "--workers",
            "2",
            "--pause-ms",
            "5",
        ],
    );
    let KubeNode { env, backends, .. } = &mut n;
    let sandbox = &env.topo.pods[2];
    let (netns, addr, ip) = (&sandbox.netns, sandbox.addr4(POD_PORT), sandbox.ip4);
    let flaps = Instant::now();
    while flaps.elapsed() < Duration::from_secs(7) {
        if flap == Flap::ReadinessFirst {
            c.pod_ready(NS, "reviews-v2", ip, false);
            std::thread::sleep(Duration::from_millis(300));
        }
        backends.remove(1);
        std::thread::sleep(Duration::from_millis(300));
        if flap == Flap::ProcessFirst {
            c.pod_ready(NS, "reviews-v2", ip, false);
        }
        std::thread::sleep(Duration::from_millis(300));
        let deadline = Instant::now() + Duration::from_secs(5);
        let backend = loop {
            match HttpBackend::start(netns, "reviews-v2", addr) {
                Ok(b) => break b,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("restarting the sandbox backend: {e:#}"),
            }
        };
        backends.insert(1, backend);
        std::thread::sleep(Duration::from_millis(200));
        c.pod_ready(NS, "reviews-v2", ip, true);
        std::thread::sleep(Duration::from_millis(500));
    }
    let lines: Vec<Value> = tests::harness::netpeer_lines(&load.join().unwrap());
    let count = |who: &str| lines.iter().filter(|l| l["served_by"] == who).count();
    let (sandbox_n, baseline_n) = (count("reviews-v2"), count("reviews-v1"));
    let errors: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["status"] != 200
                || !matches!(l["served_by"].as_str(), Some("reviews-v1" | "reviews-v2"))
        })
        .collect();
    let log = agent.log_text();
    let upstream_errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("forwarding failed") || l.contains("shunt: connecting"))
        .take(5)
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {} requests failed (sandbox {sandbox_n}, baseline {baseline_n}), e.g. {:?}\n\
         agent: {upstream_errors:#?}",
        errors.len(),
        lines.len(),
        errors.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        sandbox_n > 0 && baseline_n > 0,
        "it flapped: sandbox {sandbox_n}, baseline {baseline_n}"
    );
}
