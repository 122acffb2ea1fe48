use super::*;
use crate::proxy::key::KeySources;

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 1024,
    max_headers: 8,
};

fn parse(raw: &str) -> Result<Option<RequestHead>, HeadError> {
    parse_request(raw.as_bytes(), LIMITS, &KeyExtractor::default(), false)
}

fn forwarded(raw: &str) -> String {
    forwarded_with(raw, &KeyExtractor::default(), false)
}

/// The head as it goes upstream, parsed with `keys`, the client's keys stripped or not.
fn forwarded_with(raw: &str, keys: &KeyExtractor, strip: bool) -> String {
    let head = parse_request(raw.as_bytes(), LIMITS, keys, strip)
        .unwrap()
        .unwrap();
    let slices = head.out.slices(raw.as_bytes(), b"");
    String::from_utf8(slices.iter().flat_map(|s| s.to_vec()).collect()).unwrap()
}

#[test]
fn a_head_without_hop_by_hop_headers_is_forwarded_as_one_piece() {
    let raw = "GET /a?b=1 HTTP/1.1\r\nHost: Example\r\nX-Mixed-Case: v\r\nx-r: 1\r\nx-r: 2\r\n\r\n";
    let head = parse(raw).unwrap().unwrap();
    assert_eq!(head.out.0, vec![Piece::Buf(0..raw.len())]);
    assert_eq!(head.len, raw.len());
    assert_eq!(&*head.path, "/a");
    assert_eq!(head.framing, Framing::Empty);
    assert!(!head.close);
}

#[test]
fn hop_by_hop_headers_and_the_ones_connection_lists_are_removed() {
    let raw = "GET / HTTP/1.1\r\nHost: h\r\nConnection: close, X-Hop\r\nKeep-Alive: 5\r\nX-Hop: 1\r\nX-End: 2\r\n\r\n";
    assert_eq!(
        forwarded(raw),
        "GET / HTTP/1.1\r\nHost: h\r\nX-End: 2\r\n\r\n"
    );
    assert!(parse(raw).unwrap().unwrap().close);
}

#[test]
fn an_incomplete_head_asks_for_more() {
    assert_eq!(
        parse("GET / HTTP/1.1\r\nHost: h\r\n")
            .unwrap()
            .map(|h| h.len),
        None
    );
}

#[test]
fn smuggling_shapes_are_refused_with_400() {
    for raw in [
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /\u{1} HTTP/1.1 extra\r\n\r\n",
    ] {
        let r = parse(raw).map(|h| h.map(|h| h.len));
        assert!(
            matches!(r, Err(HeadError::Malformed(_))),
            "{raw:?} gave {r:?}"
        );
    }
}

#[test]
fn limits_give_431() {
    let many: String = (0..9).map(|i| format!("x-{i}: v\r\n")).collect();
    let r = parse(&format!("GET / HTTP/1.1\r\n{many}\r\n"));
    assert_eq!(r.map(|h| h.map(|h| h.len)), Err(HeadError::TooManyHeaders));
    let big = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(2000));
    assert_eq!(
        parse(&big).map(|h| h.map(|h| h.len)),
        Err(HeadError::TooLarge)
    );
    assert_eq!(HeadError::TooLarge.status(), 431);
}

#[test]
fn framing_follows_the_headers() {
    let h = parse("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.framing, Framing::Length(12));
    let h = parse("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.framing, Framing::Chunked);
    // Transfer-Encoding stays: the body goes on in its coding.
    assert!(
        forwarded("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .contains("Transfer-Encoding")
    );
}

#[test]
fn http10_clients_get_one_exchange() {
    let h = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(h.http10 && h.close);
}

#[test]
fn upgrades_keep_their_connection_headers() {
    let raw = "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let h = parse(raw).unwrap().unwrap();
    assert!(h.upgrade);
    assert_eq!(forwarded(raw), raw);
    assert!(
        parse("CONNECT h:443 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap()
            .upgrade
    );
}

#[test]
fn a_query_key_moves_to_baggage() {
    let raw = "GET /p?a=1&sd-routing-key=pr-1&b=2 HTTP/1.1\r\nbaggage: x=1\r\nHost: h\r\n\r\n";
    let keys = KeyExtractor::new(KeySources::default().with_query(true));
    let h = parse_request(raw.as_bytes(), LIMITS, &keys, false)
        .unwrap()
        .unwrap();
    assert_eq!(h.extracted.key.as_ref().map(|k| k.as_str()), Some("pr-1"));
    assert_eq!(
        forwarded_with(raw, &keys, false),
        "GET /p?a=1&b=2 HTTP/1.1\r\nHost: h\r\nbaggage: x=1,sd-routing-key=pr-1\r\n\r\n"
    );
}

#[test]
fn keys_are_read_from_raw_headers_without_case() {
    let h = parse("GET / HTTP/1.1\r\nBaggage: sd-routing-key=pr-9\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.extracted.key.as_ref().map(|k| k.as_str()), Some("pr-9"));
}

#[test]
fn absolute_form_goes_upstream_in_origin_form() {
    let raw = "GET http://svc:80/x?q HTTP/1.1\r\nHost: svc\r\n\r\n";
    assert_eq!(forwarded(raw), "GET /x?q HTTP/1.1\r\nHost: svc\r\n\r\n");
    assert_eq!(&*parse(raw).unwrap().unwrap().path, "/x");
}

/// Found by the `h1_request_head` fuzz target: an absolute-form target with an empty path went
/// upstream as `GET ?q HTTP/1.1` (no request target at all) and was logged with path "".
#[test]
fn absolute_form_without_a_path_goes_upstream_with_slash() {
    let raw = "GET http://svc?q=1 HTTP/1.1\r\nHost: svc\r\n\r\n";
    assert_eq!(forwarded(raw), "GET /?q=1 HTTP/1.1\r\nHost: svc\r\n\r\n");
    assert_eq!(&*parse(raw).unwrap().unwrap().path, "/");
    let raw = "GET http://svc HTTP/1.1\r\nHost: svc\r\n\r\n";
    assert_eq!(forwarded(raw), "GET / HTTP/1.1\r\nHost: svc\r\n\r\n");
}

/// Found by the `h1_request_head` fuzz target: an absolute-form target of another scheme with
/// an empty path was logged with the authority as its path (`h.tp://svc`), and as `/` once its
/// query key had moved to baggage.
#[test]
fn another_schemes_absolute_form_logs_its_path() {
    let keys = KeyExtractor::new(KeySources::default().with_query(true));
    let raw = "GET h.tp://svc?sd-routing-key=pr-42 HTTP/1.1\r\nHost: svc\r\n\r\n";
    let head = parse_request(raw.as_bytes(), LIMITS, &keys, false)
        .unwrap()
        .unwrap();
    assert_eq!(&*head.path, "/");
    let raw = "GET h.tp://svc/x?q HTTP/1.1\r\nHost: svc\r\n\r\n";
    assert_eq!(&*parse(raw).unwrap().unwrap().path, "/x");
    // It goes upstream unchanged.
    assert_eq!(forwarded(raw), raw);
}

/// Found by the `h1_request_head` fuzz target: `http://?sd-routing-key=K` (no host) was routed
/// unkeyed (its query unread) but went upstream as `/?sd-routing-key=K`, a key the next hop reads,
/// even from a client whose keys are stripped. An http URI without a host is invalid: 400.
#[test]
fn absolute_form_without_a_host_is_refused() {
    for target in [
        "http://?sd-routing-key=pr-42",
        "http:///x",
        "https://",
        "HTTP://#f",
        // Found next: a host http::Uri cannot read.
        "http://a%pr-p?sd-routing-key=pr-42",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: svc\r\n\r\n");
        let e = parse(&raw).unwrap_err();
        assert_eq!(e.status(), 400, "{target}");
    }
}

fn response(raw: &str, req: RequestKind) -> ResponseHead {
    parse_response(raw.as_bytes(), LIMITS, req)
        .unwrap()
        .unwrap()
}

const GET: RequestKind = RequestKind {
    head: false,
    connect: false,
    upgrade: false,
};

#[test]
fn responses_keep_their_bytes_but_hop_by_hop_headers() {
    let raw = "HTTP/1.1 200 OK\r\nX-Case: A\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n";
    let mut r = response(raw, GET);
    assert_eq!(r.framing, Framing::Length(2));
    assert!(!r.close);
    r.finish(false);
    let out: Vec<u8> = r
        .out
        .slices(raw.as_bytes(), b"")
        .iter()
        .flat_map(|s| s.to_vec())
        .collect();
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nX-Case: A\r\nContent-Length: 2\r\n\r\n"
    );
}

#[test]
fn response_framing() {
    let head_req = RequestKind { head: true, ..GET };
    assert_eq!(
        response("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head_req).framing,
        Framing::Empty
    );
    assert_eq!(
        response("HTTP/1.1 204 No Content\r\n\r\n", GET).framing,
        Framing::Empty
    );
    assert_eq!(
        response("HTTP/1.1 304 Not Modified\r\n\r\n", GET).framing,
        Framing::Empty
    );
    let r = response("HTTP/1.1 200 OK\r\n\r\n", GET);
    assert_eq!(r.framing, Framing::UntilClose);
    assert!(r.close);
    assert_eq!(
        response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            GET
        )
        .framing,
        Framing::Chunked
    );
    assert!(response("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", GET).close);
    assert!(response("HTTP/1.1 100 Continue\r\n\r\n", GET).is_interim());
}

#[test]
fn a_stripped_client_head_loses_every_key_form_and_keeps_the_rest() {
    let raw = "GET /p?sd-routing-key=pr-1&a=1 HTTP/1.1\r\nHost: h\r\nBaggage: x=1, sd-routing-key=pr-2\r\n\
               X-Sandbox: pr-3\r\nuberctx-sd-routing-key: pr-4\r\nTraceState: sd-routing-key=pr-5\r\nX-Keep: 1\r\n\r\n";
    let keys = KeyExtractor::new(
        KeySources::with_headers([http::HeaderName::from_static("x-sandbox")]).with_query(true),
    );
    let h = parse_request(raw.as_bytes(), LIMITS, &keys, true)
        .unwrap()
        .unwrap();
    assert_eq!(h.extracted.key, None);
    assert_eq!(
        forwarded_with(raw, &keys, true),
        "GET /p?a=1 HTTP/1.1\r\nHost: h\r\nBaggage: x=1\r\nX-Keep: 1\r\n\r\n"
    );
    // Not stripped: the same head keeps its key and its bytes (the query is moved to baggage
    // only when it supplied the key).
    assert_eq!(
        parse_request(raw.as_bytes(), LIMITS, &keys, false)
            .unwrap()
            .unwrap()
            .extracted
            .key
            .map(|k| k.to_string()),
        Some("pr-2".into())
    );
}

/// `GET {target}` parsed with query keys on, keys kept (`strip` false) and stripped.
fn parse_target(target: &str, strip: bool) -> Result<Option<RequestHead>, HeadError> {
    let keys = crate::proxy::key::KeyExtractor::new(KeySources::default().with_query(true));
    let limits = HeadLimits {
        max_bytes: 16 * 1024,
        max_headers: 100,
    };
    let data = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
    parse_request(data.as_bytes(), limits, &keys, strip)
}

#[test]
fn target_with_a_fragment_is_refused() {
    // The fuzzer's finding: `http::Uri` reads `http://h#f?k` as host `h`, path `/`, no query,
    // while the origin form sent upstream was `/?k`, a key the next hop reads.
    for target in [
        "http://h#f?sd-routing-key=pr-1",
        "http://h/p#f?sd-routing-key=pr-1",
        "/p#f?sd-routing-key=pr-1",
        "/p?a=1#f",
        "h2://h/p#f",
    ] {
        for strip in [false, true] {
            assert!(
                matches!(
                    parse_target(target, strip),
                    Err(HeadError::Malformed("fragment in request target"))
                ),
                "{target:?} strip {strip}"
            );
        }
    }
}

/// A fuzz finding (`cargo xtask fuzz --smoke` in CI): a target of no RFC 9112 form (`2http:` is
/// no scheme) had its path changed by key stripping (`2http://h` → `2http://h/`); it is refused.
#[test]
fn target_of_no_known_form_is_refused() {
    for target in [
        "2http://h?sd-routing-key=pr-1",
        "h?sd-routing-key=pr-1",
        "a b",
    ] {
        for strip in [false, true] {
            assert!(
                matches!(parse_target(target, strip), Err(HeadError::Malformed(_))),
                "{target:?} strip {strip}"
            );
        }
    }
    for target in ["/p?q", "*", "h2://h/p", "http://h/p"] {
        assert!(
            matches!(parse_target(target, false), Ok(Some(_))),
            "{target:?}"
        );
    }
}
