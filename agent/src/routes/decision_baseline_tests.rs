//! Tests of the baseline side of [`RouteTable::decide_on`]: what kube-proxy would have done
//! with the connection (pod addresses kept, one endpoint per connection, `ClientIP` affinity,
//! `internalTrafficPolicy: Local`), and pod addresses shared by several Services.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use jiff::Timestamp;

use super::*;
use crate::routes::{
    ClusterState, EndpointAddr, Fallback, ForkSpec, ForkTarget, Pod, RouteStatus, SANDBOX_LABEL,
    SandboxRouteObj, SandboxRouteSpec, Service, ServicePort, TargetPort, TrafficPolicy, service_id,
    test_support::{ip, key, sa, shop_pod},
};

/// An endpoint on 8080, on `node`.
fn ep(addr: &str, ready: bool, node: &str) -> EndpointAddr {
    EndpointAddr {
        ip: ip(addr),
        ready,
        ports: [("http".to_string(), 8080)].into(),
        target_ref: shop_pod(addr),
        node_name: Some(node.into()),
    }
}

fn service(name: &str, vip: &str, endpoints: Vec<EndpointAddr>) -> Service {
    Service {
        namespace: "shop".into(),
        name: name.into(),
        addresses: vec![ip(vip)],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: TargetPort::Number(8080),
        }],
        endpoints,
        always_steer: true,
        client_ip_affinity: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
    }
}

fn sandbox_pod(name: &str, addr: &str, sandbox: &str) -> Pod {
    Pod {
        namespace: "shop".into(),
        name: name.into(),
        ips: vec![ip(addr)],
        labels: labels(name, sandbox),
        ready: true,
        container_ports: BTreeMap::new(),
    }
}

fn labels(app: &str, sandbox: &str) -> BTreeMap<String, String> {
    [
        ("app".to_string(), app.to_string()),
        (SANDBOX_LABEL.to_string(), sandbox.to_string()),
    ]
    .into()
}

fn fork(service: &str, app: &str, sandbox: &str) -> ForkSpec {
    ForkSpec {
        service: service.into(),
        to: ForkTarget {
            selector: Some(labels(app, sandbox).into()),
            service: None,
        },
        ports: None,
    }
}

fn route(key: &str, forks: Vec<ForkSpec>) -> SandboxRouteObj {
    SandboxRouteObj {
        namespace: "shop".into(),
        name: key.into(),
        creation_timestamp: "2029-01-01T00:00:00Z".parse().expect("ts"),
        generation: 1,
        spec: SandboxRouteSpec {
            routing_key: key.into(),
            forks,
            fallback: Fallback::Baseline,
            expires_at: None,
            inject_key: true,
        },
    }
}

fn compute(state: &ClusterState) -> (RouteTable, Vec<RouteStatus>) {
    let now: Timestamp = "2030-01-01T00:00:00Z".parse().expect("ts");
    RouteTable::compute(state, now)
}

/// `reviews` on 10.96.0.7:80: 10.1.0.1 ready on node-a, 10.1.0.2 ready on node-b, 10.1.0.3
/// not ready on node-a.
fn reviews() -> Service {
    service(
        "reviews",
        "10.96.0.7",
        vec![
            ep("10.1.0.1", true, "node-a"),
            ep("10.1.0.2", true, "node-b"),
            ep("10.1.0.3", false, "node-a"),
        ],
    )
}

fn state(services: Vec<Service>) -> ClusterState {
    ClusterState {
        services,
        node: Some("node-a".into()),
        ..ClusterState::default()
    }
}

fn conn(dst: &str, client: &str) -> ConnRoute {
    let dst = sa(dst);
    let id = ServiceId::NONE;
    ConnRoute::new(OrigDstAddr(dst), id, ip(client))
}

fn upstream(d: &Decision) -> SocketAddr {
    d.upstream.unwrap_or_else(|| panic!("no upstream: {d:?}"))
}

#[test]
fn a_dialled_pod_address_stays_on_that_pod_ready_or_not() {
    let (t, _) = compute(&state(vec![reviews()]));
    for pod in ["10.1.0.1:8080", "10.1.0.3:8080"] {
        for _ in 0..3 {
            let d = t.decide_on(&mut conn(pod, "10.0.0.9"), None, None, false);
            assert_eq!((d.kind, upstream(&d)), (DecisionKind::Baseline, sa(pod)));
            let d = t.decide_on(&mut conn(pod, "10.0.0.9"), None, Some(&key("pr-1")), false);
            assert_eq!(
                (d.reason, upstream(&d)),
                (DecisionReason::KeyNotForked, sa(pod))
            );
        }
    }
}

#[test]
fn a_virtual_address_gets_one_endpoint_per_connection() {
    let (t, _) = compute(&state(vec![reviews()]));
    let mut c = conn("10.96.0.7:80", "10.0.0.9");
    let first = upstream(&t.decide_on(&mut c, None, None, false));
    assert_eq!(c.pinned, Some(first));
    for _ in 0..4 {
        assert_eq!(upstream(&t.decide_on(&mut c, None, None, false)), first);
    }
    // A new connection gets the next endpoint; never the one that is not ready.
    let picks: Vec<SocketAddr> = (0..4)
        .map(|_| upstream(&t.decide_on(&mut conn("10.96.0.7:80", "10.0.0.9"), None, None, false)))
        .collect();
    assert!(picks.contains(&sa("10.1.0.1:8080")) && picks.contains(&sa("10.1.0.2:8080")));
    assert!(!picks.contains(&sa("10.1.0.3:8080")), "{picks:?}");
}

#[test]
fn client_ip_affinity_keeps_a_client_on_its_endpoint() {
    let mut svc = reviews();
    svc.client_ip_affinity = Some(Duration::from_secs(60));
    let (t, _) = compute(&state(vec![svc]));
    let affinity = ClientAffinity::default();
    let pick = |client: &str| {
        upstream(&t.decide_on(
            &mut conn("10.96.0.7:80", client),
            Some(&affinity),
            None,
            false,
        ))
    };
    let first = pick("10.0.0.9");
    for _ in 0..5 {
        assert_eq!(pick("10.0.0.9"), first);
    }
    // Another client is balanced on its own.
    let other = pick("10.0.0.8");
    assert_ne!(other, first, "round-robin moved on for a new client");
    assert_eq!(pick("10.0.0.8"), other);
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    let mut svc = reviews();
    svc.internal_traffic_policy = TrafficPolicy::Local;
    let (t, _) = compute(&state(vec![svc.clone()]));
    for _ in 0..4 {
        let d = t.decide_on(&mut conn("10.96.0.7:80", "10.0.0.9"), None, None, false);
        assert_eq!(upstream(&d), sa("10.1.0.1:8080"));
    }
    // On node-c there is no local endpoint: dropped, never sent to another node.
    let mut s = state(vec![svc]);
    s.node = Some("node-c".into());
    let (t, _) = compute(&s);
    let d = t.decide_on(&mut conn("10.96.0.7:80", "10.0.0.9"), None, None, false);
    assert_eq!(
        (d.kind, d.reason, d.upstream),
        (DecisionKind::Reject, DecisionReason::NoLocalEndpoint, None)
    );
    assert!(d.drops_connection());
    // A pod address is still dialled as addressed.
    let d = t.decide_on(&mut conn("10.1.0.2:8080", "10.0.0.9"), None, None, false);
    assert_eq!(upstream(&d), sa("10.1.0.2:8080"));
}

/// `reviews` and `reviews-headless` select the same pod 10.1.0.1.
fn sharing(routes: Vec<SandboxRouteObj>) -> ClusterState {
    let mut headless = service(
        "reviews-headless",
        "10.96.0.8",
        vec![ep("10.1.0.1", true, "node-a")],
    );
    headless.addresses.clear();
    ClusterState {
        services: vec![
            service("reviews", "10.96.0.7", vec![ep("10.1.0.1", true, "node-a")]),
            headless,
        ],
        pods: vec![
            sandbox_pod("sbx-a", "10.2.0.1", "a"),
            sandbox_pod("sbx-b", "10.2.0.2", "b"),
        ],
        routes: routes.into_iter().map(std::sync::Arc::new).collect(),
        node: Some("node-a".into()),
        node_pods: Vec::new(),
        endpoint_trust: Default::default(),
        sources: Vec::new(),
    }
}

#[test]
fn a_shared_pod_address_follows_the_service_whose_fork_covers_the_key() {
    // Each Service forked under its own key: each key follows its own Service's fork, whatever
    // Service capture named for the address.
    let (t, statuses) = compute(&sharing(vec![
        route("a", vec![fork("reviews", "sbx-a", "a")]),
        route("b", vec![fork("reviews-headless", "sbx-b", "b")]),
    ]));
    for id in [
        ServiceId::NONE,
        ServiceId(service_id("shop", "reviews")),
        ServiceId(service_id("shop", "reviews-headless")),
    ] {
        let mut c = ConnRoute::new(OrigDstAddr(sa("10.1.0.1:8080")), id, ip("10.0.0.9"));
        let d = t.decide_on(&mut c, None, Some(&key("a")), false);
        assert_eq!(
            (d.kind, upstream(&d)),
            (DecisionKind::Sandbox, sa("10.2.0.1:8080"))
        );
        assert_eq!(d.service.as_deref(), Some("shop/reviews"));
        let d = t.decide_on(&mut c, None, Some(&key("b")), false);
        assert_eq!(
            (d.kind, upstream(&d)),
            (DecisionKind::Sandbox, sa("10.2.0.2:8080"))
        );
        assert_eq!(d.service.as_deref(), Some("shop/reviews-headless"));
        // Unkeyed: the dialled pod.
        let d = t.decide_on(&mut c, None, None, false);
        assert_eq!(upstream(&d), sa("10.1.0.1:8080"));
    }
    assert!(
        statuses.iter().all(|s| !s.message.contains("shared")),
        "{statuses:?}"
    );
}

#[test]
fn two_forks_of_one_shared_pod_address_tie_break_by_name_and_say_so() {
    // One route forks both Services, to different sandboxes: requests dialled to the shared pod
    // follow the first Service by name (reviews), and the route's status says so.
    let (t, statuses) = compute(&sharing(vec![route(
        "a",
        vec![
            fork("reviews-headless", "sbx-b", "b"),
            fork("reviews", "sbx-a", "a"),
        ],
    )]));
    for id in [
        ServiceId::NONE,
        ServiceId(service_id("shop", "reviews-headless")),
    ] {
        let mut c = ConnRoute::new(OrigDstAddr(sa("10.1.0.1:8080")), id, ip("10.0.0.9"));
        let d = t.decide_on(&mut c, None, Some(&key("a")), false);
        assert_eq!(
            (d.service.as_deref(), upstream(&d)),
            (Some("shop/reviews"), sa("10.2.0.1:8080"))
        );
    }
    let st = &statuses[0];
    assert!(st.ready, "{st:?}");
    assert!(
        st.message.contains(
            "pod address(es) 10.1.0.1:8080 of shop/reviews are also endpoints of shop/reviews-headless, forked for the same key; keyed requests dialled to them follow the fork of shop/reviews"
        ),
        "{}",
        st.message
    );
    let views = t.routes();
    let view = views.iter().find(|v| v.name == "a").expect("view");
    assert_eq!(view.message, st.message);
}
