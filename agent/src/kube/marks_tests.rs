use std::collections::BTreeMap;

use super::*;
use crate::routes::{
    EndpointAddr, Fallback, ForkSpec, ForkTarget, ObjectRef, SandboxRouteSpec, Service,
};

fn now() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().expect("ts")
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns: &str, name: &str, kv: &[(&str, &str)]) -> NodePod {
    NodePod {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        ips: Vec::new(),
        labels: labels(kv),
        netns: None,
    }
}

fn route(ns: &str, name: &str, key: &str, to: ForkTarget) -> SandboxRouteObj {
    SandboxRouteObj {
        namespace: ns.into(),
        name: name.into(),
        creation_timestamp: now(),
        generation: 1,
        spec: SandboxRouteSpec {
            routing_key: key.into(),
            forks: vec![ForkSpec {
                service: "reviews".into(),
                to,
                ports: None,
            }],
            fallback: Fallback::Baseline,
            expires_at: None,
            inject_key: true,
        },
    }
}

fn selector(sandbox: &str) -> ForkTarget {
    ForkTarget {
        selector: Some(labels(&[("app", "reviews"), (SANDBOX_LABEL, sandbox)]).into()),
        service: None,
    }
}

fn service(ns: &str, name: &str, pods: &[&str]) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        addresses: Vec::new(),
        ports: Vec::new(),
        endpoints: pods
            .iter()
            .enumerate()
            .map(|(i, p)| EndpointAddr {
                ip: std::net::IpAddr::from([10, 0, 0, i as u8 + 1]),
                ready: true,
                ports: BTreeMap::new(),
                target_ref: Some(ObjectRef {
                    kind: "Pod".into(),
                    namespace: ns.into(),
                    name: p.to_string(),
                }),
                node_name: None,
            })
            .collect(),
        always_steer: false,
        client_ip_affinity: None,
        internal_traffic_policy: Default::default(),
    }
}

fn dir(uid: &str) -> Option<PathBuf> {
    Some(PathBuf::from(format!("/cg/pod{uid}")))
}

fn marks(state: &ClusterState) -> Marks {
    marked_sources(state, now(), &BTreeSet::new(), &dir)
}

fn marked(m: &Marks) -> Vec<(String, String)> {
    m.sources
        .iter()
        .map(|s| (s.origin.clone(), s.key.clone()))
        .collect()
}

fn shop() -> ClusterState {
    ClusterState {
        services: vec![service("shop", "reviews", &["reviews-v1"])],
        node_pods: vec![
            pod("shop", "reviews-v1", &[("app", "reviews")]),
            pod(
                "shop",
                "reviews-v2",
                &[("app", "reviews"), (SANDBOX_LABEL, "pr-42")],
            ),
        ],
        routes: vec![route("shop", "pr-42", "pr-42", selector("pr-42"))]
            .into_iter()
            .map(std::sync::Arc::new)
            .collect(),
        ..ClusterState::default()
    }
}

#[test]
fn selector_fork_pods_carry_the_route_key() {
    let m = marks(&shop());
    assert_eq!(marked(&m), [("pod shop/reviews-v2".into(), "pr-42".into())]);
    assert_eq!(m.sources[0].cgroup, PathBuf::from("/cg/poduid-reviews-v2"));
    assert!(m.ignored.is_empty() && m.unresolved.is_empty(), "{m:?}");
}

#[test]
fn inject_key_false_marks_no_sandbox_pod() {
    let mut s = shop();
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.inject_key = false;
    assert!(marks(&s).sources.is_empty());
}

#[test]
fn service_fork_pods_are_marked_but_baseline_pods_never() {
    let mut s = shop();
    // A sandbox Service whose endpoints are a sandbox pod and (wrongly) the baseline pod.
    s.services.push(service(
        "shop",
        "reviews-pr-42",
        &["reviews-sbx", "reviews-v1"],
    ));
    s.node_pods
        .push(pod("shop", "reviews-sbx", &[("app", "sbx")]));
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.forks[0].to = ForkTarget {
        selector: None,
        service: Some("reviews-pr-42".into()),
    };
    let m = marks(&s);
    assert_eq!(
        marked(&m),
        [("pod shop/reviews-sbx".into(), "pr-42".into())]
    );
    assert_eq!(m.ignored.len(), 1, "{m:?}");
    assert_eq!(m.ignored[0].pod, "shop/reviews-v1");
}

#[test]
fn inject_label_needs_a_route_with_that_key_in_the_pod_namespace() {
    let mut s = shop();
    s.node_pods
        .push(pod("shop", "runner", &[(INJECT_KEY_LABEL, "pr-42")]));
    s.node_pods
        .push(pod("other", "thief", &[(INJECT_KEY_LABEL, "pr-42")]));
    s.node_pods
        .push(pod("shop", "typo", &[(INJECT_KEY_LABEL, "pr-43")]));
    let m = marks(&s);
    assert_eq!(
        marked(&m),
        [
            ("pod shop/reviews-v2".into(), "pr-42".into()),
            ("pod shop/runner".into(), "pr-42".into()),
        ]
    );
    let ignored: Vec<&str> = m.ignored.iter().map(|i| i.pod.as_str()).collect();
    assert_eq!(ignored, ["other/thief", "shop/typo"]);
}

#[test]
fn expired_routes_mark_nothing_and_lend_no_key() {
    let mut s = shop();
    std::sync::Arc::make_mut(&mut s.routes[0]).spec.expires_at =
        Some("2029-01-01T00:00:00Z".parse().expect("ts"));
    s.node_pods
        .push(pod("shop", "runner", &[(INJECT_KEY_LABEL, "pr-42")]));
    let m = marks(&s);
    assert!(m.sources.is_empty(), "{m:?}");
    assert_eq!(m.ignored.len(), 1);
}

#[test]
fn a_pod_claimed_by_two_keys_is_not_marked() {
    let mut s = shop();
    s.routes.push(std::sync::Arc::new(route(
        "shop",
        "pr-7",
        "pr-7",
        selector("pr-42"),
    )));
    let m = marks(&s);
    assert!(m.sources.is_empty(), "{m:?}");
    assert!(m.ignored[0].why.contains("several keys"), "{m:?}");
}

#[test]
fn finished_and_unplaced_pods_are_not_marked() {
    let s = shop();
    let finished: BTreeSet<String> = ["shop/reviews-v2".to_string()].into();
    assert!(
        marked_sources(&s, now(), &finished, &dir)
            .sources
            .is_empty()
    );
    let m = marked_sources(&s, now(), &BTreeSet::new(), &|_| None);
    assert!(m.sources.is_empty());
    assert_eq!(m.unresolved, ["shop/reviews-v2"]);
}
