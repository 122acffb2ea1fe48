//! Finding services and ports (with errors naming the right one), and route names.
use serde_json::json;

use super::{routes::route_name, *};

fn state() -> ClusterState {
    crate::routes::file::parse_routes(
        "services:\n  - { name: reviews, namespace: shop, addresses: [10.96.0.7], \
         ports: [{ name: http, port: 9080, targetPort: 8080 }, { name: grpc, port: 9090, targetPort: grpc }], \
         endpoints: [{ ip: 10.0.0.1, ports: { http: 8080, grpc: 7000 } }] }\n  \
         - { name: reviews, namespace: other, addresses: [10.96.0.8], ports: [{ port: 80 }] }\n\
         routes:\n  - { name: pr-1, namespace: shop, spec: { routingKey: pr-1 } }\n",
        "t",
    )
    .expect("valid")
}

#[test]
fn services_resolve_by_name_namespace_and_dns() {
    let s = state();
    assert!(
        find_service(&s, "reviews", None)
            .unwrap_err()
            .kind
            .as_str()
            .contains("ambiguous")
    );
    assert_eq!(
        find_service(&s, "shop/reviews", None).unwrap().namespace,
        "shop"
    );
    assert_eq!(
        find_service(&s, "reviews", Some("other"))
            .unwrap()
            .namespace,
        "other"
    );
    assert_eq!(
        find_service(&s, "reviews.shop.svc.cluster.local", None)
            .unwrap()
            .namespace,
        "shop"
    );
    let e = find_service(&s, "nope", None).unwrap_err();
    assert_eq!(e.kind.as_str(), "service_not_found");
    assert_eq!(
        e.details.unwrap()["services"],
        json!(["shop/reviews", "other/reviews"])
    );
}

#[test]
fn wrong_ports_name_the_right_one() {
    let s = state();
    let svc = find_service(&s, "shop/reviews", None).unwrap();
    assert_eq!(
        find_port(svc, &PortValue::Name("grpc".into()))
            .unwrap()
            .port,
        9090
    );
    assert_eq!(
        find_port(svc, &PortValue::Name("9080".into()))
            .unwrap()
            .port,
        9080
    );
    let e = find_port(svc, &PortValue::Number(8080)).unwrap_err();
    assert_eq!(e.kind.as_str(), "wrong_port");
    assert_eq!(e.details.as_ref().unwrap()["suggested_port"], 9080);
    assert!(e.message.contains("target (pod) port"), "{}", e.message);
    // A named target port resolved on an endpoint.
    let e = find_port(svc, &PortValue::Number(7000)).unwrap_err();
    assert_eq!(e.details.as_ref().unwrap()["suggested_port"], 9090);
    let e = find_port(svc, &PortValue::Number(1)).unwrap_err();
    assert!(
        e.message
            .contains("9080 (http, targetPort 8080), 9090 (grpc, targetPort grpc)"),
        "{}",
        e.message
    );
    assert_eq!(
        e.details.unwrap()["valid_ports"].as_array().unwrap().len(),
        2
    );
}

#[test]
fn route_names_are_sanitized_and_unique() {
    let s = state();
    assert_eq!(route_name("PR_2", &s, "shop"), "pr-2");
    assert_eq!(route_name("pr-1", &s, "shop"), "pr-1-2");
    assert_eq!(route_name("pr-1", &s, "other"), "pr-1");
}
