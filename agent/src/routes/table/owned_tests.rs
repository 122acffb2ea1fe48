//! A namespace steers only what it owns: tests through [`RouteTable::compute`].
use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::routes::{
    ClusterState, EndpointAddr, EndpointTrust, Fallback, ForkSpec, ForkTarget, NodePod, ObjectRef,
    Pod, RouteReason, RouteStatus, RouteTable, SANDBOX_LABEL, SandboxRouteObj, SandboxRouteSpec,
    Service, ServicePort, TargetPort, service_id,
    test_support::{ip, key, sa},
};

fn now() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().expect("timestamp")
}

fn pod_ref(kind: &str, namespace: &str, name: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    })
}

fn ep(addr: &str, target_ref: Option<ObjectRef>) -> EndpointAddr {
    EndpointAddr {
        ip: ip(addr),
        ready: true,
        ports: [("http".to_string(), 8080)].into(),
        target_ref,
        node_name: None,
    }
}

fn service(namespace: &str, name: &str, vip: &str, endpoints: Vec<EndpointAddr>) -> Service {
    Service {
        namespace: namespace.into(),
        name: name.into(),
        addresses: vec![ip(vip)],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: TargetPort::Number(8080),
        }],
        endpoints,
        always_steer: false,
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

fn sandbox_pod(namespace: &str, name: &str, addr: &str, sandbox: &str) -> Pod {
    Pod {
        namespace: namespace.into(),
        name: name.into(),
        ips: vec![ip(addr)],
        labels: [(SANDBOX_LABEL.to_string(), sandbox.to_string())].into(),
        ready: true,
        container_ports: BTreeMap::new(),
    }
}

fn route(namespace: &str, key: &str, service: &str, to: ForkTarget) -> SandboxRouteObj {
    SandboxRouteObj {
        namespace: namespace.into(),
        name: key.into(),
        creation_timestamp: "2029-01-01T00:00:00Z".parse().expect("timestamp"),
        generation: 1,
        spec: SandboxRouteSpec {
            routing_key: key.into(),
            forks: vec![ForkSpec {
                service: service.into(),
                to,
                ports: None,
            }],
            fallback: Fallback::Baseline,
            expires_at: None,
            inject_key: true,
        },
    }
}

fn to_selector(sandbox: &str) -> ForkTarget {
    ForkTarget {
        selector: Some([(SANDBOX_LABEL.to_string(), sandbox.to_string())].into()),
        service: None,
    }
}

fn to_service(name: &str) -> ForkTarget {
    ForkTarget {
        selector: None,
        service: Some(name.into()),
    }
}

/// shop/reviews (pod shop/reviews-a at 10.1.0.1, on this node) and evil/bait, whose slice lists
/// shop's pod under a made-up evil Pod, a node address, the API server and shop's pod under its
/// true name; evil forks bait to its own sandbox pod.
fn attack() -> ClusterState {
    ClusterState {
        services: vec![
            service(
                "shop",
                "reviews",
                "10.96.0.7",
                vec![ep("10.1.0.1", pod_ref("Pod", "shop", "reviews-a"))],
            ),
            service(
                "evil",
                "bait",
                "10.96.6.6",
                vec![
                    ep("10.1.0.1", pod_ref("Pod", "evil", "bait-1")),
                    ep("10.1.0.1", pod_ref("Pod", "shop", "reviews-a")),
                    ep("192.168.0.10", None),
                    ep("10.0.0.1", pod_ref("Node", "", "node-a")),
                    ep("10.6.0.1", pod_ref("Pod", "evil", "bait-own")),
                ],
            ),
        ],
        pods: vec![sandbox_pod("evil", "evil-sbx", "10.6.0.9", "evil")],
        routes: vec![route("evil", "evil-key", "bait", to_selector("evil"))]
            .into_iter()
            .map(std::sync::Arc::new)
            .collect(),
        node: Some("node-a".into()),
        node_pods: vec![
            node_pod("shop", "reviews-a", "10.1.0.1"),
            node_pod("evil", "bait-own", "10.6.0.1"),
        ],
        endpoint_trust: EndpointTrust::OwnPodsOnly,
        sources: Vec::new(),
    }
}

fn status_of<'a>(st: &'a [RouteStatus], namespace: &str) -> &'a RouteStatus {
    st.iter()
        .find(|s| s.namespace == namespace)
        .expect("a status")
}

#[test]
fn endpoint_addresses_that_are_not_pods_of_the_namespace_are_never_steered() {
    let (t, st) = RouteTable::compute(&attack(), now());
    for foreign in ["10.1.0.1:8080", "192.168.0.10:8080", "10.0.0.1:8080"] {
        assert!(!t.steered().contains_key(&sa(foreign)), "{foreign} steered");
        // Not a baseline endpoint of evil/bait either: nothing may dial it on bait's behalf.
        assert_ne!(
            t.service_for(sa(foreign))
                .map(|(s, _)| s.namespace.as_str()),
            Some("evil"),
            "{foreign}"
        );
    }
    let s = status_of(&st, "evil");
    assert_eq!(s.reason, RouteReason::ForeignEndpoints, "{s:?}");
    assert!(!s.applied, "{s:?}");
    for named in [
        "10.1.0.1 is the address of Pod shop/reviews-a, not of evil/bait-1",
        "10.1.0.1 is Pod shop/reviews-a, not in namespace \"evil\"",
        "192.168.0.10 has no targetRef",
        "10.0.0.1 is a Node",
    ] {
        assert!(
            s.message.contains(named),
            "{named:?} not in {:?}",
            s.message
        );
    }
    // bait's own pod is not steered either: a Service with foreign addresses is not forked at
    // all, so its baseline stays what kube-proxy gives.
    assert!(t.steered().is_empty(), "{:?}", t.steered());
    assert!(
        t.fork(service_id("evil", "bait"), &key("evil-key"))
            .is_none()
    );
}

#[test]
fn an_address_two_namespaces_claim_belongs_to_the_namespace_of_its_pod() {
    let mut s = attack();
    // Both namespaces fork; evil sorts first, and lists shop's pod under an evil name.
    s.services[1].endpoints = vec![ep("10.1.0.1", pod_ref("Pod", "evil", "bait-1"))];
    s.pods
        .push(sandbox_pod("shop", "reviews-sbx", "10.2.0.1", "pr-42"));
    s.routes.push(std::sync::Arc::new(route(
        "shop",
        "pr-42",
        "reviews",
        to_selector("pr-42"),
    )));
    let (t, st) = RouteTable::compute(&s, now());
    let shop = service_id("shop", "reviews");
    assert_eq!(t.steered().get(&sa("10.1.0.1:8080")), Some(&shop));
    assert_eq!(
        status_of(&st, "shop").reason,
        RouteReason::EndpointsReady,
        "{st:?}"
    );
    assert_eq!(
        status_of(&st, "evil").reason,
        RouteReason::ForeignEndpoints,
        "{st:?}"
    );

    // With no Pod object for the address on this node, it is nobody's: neither steers it, and
    // both say why (a claim in a slice proves nothing).
    s.node_pods.clear();
    let (t, st) = RouteTable::compute(&s, now());
    assert!(!t.steered().contains_key(&sa("10.1.0.1:8080")));
    for ns in ["shop", "evil"] {
        let status = status_of(&st, ns);
        assert_eq!(status.reason, RouteReason::ForeignEndpoints, "{status:?}");
        assert!(
            status
                .message
                .contains("10.1.0.1 is also claimed by namespace(s)"),
            "{status:?}"
        );
    }
}

#[test]
fn sandbox_target_outside_the_route_namespace_is_refused() {
    let mut s = attack();
    s.routes = vec![route(
        "shop",
        "pr-42",
        "reviews",
        to_service("reviews-pr-42"),
    )]
    .into_iter()
    .map(std::sync::Arc::new)
    .collect();
    s.services.push(service(
        "shop",
        "reviews-pr-42",
        "10.96.0.42",
        vec![
            // Another namespace's pod, under a shop name that its Pod object contradicts.
            ep("10.6.0.1", pod_ref("Pod", "shop", "reviews-sbx-1")),
            // A shop name with no Pod object behind it (a node address, say).
            ep("192.168.0.10", pod_ref("Pod", "shop", "reviews-sbx-2")),
            ep("10.5.0.1", None),
            // The real sandbox pod.
            ep("10.2.0.1", pod_ref("Pod", "shop", "reviews-sbx")),
        ],
    ));
    s.pods
        .push(sandbox_pod("shop", "reviews-sbx", "10.2.0.1", "pr-42"));
    let (t, st) = RouteTable::compute(&s, now());
    let fork = t
        .fork(service_id("shop", "reviews"), &key("pr-42"))
        .expect("the fork applies with its one real sandbox pod");
    assert_eq!(fork.endpoints(80), [sa("10.2.0.1:8080")]);
    let status = status_of(&st, "shop");
    assert_eq!(status.reason, RouteReason::ForeignEndpoints, "{status:?}");
    for refused in ["10.6.0.1", "192.168.0.10", "10.5.0.1"] {
        assert!(
            status.message.contains(&format!("{refused} ")),
            "{refused} not named in {:?}",
            status.message
        );
    }
}

#[test]
fn the_operator_file_trusts_untargeted_addresses_but_still_checks_targeted_ones() {
    let mut s = attack();
    s.endpoint_trust = EndpointTrust::Operator;
    s.services[1].endpoints = vec![ep("192.168.0.10", None), ep("10.6.0.1", None)];
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(
        status_of(&st, "evil").reason,
        RouteReason::EndpointsReady,
        "{st:?}"
    );
    assert!(t.steered().contains_key(&sa("192.168.0.10:8080")));

    s.services[1]
        .endpoints
        .push(ep("10.1.0.1", pod_ref("Pod", "shop", "reviews-a")));
    let (t, st) = RouteTable::compute(&s, now());
    assert_eq!(
        status_of(&st, "evil").reason,
        RouteReason::ForeignEndpoints,
        "{st:?}"
    );
    assert!(t.steered().is_empty());
}

#[test]
fn node_pods_name_the_namespace_of_a_client_address() {
    let mut s = attack();
    s.node_pods.push(node_pod("ingress", "nginx-1", "10.7.0.1"));
    s.node_pods
        .push(node_pod("ingress", "host-a", "192.168.0.10"));
    s.node_pods
        .push(node_pod("monitoring", "host-b", "192.168.0.10"));
    let (t, _) = RouteTable::compute(&s, now());
    let names = |a: &str| -> Vec<String> {
        t.node_pod_namespaces(ip(a))
            .iter()
            .map(|n| n.to_string())
            .collect()
    };
    assert_eq!(names("10.7.0.1"), ["ingress"]);
    assert_eq!(names("192.168.0.10"), ["ingress", "monitoring"]);
    assert_eq!(names("::ffff:10.7.0.1"), ["ingress"]);
    assert!(names("10.9.9.9").is_empty());
}
