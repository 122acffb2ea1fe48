//! Tests of [`RouteTable::compute`] and its lookups.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use jiff::Timestamp;

use crate::routes::test_support::{ip, key, sa, shop_pod};

use super::{ids::assign_ids, *};
use crate::routes::{
    ClusterState, EndpointAddr, Fallback, ForkSpec, ForkTarget, NodePod, Pod, PortRef, RouteReason,
    SANDBOX_LABEL, SandboxRouteObj, SandboxRouteSpec, Service, ServicePort, TargetPort,
};

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn now() -> Timestamp {
    ts("2030-01-01T00:00:00Z")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn http_port(port: u16, target: TargetPort) -> ServicePort {
    ServicePort {
        name: Some("http".into()),
        port,
        target_port: target,
    }
}

fn endpoint(addr: &str, port: u16, ready: bool) -> EndpointAddr {
    EndpointAddr {
        ip: ip(addr),
        ready,
        ports: [("http".to_string(), port)].into(),
        target_ref: shop_pod(addr),
        node_name: None,
    }
}

/// `reviews` in `shop`: ClusterIP 10.96.0.7:9080 → endpoints on 8080.
fn reviews() -> Service {
    Service {
        always_steer: false,
        namespace: "shop".into(),
        name: "reviews".into(),
        addresses: vec![ip("10.96.0.7")],
        ports: vec![http_port(9080, TargetPort::Name("http".into()))],
        endpoints: vec![
            endpoint("10.1.0.1", 8080, true),
            endpoint("10.1.0.2", 8080, true),
        ],
        client_ip_affinity: None,
        internal_traffic_policy: Default::default(),
    }
}

fn ratings() -> Service {
    Service {
        always_steer: false,
        namespace: "shop".into(),
        name: "ratings".into(),
        addresses: vec![ip("10.96.0.8")],
        ports: vec![http_port(9080, TargetPort::Number(8080))],
        endpoints: vec![endpoint("10.1.1.1", 8080, true)],
        client_ip_affinity: None,
        internal_traffic_policy: Default::default(),
    }
}

fn node_pod(namespace: &str, name: &str, addr: &str) -> NodePod {
    NodePod {
        namespace: namespace.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        ips: vec![ip(addr)],
        labels: BTreeMap::new(),
        netns: None,
    }
}

fn sandbox_pod(name: &str, addr: &str, key: &str, http: u16) -> Pod {
    Pod {
        namespace: "shop".into(),
        name: name.into(),
        ips: vec![ip(addr)],
        labels: labels(&[("app", "reviews-sbx"), (SANDBOX_LABEL, key)]),
        ready: true,
        container_ports: [("http".to_string(), http)].into(),
    }
}

fn selector_fork(service: &str, key: &str) -> ForkSpec {
    ForkSpec {
        service: service.into(),
        to: ForkTarget {
            selector: Some(labels(&[("app", "reviews-sbx"), (SANDBOX_LABEL, key)]).into()),
            service: None,
        },
        ports: None,
    }
}

fn route(name: &str, key: &str, forks: Vec<ForkSpec>) -> SandboxRouteObj {
    SandboxRouteObj {
        namespace: "shop".into(),
        name: name.into(),
        creation_timestamp: ts("2029-01-01T00:00:00Z"),
        generation: 3,
        spec: SandboxRouteSpec {
            routing_key: key.into(),
            forks,
            fallback: Fallback::Baseline,
            expires_at: None,
            inject_key: true,
        },
    }
}

/// The standard state: reviews and ratings, one sandbox pod for pr-42 forking reviews.
fn state() -> ClusterState {
    ClusterState {
        services: vec![reviews(), ratings()],
        pods: vec![sandbox_pod("reviews-pr-42", "10.2.0.1", "pr-42", 8080)],
        routes: vec![route(
            "pr-42",
            "pr-42",
            vec![selector_fork("reviews", "pr-42")],
        )]
        .into_iter()
        .map(std::sync::Arc::new)
        .collect(),
        node: None,
        node_pods: Vec::new(),
        endpoint_trust: Default::default(),
        sources: Vec::new(),
    }
}

fn reviews_id() -> u32 {
    service_id("shop", "reviews")
}

#[test]
fn selector_fork_routes_key_to_ready_sandbox_pods() {
    let (t, st) = RouteTable::compute(&state(), now());
    assert_eq!(st[0].reason, RouteReason::EndpointsReady, "{st:?}");
    assert!(st[0].ready && st[0].applied);
    assert_eq!(st[0].forks[0].ready_endpoints, 1);
    let fork = t.fork(reviews_id(), &key("pr-42")).expect("fork");
    assert_eq!(&**fork.route(), "shop/pr-42");
    assert_eq!(fork.fallback(), Fallback::Baseline);
    assert!(fork.covers(9080));
    assert_eq!(fork.pick_sandbox(9080), Some(sa("10.2.0.1:8080")));
    assert!(t.fork(reviews_id(), &key("pr-43")).is_none());
    assert!(
        t.fork(service_id("shop", "ratings"), &key("pr-42"))
            .is_none()
    );
}

#[test]
fn service_for_matches_cluster_ip_and_baseline_endpoints() {
    let (t, _) = RouteTable::compute(&state(), now());
    for dst in ["10.96.0.7:9080", "10.1.0.1:8080", "10.1.0.2:8080"] {
        let (svc, port) = t.service_for(sa(dst)).expect(dst);
        assert_eq!(
            (svc.namespace.as_str(), svc.name.as_str()),
            ("shop", "reviews")
        );
        assert_eq!(svc.id, reviews_id());
        assert_eq!(port.port, 9080);
        assert_eq!(port.name.as_deref(), Some("http"));
    }
    assert!(t.service_for(sa("10.96.0.7:9081")).is_none());
    assert!(t.service_for(sa("10.9.9.9:9080")).is_none());
}

#[test]
fn ipv4_mapped_destination_matches_ipv4_service() {
    let (t, _) = RouteTable::compute(&state(), now());
    let (svc, _) = t
        .service_for(sa("[::ffff:10.96.0.7]:9080"))
        .expect("mapped");
    assert_eq!(svc.name, "reviews");
}

#[test]
fn only_forked_services_are_steered() {
    let (t, _) = RouteTable::compute(&state(), now());
    let id = reviews_id();
    let want: BTreeMap<SocketAddr, u32> = [
        (sa("10.96.0.7:9080"), id),
        (sa("10.1.0.1:8080"), id),
        (sa("10.1.0.2:8080"), id),
    ]
    .into();
    assert_eq!(t.steered(), &want);
    // ratings is known (service_for works) but has no fork, so it is not steered.
    assert!(t.service_for(sa("10.96.0.8:9080")).is_some());
}

#[test]
fn no_routes_means_nothing_steered() {
    let mut s = state();
    s.routes.clear();
    let (t, st) = RouteTable::compute(&s, now());
    assert!(t.steered().is_empty());
    assert!(st.is_empty());
    assert!(t.routes().is_empty());
}

#[test]
fn dual_stack_service_steers_both_families() {
    let mut s = state();
    s.services[0].addresses.push(ip("fd00::7"));
    s.services[0].endpoints.push(EndpointAddr {
        ip: ip("fd00:1::1"),
        ready: true,
        ports: [("http".to_string(), 8080)].into(),
        target_ref: shop_pod("fd00:1::1"),
        node_name: None,
    });
    let (t, _) = RouteTable::compute(&s, now());
    let id = reviews_id();
    for dst in ["10.96.0.7:9080", "[fd00::7]:9080", "[fd00:1::1]:8080"] {
        assert_eq!(t.steered().get(&sa(dst)), Some(&id), "{dst}");
        assert_eq!(t.service_for(sa(dst)).map(|(s, _)| s.id), Some(id), "{dst}");
    }
    assert!(t.baseline(id, 9080).contains(&sa("[fd00:1::1]:8080")));
}

#[test]
fn named_target_port_resolves_per_sandbox_pod() {
    let mut s = state();
    // Two sandbox pods name their container port "http" but number it differently.
    s.pods = vec![
        sandbox_pod("a", "10.2.0.1", "pr-42", 8080),
        sandbox_pod("b", "10.2.0.2", "pr-42", 18080),
    ];
    let (t, st) = RouteTable::compute(&s, now());
    let fork = t.fork(reviews_id(), &key("pr-42")).expect("fork");
    assert_eq!(
        fork.endpoints(9080),
        [sa("10.2.0.1:8080"), sa("10.2.0.2:18080")]
    );
    assert_eq!(st[0].forks[0].ready_endpoints, 2);
}

#[test]
fn sandbox_pod_without_the_named_port_is_skipped() {
    let mut s = state();
    let mut p = sandbox_pod("b", "10.2.0.2", "pr-42", 8080);
    p.container_ports.clear();
    s.pods.push(p);
    let (t, _) = RouteTable::compute(&s, now());
    let fork = t.fork(reviews_id(), &key("pr-42")).expect("fork");
    assert_eq!(fork.endpoints(9080), [sa("10.2.0.1:8080")]);
}

#[test]
fn numeric_target_port_applies_to_sandbox_pods() {
    let mut s = state();
    s.routes = vec![route(
        "r",
        "pr-42",
        vec![ForkSpec {
            service: "ratings".into(),
            ..selector_fork("ratings", "pr-42")
        }],
    )]
    .into_iter()
    .map(std::sync::Arc::new)
    .collect();
    let (t, _) = RouteTable::compute(&s, now());
    let fork = t
        .fork(service_id("shop", "ratings"), &key("pr-42"))
        .expect("fork");
    assert_eq!(fork.endpoints(9080), [sa("10.2.0.1:8080")]);
}

#[test]
fn unready_sandbox_pods_are_not_endpoints() {
    let mut s = state();
    s.pods[0].ready = false;
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::NoReadyEndpoints);
    assert!(!st[0].ready);
    // Still installed: the fallback decides, and Reject must keep rejecting.
    let fork = t.fork(reviews_id(), &key("pr-42")).expect("fork");
    assert!(fork.covers(9080));
    assert_eq!(fork.pick_sandbox(9080), None);
    assert!(t.steered().contains_key(&sa("10.96.0.7:9080")));
}

#[test]
fn reject_fallback_is_carried_to_the_fork() {
    let mut s = state();
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.fallback = Fallback::Reject;
    s.pods.clear();
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::NoReadyEndpoints);
    let fork = t.fork(reviews_id(), &key("pr-42")).expect("fork");
    assert_eq!(fork.fallback(), Fallback::Reject);
}

#[test]
fn baseline_lists_only_ready_endpoints_but_steers_all() {
    let mut s = state();
    s.services[0]
        .endpoints
        .push(endpoint("10.1.0.3", 8080, false));
    let (t, _) = RouteTable::compute(&s, now());
    let id = reviews_id();
    assert_eq!(
        t.baseline(id, 9080),
        [sa("10.1.0.1:8080"), sa("10.1.0.2:8080")]
    );
    assert!(t.steered().contains_key(&sa("10.1.0.3:8080")));
    assert!(t.baseline(id, 1).is_empty());
    assert!(t.baseline(12345, 9080).is_empty());
}

#[test]
fn round_robin_cycles_through_endpoints() {
    let (t, _) = RouteTable::compute(&state(), now());
    let id = reviews_id();
    let picks: Vec<_> = (0..4).filter_map(|_| t.pick_baseline(id, 9080)).collect();
    assert_eq!(
        picks,
        [
            sa("10.1.0.1:8080"),
            sa("10.1.0.2:8080"),
            sa("10.1.0.1:8080"),
            sa("10.1.0.2:8080")
        ]
    );
    assert_eq!(t.pick_baseline(id, 1), None);
}

#[test]
fn older_route_wins_duplicate_key() {
    let mut s = state();
    let mut newer = route("a-newer", "pr-42", vec![selector_fork("ratings", "pr-42")]);
    newer.creation_timestamp = ts("2029-06-01T00:00:00Z");
    // Listed first, named first, but younger: loses.
    s.routes.insert(0, newer.into());
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::DuplicateKey);
    assert!(st[0].message.contains("shop/pr-42"), "{}", st[0].message);
    assert!(!st[0].applied);
    assert_eq!(st[1].reason, RouteReason::EndpointsReady);
    assert!(t.fork(reviews_id(), &key("pr-42")).is_some());
    assert!(
        t.fork(service_id("shop", "ratings"), &key("pr-42"))
            .is_none()
    );
}

#[test]
fn same_age_duplicate_key_goes_to_name_order() {
    let mut s = state();
    s.routes.push(std::sync::Arc::new(route(
        "a-first",
        "pr-42",
        vec![selector_fork("ratings", "pr-42")],
    )));
    let (_, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::DuplicateKey); // "pr-42" sorts after "a-first"
    assert_eq!(st[1].reason, RouteReason::EndpointsReady);
}

#[test]
fn same_key_in_other_namespace_is_independent() {
    let mut s = state();
    let mut other = route("pr-42", "pr-42", vec![]);
    other.namespace = "books".into();
    s.routes.push(std::sync::Arc::new(other));
    let (_, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::EndpointsReady);
    assert_eq!(st[1].reason, RouteReason::EndpointsReady);
}

#[test]
fn invalid_route_does_not_block_a_valid_one_with_the_same_key() {
    let mut s = state();
    let mut bad = route("old-bad", "pr-42", vec![selector_fork("reviews", "pr-42")]);
    bad.creation_timestamp = ts("2020-01-01T00:00:00Z");
    bad.spec.forks[0].to.selector = Some(labels(&[("app", "reviews")]).into());
    s.routes.push(std::sync::Arc::new(bad));
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[1].reason, RouteReason::InvalidSelector);
    assert!(st[1].message.starts_with("forks[0].to.selector: "));
    assert_eq!(st[0].reason, RouteReason::EndpointsReady);
    assert!(t.fork(reviews_id(), &key("pr-42")).is_some());
}

#[test]
fn selector_without_sandbox_label_is_invalid() {
    let mut s = state();
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.forks[0]
        .to
        .selector = Some(labels(&[("app", "reviews-sbx")]).into());
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::InvalidSelector);
    assert!(!st[0].applied && !st[0].ready);
    assert!(t.steered().is_empty());
}

#[test]
fn invalid_key_route_affects_nothing_else() {
    let mut s = state();
    s.routes.push(std::sync::Arc::new(route(
        "bad",
        "bad key!",
        vec![selector_fork("ratings", "x")],
    )));
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[1].reason, RouteReason::InvalidKey);
    assert_eq!(st[0].reason, RouteReason::EndpointsReady);
    assert_eq!(t.steered().len(), 3);
    assert!(
        t.steered()
            .values()
            .all(|id| *id == service_id("shop", "reviews"))
    );
}

#[test]
fn expired_route_is_not_applied() {
    let mut s = state();
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.expires_at = Some(now());
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::Expired);
    assert!(t.fork(reviews_id(), &key("pr-42")).is_none());
    assert!(t.steered().is_empty());
    assert_eq!(t.next_expiry(), None);
}

#[test]
fn future_expiry_is_applied_and_reported_as_next_expiry() {
    let mut s = state();
    let at = ts("2030-01-02T00:00:00Z");
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.expires_at = Some(at);
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::EndpointsReady);
    assert_eq!(t.next_expiry(), Some(at));
}

#[test]
fn expired_older_route_lets_the_newer_one_claim_the_key() {
    let mut s = state();
    let mut old = route("old", "pr-42", vec![selector_fork("ratings", "pr-42")]);
    old.creation_timestamp = ts("2020-01-01T00:00:00Z");
    old.spec.expires_at = Some(ts("2029-12-31T00:00:00Z"));
    s.routes.push(std::sync::Arc::new(old));
    let (_, st) = RouteTable::compute(&s, now());
    assert_eq!(st[1].reason, RouteReason::Expired);
    assert_eq!(st[0].reason, RouteReason::EndpointsReady);
}

#[test]
fn missing_service_is_service_not_found_and_other_forks_apply() {
    let mut s = state();
    std::sync::Arc::make_mut(&mut s.routes[0])
        .spec
        .forks
        .push(selector_fork("details", "pr-42"));
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::ServiceNotFound);
    assert!(st[0].applied);
    assert_eq!(st[0].forks[1].reason, RouteReason::ServiceNotFound);
    assert_eq!(st[0].forks[0].reason, RouteReason::EndpointsReady);
    assert!(t.fork(reviews_id(), &key("pr-42")).is_some());
}

#[test]
fn cross_namespace_target_is_rejected() {
    let mut s = state();
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.forks[0].to = ForkTarget {
        selector: None,
        service: Some("books/reviews-pr-42".into()),
    };
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::CrossNamespace);
    assert!(!st[0].applied);
    assert!(t.steered().is_empty());
}

#[test]
fn selector_matching_only_other_namespace_is_cross_namespace() {
    let mut s = state();
    s.pods[0].namespace = "books".into();
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::CrossNamespace);
    assert!(st[0].message.contains("books"), "{}", st[0].message);
    // Installed with no endpoints: the other namespace's pods are never used.
    let fork = t.fork(reviews_id(), &key("pr-42")).expect("fork");
    assert!(fork.endpoints(9080).is_empty());
}

#[test]
fn service_target_uses_sandbox_service_endpoints() {
    let mut s = state();
    s.services.push(Service {
        always_steer: false,
        namespace: "shop".into(),
        name: "reviews-pr-42".into(),
        addresses: vec![ip("10.96.0.42")],
        ports: vec![http_port(9080, TargetPort::Name("http".into()))],
        endpoints: vec![
            endpoint("10.3.0.1", 18080, true),
            endpoint("10.3.0.2", 18080, false),
        ],
        client_ip_affinity: None,
        internal_traffic_policy: Default::default(),
    });
    // The sandbox Service's pods, as the agent knows them from the Pod objects.
    s.node_pods = ["10.3.0.1", "10.3.0.2"]
        .into_iter()
        .map(|a| node_pod("shop", shop_pod(a).expect("ref").name.as_str(), a))
        .collect();
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.forks[0].to = ForkTarget {
        selector: None,
        service: Some("reviews-pr-42".into()),
    };
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::EndpointsReady, "{st:?}");
    let fork = t.fork(reviews_id(), &key("pr-42")).expect("fork");
    assert_eq!(fork.endpoints(9080), [sa("10.3.0.1:18080")]);
    // The sandbox Service itself is not forked, so not steered.
    assert!(!t.steered().contains_key(&sa("10.96.0.42:9080")));
}

#[test]
fn missing_target_service_is_service_not_found() {
    let mut s = state();
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.forks[0].to = ForkTarget {
        selector: None,
        service: Some("reviews-pr-42".into()),
    };
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::ServiceNotFound);
    let fork = t.fork(reviews_id(), &key("pr-42")).expect("fork");
    assert_eq!(fork.pick_sandbox(9080), None);
}

#[test]
fn fork_ports_limit_forked_and_steered_ports() {
    let mut s = state();
    s.services[0].ports.push(ServicePort {
        name: Some("grpc".into()),
        port: 9090,
        target_port: TargetPort::Number(9090),
    });
    s.services[0].endpoints[0].ports.insert("grpc".into(), 9090);
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.forks[0].ports =
        Some(vec![PortRef::Name("http".into())]);
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::EndpointsReady);
    let fork = t.fork(reviews_id(), &key("pr-42")).expect("fork");
    assert!(fork.covers(9080));
    assert!(!fork.covers(9090));
    assert!(t.steered().contains_key(&sa("10.96.0.7:9080")));
    assert!(!t.steered().contains_key(&sa("10.96.0.7:9090")));
    assert!(!t.steered().contains_key(&sa("10.1.0.1:9090")));
    // Unforked ports are still recognised.
    assert_eq!(
        t.service_for(sa("10.1.0.1:9090")).map(|(_, p)| p.port),
        Some(9090)
    );
}

#[test]
fn unknown_fork_port_is_port_not_found() {
    let mut s = state();
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.forks[0].ports =
        Some(vec![PortRef::Number(1234)]);
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::PortNotFound);
    assert!(!st[0].applied);
    assert!(t.fork(reviews_id(), &key("pr-42")).is_none());
}

#[test]
fn shared_endpoint_prefers_the_forked_service() {
    let mut s = state();
    // "aaa" sorts first and selects the same pods as reviews.
    let mut other = reviews();
    other.name = "aaa".into();
    other.addresses = vec![ip("10.96.0.99")];
    s.services.push(other);
    let (t, _) = RouteTable::compute(&s, now());
    let id = reviews_id();
    assert_eq!(
        t.service_for(sa("10.1.0.1:8080")).map(|(s, _)| s.id),
        Some(id)
    );
    assert_eq!(t.steered().get(&sa("10.1.0.1:8080")), Some(&id));
    assert_eq!(
        t.service_for(sa("10.96.0.99:9080"))
            .map(|(s, _)| s.name.as_str()),
        Some("aaa")
    );
}

#[test]
fn service_ids_are_stable_when_services_come_and_go() {
    let (t1, _) = RouteTable::compute(&state(), now());
    let mut s = state();
    s.services.remove(1);
    s.services.insert(
        0,
        Service {
            always_steer: false,
            name: "details".into(),
            ..ratings()
        },
    );
    let (t2, _) = RouteTable::compute(&s, now());
    let id = |t: &RouteTable| t.service_for(sa("10.96.0.7:9080")).map(|(s, _)| s.id);
    assert_eq!(id(&t1), id(&t2));
    assert_eq!(id(&t1), Some(service_id("shop", "reviews")));
    assert_ne!(service_id("shop", "reviews"), 0);
}

#[test]
fn service_id_collisions_resolve_by_name_order() {
    // Find two names with the same FNV-1a hash (a birthday search over ~2^17 names).
    let mut seen: HashMap<u32, String> = HashMap::new();
    let (a, b) = (0..1_000_000)
        .map(|i| format!("svc-{i}"))
        .find_map(|n| {
            let h = service_id("ns", &n);
            seen.insert(h, n.clone()).map(|prev| (prev, n))
        })
        .expect("a collision");
    let (first, second) = if a < b { (a, b) } else { (b, a) };
    let ids = assign_ids([("ns", first.as_str()), ("ns", second.as_str())].into_iter());
    assert_eq!(ids[0], service_id("ns", &first));
    assert_ne!(ids[1], ids[0]);
    assert_ne!(ids[1], 0);
    // Input order does not matter: compute sorts by name before assigning.
    let svc = |name: &str, vip: &str| Service {
        always_steer: false,
        namespace: "ns".into(),
        name: name.into(),
        addresses: vec![ip(vip)],
        ports: vec![http_port(80, TargetPort::Number(80))],
        endpoints: vec![],
        client_ip_affinity: None,
        internal_traffic_policy: Default::default(),
    };
    let s1 = ClusterState {
        services: vec![svc(&first, "10.0.0.1"), svc(&second, "10.0.0.2")],
        ..Default::default()
    };
    let s2 = ClusterState {
        services: vec![svc(&second, "10.0.0.2"), svc(&first, "10.0.0.1")],
        ..Default::default()
    };
    let (t1, _) = RouteTable::compute(&s1, now());
    let (t2, _) = RouteTable::compute(&s2, now());
    for vip in ["10.0.0.1:80", "10.0.0.2:80"] {
        assert_eq!(
            t1.service_for(sa(vip)).map(|(s, _)| s.id),
            t2.service_for(sa(vip)).map(|(s, _)| s.id)
        );
    }
}

#[test]
fn statuses_follow_input_order_with_observed_generation() {
    let mut s = state();
    let mut second = route("zz", "pr-7", vec![selector_fork("ratings", "pr-7")]);
    second.generation = 9;
    s.routes.insert(0, second.into());
    let (_, st) = RouteTable::compute(&s, now());
    assert_eq!(st.len(), 2);
    assert_eq!((st[0].name.as_str(), st[0].observed_generation), ("zz", 9));
    assert_eq!(
        (st[1].name.as_str(), st[1].observed_generation),
        ("pr-42", 3)
    );
    assert_eq!(st[0].reason, RouteReason::NoReadyEndpoints);
    assert_eq!(st[1].condition_status(), "True");
}

#[test]
fn routes_view_lists_every_route_as_json() {
    let mut s = state();
    s.routes.push(std::sync::Arc::new(route(
        "bad",
        "bad key!",
        vec![selector_fork("ratings", "x")],
    )));
    let (t, _) = RouteTable::compute(&s, now());
    let views = t.routes();
    let names: Vec<_> = views.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["bad", "pr-42"]);
    let json = serde_json::to_value(t.routes()).expect("json");
    assert_eq!(json[0]["reason"], "InvalidKey");
    assert_eq!(json[1]["routingKey"], "pr-42");
    assert_eq!(json[1]["forks"][0]["serviceId"], reviews_id());
    assert_eq!(
        json[1]["forks"][0]["ports"][0]["endpoints"][0],
        "10.2.0.1:8080"
    );
    assert_eq!(json[1]["fallback"], "Baseline");
}

#[test]
fn two_forks_of_one_service_split_its_ports() {
    let mut s = state();
    s.services[0].ports.push(ServicePort {
        name: Some("grpc".into()),
        port: 9090,
        target_port: TargetPort::Number(9090),
    });
    let mut grpc_pod = sandbox_pod("grpc", "10.2.0.9", "pr-42", 8080);
    grpc_pod.labels.insert("app".into(), "grpc-sbx".into());
    s.pods.push(grpc_pod);
    let mut http = selector_fork("reviews", "pr-42");
    http.ports = Some(vec![PortRef::Number(9080)]);
    let mut grpc = selector_fork("reviews", "pr-42");
    grpc.ports = Some(vec![PortRef::Name("grpc".into())]);
    grpc.to.selector = Some(labels(&[("app", "grpc-sbx"), (SANDBOX_LABEL, "pr-42")]).into());
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.forks = vec![http, grpc];
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(st[0].reason, RouteReason::EndpointsReady, "{st:?}");
    let fork = t.fork(reviews_id(), &key("pr-42")).expect("fork");
    assert_eq!(fork.endpoints(9080), [sa("10.2.0.1:8080")]);
    assert_eq!(fork.endpoints(9090), [sa("10.2.0.9:9090")]);
}

#[test]
fn always_steer_service_vips_are_steered_without_forks() {
    let mut svc = ratings();
    svc.always_steer = true;
    let state = ClusterState {
        services: vec![svc.clone()],
        pods: vec![],
        routes: vec![].into_iter().map(std::sync::Arc::new).collect(),
        node: None,
        node_pods: Vec::new(),
        endpoint_trust: Default::default(),
        sources: Vec::new(),
    };
    let (table, _) = RouteTable::compute(&state, jiff::Timestamp::now());
    let vips: Vec<_> = svc
        .addresses
        .iter()
        .map(|ip| SocketAddr::new(*ip, svc.ports[0].port))
        .collect();
    assert!(!vips.is_empty());
    for vip in &vips {
        assert!(table.steered().contains_key(vip), "{vip} steered");
        assert_eq!(
            table
                .decide(
                    crate::routes::OrigDstAddr(*vip),
                    crate::routes::ServiceId::NONE,
                    None,
                    false
                )
                .upstream,
            table
                .baseline(service_id(&svc.namespace, &svc.name), svc.ports[0].port)
                .first()
                .copied()
        );
    }
    // Only the virtual addresses: endpoints are reached directly.
    assert_eq!(table.steered().len(), vips.len());
}

#[path = "memo_tests.rs"]
mod memo;
