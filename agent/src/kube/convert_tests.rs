//! Tests of the Kubernetes → `ClusterState` conversion.
use std::net::SocketAddr;

use serde_json::json;

use super::*;
use crate::routes::{RouteReason, RouteTable};

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

fn reviews() -> Service {
    obj(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "reviews", "namespace": "shop" },
        "spec": {
            "clusterIP": "10.96.0.7",
            "clusterIPs": ["10.96.0.7", "fd00:96::7"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ports": [
                { "name": "http", "port": 9080, "targetPort": "http" },
                { "name": "metrics", "port": 9090, "targetPort": 9091 },
                { "name": "dns", "port": 53, "protocol": "UDP" },
            ],
        },
    }))
}

fn slice(name: &str, family: &str, addrs: &[(&str, Option<bool>)], http: i32) -> EndpointSlice {
    obj(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": "shop",
                      "labels": { SERVICE_NAME_LABEL: "reviews" } },
        "addressType": family,
        "ports": [
            { "name": "http", "port": http, "protocol": "TCP" },
            { "name": "metrics", "port": 9091 },
            { "name": "dns", "port": 53, "protocol": "UDP" },
        ],
        // As the EndpointSlice controller writes them: each address is a Pod of the namespace.
        "endpoints": addrs.iter().map(|(a, ready)| {
            let pod = json!({ "kind": "Pod", "namespace": "shop", "name": format!("reviews-{a}") });
            match ready {
                Some(r) => json!({ "addresses": [a], "conditions": { "ready": r }, "targetRef": pod }),
                None => json!({ "addresses": [a], "targetRef": pod }),
            }
        }).collect::<Vec<_>>(),
    }))
}

#[test]
fn endpoints_carry_their_pod_and_node_and_the_service_its_affinity_and_policy() {
    let mut svc = reviews();
    let spec = svc.spec.as_mut().expect("spec");
    spec.session_affinity = Some("ClientIP".into());
    spec.internal_traffic_policy = Some("Local".into());
    let s: EndpointSlice = obj(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "reviews-1", "namespace": "shop",
                      "labels": { SERVICE_NAME_LABEL: "reviews" } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080 }],
        "endpoints": [
            { "addresses": ["10.1.0.1"], "nodeName": "node-a",
              "targetRef": { "kind": "Pod", "name": "reviews-v1-abc", "uid": "u1" } },
            { "addresses": ["10.1.0.2"] },
        ],
    }));
    let got = service(&svc, &[&s]).expect("service");
    assert_eq!(
        got.client_ip_affinity,
        Some(routes::DEFAULT_AFFINITY_TIMEOUT)
    );
    assert_eq!(got.internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(got.endpoints[0].node_name.as_deref(), Some("node-a"));
    assert_eq!(
        got.endpoints[0].target_ref,
        Some(routes::ObjectRef {
            kind: "Pod".into(),
            namespace: "shop".into(),
            name: "reviews-v1-abc".into(),
        })
    );
    assert_eq!(
        (&got.endpoints[1].node_name, &got.endpoints[1].target_ref),
        (&None, &None)
    );

    let spec = svc.spec.as_mut().expect("spec");
    spec.session_affinity_config = Some(obj(json!({ "clientIP": { "timeoutSeconds": 30 } })));
    spec.internal_traffic_policy = Some("Cluster".into());
    let got = service(&svc, &[&s]).expect("service");
    assert_eq!(got.client_ip_affinity, Some(Duration::from_secs(30)));
    assert_eq!(got.internal_traffic_policy, TrafficPolicy::Cluster);
    svc.spec.as_mut().expect("spec").session_affinity = Some("None".into());
    assert_eq!(
        service(&svc, &[&s]).expect("service").client_ip_affinity,
        None
    );
}

#[test]
fn node_pods_keep_uid_ips_and_labels_of_any_pod() {
    let p: Pod = obj(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "web", "namespace": "shop", "uid": "u-1", "labels": { "app": "web" } },
        "spec": { "nodeName": "node-a", "containers": [{ "name": "app", "image": "x" }] },
        "status": { "podIP": "10.1.0.9", "podIPs": [{ "ip": "10.1.0.9" }, { "ip": "fd00::9" }] },
    }));
    let got = node_pods([&p]);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (
            got[0].uid.as_str(),
            got[0].ips.len(),
            got[0].labels["app"].as_str()
        ),
        ("u-1", 2, "web")
    );
}

fn sandbox_pod(name: &str, ips: &[&str], ready: bool, http: i32) -> Pod {
    obj(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "shop",
                      "labels": { "app": "reviews-v2", "shunt.dev/sandbox": "pr-42" } },
        "spec": { "containers": [{ "name": "app", "image": "x",
            "ports": [{ "name": "http", "containerPort": http }, { "containerPort": 9999 }] }] },
        "status": {
            "podIP": ips[0],
            "podIPs": ips.iter().map(|ip| json!({ "ip": ip })).collect::<Vec<_>>(),
            "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
        },
    }))
}

fn route(name: &str, key: &str, created: &str, to: serde_json::Value) -> SandboxRoute {
    obj(json!({
        "apiVersion": "shunt.dev/v1alpha1", "kind": "SandboxRoute",
        "metadata": { "name": name, "namespace": "shop", "generation": 3,
                      "creationTimestamp": created },
        "spec": { "routingKey": key, "forks": [{ "service": "reviews", "to": to }] },
    }))
}

fn sel(key: &str) -> serde_json::Value {
    json!({ "selector": { "app": "reviews-v2", "shunt.dev/sandbox": key } })
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

#[test]
fn dual_stack_service_with_named_target_ports_from_slices() {
    let v4 = slice(
        "reviews-a",
        "IPv4",
        &[("10.1.0.5", Some(true)), ("10.1.0.6", Some(false))],
        8080,
    );
    // A second IPv4 slice: pods whose `http` container port has another number.
    let v4b = slice("reviews-b", "IPv4", &[("10.1.0.9", None)], 8081);
    let v6 = slice("reviews-c", "IPv6", &[("fd00:1::5", Some(true))], 8080);
    let fqdn = slice("reviews-d", "FQDN", &[("x.example", Some(true))], 8080);
    let s = service(&reviews(), &[&v4, &v4b, &v6, &fqdn]).expect("a service");
    assert_eq!(
        s.addresses,
        [
            "10.96.0.7".parse::<IpAddr>().unwrap(),
            "fd00:96::7".parse().unwrap()
        ]
    );
    // UDP dropped; named and numeric target ports kept as written.
    assert_eq!(
        s.ports,
        [
            routes::ServicePort {
                name: Some("http".into()),
                port: 9080,
                target_port: TargetPort::Name("http".into())
            },
            routes::ServicePort {
                name: Some("metrics".into()),
                port: 9090,
                target_port: TargetPort::Number(9091)
            },
        ]
    );
    let ep = |ip: &str| s.endpoints.iter().find(|e| e.ip.to_string() == ip).unwrap();
    assert_eq!(s.endpoints.len(), 4);
    assert!(ep("10.1.0.5").ready);
    assert!(!ep("10.1.0.6").ready);
    assert!(ep("10.1.0.9").ready, "no ready condition means ready");
    assert_eq!(ep("10.1.0.9").ports["http"], 8081);
    assert_eq!(ep("fd00:1::5").ports["http"], 8080);
    assert!(!ep("10.1.0.5").ports.contains_key("dns"));

    // Through the table: the named target port resolves per endpoint via the slice ports.
    let state = cluster_state([&reviews()], [&v4, &v4b, &v6], [], []);
    let (t, _) = RouteTable::compute(&state, jiff::Timestamp::now());
    let (svc, port) = t.service_for(sa("10.96.0.7:9080")).expect("clusterIP");
    assert_eq!((svc.name.as_str(), port.port), ("reviews", 9080));
    assert!(t.service_for(sa("[fd00:96::7]:9080")).is_some());
    assert!(t.service_for(sa("10.1.0.9:8081")).is_some());
    assert!(t.service_for(sa("[fd00:1::5]:8080")).is_some());
    let mut base = t.baseline(svc.id, 9080).to_vec();
    base.sort();
    assert_eq!(
        base,
        [
            sa("10.1.0.5:8080"),
            sa("10.1.0.9:8081"),
            sa("[fd00:1::5]:8080")
        ]
    );
    let mut metrics = t.baseline(svc.id, 9090).to_vec();
    metrics.sort();
    assert_eq!(
        metrics,
        [
            sa("10.1.0.5:9091"),
            sa("10.1.0.9:9091"),
            sa("[fd00:1::5]:9091")
        ]
    );
}

#[test]
fn single_stack_headless_and_external_name() {
    let mut s = reviews();
    let spec = s.spec.as_mut().unwrap();
    spec.cluster_ips = None;
    let got = service(&s, &[]).unwrap();
    assert_eq!(got.addresses, ["10.96.0.7".parse::<IpAddr>().unwrap()]);

    let spec = s.spec.as_mut().unwrap();
    spec.cluster_ip = Some("None".into());
    spec.cluster_ips = Some(vec!["None".into()]);
    assert!(service(&s, &[]).unwrap().addresses.is_empty());

    s.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    assert!(service(&s, &[]).is_none());

    // No targetPort means the port itself.
    let s: Service = obj(json!({
        "metadata": { "name": "a", "namespace": "shop" },
        "spec": { "clusterIP": "10.96.0.9", "ports": [{ "port": 80 }] },
    }));
    assert_eq!(
        service(&s, &[]).unwrap().ports[0].target_port,
        TargetPort::Number(80)
    );
}

#[test]
fn pods_dual_stack_readiness_and_container_ports() {
    let p = pod(&sandbox_pod("v2", &["10.1.0.7", "fd00:1::7"], true, 8080)).unwrap();
    assert_eq!(p.ips.len(), 2);
    assert_eq!(p.ips[0].to_string(), "10.1.0.7");
    assert!(p.ready);
    assert_eq!(p.container_ports, BTreeMap::from([("http".into(), 8080)]));
    assert_eq!(p.labels["shunt.dev/sandbox"], "pr-42");

    assert!(
        !pod(&sandbox_pod("v2", &["10.1.0.7"], false, 8080))
            .unwrap()
            .ready
    );
    let mut terminating = sandbox_pod("v2", &["10.1.0.7"], true, 8080);
    terminating.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    assert!(!pod(&terminating).unwrap().ready);

    // Only podIP (older clusters).
    let mut old = sandbox_pod("v2", &["10.1.0.7"], true, 8080);
    old.status.as_mut().unwrap().pod_ips = None;
    assert_eq!(pod(&old).unwrap().ips[0].to_string(), "10.1.0.7");
}

#[test]
fn selector_fork_resolves_named_target_port_on_the_sandbox_pod() {
    let v4 = slice("reviews-a", "IPv4", &[("10.1.0.5", Some(true))], 8080);
    let state = cluster_state(
        [&reviews()],
        [&v4],
        [
            &sandbox_pod("v2", &["10.1.0.7", "fd00:1::7"], true, 8070),
            &sandbox_pod("v2-down", &["10.1.0.8"], false, 8070),
        ],
        [&route(
            "pr-42",
            "pr-42",
            "2026-01-01T00:00:00Z",
            sel("pr-42"),
        )],
    );
    let (t, statuses) = RouteTable::compute(&state, jiff::Timestamp::now());
    assert_eq!(
        statuses[0].reason,
        RouteReason::EndpointsReady,
        "{statuses:?}"
    );
    assert_eq!(statuses[0].observed_generation, 3);
    assert_eq!(statuses[0].forks[0].ready_endpoints, 1);
    let (svc, _) = t.service_for(sa("10.96.0.7:9080")).unwrap();
    let key = routes::RoutingKey::parse("pr-42").unwrap();
    let fork = t.fork(svc.id, &key).expect("fork installed");
    assert_eq!(fork.endpoints(9080), [sa("10.1.0.7:8070")]);
    // metrics has numeric target port 9091, which the pod serves too.
    assert_eq!(fork.endpoints(9090), [sa("10.1.0.7:9091")]);
    // Both ClusterIPs and the baseline endpoint are steered, for the forked ports.
    let steered: Vec<_> = t.steered().keys().copied().collect();
    for a in [
        "10.96.0.7:9080",
        "[fd00:96::7]:9080",
        "10.1.0.5:8080",
        "10.96.0.7:9090",
    ] {
        assert!(steered.contains(&sa(a)), "{a} not in {steered:?}");
    }
}

#[test]
fn key_conflicts_and_deleting_routes() {
    let older = route("a", "pr-1", "2026-01-01T00:00:00Z", sel("pr-1"));
    let newer = route("b", "pr-1", "2026-01-02T00:00:00Z", sel("pr-1"));
    let mut deleting = route("c", "pr-2", "2026-01-01T00:00:00Z", sel("pr-2"));
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    // Given out of order: the state comes out sorted, the older claim still wins.
    let state = cluster_state([&reviews()], [], [], [&newer, &deleting, &older]);
    assert_eq!(
        state
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let (_, statuses) = RouteTable::compute(&state, jiff::Timestamp::now());
    assert_eq!(statuses[0].reason, RouteReason::NoReadyEndpoints);
    assert_eq!(statuses[1].reason, RouteReason::DuplicateKey);
}

#[test]
fn slices_of_other_namespaces_or_services_are_ignored() {
    let mut other_ns = slice("x", "IPv4", &[("10.9.0.1", Some(true))], 8080);
    other_ns.metadata.namespace = Some("other".into());
    let mut unlabelled = slice("y", "IPv4", &[("10.9.0.2", Some(true))], 8080);
    unlabelled.metadata.labels = None;
    let state = cluster_state([&reviews()], [&other_ns, &unlabelled], [], []);
    assert!(state.services[0].endpoints.is_empty());
}
