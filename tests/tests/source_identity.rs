//! Source identity: once a Service is forked, its upstream connections still come from the
//! client pod's own address (the proxy makes them inside the pod's network namespace), so
//! NetworkPolicy, access logs and per-client limits see the client pod, not the node.
//! Real agent, real eBPF capture, real sockets, an nftables rule standing in for NetworkPolicy.
use std::{net::IpAddr, time::Duration};

use serde_json::{Value, json};
use tests::{
    bins,
    harness::AgentProc,
    routes_fixture::{POD_PORT, RoutesSpec},
    routing_world::{World, reviews},
    source_world::{NodePodSpec, Outcome, admit_only, call, routes_with_node_pods},
};

/// The routing world with its default routes spec (`reviews` forked under `pr-42`).
fn world(test: &str) -> Option<World> {
    World::new(test, bins!(), RoutesSpec::default())
}

/// Pod 0 is the client, pod 4 another pod of the node; both are listed with their namespaces.
const NODE_PODS: [NodePodSpec; 2] = [(0, "front", "client"), (4, "shop", "ratings-v2")];

fn unkeyed() -> Value {
    json!({})
}

fn keyed() -> Value {
    json!({ "baggage": "sd-routing-key=pr-42" })
}

fn served(by: &str, peer: impl Into<IpAddr>) -> Outcome {
    Outcome::Served {
        by: by.to_string(),
        peer: peer.into(),
    }
}

fn write_routes(w: &World, forks: bool) {
    let yaml = routes_with_node_pods(&w.env.topo, &RoutesSpec::default(), forks, &NODE_PODS);
    std::fs::write(&w.routes, yaml).expect("writing the routes file");
}

/// The decision log's records for requests from `client`.
fn decisions_from(agent: &AgentProc, client: IpAddr) -> Vec<Value> {
    let (_, body) = agent.debug_get("/decisions").expect("decisions");
    let all: Vec<Value> = serde_json::from_str(&body).expect("decisions JSON");
    all.into_iter()
        .filter(|d| {
            d["client"]
                .as_str()
                .and_then(|c| c.parse::<std::net::SocketAddr>().ok())
                .is_some_and(|c| c.ip() == client)
        })
        .collect()
}

#[test]
fn network_policy_sees_the_client_pod_not_the_node() {
    if !tests::source_world::nft_available("network_policy_sees_the_client_pod_not_the_node") {
        return;
    }
    let Some(w) = world("network_policy_sees_the_client_pod_not_the_node") else {
        return;
    };
    let env = &w.env;
    let client = env.topo.pods[0].ip4;
    // reviews v1 (baseline) and v2 (the sandbox) admit only the client pod on the service port.
    for backend in [1, 2] {
        admit_only(
            &env.topo.pods[backend].netns,
            client,
            POD_PORT,
            &env.run.path,
        );
    }
    let v1 = env.topo.pods[1].addr4(POD_PORT);

    // No fork on reviews: nothing is steered, every client goes direct, as without Shunt.
    write_routes(&w, false);
    let mut agent = w.agent(&[]);
    for headers in [unkeyed(), keyed()] {
        assert_eq!(
            call(env, 0, v1, false, headers.clone()),
            served("reviews-v1", client),
            "no fork, from the client pod, {headers}"
        );
        assert_eq!(
            call(env, 4, v1, false, headers.clone()),
            Outcome::Refused,
            "no fork, from another pod, {headers}"
        );
    }
    agent.terminate(Duration::from_secs(15));

    // reviews forked: every connection to it goes through the proxy, keyed or not, and the
    // policy still tells the two pods apart.
    write_routes(&w, true);
    let mut agent = w.agent(&[]);
    for dst in [reviews(), v1] {
        assert_eq!(
            call(env, 0, dst, false, unkeyed()),
            served("reviews-v1", client),
            "fork, unkeyed, from the client pod, to {dst}"
        );
        assert_eq!(
            call(env, 0, dst, false, keyed()),
            served("reviews-v2", client),
            "fork, keyed, from the client pod, to {dst}"
        );
        for headers in [unkeyed(), keyed()] {
            assert_eq!(
                call(env, 4, dst, false, headers.clone()),
                Outcome::Refused,
                "fork, from another pod, to {dst}, {headers}"
            );
        }
    }
    let from_client = decisions_from(&agent, client.into());
    assert!(!from_client.is_empty());
    for d in &from_client {
        assert_eq!(d["source"], "pod", "{d}");
    }
    assert_eq!(agent.metric("shunt_source_netns_fallbacks_total"), 0.0);
    agent.terminate(Duration::from_secs(15));

    // What it was before source identity (and is with --upstream-source node): the forked
    // Service's traffic comes from the node, so the policy refuses everyone.
    let _agent = w.agent(&["--upstream-source", "node"]);
    for headers in [unkeyed(), keyed()] {
        assert_eq!(
            call(env, 0, reviews(), false, headers.clone()),
            Outcome::Refused,
            "--upstream-source node, from the client pod, {headers}"
        );
    }
}

#[test]
fn sandbox_sees_the_client_pod_address() {
    let Some(w) = world("sandbox_sees_the_client_pod_address") else {
        return;
    };
    let env = &w.env;
    let client = env.topo.pods[0].ip4;
    write_routes(&w, true);
    let agent = w.agent(&[]);
    for h2 in [false, true] {
        assert_eq!(
            call(env, 0, reviews(), h2, keyed()),
            served("reviews-v2", client),
            "keyed, h2c: {h2}"
        );
        assert_eq!(
            call(env, 0, reviews(), h2, unkeyed()),
            served("reviews-v1", client),
            "unkeyed, h2c: {h2}"
        );
    }
    let from_client = decisions_from(&agent, client.into());
    assert_eq!(from_client.len(), 4, "{from_client:?}");
    for d in &from_client {
        assert_eq!(d["source"], "pod", "{d}");
    }
    assert_eq!(agent.metric("shunt_source_netns_fallbacks_total"), 0.0);
}

#[test]
fn namespace_that_cannot_be_entered_falls_back_to_the_node_address() {
    let Some(w) = world("namespace_that_cannot_be_entered_falls_back_to_the_node_address") else {
        return;
    };
    let env = &w.env;
    let client = env.topo.pods[0].ip4;
    write_routes(&w, true);
    // The agent without CAP_SYS_ADMIN (only what capture needs), so setns() into the pod's
    // namespace fails with EPERM. The bpffs is mounted beforehand, as on a node.
    std::fs::create_dir_all(env.run.bpffs()).expect("bpffs dir");
    agent::capture::mount_bpffs(&env.run.bpffs()).expect("mounting bpffs");
    let wrapper: Vec<String> = [
        "setpriv",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all,+bpf,+net_admin",
        "--",
    ]
    .map(String::from)
    .to_vec();
    let mut args = env.agent_args();
    args.extend(["--routes".to_string(), w.routes.display().to_string()]);
    let agent = env.start_agent_wrapped(&wrapper, &args, None);

    // Fail open: the requests are served, from the node's address on the backends' links.
    assert_eq!(
        call(env, 0, reviews(), false, keyed()),
        served("reviews-v2", env.topo.pods[2].node_ip4),
    );
    assert_eq!(
        call(env, 0, reviews(), false, unkeyed()),
        served("reviews-v1", env.topo.pods[1].node_ip4),
    );
    let from_client = decisions_from(&agent, client.into());
    assert_eq!(from_client.len(), 2, "{from_client:?}");
    for d in &from_client {
        assert_eq!(d["source"], "node_fallback", "{d}");
    }
    assert_eq!(agent.metric("shunt_source_netns_fallbacks_total"), 2.0);
    let log = agent.log_text();
    assert!(
        log.contains("cannot enter the client pod's network namespace"),
        "{log}"
    );
}

/// Cluster mode: the agent learns the client pod (UID, address) from its node's Pod watch and
/// reaches its namespace through the pod's cgroup (kubelet's cgroupfs layout, Burstable), a
/// process in one of its containers' cgroups (running as 65535, as the pause container does),
/// and `/proc/PID/ns/net`.
#[test]
fn cluster_pods_are_found_through_their_cgroup() {
    use tests::kube_world::{FakeCluster, KubeNode, NS, REVIEWS_IP, SERVICE_PORT, wait_for};
    const NODE: &str = "node-a";
    let test = "cluster_pods_are_found_through_their_cgroup";
    if !tests::kernel::available(test) {
        return;
    }
    let c = FakeCluster::start(true).expect("fake API server");
    let Some(n) = KubeNode::new(test, &c, bins!()) else {
        return;
    };
    n.standard_objects(&c);
    c.sandbox_route(
        "pr-42",
        tests::kube_world::selector_spec("pr-42", "reviews", "pr-42"),
    );
    let client = n.ip(0);
    let created = c.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "client", "namespace": NS, "labels": { "app": "client" } },
        "spec": { "nodeName": NODE, "containers": [{ "name": "app", "image": "app:1" }] },
    }));
    let uid = created["metadata"]["uid"]
        .as_str()
        .expect("the server gives the pod a UID")
        .to_string();
    c.pod_ready(NS, "client", client, true);
    // The captured cgroup stands for kubelet's `kubepods` (cgroupfs driver).
    let container = n
        .env
        .cgroup
        .descendant(&format!("burstable/pod{uid}/container-pause"))
        .expect("the pod's cgroup");
    let mut pause = std::process::Command::new("setpriv");
    pause.args([
        "--reuid",
        "65535",
        "--regid",
        "65535",
        "--clear-groups",
        "sleep",
        "120",
    ]);
    let _pause = tests::process::spawn_in(
        "pause",
        pause,
        Some(&n.env.topo.pods[0].netns),
        Some(&container),
    )
    .expect("the pod's pause process");

    let agent = n.start_agent(NODE, &[]);
    let vip = std::net::SocketAddr::from((REVIEWS_IP, SERVICE_PORT));
    wait_for("reviews steered", Duration::from_secs(15), || {
        n.is_steered(vip)
    });
    // Until the Pod watch delivered the client, its connections leave from the node.
    wait_for(
        "the sandbox sees the client pod",
        Duration::from_secs(15),
        || call(&n.env, 0, vip, false, keyed()) == served("reviews-v2", client),
    );
    assert_eq!(
        call(&n.env, 0, vip, true, unkeyed()),
        served("reviews-v1", client)
    );
    assert_eq!(agent.metric("shunt_source_netns_fallbacks_total"), 0.0);
}
