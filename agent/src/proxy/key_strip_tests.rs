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
