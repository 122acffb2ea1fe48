//! Tests of routing-key extraction, query stripping and baggage injection.
use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

fn uri(s: &str) -> Uri {
    s.parse().expect("uri")
}

fn extract(pairs: &[(&str, &str)]) -> Extracted {
    KeyExtractor::default().extract(&headers(pairs), &uri("/"))
}

fn key_of(pairs: &[(&str, &str)]) -> Option<String> {
    extract(pairs).key.map(|k| k.to_string())
}

fn extractor() -> KeyExtractor {
    KeyExtractor::new(KeySources::default())
}

/// With `--key-from-query`.
fn query_extractor() -> KeyExtractor {
    KeyExtractor::new(KeySources::default().with_query(true))
}

#[test]
fn baggage_member_is_found() {
    let e = extract(&[("baggage", "sd-routing-key=pr-42")]);
    assert_eq!(e.key.as_ref().map(|k| k.as_str()), Some("pr-42"));
    assert_eq!(e.source, KeySource::Baggage);
    assert_eq!(e.invalid, None);
}

#[test]
fn baggage_allows_whitespace_properties_and_other_members() {
    assert_eq!(
        key_of(&[("baggage", "a=1, sd-routing-key = pr-42 ;prop=x, b=2")]),
        Some("pr-42".into())
    );
    assert_eq!(
        key_of(&[("baggage", "sd-routing-key=pr-42;p1;p2=v\t,c=3")]),
        Some("pr-42".into())
    );
}

#[test]
fn baggage_value_is_percent_decoded() {
    assert_eq!(
        key_of(&[("baggage", "sd-routing-key=pr%2D42%2e1")]),
        Some("pr-42.1".into())
    );
    // Decoding to a forbidden character makes it invalid, not a different key.
    let e = extract(&[("baggage", "sd-routing-key=pr%2042")]);
    assert_eq!(e.key, None);
    assert_eq!(e.invalid.map(|i| i.raw), Some("pr 42".into()));
}

#[test]
fn baggage_is_read_across_repeated_headers() {
    assert_eq!(
        key_of(&[("baggage", "a=1,b=2"), ("baggage", "sd-routing-key=pr-9")]),
        Some("pr-9".into())
    );
}

#[test]
fn malformed_baggage_members_are_skipped() {
    assert_eq!(
        key_of(&[(
            "baggage",
            "garbage,=x,,sd-routing-key;p=1,  ,sd-routing-keyX=1,sd-routing-key=ok-1"
        )]),
        Some("ok-1".into())
    );
}

#[test]
fn invalid_baggage_key_is_reported_and_a_later_valid_one_wins() {
    let e = extract(&[("baggage", "sd-routing-key=not ok,sd-routing-key=pr-2")]);
    assert_eq!(e.key.map(|k| k.to_string()), Some("pr-2".into()));
    let inv = e.invalid.expect("reported");
    assert_eq!(inv.source, KeySource::Baggage);
    assert_eq!(inv.raw, "not ok");
    assert_eq!(inv.error, KeyError::InvalidChar { ch: ' ', at: 3 });
}

#[test]
fn over_long_key_is_invalid_and_truncated_in_the_report() {
    let long = "k".repeat(200);
    let e = extract(&[("baggage", &format!("sd-routing-key={long}"))]);
    assert_eq!(e.key, None);
    assert_eq!(e.source, KeySource::None);
    let inv = e.invalid.expect("reported");
    assert_eq!(inv.error, KeyError::TooLong { len: 200 });
    assert_eq!(inv.raw.chars().count(), 80);
    assert_eq!(
        key_of(&[("baggage", &format!("sd-routing-key={}", "k".repeat(64)))]),
        Some("k".repeat(64))
    );
}

#[test]
fn empty_baggage_is_no_key() {
    let e = extract(&[("baggage", ""), ("baggage", " , ")]);
    assert_eq!((e.key, e.source, e.invalid), (None, KeySource::None, None));
}

#[test]
fn empty_member_value_is_an_invalid_key() {
    let e = extract(&[("baggage", "sd-routing-key=")]);
    assert_eq!(e.key, None);
    assert_eq!(e.invalid.map(|i| i.error), Some(KeyError::Empty));
}

#[test]
fn tracestate_member_is_found() {
    let e = extract(&[("tracestate", "congo=t61rcWkgMzE, sd-routing-key=pr-7")]);
    assert_eq!(e.key.map(|k| k.to_string()), Some("pr-7".into()));
    assert_eq!(e.source, KeySource::TraceState);
}

#[test]
fn jaeger_and_opentracing_headers_are_read_and_decoded() {
    let e = extract(&[("uberctx-sd-routing-key", "pr%2D3")]);
    assert_eq!(
        (e.key.map(|k| k.to_string()), e.source),
        (Some("pr-3".into()), KeySource::UberCtx)
    );
    let e = extract(&[("ot-baggage-sd-routing-key", " pr-4 ")]);
    assert_eq!(
        (e.key.map(|k| k.to_string()), e.source),
        (Some("pr-4".into()), KeySource::OtBaggage)
    );
}

#[test]
fn combined_single_value_header_takes_first_valid_piece() {
    assert_eq!(
        key_of(&[("uberctx-sd-routing-key", "bad key, pr-5")]),
        Some("pr-5".into())
    );
    let e = extract(&[("uberctx-sd-routing-key", "")]);
    assert_eq!(e.invalid.map(|i| i.error), Some(KeyError::Empty));
}

#[test]
fn sources_are_tried_in_priority_order() {
    let all = [
        ("baggage", "sd-routing-key=from-baggage"),
        ("tracestate", "sd-routing-key=from-tracestate"),
        ("uberctx-sd-routing-key", "from-uberctx"),
        ("ot-baggage-sd-routing-key", "from-ot"),
        ("x-sandbox", "from-header"),
    ];
    let ex = KeyExtractor::new(
        KeySources::with_headers([HeaderName::from_static("x-sandbox")]).with_query(true),
    );
    let u = uri("/p?sd-routing-key=from-query");
    let expected = [
        ("from-baggage", KeySource::Baggage),
        ("from-tracestate", KeySource::TraceState),
        ("from-uberctx", KeySource::UberCtx),
        ("from-ot", KeySource::OtBaggage),
        (
            "from-header",
            KeySource::Header(HeaderName::from_static("x-sandbox")),
        ),
    ];
    for (i, (want, source)) in expected.iter().enumerate() {
        let e = ex.extract(&headers(&all[i..]), &u);
        assert_eq!(e.key.map(|k| k.to_string()).as_deref(), Some(*want));
        assert_eq!(&e.source, source);
    }
    let e = ex.extract(&HeaderMap::new(), &u);
    assert_eq!(e.key.map(|k| k.to_string()).as_deref(), Some("from-query"));
    assert_eq!(e.source, KeySource::Query);
}

#[test]
fn configured_header_is_taken_literally_and_not_read_by_default() {
    let h = headers(&[("x-sandbox", "pr%2D1")]);
    let ex = KeyExtractor::new(KeySources::with_headers([HeaderName::from_static(
        "x-sandbox",
    )]));
    assert_eq!(
        ex.extract(&h, &uri("/")).invalid.map(|i| i.raw),
        Some("pr%2D1".into())
    );
    assert_eq!(extractor().extract(&h, &uri("/")).key, None);
    assert_eq!(
        KeySources::with_headers([HeaderName::from_static("x-sandbox")])
            .with_query(true)
            .order
            .last(),
        Some(&KeySource::Query),
        "query stays last"
    );
}

#[test]
fn invalid_key_in_one_source_falls_through_to_the_next() {
    let e = extract(&[
        ("baggage", "sd-routing-key=bad/key"),
        ("tracestate", "sd-routing-key=pr-8"),
    ]);
    assert_eq!(e.key.map(|k| k.to_string()), Some("pr-8".into()));
    assert_eq!(e.source, KeySource::TraceState);
    assert_eq!(e.invalid.map(|i| i.source), Some(KeySource::Baggage));
}

#[test]
fn query_parameter_is_read_and_decoded() {
    let e = query_extractor().extract(&HeaderMap::new(), &uri("/x?a=1&sd-routing-key=pr%2D6&b"));
    assert_eq!(e.key.map(|k| k.to_string()), Some("pr-6".into()));
    assert_eq!(e.source, KeySource::Query);
    let e = query_extractor().extract(&HeaderMap::new(), &uri("/x?sd-routing-key-x=1&key=2"));
    assert_eq!((e.key, e.invalid), (None, None));
}

#[test]
fn query_parameter_is_ignored_unless_enabled() {
    let mut h = HeaderMap::new();
    let mut u = uri("/x?a=1&sd-routing-key=pr-6");
    let e = extractor().normalize(&mut h, &mut u);
    assert_eq!((e.key, e.source, e.invalid), (None, KeySource::None, None));
    assert_eq!(
        u,
        uri("/x?a=1&sd-routing-key=pr-6"),
        "the query is not a key: left alone"
    );
    assert!(h.is_empty());
    assert!(!extractor().sources().contains(&KeySource::Query));
}

#[test]
fn no_key_anywhere_is_none() {
    let e = extractor().extract(&headers(&[("baggage", "a=1")]), &uri("/?q=1"));
    assert_eq!((e.key, e.source, e.invalid), (None, KeySource::None, None));
}

#[test]
fn non_utf8_and_control_bytes_are_invalid_and_sanitised() {
    let mut h = HeaderMap::new();
    h.insert(
        BAGGAGE,
        HeaderValue::from_bytes(b"sd-routing-key=pr\xff%01%0Ax").expect("value"),
    );
    let e = extractor().extract(&h, &uri("/"));
    assert_eq!(e.key, None);
    let inv = e.invalid.expect("reported");
    assert!(inv.raw.chars().all(|c| !c.is_control()), "{:?}", inv.raw);
    assert!(matches!(inv.error, KeyError::InvalidChar { at: 2, .. }));
}

#[test]
fn strip_query_key_removes_every_occurrence_and_keeps_the_rest() {
    let (u, k) = strip_query_key(&uri("/p?a=1&sd-routing-key=bad!&b=%20&sd-routing-key=pr-1"));
    assert_eq!(u, uri("/p?a=1&b=%20"));
    assert_eq!(k.map(|k| k.to_string()), Some("pr-1".into()));
}

#[test]
fn strip_query_key_drops_an_empty_query() {
    let (u, k) = strip_query_key(&uri("/p?sd-routing-key=pr-1"));
    assert_eq!(u.to_string(), "/p");
    assert_eq!(k.map(|k| k.to_string()), Some("pr-1".into()));
    let (u, _) = strip_query_key(&uri("http://svc.shop:9080/p?sd%2Drouting%2Dkey=pr-2&z"));
    assert_eq!(u.to_string(), "http://svc.shop:9080/p?z");
}

#[test]
fn strip_query_key_leaves_other_uris_alone() {
    for s in ["/p", "/p?a=1", "/p?", "*", "svc.shop:443"] {
        let (u, k) = strip_query_key(&uri(s));
        assert_eq!((u.to_string(), k), (uri(s).to_string(), None), "{s}");
    }
}

#[test]
fn inject_baggage_adds_a_header_when_none() {
    let mut h = HeaderMap::new();
    assert!(inject_baggage(
        &mut h,
        &RoutingKey::parse("pr-1").expect("key")
    ));
    assert_eq!(h.get(BAGGAGE).expect("set"), "sd-routing-key=pr-1");
}

#[test]
fn inject_baggage_appends_to_existing_baggage() {
    let mut h = headers(&[("baggage", "a=1,b=2;p")]);
    assert!(inject_baggage(
        &mut h,
        &RoutingKey::parse("pr-1").expect("key")
    ));
    assert_eq!(
        h.get(BAGGAGE).expect("set"),
        "a=1,b=2;p,sd-routing-key=pr-1"
    );
}

#[test]
fn inject_baggage_replaces_other_keys_across_headers() {
    let mut h = headers(&[
        ("baggage", "sd-routing-key=old"),
        ("baggage", "a=1, sd-routing-key=older ;x, b=2"),
        ("baggage", "c=3"),
    ]);
    assert!(inject_baggage(
        &mut h,
        &RoutingKey::parse("pr-1").expect("key")
    ));
    let all: Vec<_> = h.get_all(BAGGAGE).iter().collect();
    assert_eq!(all, ["a=1, b=2", "c=3,sd-routing-key=pr-1"]);
}

#[test]
fn inject_baggage_is_a_no_op_when_already_present() {
    let mut h = headers(&[("baggage", "a=1, sd-routing-key = pr-1")]);
    let before = h.clone();
    assert!(!inject_baggage(
        &mut h,
        &RoutingKey::parse("pr-1").expect("key")
    ));
    assert_eq!(h, before);
}

#[test]
fn injected_baggage_is_extracted_back() {
    let (u, k) = strip_query_key(&uri("/p?sd-routing-key=pr-77"));
    let mut h = headers(&[("baggage", "x=1")]);
    inject_baggage(&mut h, &k.expect("key"));
    let e = extractor().extract(&h, &u);
    assert_eq!(
        (e.key.map(|k| k.to_string()), e.source),
        (Some("pr-77".into()), KeySource::Baggage)
    );
}

#[test]
fn normalize_moves_a_query_key_into_baggage() {
    let mut h = headers(&[("baggage", "x=1")]);
    let mut u = uri("/p?a=1&sd-routing-key=pr-9");
    let e = query_extractor().normalize(&mut h, &mut u);
    assert_eq!(
        (e.key.map(|k| k.to_string()), e.source),
        (Some("pr-9".into()), KeySource::Query)
    );
    assert_eq!(u, uri("/p?a=1"));
    assert_eq!(h.get(BAGGAGE).expect("set"), "x=1,sd-routing-key=pr-9");
}

#[test]
fn normalize_leaves_the_request_alone_unless_the_query_supplied_the_key() {
    // A header key wins: the query parameter is not the key's source, so it stays.
    let mut h = headers(&[("baggage", "sd-routing-key=pr-1")]);
    let mut u = uri("/p?sd-routing-key=pr-2");
    let e = query_extractor().normalize(&mut h, &mut u);
    assert_eq!(e.source, KeySource::Baggage);
    assert_eq!(u, uri("/p?sd-routing-key=pr-2"));
    assert_eq!(h.get(BAGGAGE).expect("kept"), "sd-routing-key=pr-1");
    // Only a malformed query key: reported, nothing rewritten.
    let mut h = HeaderMap::new();
    let mut u = uri("/p?sd-routing-key=bad!");
    let e = query_extractor().normalize(&mut h, &mut u);
    assert_eq!(e.key, None);
    assert_eq!(e.invalid.map(|i| i.source), Some(KeySource::Query));
    assert_eq!(u, uri("/p?sd-routing-key=bad!"));
    assert!(h.is_empty());
}

mod prop {
    use proptest::prelude::*;

    use super::*;

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        // Bias towards the syntax the parsers look for, with arbitrary bytes mixed in.
        let token = prop_oneof![
            Just(b"sd-routing-key".to_vec()),
            Just(b"=".to_vec()),
            Just(b",".to_vec()),
            Just(b";".to_vec()),
            Just(b" ".to_vec()),
            Just(b"%".to_vec()),
            Just(b"%2D".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ];
        proptest::collection::vec(token, 0..24).prop_filter_map("valid header value", |t| {
            HeaderValue::from_bytes(&t.concat()).ok()
        })
    }

    proptest! {
        #[test]
        fn arbitrary_header_bytes_never_panic(
            values in proptest::collection::vec(
                (0usize..6, header_value()), 0..8),
            query in "[a-z=&%0-9A-F.~!-]{0,40}",
        ) {
            const NAMES: [&str; 6] = [
                "baggage", "tracestate", "uberctx-sd-routing-key",
                "ot-baggage-sd-routing-key", "x-sandbox", "other",
            ];
            let mut h = HeaderMap::new();
            for (n, v) in values {
                h.append(HeaderName::from_static(NAMES[n]), v);
            }
            let u: Uri = format!("/p?{query}&sd-routing-key={query}").parse()
                .unwrap_or_else(|_| Uri::from_static("/"));
            let ex = KeyExtractor::new(KeySources::with_headers(
                [HeaderName::from_static("x-sandbox")]));
            let e = ex.extract(&h, &u);
            if let Some(inv) = &e.invalid {
                prop_assert!(inv.raw.chars().count() <= RAW_MAX);
            }
            let (stripped, _) = strip_query_key(&u);
            prop_assert!(stripped.query().is_none_or(|q| !q.split('&')
                .any(|p| p.split('=').next() == Some(MEMBER))));
            let key = RoutingKey::parse("pr-1").expect("key");
            inject_baggage(&mut h, &key);
            // Once injected, baggage carries exactly our key.
            let again = KeyExtractor::default().extract(&h, &Uri::from_static("/"));
            prop_assert_eq!(again.key, Some(key));
            prop_assert_eq!(again.source, KeySource::Baggage);
        }
    }
}
