//! Tests of key stripping: every key form goes, everything else stays as sent.
use http::HeaderName;

use super::*;
use crate::proxy::key::{KeyExtractor, KeySources};

fn sources() -> Vec<KeySource> {
    KeySources::with_headers([HeaderName::from_static("x-sandbox")])
        .with_query(true)
        .order
}

#[test]
fn baggage_loses_only_the_key_member() {
    assert_eq!(
        header_fate(&sources(), "Baggage", b"a=1, sd-routing-key=pr-1;p=2 ,b=2"),
        HeaderFate::Replace(b"a=1,b=2".to_vec())
    );
    assert_eq!(
        header_fate(&sources(), "baggage", b"sd-routing-key=pr-1"),
        HeaderFate::Drop
    );
    assert_eq!(header_fate(&sources(), "baggage", b"a=1"), HeaderFate::Keep);
}

#[test]
fn tracestate_loses_only_the_key_member() {
    assert_eq!(
        header_fate(
            &sources(),
            "tracestate",
            b"congo=t61rcWkgMzE,sd-routing-key=pr-1"
        ),
        HeaderFate::Replace(b"congo=t61rcWkgMzE".to_vec())
    );
    assert_eq!(
        header_fate(&sources(), "tracestate", b"rojo=00f067aa0ba902b7"),
        HeaderFate::Keep
    );
}

#[test]
fn key_headers_are_dropped_whole_and_others_kept() {
    for name in [
        "uberctx-sd-routing-key",
        "OT-Baggage-sd-routing-key",
        "X-Sandbox",
    ] {
        assert_eq!(
            header_fate(&sources(), name, b"pr-1"),
            HeaderFate::Drop,
            "{name}"
        );
    }
    assert_eq!(
        header_fate(&sources(), "x-other", b"pr-1"),
        HeaderFate::Keep
    );
    // A configured header that is not configured here is someone else's header.
    assert_eq!(
        header_fate(&KeySources::default().order, "x-sandbox", b"pr-1"),
        HeaderFate::Keep
    );
}

#[test]
fn stripped_request_carries_no_key_anywhere() {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("baggage", "a=1,sd-routing-key=pr-1"),
        ("baggage", "sd-routing-key=pr-2"),
        ("tracestate", "sd-routing-key=pr-3"),
        ("uberctx-sd-routing-key", "pr-4"),
        ("ot-baggage-sd-routing-key", "pr-5"),
        ("x-sandbox", "pr-6"),
        ("x-keep", "1"),
    ] {
        h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
    }
    let mut u: Uri = "/p?sd-routing-key=pr-7&q=1".parse().unwrap();
    assert!(strip_keys(&sources(), &mut h, &mut u));
    let ex = KeyExtractor::new(KeySources { order: sources() });
    let e = ex.extract(&h, &u);
    assert_eq!((e.key, e.invalid), (None, None));
    assert_eq!(u, "/p?q=1");
    assert_eq!(h.get_all("baggage").iter().collect::<Vec<_>>(), ["a=1"]);
    assert_eq!(h.get("x-keep").unwrap(), "1");
    assert_eq!(h.len(), 2);
    // Nothing to strip: nothing changes.
    let before = h.clone();
    assert!(!strip_keys(&sources(), &mut h, &mut u));
    assert_eq!(h, before);
}

#[test]
fn clients_are_matched_by_cidr_and_mapped_addresses() {
    let s = StripKeysFrom::new(vec![
        "10.1.0.0/16".parse().unwrap(),
        "fd00::1/128".parse().unwrap(),
    ]);
    assert!(s.covers("10.1.2.3".parse().unwrap()));
    assert!(s.covers("::ffff:10.1.2.3".parse().unwrap()));
    assert!(s.covers("fd00::1".parse().unwrap()));
    assert!(!s.covers("10.2.0.1".parse().unwrap()));
    assert!(!StripKeysFrom::default().covers("10.1.2.3".parse().unwrap()));
}

/// A table whose node pods are `pods` (namespace, name, ip).
fn table_with_node_pods(pods: &[(&str, &str, &str)]) -> crate::routes::RouteTable {
    let state = crate::routes::ClusterState {
        node_pods: pods
            .iter()
            .map(|(ns, name, ip)| crate::routes::NodePod {
                namespace: (*ns).into(),
                name: (*name).into(),
                uid: format!("uid-{name}"),
                ips: vec![ip.parse().expect("ip")],
                labels: Default::default(),
                netns: None,
            })
            .collect(),
        ..Default::default()
    };
    crate::routes::RouteTable::compute(&state, jiff::Timestamp::UNIX_EPOCH).0
}

#[test]
fn pods_of_a_stripped_namespace_are_found_by_address_in_the_current_table() {
    let table = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(table_with_node_pods(&[
        ("ingress", "nginx-1", "10.1.0.7"),
        ("shop", "web-1", "10.1.0.8"),
        // Host-network pods share the node's address.
        ("ingress", "nginx-host", "192.168.0.10"),
        ("monitoring", "agent", "192.168.0.10"),
    ])));
    let strip =
        StripKeysFrom::new(Vec::new()).with_namespaces(vec!["ingress".into()], table.clone());
    assert!(!strip.is_empty());
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    assert!(strip.covers(ip("10.1.0.7")));
    assert!(strip.covers(ip("::ffff:10.1.0.7")), "IPv4-mapped client");
    assert!(
        strip.covers(ip("192.168.0.10")),
        "any namespace at a shared address"
    );
    assert!(
        !strip.covers(ip("10.1.0.8")),
        "another namespace keeps its keys"
    );
    assert!(
        !strip.covers(ip("10.9.9.9")),
        "an unknown address keeps its keys"
    );

    // The pod left and its address went to a shop pod: the next snapshot says so.
    table.store(std::sync::Arc::new(table_with_node_pods(&[(
        "shop", "web-2", "10.1.0.7",
    )])));
    assert!(!strip.covers(ip("10.1.0.7")));

    let through_extractor =
        KeyExtractor::new(KeySources::default()).stripping_keys_from(strip.clone());
    table.store(std::sync::Arc::new(table_with_node_pods(&[(
        "ingress", "nginx-3", "10.1.0.7",
    )])));
    assert!(through_extractor.strips(ip("10.1.0.7")));
}

#[test]
fn no_namespaces_means_no_table_lookup() {
    let table = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(table_with_node_pods(&[(
        "ingress", "nginx-1", "10.1.0.7",
    )])));
    let strip = StripKeysFrom::new(Vec::new()).with_namespaces(Vec::new(), table);
    assert!(strip.is_empty());
    assert!(!strip.covers("10.1.0.7".parse().expect("ip")));
}
