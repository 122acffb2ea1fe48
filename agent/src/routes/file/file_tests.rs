//! Tests of the routes file: parsing and validation messages (the watcher is tested in
//! `crate::sync::file_source`).
use super::*;
use jiff::Timestamp;

use crate::routes::{
    Fallback, RouteReason, RouteTable, RoutingKey, SANDBOX_LABEL, SandboxRouteSpec, TargetPort,
    service_id,
};

const EXAMPLE: &str = r#"
services:
  - name: reviews
    namespace: shop            # default: "default"
    addresses: [10.96.0.7]     # ClusterIPs
    ports: [{ name: http, port: 9080, targetPort: http }]
    endpoints: [{ ip: 198.18.2.2, ports: { http: 9080 } }]
pods:
  - { name: reviews-v2, namespace: shop, ips: [198.18.3.2], labels: { app: reviews-v2, shunt.dev/sandbox: pr-42 }, ports: { http: 9080 } }
routes:
  - name: pr-42
    namespace: shop
    spec: { routingKey: pr-42, forks: [ { service: reviews, to: { selector: { app: reviews-v2, shunt.dev/sandbox: pr-42 } } } ], fallback: Baseline }
"#;

fn err(text: &str) -> String {
    match parse_routes(text, "routes.yaml") {
        Ok(s) => panic!("expected an error, got {s:?}"),
        Err(e) => e.to_string(),
    }
}

fn ok(text: &str) -> ClusterState {
    match parse_routes(text, "routes.yaml") {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn documented_example_parses() {
    let s = ok(EXAMPLE);
    assert_eq!(s.services.len(), 1);
    let svc = &s.services[0];
    assert_eq!(
        (svc.namespace.as_str(), svc.name.as_str()),
        ("shop", "reviews")
    );
    assert_eq!(svc.ports[0].target_port, TargetPort::Name("http".into()));
    assert!(svc.endpoints[0].ready);
    assert_eq!(svc.endpoints[0].ports["http"], 9080);
    assert_eq!(s.pods[0].container_ports["http"], 9080);
    assert_eq!(s.pods[0].labels[SANDBOX_LABEL], "pr-42");
    assert_eq!(s.routes[0].spec.routing_key, "pr-42");
    assert_eq!(s.routes[0].spec.fallback, Fallback::Baseline);
}

#[test]
fn documented_example_routes_keyed_requests() {
    let (t, st) = RouteTable::compute(&ok(EXAMPLE), Timestamp::UNIX_EPOCH);
    assert_eq!(st[0].reason, RouteReason::EndpointsReady, "{st:?}");
    let fork = t
        .fork(
            service_id("shop", "reviews"),
            &RoutingKey::parse("pr-42").expect("key"),
        )
        .expect("fork");
    assert_eq!(
        fork.pick_sandbox(9080),
        Some("198.18.3.2:9080".parse().expect("addr"))
    );
}

#[test]
fn file_spec_reads_like_the_crd_spec() {
    let spec_yaml = "routingKey: pr-42\nforks:\n  - service: reviews\n    to: { service: reviews-pr-42 }\n    ports: [http, 9090]\nfallback: Reject\nexpiresAt: 2030-01-01T00:00:00Z\n";
    let direct: SandboxRouteSpec = serde_saphyr::from_str(spec_yaml).expect("spec");
    let indented: String = spec_yaml.lines().map(|l| format!("      {l}\n")).collect();
    let file = format!("routes:\n  - name: r\n    namespace: shop\n    spec:\n{indented}");
    assert_eq!(ok(&file).routes[0].spec, direct);
}

#[test]
fn invalid_routing_key_points_at_its_line_and_column() {
    let text =
        "routes:\n  - name: r\n    namespace: shop\n    spec:\n      routingKey: \"bad key!\"\n";
    assert_eq!(
        err(text),
        "routes.yaml:5:19: routes[0].spec.routingKey: \"bad key!\" is not a valid routing key ([A-Za-z0-9._-]{1,64}): ' ' at byte 3"
    );
}

#[test]
fn unknown_field_is_rejected_with_its_line() {
    let text = "services:\n  - name: a\n    adresses: [10.0.0.1]\n";
    let e = err(text);
    assert!(
        e.starts_with("routes.yaml:3:5: unknown field `adresses`"),
        "{e}"
    );
    let e = err("routes:\n  - name: r\n    spec: { routingKey: k, fallbak: Reject }\n");
    assert!(e.starts_with("routes.yaml:3:"), "{e}");
    assert!(e.contains("unknown field `fallbak`"), "{e}");
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let e = err("services: [\n");
    assert!(e.starts_with("routes.yaml:1:"), "{e}");
}

#[test]
fn bad_values_are_located() {
    assert!(
        err("services:\n  - name: a\n    addresses: [10.0.0.300]\n").starts_with("routes.yaml:3:")
    );
    assert!(
        err("routes:\n  - name: r\n    spec: { routingKey: k, fallback: baseline }\n")
            .contains("unknown variant `baseline`")
    );
    assert!(
        err("services:\n  - name: a\n    ports: [{ port: 80, targetPort: 0 }]\n")
            .contains("port 0 is not in 1..=65535")
    );
    assert!(
        err("services:\n  - name: a\n    ports: [{ port: 0 }]\n").starts_with("routes.yaml:3:")
    );
}

#[test]
fn empty_file_is_an_empty_cluster() {
    // The operator wrote the file, so its endpoint addresses are trusted (see EndpointTrust).
    let empty = ClusterState {
        endpoint_trust: crate::routes::EndpointTrust::Operator,
        ..ClusterState::default()
    };
    assert_eq!(ok(""), empty);
    assert_eq!(ok("# nothing yet\n"), empty);
    assert_eq!(ok("services: []\n"), empty);
}

#[test]
fn defaults_apply() {
    let s = ok(
        "services:\n  - name: a\n    ports: [{ port: 80 }]\n    endpoints: [{ ip: 10.0.0.1 }]\npods:\n  - { name: p, ips: [10.0.0.2] }\nroutes:\n  - { name: r, spec: { routingKey: k } }\n",
    );
    let svc = &s.services[0];
    assert_eq!(svc.namespace, DEFAULT_NAMESPACE);
    assert_eq!(svc.ports[0].target_port, TargetPort::Number(80));
    assert_eq!(svc.ports[0].name, None);
    assert!(svc.endpoints[0].ready);
    assert!(s.pods[0].ready);
    assert_eq!(s.pods[0].namespace, DEFAULT_NAMESPACE);
    assert_eq!(s.routes[0].namespace, DEFAULT_NAMESPACE);
    assert_eq!(s.routes[0].spec.fallback, Fallback::Baseline);
}

#[test]
fn duplicate_service_is_rejected() {
    let e = err("services:\n  - name: a\n  - name: b\n  - name: a\n");
    assert_eq!(
        e,
        "routes.yaml:4:11: services[2].name: service default/a is already defined at line 2"
    );
}

#[test]
fn duplicate_cluster_ip_is_rejected() {
    let e = err(
        "services:\n  - { name: a, addresses: [10.0.0.1] }\n  - { name: b, addresses: [10.0.0.1] }\n",
    );
    assert!(
        e.starts_with("routes.yaml:3:28: services[1].addresses[0]: 10.0.0.1 is already"),
        "{e}"
    );
}

#[test]
fn duplicate_key_in_a_namespace_is_rejected() {
    let e = err(
        "routes:\n  - { name: a, spec: { routingKey: k } }\n  - { name: b, spec: { routingKey: k } }\n  - { name: c, namespace: other, spec: { routingKey: k } }\n",
    );
    assert_eq!(
        e,
        "routes.yaml:3:36: routes[1].spec.routingKey: routing key \"k\" is already used by route default/a (line 2); keys must be unique per namespace"
    );
}

#[test]
fn selector_without_sandbox_label_is_rejected_with_its_line() {
    let e = err(
        "routes:\n  - name: r\n    spec:\n      routingKey: k\n      forks:\n        - service: reviews\n          to:\n            selector: { app: reviews }\n",
    );
    assert!(
        e.starts_with("routes.yaml:8:23: routes[0].spec.forks[0].to.selector: selector must include the shunt.dev/sandbox label"),
        "{e}"
    );
}

#[test]
fn cross_namespace_target_is_rejected_with_its_line() {
    let e = err(
        "routes:\n  - name: r\n    namespace: shop\n    spec:\n      routingKey: k\n      forks:\n        - service: reviews\n          to: { service: books/reviews-v2 }\n",
    );
    assert!(
        e.starts_with("routes.yaml:8:26: routes[0].spec.forks[0].to.service: \"books/reviews-v2\" is in namespace \"books\""),
        "{e}"
    );
}

#[test]
fn endpoint_ports_must_name_service_ports() {
    let e = err(
        "services:\n  - name: a\n    ports: [{ name: http, port: 80 }]\n    endpoints: [{ ip: 10.0.0.1, ports: { htp: 8080 } }]\n",
    );
    assert!(
        e.starts_with("routes.yaml:4:47: services[0].endpoints[0].ports.htp: the service has no port named \"htp\""),
        "{e}"
    );
}

#[test]
fn named_target_port_needs_an_endpoint_port() {
    let e = err(
        "services:\n  - name: a\n    ports: [{ name: http, port: 80, targetPort: web }]\n    endpoints: [{ ip: 10.0.0.1 }]\n",
    );
    assert!(
        e.starts_with("routes.yaml:4:17: services[0].endpoints[0].ports: service port \"http\" has targetPort \"web\""),
        "{e}"
    );
}

#[test]
fn several_unnamed_ports_are_rejected() {
    let e = err("services:\n  - name: a\n    ports: [{ port: 80 }, { port: 81 }]\n");
    assert!(e.contains("services[0].ports[0].name: a service with several ports must name each"));
}

#[test]
fn every_problem_is_reported_in_line_order() {
    let e = err(
        "routes:\n  - { name: a, spec: { routingKey: \"x y\" } }\n  - { name: \"b/c\", spec: { routingKey: ok } }\n",
    );
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(lines[0].starts_with("routes.yaml:2:"), "{e}");
    assert!(lines[1].starts_with("routes.yaml:3:"), "{e}");
    assert!(
        lines[1].contains("routes[1].name: \"b/c\" is not a valid name"),
        "{e}"
    );
}

#[test]
fn integration_test_fixture_shape_parses() {
    // The shape tests/src/routes_fixture.rs generates.
    let text = r#"
services:
  - name: reviews
    namespace: shop
    addresses: [198.19.10.7]
    ports:
      - { name: http, port: 9080, targetPort: http }
      - { name: grpc, port: 9085, targetPort: grpc }
    endpoints:
      - { ip: 10.0.0.2, ports: { http: 8080, grpc: 8085 } }
  - name: ratings
    namespace: shop
    addresses: [198.19.10.8]
    ports: [{ name: http, port: 9080, targetPort: 8080 }]
    endpoints:
      - { ip: 10.0.0.4, ports: { http: 8080 } }
pods:
  - name: reviews-v2
    namespace: shop
    ips: [10.0.0.3]
    ready: false
    labels: { app: reviews-v2, shunt.dev/sandbox: pr-42 }
    ports: { http: 8080, grpc: 8085 }
routes:
  - name: pr-42
    namespace: shop
    spec:
      routingKey: pr-42
      forks:
        - service: reviews
          to: { selector: { app: reviews-v2, shunt.dev/sandbox: pr-42 } }
      fallback: Reject
"#;
    let s = ok(text);
    assert!(!s.pods[0].ready);
    assert_eq!(s.routes[0].spec.fallback, Fallback::Reject);
    let (_, st) = RouteTable::compute(&s, Timestamp::UNIX_EPOCH);
    assert_eq!(st[0].reason, RouteReason::NoReadyEndpoints);
}

#[test]
fn a_read_error_names_the_file_once_and_keeps_its_cause_as_the_source() {
    let path = std::env::temp_dir().join("shunt-no-such-routes-file.yaml");
    let e = load_routes(&path).expect_err("missing file");
    assert!(matches!(e, RoutesFileError::Read { .. }));
    assert_eq!(e.to_string(), path.display().to_string());
    let chain = format!("{:#}", anyhow::Error::from(e));
    let shown = path.display().to_string();
    assert!(chain.starts_with(&format!("{shown}: ")), "{chain}");
    assert!(chain.contains("os error 2"), "{chain}");
    assert_eq!(chain.matches(shown.as_str()).count(), 1, "{chain}");
}

#[test]
fn a_node_pod_names_its_network_namespace_by_absolute_path() {
    let s = ok("nodePods:\n  - { name: client, ips: [198.18.1.2], netns: /run/netns/client }\n");
    assert_eq!(
        s.node_pods[0].netns.as_deref(),
        Some(std::path::Path::new("/run/netns/client"))
    );
    let e = err("nodePods:\n  - { name: client, ips: [198.18.1.2], netns: run/netns/client }\n");
    assert!(e.contains("nodePods[0].netns"), "{e}");
    assert!(e.contains("absolute path"), "{e}");
    assert!(e.contains(":2:"), "the line: {e}");
}

#[test]
fn baseline_facts_parse_node_pods_affinity_policy_and_endpoint_owners() {
    let s = ok(r#"
node: node-a
nodePods:
  - { name: reviews-v1, namespace: shop, uid: 7f3c, ips: [198.18.2.2], labels: { app: reviews } }
services:
  - name: reviews
    namespace: shop
    addresses: [10.96.0.7]
    sessionAffinity: ClientIP
    sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } }
    internalTrafficPolicy: Local
    ports: [{ name: http, port: 9080, targetPort: 9080 }]
    endpoints:
      - { ip: 198.18.2.2, nodeName: node-a, targetRef: { kind: Pod, namespace: shop, name: reviews-v1 } }
      - { ip: 198.18.2.3 }
  - name: ratings
    addresses: [10.96.0.8]
    sessionAffinity: ClientIP
    ports: [{ port: 80 }]
"#);
    assert_eq!(s.node.as_deref(), Some("node-a"));
    assert_eq!(s.node_pods.len(), 1);
    assert_eq!(
        (s.node_pods[0].uid.as_str(), s.node_pods[0].ips[0]),
        ("7f3c", "198.18.2.2".parse().expect("ip"))
    );
    let svc = &s.services[0];
    assert_eq!(
        svc.client_ip_affinity,
        Some(std::time::Duration::from_secs(60))
    );
    assert_eq!(
        svc.internal_traffic_policy,
        crate::routes::TrafficPolicy::Local
    );
    assert_eq!(svc.endpoints[0].node_name.as_deref(), Some("node-a"));
    assert_eq!(
        svc.endpoints[0]
            .target_ref
            .as_ref()
            .map(|r| r.name.as_str()),
        Some("reviews-v1")
    );
    assert_eq!(svc.endpoints[1].node_name, None);
    assert_eq!(
        s.services[1].client_ip_affinity,
        Some(crate::routes::DEFAULT_AFFINITY_TIMEOUT)
    );
}

#[test]
fn local_policy_needs_the_node_and_affinity_is_checked() {
    let e = err(r#"
services:
  - name: reviews
    internalTrafficPolicy: Local
    sessionAffinity: Sticky
    sessionAffinityConfig: { clientIP: { timeoutSeconds: 0 } }
"#);
    assert!(
        e.contains(
            "routes.yaml:4:28: services[0].internalTrafficPolicy: Local needs the file's `node:`"
        ),
        "{e}"
    );
    assert!(
        e.contains("services[0].sessionAffinity: \"Sticky\" is not a session affinity"),
        "{e}"
    );
    assert!(
        e.contains(
            "services[0].sessionAffinityConfig.clientIP.timeoutSeconds: 0 is not in 1..=86400"
        ),
        "{e}"
    );
}

#[test]
fn sources_are_read_with_their_key_and_origin() {
    let s = ok(
        "sources:\n  - { cgroup: /sys/fs/cgroup/x/b, key: pr-42 }\n  - { cgroup: /sys/fs/cgroup/x/a, key: pr-7, origin: shunt test }\n",
    );
    assert_eq!(s.sources.len(), 2);
    assert_eq!(
        s.sources[0].cgroup,
        std::path::Path::new("/sys/fs/cgroup/x/a")
    );
    assert_eq!(s.sources[0].origin, "shunt test");
    assert_eq!(s.sources[1].key, "pr-42");
    assert_eq!(s.sources[1].origin, "file");
}

#[test]
fn bad_sources_are_reported_at_their_line() {
    let e = err(
        "sources:\n  - { cgroup: rel/path, key: pr-42 }\n  - { cgroup: /sys/fs/cgroup/a/../b, key: pr-42 }\n  - { cgroup: /sys/fs/cgroup/c, key: 'bad key' }\n  - { cgroup: /sys/fs/cgroup/c, key: pr-1 }\n  - { cgroup: /, key: pr-1 }\n",
    );
    assert!(
        e.contains("routes.yaml:2:15: sources[0].cgroup: \"rel/path\" is not an absolute path"),
        "{e}"
    );
    assert!(e.contains("routes.yaml:3:15: sources[1].cgroup: \"/sys/fs/cgroup/a/../b\": `.` and `..` are not allowed"), "{e}");
    assert!(
        e.contains("routes.yaml:4:38: sources[2].key: routing key has ' ' at byte 3"),
        "{e}"
    );
    assert!(
        e.contains("sources[3].cgroup: /sys/fs/cgroup/c is already a source at line 4"),
        "{e}"
    );
    assert!(
        e.contains("sources[4].cgroup: the root cgroup cannot be a marked source"),
        "{e}"
    );
    let e = err("sources:\n  - { cgroup: /sys/fs/cgroup/c, key: pr-1, typo: 1 }\n");
    assert!(e.contains("unknown field `typo`"), "{e}");
}
