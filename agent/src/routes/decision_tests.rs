//! Tests of [`RouteTable::decide`]: the reasons, and which Service a destination resolves to.

use jiff::Timestamp;

use crate::routes::test_support::{ip, key, sa, shop_pod};

use super::*;
use crate::routes::{
    ClusterState, EndpointAddr, Fallback, ForkSpec, ForkTarget, Pod, SANDBOX_LABEL,
    SandboxRouteObj, SandboxRouteSpec, Service, ServicePort, TargetPort, service_id,
};

fn dst(s: &str) -> OrigDstAddr {
    OrigDstAddr(sa(s))
}

fn service(name: &str, vip: &str, port: u16, endpoints: &[&str]) -> Service {
    Service {
        always_steer: false,
        namespace: "shop".into(),
        name: name.into(),
        addresses: vec![ip(vip)],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port,
            target_port: TargetPort::Number(8080),
        }],
        endpoints: endpoints
            .iter()
            .map(|e| EndpointAddr {
                ip: ip(e),
                ready: true,
                ports: [("http".to_string(), 8080)].into(),
                target_ref: shop_pod(e),
                node_name: None,
            })
            .collect(),
        client_ip_affinity: None,
        internal_traffic_policy: Default::default(),
    }
}

/// `reviews` (10.96.0.7:9080, forked by pr-42 with the given fallback and sandbox pods) and
/// `reviews-all` (10.96.0.9:80), which selects the same baseline pod 10.1.0.1.
fn table(fallback: Fallback, sandbox_ready: bool) -> RouteTable {
    let labels: std::collections::BTreeMap<String, String> = [
        ("app".to_string(), "reviews-sbx".to_string()),
        (SANDBOX_LABEL.to_string(), "pr-42".to_string()),
    ]
    .into();
    let state = ClusterState {
        services: vec![
            service("reviews", "10.96.0.7", 9080, &["10.1.0.1", "10.1.0.2"]),
            service("reviews-all", "10.96.0.9", 80, &["10.1.0.1"]),
        ],
        pods: vec![Pod {
            namespace: "shop".into(),
            name: "reviews-pr-42".into(),
            ips: vec![ip("10.2.0.1")],
            labels: labels.clone(),
            ready: sandbox_ready,
            container_ports: [("http".to_string(), 8080)].into(),
        }],
        routes: vec![SandboxRouteObj {
            namespace: "shop".into(),
            name: "pr-42".into(),
            creation_timestamp: "2029-01-01T00:00:00Z".parse().expect("ts"),
            generation: 1,
            spec: SandboxRouteSpec {
                routing_key: "pr-42".into(),
                forks: vec![ForkSpec {
                    service: "reviews".into(),
                    to: ForkTarget {
                        selector: Some(labels.into()),
                        service: None,
                    },
                    ports: None,
                }],
                fallback,
                expires_at: None,
                inject_key: true,
            },
        }]
        .into_iter()
        .map(std::sync::Arc::new)
        .collect(),
        node: None,
        node_pods: Vec::new(),
        endpoint_trust: Default::default(),
        sources: Vec::new(),
    };
    let now: Timestamp = "2030-01-01T00:00:00Z".parse().expect("ts");
    RouteTable::compute(&state, now).0
}

fn reviews() -> ServiceId {
    ServiceId(service_id("shop", "reviews"))
}

fn reviews_all() -> ServiceId {
    ServiceId(service_id("shop", "reviews-all"))
}

#[test]
fn reasons_follow_the_key() {
    let t = table(Fallback::Baseline, true);
    let vip = dst("10.96.0.7:9080");
    let d = t.decide(vip, reviews(), Some(&key("pr-42")), false);
    assert_eq!(
        (d.kind, d.reason, d.upstream),
        (
            DecisionKind::Sandbox,
            DecisionReason::KeyMatched,
            Some(sa("10.2.0.1:8080"))
        )
    );
    assert_eq!(d.route.as_deref(), Some("shop/pr-42"));
    assert!(d.fallback.is_some(), "fallback Baseline keeps a baseline");
    let d = t.decide(vip, reviews(), None, false);
    assert_eq!(
        (d.kind, d.reason),
        (DecisionKind::Baseline, DecisionReason::NoKey)
    );
    let d = t.decide(vip, reviews(), None, true);
    assert_eq!(d.reason, DecisionReason::InvalidKey);
    let d = t.decide(vip, reviews(), Some(&key("pr-7")), false);
    assert_eq!(
        (d.kind, d.reason),
        (DecisionKind::Baseline, DecisionReason::KeyNotForked)
    );
    assert_eq!(d.service.as_deref(), Some("shop/reviews"));
}

#[test]
fn no_ready_sandbox_follows_the_fallback() {
    let t = table(Fallback::Baseline, false);
    let d = t.decide(dst("10.96.0.7:9080"), reviews(), Some(&key("pr-42")), false);
    assert_eq!(
        (d.kind, d.reason),
        (DecisionKind::Baseline, DecisionReason::NoReadySandbox)
    );
    assert_eq!(d.route.as_deref(), Some("shop/pr-42"));
    let t = table(Fallback::Reject, false);
    let d = t.decide(dst("10.96.0.7:9080"), reviews(), Some(&key("pr-42")), false);
    assert_eq!(
        (d.kind, d.reason, d.upstream),
        (DecisionKind::Reject, DecisionReason::NoReadySandbox, None)
    );
    assert_eq!(d.route.as_deref(), Some("shop/pr-42"));
}

#[test]
fn unknown_destination_passes_through() {
    let t = table(Fallback::Baseline, true);
    let d = t.decide(
        dst("10.9.9.9:9080"),
        ServiceId::NONE,
        Some(&key("pr-42")),
        false,
    );
    assert_eq!(
        (d.kind, d.reason, d.upstream, d.service),
        (
            DecisionKind::Passthrough,
            DecisionReason::UnknownService,
            Some(sa("10.9.9.9:9080")),
            None
        )
    );
}

#[test]
fn the_kernel_service_id_picks_the_service_of_a_shared_endpoint() {
    let t = table(Fallback::Baseline, true);
    let shared = dst("10.1.0.1:8080");
    // By address alone, the Service with a fork wins the shared endpoint.
    let d = t.decide(shared, ServiceId::NONE, Some(&key("pr-42")), false);
    assert_eq!(d.reason, DecisionReason::KeyMatched);
    assert_eq!(
        t.decide(shared, reviews(), Some(&key("pr-42")), false)
            .reason,
        d.reason
    );
    // Capture said the connection was for reviews-all, which has no fork: the pod address is
    // also reviews', whose fork covers the key, so the keyed request follows that fork.
    let d = t.decide(shared, reviews_all(), Some(&key("pr-42")), false);
    assert_eq!(
        (d.kind, d.reason, d.upstream, d.service.as_deref()),
        (
            DecisionKind::Sandbox,
            DecisionReason::KeyMatched,
            Some(sa("10.2.0.1:8080")),
            Some("shop/reviews")
        )
    );
    // A key no sharer forks stays on the dialled pod, under capture's Service.
    let d = t.decide(shared, reviews_all(), Some(&key("pr-7")), false);
    assert_eq!(
        (d.kind, d.reason, d.upstream, d.service.as_deref()),
        (
            DecisionKind::Baseline,
            DecisionReason::KeyNotForked,
            Some(sa("10.1.0.1:8080")),
            Some("shop/reviews-all")
        )
    );
}

#[test]
fn an_id_the_table_cannot_use_falls_back_to_the_address() {
    let t = table(Fallback::Baseline, true);
    let vip = dst("10.96.0.7:9080");
    // Unknown (stale) id: the address decides.
    let d = t.decide(vip, ServiceId(12345), Some(&key("pr-42")), false);
    assert_eq!(d.service.as_deref(), Some("shop/reviews"));
    assert_eq!(d.reason, DecisionReason::KeyMatched);
    // A known id, but the current table gives the address to another Service.
    let d = t.decide(vip, reviews_all(), None, false);
    assert_eq!(d.service.as_deref(), Some("shop/reviews"));
    // An address the table no longer knows, with an id whose Service has that port: not one
    // of its virtual addresses (most likely a pod that left the endpoints), so it is dialled
    // as addressed, never rebalanced.
    let d = t.decide(dst("10.96.0.99:80"), reviews_all(), None, false);
    assert_eq!(
        (d.kind, d.service.as_deref(), d.upstream),
        (
            DecisionKind::Baseline,
            Some("shop/reviews-all"),
            Some(sa("10.96.0.99:80"))
        )
    );
    // ... and with an id whose Service has no such port.
    let d = t.decide(dst("10.96.0.99:81"), reviews_all(), None, false);
    assert_eq!(d.kind, DecisionKind::Passthrough);
}

#[test]
fn ipv4_mapped_destinations_match() {
    let t = table(Fallback::Baseline, true);
    let d = t.decide(dst("[::ffff:10.96.0.7]:9080"), ServiceId::NONE, None, false);
    assert_eq!(d.service.as_deref(), Some("shop/reviews"));
}
