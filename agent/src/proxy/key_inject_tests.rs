use http::HeaderMap;

use super::*;
use crate::proxy::{
    ClientAddr, OrigDstAddr,
    detect::Protocol,
    h1::head::{HeadLimits, parse_request_injecting},
    key::KeyExtractor,
};

fn marked_info(key: &str) -> ConnInfo {
    let source = AppliedSource {
        cgroup: "/sys/fs/cgroup/x".into(),
        cgroup_id: 42,
        key: RoutingKey::parse(key).expect("key"),
        origin: "file".into(),
    };
    ConnInfo {
        client: ClientAddr::from_peer("10.0.0.1:4000".parse().expect("addr")),
        original_dst: OrigDstAddr("10.96.0.7:80".parse().expect("addr")),
        service: ServiceId(7),
        protocol: Protocol::Http1,
        marked: Some(MarkedConn::new(&source)),
        source: Default::default(),
    }
}

fn h1(head: &str, inject: Option<&str>) -> (String, Extracted) {
    let key = inject.map(|k| RoutingKey::parse(k).expect("key"));
    let limits = HeadLimits {
        max_bytes: 64 * 1024,
        max_headers: 100,
    };
    let h = parse_request_injecting(
        head.as_bytes(),
        limits,
        &KeyExtractor::default(),
        false,
        key.as_ref(),
    )
    .expect("valid head")
    .expect("complete head");
    let out: Vec<u8> = h
        .out
        .slices(head.as_bytes(), &[])
        .iter()
        .flat_map(|s| s.to_vec())
        .collect();
    (String::from_utf8(out).expect("utf8"), h.extracted)
}

#[test]
fn h1_request_without_a_key_gets_it_merged_into_its_baggage() {
    let (out, ex) = h1(
        "GET / HTTP/1.1\r\nHost: a\r\nbaggage: userId=alice\r\nX-Other: 1\r\n\r\n",
        Some("pr-42"),
    );
    assert_eq!(ex.key.as_ref().map(RoutingKey::as_str), Some("pr-42"));
    assert_eq!(ex.source, KeySource::Injected);
    assert_eq!(
        out,
        "GET / HTTP/1.1\r\nHost: a\r\nX-Other: 1\r\nbaggage: userId=alice,sd-routing-key=pr-42\r\n\r\n"
    );
}

#[test]
fn h1_request_without_baggage_gets_one() {
    let (out, _) = h1("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Some("pr-42"));
    assert_eq!(
        out,
        "GET / HTTP/1.1\r\nHost: a\r\nbaggage: sd-routing-key=pr-42\r\n\r\n"
    );
}

#[test]
fn h1_request_with_its_own_key_or_a_malformed_one_is_untouched() {
    for head in [
        "GET / HTTP/1.1\r\nHost: a\r\nbaggage: sd-routing-key=pr-7\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nuberctx-sd-routing-key: pr-7\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nbaggage: sd-routing-key=bad%20key\r\n\r\n",
    ] {
        let (out, ex) = h1(head, Some("pr-42"));
        assert_eq!(out, head);
        assert_ne!(ex.source, KeySource::Injected);
    }
}

#[test]
fn h1_unmarked_connection_is_untouched() {
    let head = "GET / HTTP/1.1\r\nHost: a\r\nbaggage: userId=alice\r\n\r\n";
    let (out, ex) = h1(head, None);
    assert_eq!(out, head);
    assert_eq!(ex.key, None);
}

#[test]
fn h2_request_without_a_key_gets_it_and_one_with_a_key_keeps_it() {
    let info = marked_info("pr-42");
    let keys = KeyExtractor::default();
    let mut headers = HeaderMap::new();
    headers.append("baggage", "userId=alice".parse().expect("value"));
    let mut uri: http::Uri = "/".parse().expect("uri");
    let mut ex = keys.normalize(&mut headers, &mut uri);
    assert!(inject_h2(&info, &mut headers, &mut ex));
    assert_eq!(
        headers.get("baggage").expect("baggage"),
        "userId=alice,sd-routing-key=pr-42"
    );
    assert_eq!(ex.source, KeySource::Injected);

    let mut own = HeaderMap::new();
    own.append("baggage", "sd-routing-key=pr-7".parse().expect("value"));
    let mut ex = keys.normalize(&mut own, &mut uri);
    assert!(!inject_h2(&info, &mut own, &mut ex));
    assert_eq!(own.get("baggage").expect("baggage"), "sd-routing-key=pr-7");
    assert_eq!(ex.key.as_ref().map(RoutingKey::as_str), Some("pr-7"));
}
