//! Tenants isolated, with the Kubernetes source: a namespace steers only what it owns, and the
//! clients of a namespace can be kept from carrying keys. The real agent (`shunt run --kube`)
//! with real BPF maps in a netns topology, against the fake API server. See `tests::kube_world`
//! for the layout (pod 0 client, pod 1 reviews-v1, pod 2 reviews-v2 (pr-42), pod 3 reviews-v3,
//! pod 4 ratings-v1, pod 5 ratings-v2).
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use serde_json::{Value, json};
use tests::{
    bins,
    kube_world::{
        FakeCluster, KubeNode, NS, POD_PORT, REVIEWS_IP, SERVICE_PORT, selector_spec,
        slice_pod_name, wait_for,
    },
};

const DEADLINE: Duration = Duration::from_secs(15);
const NODE: &str = "node-a";
const EVIL: &str = "evil";
const BAIT_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 66);

fn world(test: &str) -> Option<(FakeCluster, KubeNode)> {
    tests::kube_world::standard_world(test, true, bins!())
}

/// A selector-less Service `name` in `namespace` with the `http` port.
fn bare_service(c: &FakeCluster, namespace: &str, name: &str, ip: Ipv4Addr) {
    c.create(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "clusterIP": ip.to_string(),
            "ports": [{ "name": "http", "port": SERVICE_PORT, "targetPort": "http" }],
        },
    }));
}

/// A hand-written EndpointSlice of `service` whose `http` port is `port`.
fn hand_slice(
    c: &FakeCluster,
    namespace: &str,
    service: &str,
    name: &str,
    port: u16,
    endpoints: Vec<Value>,
) {
    c.create(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": namespace,
                      "labels": { "kubernetes.io/service-name": service } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": port, "protocol": "TCP" }],
        "endpoints": endpoints,
    }));
}

fn endpoint(ip: Ipv4Addr, target_ref: Option<Value>) -> Value {
    let mut e = json!({ "addresses": [ip.to_string()], "conditions": { "ready": true } });
    if let Some(t) = target_ref {
        e["targetRef"] = t;
    }
    e
}

fn pod_ref(namespace: &str, name: &str) -> Option<Value> {
    Some(json!({ "kind": "Pod", "namespace": namespace, "name": name }))
}

/// Waits for the route's `Ready` reason to be `reason`; its message.
fn wait_reason(c: &FakeCluster, namespace: &str, route: &str, reason: &str) -> String {
    let mut last = None;
    wait_for(&format!("{namespace}/{route} {reason}"), DEADLINE, || {
        last = c.route_condition(namespace, route);
        last.as_ref().is_some_and(|(r, _)| r == reason)
    });
    last.map(|(_, m)| m).unwrap_or_default()
}

#[test]
fn foreign_endpoint_addresses_are_never_steered() {
    let test = "foreign_endpoint_addresses_are_never_steered";
    let Some((c, n)) = world(test) else {
        return;
    };
    // shop's reviews pod is on this node: the agent knows its Pod object.
    c.node_pod(NS, &slice_pod_name("reviews", n.ip(1)), NODE, n.ip(1));
    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));

    // evil: a selector-less Service whose slices list shop's reviews pod under an evil name,
    // shop's ratings pod, a node address and the API server; evil forks it to its own pod.
    c.namespace(EVIL).unwrap();
    bare_service(&c, EVIL, "bait", BAIT_IP);
    let node_addr = n.env.topo.pods[0].node_ip4;
    let api = c.api.addr();
    let api_ip = match api.ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("API server on {other}"),
    };
    hand_slice(
        &c,
        EVIL,
        "bait",
        "bait-pods",
        POD_PORT,
        vec![
            endpoint(n.ip(1), pod_ref(EVIL, "bait-1")),
            endpoint(n.ip(4), pod_ref(NS, "ratings-v1")),
            endpoint(node_addr, None),
        ],
    );
    hand_slice(
        &c,
        EVIL,
        "bait",
        "bait-api",
        api.port(),
        vec![endpoint(api_ip, None)],
    );
    c.sandbox_pod(EVIL, "bait-v2", n.ip(3), "evil-1");
    c.route_in(
        EVIL,
        "evil-1",
        json!({ "routingKey": "evil-1",
                "forks": [{ "service": "bait", "to": { "selector": { "shunt.dev/sandbox": "evil-1" } } }] }),
    );

    let _agent = n.start_agent(NODE, &[]);
    let shop_pod = n.reviews_endpoint();
    wait_for("shop's reviews steered", DEADLINE, || {
        n.is_steered(SocketAddr::from((REVIEWS_IP, SERVICE_PORT))) && n.is_steered(shop_pod)
    });
    let message = wait_reason(&c, EVIL, "evil-1", "ForeignEndpoints");

    // None of evil's addresses is steered on evil's behalf: shop's pod is steered for shop's
    // own route only, the rest not at all.
    let shop_id = agent::routes::service_id(NS, "reviews");
    let steered = n.steered();
    for (addr, id) in &steered {
        assert_ne!(
            *id,
            agent::routes::service_id(EVIL, "bait"),
            "{addr} steered for evil: {steered:?}"
        );
    }
    assert!(steered.contains(&(shop_pod, shop_id)), "{steered:?}");
    for foreign in [
        n.ratings_endpoint(),
        SocketAddr::from((node_addr, POD_PORT)),
        api,
        SocketAddr::from((BAIT_IP, SERVICE_PORT)),
    ] {
        assert!(!n.is_steered(foreign), "{foreign} steered: {steered:?}");
    }
    // The status names each refused address.
    for ip in [
        n.ip(1).to_string(),
        n.ip(4).to_string(),
        node_addr.to_string(),
        api_ip.to_string(),
    ] {
        assert!(
            message.contains(&format!("{ip} ")),
            "{ip} not named: {message}"
        );
    }

    // The other team's traffic, with evil's key, is untouched; shop's own key still works.
    for _ in 0..3 {
        assert_eq!(n.served_by(shop_pod, Some("evil-1")), "reviews-v1");
        assert_eq!(
            n.served_by(n.ratings_endpoint(), Some("evil-1")),
            "ratings-v1"
        );
    }
    assert_eq!(n.served_by(shop_pod, Some("pr-42")), "reviews-v2");
}

#[test]
fn sandbox_target_outside_the_route_namespace_is_refused() {
    let test = "sandbox_target_outside_the_route_namespace_is_refused";
    let Some((c, n)) = world(test) else {
        return;
    };
    // A sandbox Service in shop whose slice names shop pods that are not: pod 4 is the Pod
    // other/ledger (on this node), and the node address has no Pod at all.
    c.node_pod("other", "ledger", NODE, n.ip(4));
    bare_service(&c, NS, "reviews-pr-7", Ipv4Addr::new(10, 96, 100, 77));
    let node_addr = n.env.topo.pods[0].node_ip4;
    hand_slice(
        &c,
        NS,
        "reviews-pr-7",
        "reviews-pr-7-abcde",
        POD_PORT,
        vec![
            endpoint(n.ip(4), pod_ref(NS, "reviews-pr-7-a")),
            endpoint(node_addr, pod_ref(NS, "reviews-pr-7-b")),
        ],
    );
    c.sandbox_route(
        "pr-7",
        json!({ "routingKey": "pr-7",
                "forks": [{ "service": "reviews", "to": { "service": "reviews-pr-7" } }] }),
    );

    let _agent = n.start_agent(NODE, &[]);
    let vip = SocketAddr::from((REVIEWS_IP, SERVICE_PORT));
    wait_for("reviews steered", DEADLINE, || n.is_steered(vip));
    let message = wait_reason(&c, NS, "pr-7", "ForeignEndpoints");
    for ip in [n.ip(4).to_string(), node_addr.to_string()] {
        assert!(
            message.contains(&format!("{ip} ")),
            "{ip} not named: {message}"
        );
    }
    // Keyed requests never reach the other namespace's pod (nor the node): no sandbox
    // endpoint is left, so the fallback (baseline) applies.
    for _ in 0..4 {
        assert_eq!(n.served_by(vip, Some("pr-7")), "reviews-v1");
    }
}

#[test]
fn keys_from_a_stripped_namespace_are_removed() {
    let test = "keys_from_a_stripped_namespace_are_removed";
    let Some((c, n)) = world(test) else {
        return;
    };
    c.sandbox_route("pr-42", selector_spec("pr-42", "reviews", "pr-42"));
    // Pod 0 is the ingress controller's pod on this node; pod 4 is shop's ratings pod.
    c.namespace("ingress").unwrap();
    c.node_pod("ingress", "ingress-nginx-1", NODE, n.ip(0));
    c.node_pod(NS, "ratings-v1", NODE, n.ip(4));
    let _agent = n.start_agent(NODE, &["--strip-keys-from-namespace", "ingress"]);
    let vip = SocketAddr::from((REVIEWS_IP, SERVICE_PORT));
    wait_for("reviews steered", DEADLINE, || n.is_steered(vip));
    // The ingress pod is known once the node Pod watch delivered it: a keyed request from
    // another client reaches the sandbox by then (both arrive in the same snapshot).
    wait_for("the sandbox serves keyed requests", DEADLINE, || {
        http_from(&n, 4, vip, "sd-routing-key=pr-42")["served_by"] == "reviews-v2"
    });

    for h2 in [false, true] {
        let line = http_from_with(&n, 0, vip, "sd-routing-key=pr-42,other=1", h2);
        assert_eq!(line["served_by"], "reviews-v1", "h2 {h2}: {line}");
        assert_eq!(
            line["served"]["headers"]["baggage"], "other=1",
            "h2 {h2}: the backend saw the key: {line}"
        );
    }
    // Another namespace's pod keeps its keys.
    let line = http_from(&n, 4, vip, "sd-routing-key=pr-42");
    assert_eq!(line["served_by"], "reviews-v2", "{line}");

    // The ingress pod goes away: its address carries keys again.
    c.api
        .delete("v1", "Pod", Some("ingress"), "ingress-nginx-1")
        .expect("deleting the ingress pod");
    wait_for("the address no longer stripped", DEADLINE, || {
        http_from(&n, 0, vip, "sd-routing-key=pr-42")["served_by"] == "reviews-v2"
    });
}

/// One HTTP/1.1 GET from pod `pod` to `dst` with this `baggage`; the peer's report.
fn http_from(n: &KubeNode, pod: usize, dst: SocketAddr, baggage: &str) -> Value {
    http_from_with(n, pod, dst, baggage, false)
}

fn http_from_with(n: &KubeNode, pod: usize, dst: SocketAddr, baggage: &str, h2: bool) -> Value {
    let req = json!([{ "path": "/", "headers": { "baggage": baggage } }]).to_string();
    let dst = dst.to_string();
    let mut args = vec!["http", dst.as_str()];
    if h2 {
        args.push("--h2");
    }
    args.push(req.as_str());
    n.env
        .peer(pod, &args)
        .into_iter()
        .next()
        .unwrap_or(Value::Null)
}
