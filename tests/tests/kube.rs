//! The Kubernetes route source (`shunt run --kube`): the real agent with real BPF maps in a
//! netns topology, against the fake API server. See `tests::kube_world` for the layout.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::json;
use tests::{
    bins,
    kube_world::{
        FakeCluster, KubeNode, LEASE_NS, NS, RATINGS_IP, REVIEWS_IP, SERVICE_PORT, api_calls,
        granted, selector_spec, wait_for,
    },
};

const DEADLINE: Duration = Duration::from_secs(15);

fn world(test: &str, lease_namespace: bool) -> Option<(FakeCluster, KubeNode)> {
    tests::kube_world::standard_world(test, lease_namespace, bins!())
}

fn reviews_vip() -> SocketAddr {
    SocketAddr::from((REVIEWS_IP, SERVICE_PORT))
}

fn synced(agent: &tests::harness::AgentProc) -> bool {
    agent.log_text().contains("kube: initial sync complete")
}

/// Every call the agent made is in `rbac::AGENT_ACCESS`; with `all_used`, every entry of it
/// was exercised too.
fn assert_rbac_matches(c: &FakeCluster, all_used: bool) {
    let granted = granted(agent::kube::rbac::AGENT_ACCESS);
    let used = api_calls(&c.api);
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(
        ungranted.is_empty(),
        "calls missing from rbac.rs: {ungranted:?}"
    );
    if all_used {
        let unused: Vec<_> = granted.difference(&used).collect();
        assert!(unused.is_empty(), "rbac.rs grants unused: {unused:?}");
    }
}

#[test]
fn crd_in_deploy_matches_shunt_crd() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/crd.yaml");
    let committed = std::fs::read_to_string(path).expect("deploy/base/crd.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shunt-under-test"))
        .arg("crd")
        .output()
        .expect("running shunt crd");
    assert!(out.status.success(), "shunt crd failed");
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(printed, agent::kube::crd::crd_yaml());
    assert!(
        committed == printed,
        "deploy/base/crd.yaml is stale; regenerate it: \
         cargo run -p agent -- crd > deploy/base/crd.yaml"
    );
}

#[test]
fn route_create_selector_change_and_delete_take_effect() {
    let Some((c, n)) = world("kube_route_create_change_delete", true) else {
        return;
    };
    let agent = n.start_agent("node-a", &[]);
    wait_for("the initial sync", DEADLINE, || synced(&agent));
    assert!(n.steered().is_empty(), "{:?}", n.steered());
    assert_eq!(
        n.served_by(n.reviews_endpoint(), Some("pr-42")),
        "reviews-v1"
    );

    let created = Instant::now();
    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));
    let to_map = wait_for("the route in STEERED", DEADLINE, || {
        n.is_steered(n.reviews_endpoint())
    });
    wait_for("a keyed request served by the sandbox", DEADLINE, || {
        n.served_by(n.reviews_endpoint(), Some("pr-42")) == "reviews-v2"
    });
    eprintln!(
        "propagation: SandboxRoute created → STEERED updated in {to_map:?}; → keyed request \
         served by the sandbox in {:?}",
        created.elapsed()
    );
    assert!(n.is_steered(reviews_vip()), "ClusterIP steered too");
    assert!(!n.is_steered(n.ratings_endpoint()), "ratings has no fork");
    assert_eq!(n.served_by(n.reviews_endpoint(), None), "reviews-v1");
    wait_for("status Ready", DEADLINE, || {
        c.route_reason("pr-42").as_deref() == Some("EndpointsReady")
    });
    let st = &c.route("pr-42").unwrap()["status"];
    assert_eq!(st["observedGeneration"], 1, "{st}");
    assert_eq!(st["conditions"][0]["status"], "True", "{st}");
    assert_eq!(st["forks"][0]["readyEndpoints"], 1, "{st}");
    // Someone else scribbles on the status: the leader puts it back.
    let mut edited = c.route("pr-42").unwrap();
    edited["status"]["conditions"][0]["reason"] = json!("Scribbled");
    c.api.replace_status(edited).expect("status edit");
    wait_for("the status restored", DEADLINE, || {
        c.route_reason("pr-42").as_deref() == Some("EndpointsReady")
    });

    // Selector change: the same key now goes to the other sandbox.
    c.set_route_spec("pr-42", selector_spec("pr-42", "reviews", "pr-42-b"));
    wait_for("keyed requests follow the new selector", DEADLINE, || {
        n.served_by(n.reviews_endpoint(), Some("pr-42")) == "reviews-v3"
    });
    wait_for("status of generation 2", DEADLINE, || {
        c.route("pr-42").unwrap()["status"]["observedGeneration"] == 2
    });

    // Delete: nothing steered any more, keyed requests go direct to the baseline.
    c.delete_route("pr-42");
    wait_for("the route gone from STEERED", DEADLINE, || {
        n.steered().is_empty()
    });
    assert_eq!(
        n.served_by(n.reviews_endpoint(), Some("pr-42")),
        "reviews-v1"
    );
    drop(agent);
}

#[test]
fn service_gaining_an_endpoint_is_steered() {
    let Some((c, n)) = world("kube_service_gains_endpoint", true) else {
        return;
    };
    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));
    let _agent = n.start_agent("node-a", &[]);
    wait_for("the route in STEERED", DEADLINE, || {
        n.is_steered(n.reviews_endpoint())
    });
    let new_ep = SocketAddr::from(([198, 18, 77, 2], tests::kube_world::POD_PORT));
    assert!(!n.is_steered(new_ep));
    let t = Instant::now();
    c.set_slice("reviews", &[n.ip(1), [198, 18, 77, 2].into()]);
    wait_for("the new endpoint in STEERED", DEADLINE, || {
        n.is_steered(new_ep)
    });
    eprintln!("endpoint added → STEERED in {:?}", t.elapsed());
    let id = n
        .steered()
        .iter()
        .find(|(a, _)| *a == n.reviews_endpoint())
        .map(|(_, id)| *id);
    assert_eq!(
        n.steered().iter().find(|(a, _)| *a == new_ep).map(|e| e.1),
        id,
        "same service id"
    );
    // And removed again.
    c.set_slice("reviews", &[n.ip(1)]);
    wait_for("the endpoint gone from STEERED", DEADLINE, || {
        !n.is_steered(new_ep)
    });
    assert!(n.is_steered(n.reviews_endpoint()));
}

#[test]
fn agent_restart_resyncs_and_leaves_no_stale_entries() {
    let Some((c, n)) = world("kube_restart_resyncs", true) else {
        return;
    };
    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));
    c.sandbox_route("pr-99", selector_spec("pr-99", "ratings", "pr-99"));
    let mut agent = n.start_agent("node-a", &[]);
    wait_for("both routes in STEERED", DEADLINE, || {
        n.is_steered(n.reviews_endpoint()) && n.is_steered(n.ratings_endpoint())
    });
    // A crash leaves the pinned map as it was.
    agent.kill();
    c.delete_route("pr-99");
    assert!(
        n.is_steered(n.ratings_endpoint()),
        "pinned entries survive the crash"
    );

    let agent = n.start_agent("node-a", &[]);
    wait_for("the deleted route's entries gone", DEADLINE, || {
        !n.is_steered(n.ratings_endpoint())
    });
    assert!(synced(&agent), "{}", agent.log_text());
    assert!(n.is_steered(n.reviews_endpoint()));
    let ratings_vip = SocketAddr::from((RATINGS_IP, SERVICE_PORT));
    assert!(!n.is_steered(ratings_vip));
    assert_eq!(
        n.served_by(n.reviews_endpoint(), Some("pr-42")),
        "reviews-v2"
    );
    assert_eq!(
        n.served_by(n.ratings_endpoint(), Some("pr-99")),
        "ratings-v1"
    );
}

#[test]
fn compaction_relists_without_losing_an_update() {
    let Some((c, n)) = world("kube_compaction_relists", true) else {
        return;
    };
    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));
    let agent = n.start_agent("node-a", &[]);
    wait_for("the route in STEERED", DEADLINE, || {
        n.is_steered(n.reviews_endpoint())
    });
    // While the agent cannot watch: a delete (its event will never be delivered) and a create,
    // then etcd compacts past the agent's resourceVersion.
    c.rt.block_on(c.api.faults().stop());
    c.delete_route("pr-42");
    c.sandbox_route("pr-99", selector_spec("pr-99", "ratings", "pr-99"));
    c.api.faults().compact_history();
    let seen = c.api.requests().len();
    c.rt.block_on(c.api.faults().restart()).expect("restart");

    wait_for(
        "the relisted state applied",
        Duration::from_secs(45),
        || !n.is_steered(n.reviews_endpoint()) && n.is_steered(n.ratings_endpoint()),
    );
    let relists: Vec<String> = c.api.requests()[seen..]
        .iter()
        .filter(|r| {
            r.starts_with("GET /apis/shunt.dev/v1alpha1/sandboxroutes") && !r.contains("watch=")
        })
        .cloned()
        .collect();
    assert!(
        !relists.is_empty(),
        "no relist of SandboxRoutes: {:?}",
        &c.api.requests()[seen..]
    );
    assert_eq!(
        n.served_by(n.ratings_endpoint(), Some("pr-99")),
        "ratings-v2"
    );
    assert_eq!(
        n.served_by(n.reviews_endpoint(), Some("pr-42")),
        "reviews-v1"
    );
    drop(agent);
}

#[test]
fn api_server_down_for_10s_keeps_the_last_good_table() {
    let Some((c, n)) = world("kube_api_down_keeps_table", true) else {
        return;
    };
    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));
    let agent = n.start_agent("node-a", &[]);
    wait_for("a keyed request served by the sandbox", DEADLINE, || {
        n.served_by(n.reviews_endpoint(), Some("pr-42")) == "reviews-v2"
    });
    let mut before = n.steered();
    before.sort();

    c.rt.block_on(c.api.faults().stop());
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            n.served_by(n.reviews_endpoint(), Some("pr-42")),
            "reviews-v2"
        );
        assert_eq!(n.served_by(n.reviews_endpoint(), None), "reviews-v1");
        let mut now = n.steered();
        now.sort();
        assert_eq!(now, before);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        agent.log_text().contains("keeping the last-good routes"),
        "{}",
        agent.log_text()
    );
    c.rt.block_on(c.api.faults().restart()).expect("restart");

    // The watches resume: a change made after the outage takes effect.
    c.delete_route("pr-42");
    let t = wait_for(
        "the delete applied after the outage",
        Duration::from_secs(45),
        || n.steered().is_empty(),
    );
    eprintln!("first change after a 10 s outage applied in {t:?}");
}

#[test]
fn two_agents_elect_one_status_writer_and_fail_over() {
    let test = "kube_two_agents_elect";
    if !tests::kernel::available(test) {
        return;
    }
    let c = FakeCluster::start(true).expect("fake API server");
    let (Some(a), Some(b)) = (
        KubeNode::new(test, &c, bins!()),
        KubeNode::new(test, &c, bins!()),
    ) else {
        return;
    };
    // Both topologies use the same addresses, so one set of objects describes both nodes.
    a.standard_objects(&c);
    let mut agent_a = a.start_agent("node-a", &["--lease-duration", "2s"]);
    wait_for("node-a to hold the lease", DEADLINE, || {
        c.lease_holder().as_deref() == Some("node-a")
    });
    let mut agent_b = b.start_agent("node-b", &["--lease-duration", "2s"]);
    wait_for("node-b synced", DEADLINE, || synced(&agent_b));

    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));
    wait_for("both nodes steer the route", DEADLINE, || {
        a.is_steered(a.reviews_endpoint()) && b.is_steered(b.reviews_endpoint())
    });
    wait_for("status Ready", DEADLINE, || {
        c.route_reason("pr-42").as_deref() == Some("EndpointsReady")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.status_writes("pr-42"), 1, "{:?}", c.api.requests());
    let wrote = |agent: &tests::harness::AgentProc| {
        agent
            .log_text()
            .lines()
            .filter(|l| l.contains("status written") && l.contains("shop/pr-42"))
            .count()
    };
    assert_eq!(wrote(&agent_a), 1, "the leader wrote it");
    assert_eq!(wrote(&agent_b), 0, "the follower did not");
    assert_eq!(c.lease_holder().as_deref(), Some("node-a"));

    // The leader dies; its Lease lapses and node-b takes over.
    agent_a.kill();
    let failover = wait_for("node-b to hold the lease", DEADLINE, || {
        c.lease_holder().as_deref() == Some("node-b")
    });
    eprintln!("lease failover after the leader died: {failover:?} (lease duration 2 s)");
    // The status was already right: the new leader writes nothing until it changes.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.status_writes("pr-42"), 1);

    c.pod_ready(NS, "reviews-v2", b.ip(2), false);
    wait_for("status NoReadyEndpoints", DEADLINE, || {
        c.route_reason("pr-42").as_deref() == Some("NoReadyEndpoints")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.status_writes("pr-42"), 2, "{:?}", c.api.requests());
    assert_eq!(wrote(&agent_b), 1, "the new leader wrote it");
    assert!(b.is_steered(b.reviews_endpoint()));
    assert_eq!(
        b.served_by(b.reviews_endpoint(), Some("pr-42")),
        "reviews-v1"
    );
    assert_rbac_matches(&c, false);

    // A leader that shuts down cleanly gives the Lease up at once (no lapse to wait for).
    assert!(agent_b.terminate(Duration::from_secs(15)).success());
    assert!(
        c.lease_holder().is_none_or(|h| h.is_empty()),
        "lease still held: {:?}",
        c.lease_holder()
    );
    assert!(
        agent_b.log_text().contains("released the status lease"),
        "{}",
        agent_b.log_text()
    );
}

#[test]
fn expired_route_is_dropped_then_deleted() {
    // No lease namespace yet: no agent can lead, so expiry (every agent) and deletion (the
    // leader) are seen apart.
    let Some((c, n)) = world("kube_expired_route", false) else {
        return;
    };
    let agent = n.start_agent("node-a", &["--lease-duration", "2s"]);
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(4);
    let mut spec = selector_spec("pr-42", "reviews", "pr-42");
    spec["expiresAt"] = json!(expires.to_string());
    c.sandbox_route("pr-42", spec);
    wait_for("the route in STEERED", DEADLINE, || {
        n.is_steered(n.reviews_endpoint())
    });
    assert_eq!(
        n.served_by(n.reviews_endpoint(), Some("pr-42")),
        "reviews-v2"
    );
    wait_for("the route dropped", DEADLINE, || n.steered().is_empty());
    let late = jiff::Timestamp::now().duration_since(expires);
    eprintln!("expired route dropped {late:?} after expiresAt");
    assert!(
        late >= jiff::SignedDuration::ZERO,
        "dropped early: {late:?}"
    );
    // "At once": the agent wakes at expiresAt by itself (no API event). Generous bound for
    // loaded CI machines; the measured figure is printed above.
    assert!(
        late < jiff::SignedDuration::from_secs(3),
        "dropped late: {late:?}"
    );
    assert_eq!(
        n.served_by(n.reviews_endpoint(), Some("pr-42")),
        "reviews-v1"
    );
    assert!(c.route("pr-42").is_some(), "no leader: not deleted yet");

    c.namespace(LEASE_NS).expect("lease namespace");
    wait_for("the leader to delete the expired route", DEADLINE, || {
        c.route("pr-42").is_none()
    });
    // The agent logs the deletion once the API server has answered it, which can be just
    // after the test sees the route gone.
    wait_for("the leader's log of the deletion", DEADLINE, || {
        agent.log_text().contains("deleted expired SandboxRoute")
    });
    // This run used every kind of call the agent makes (a lease renewal included).
    wait_for("a lease renewal", DEADLINE, || {
        api_calls(&c.api).contains(&(
            "coordination.k8s.io".into(),
            "leases".into(),
            "update".into(),
        ))
    });
    assert_rbac_matches(&c, true);
}

#[test]
fn bad_routes_get_their_condition_and_affect_nothing_else() {
    let Some((c, n)) = world("kube_bad_routes", true) else {
        return;
    };
    // A sandbox-labelled pod in another namespace, on pod 3's address (reviews-v3): a
    // cross-namespace fork that worked would show up as "reviews-v3".
    c.sandbox_pod("other", "intruder", n.ip(3), "pr-x");
    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));
    let agent = n.start_agent("node-a", &[]);
    wait_for("status Ready", DEADLINE, || {
        c.route_reason("pr-42").as_deref() == Some("EndpointsReady")
    });
    let sorted = |mut v: Vec<(SocketAddr, u32)>| {
        v.sort();
        v
    };
    let good = sorted(n.steered());
    assert!(!good.is_empty());
    // Strictly newer creationTimestamps (whole seconds), so the duplicate below loses on age
    // even though its name sorts first.
    std::thread::sleep(Duration::from_millis(1100));

    let sel = |labels: serde_json::Value| json!({ "selector": labels });
    let bad = [
        (
            "unknown-service",
            json!({ "routingKey": "k1", "forks": [{ "service": "nope", "to": sel(json!({ "shunt.dev/sandbox": "pr-42" })) }] }),
            "ServiceNotFound",
        ),
        (
            "empty-selector",
            json!({ "routingKey": "k2", "forks": [{ "service": "reviews", "to": sel(json!({})) }] }),
            "InvalidSelector",
        ),
        (
            "no-sandbox-label",
            json!({ "routingKey": "k3", "forks": [{ "service": "reviews", "to": sel(json!({ "app": "reviews-v2" })) }] }),
            "InvalidSelector",
        ),
        (
            "a-duplicate",
            selector_spec("pr-42", "reviews", "pr-42-b"),
            "DuplicateKey",
        ),
        (
            "cross-ns-service",
            json!({ "routingKey": "k4", "forks": [{ "service": "reviews", "to": { "service": "other/reviews" } }] }),
            "CrossNamespace",
        ),
        (
            "cross-ns-selector",
            selector_spec("pr-x", "reviews", "pr-x"),
            "CrossNamespace",
        ),
        (
            "bad-key",
            selector_spec("bad key!", "reviews", "pr-42"),
            "InvalidKey",
        ),
    ];
    for (name, spec, _) in &bad {
        c.sandbox_route(name, spec.clone());
    }
    for (name, _, reason) in &bad {
        wait_for(&format!("{name}: {reason}"), DEADLINE, || {
            c.route_reason(name).as_deref() == Some(*reason)
        });
        let st = &c.route(name).unwrap()["status"];
        assert_eq!(st["conditions"][0]["status"], "False", "{name}: {st}");
        assert!(
            !st["conditions"][0]["message"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{name}: {st}"
        );
    }
    // The good route is untouched, and nothing else got steered.
    assert_eq!(c.route_reason("pr-42").as_deref(), Some("EndpointsReady"));
    assert_eq!(sorted(n.steered()), good);
    assert_eq!(
        n.served_by(n.reviews_endpoint(), Some("pr-42")),
        "reviews-v2"
    );
    assert_eq!(
        n.served_by(n.reviews_endpoint(), Some("pr-x")),
        "reviews-v1"
    );
    assert_eq!(n.served_by(n.reviews_endpoint(), None), "reviews-v1");
    let (_, routes) = agent.debug_get("/routes").expect("/routes");
    assert!(routes.contains("DuplicateKey"), "{routes}");
}
