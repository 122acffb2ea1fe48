//! Key extraction from every source the proxy reads (baggage, tracestate, `uberctx-`,
//! `ot-baggage-`, a configured header, the query parameter), as HTTP/2 requests see it
//! (`HeaderMap`, `Uri`) and as HTTP/1.1 heads see it (headers parsed in place).
//!
//! Input: fields separated by 0xff, in that order. Checked:
//! - `extract` and `normalize` find the same key (normalize only moves a query key to baggage);
//! - after `normalize`, extracting again finds that key again (and from baggage, not the query);
//! - after `strip`, no key is found at all (a stripped client is decided as unkeyed);
//! - the in-place path (`normalize_raw`) finds the same key as `extract`.
#![no_main]
use agent::proxy::key::{KeyExtractor, KeySource, KeySources, RawHeaders};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;

const HEADERS: [&str; 5] = [
    "baggage",
    "tracestate",
    "uberctx-sd-routing-key",
    "ot-baggage-sd-routing-key",
    "x-routing-key",
];

fuzz_target!(|data: &[u8]| {
    let mut fields = data.split(|b| *b == 0xff);
    let mut headers = HeaderMap::new();
    let mut raw = Vec::new();
    for name in HEADERS {
        let Some(v) = fields.next() else { break };
        if let Ok(value) = HeaderValue::from_bytes(v) {
            headers.append(name, value);
            raw.push((name, v));
        }
    }
    let target = match fields.next() {
        Some(q) => format!("/p?{}", String::from_utf8_lossy(q)),
        None => "/p".to_string(),
    };
    let Ok(uri) = target.parse::<Uri>() else {
        return;
    };
    let keys = KeyExtractor::new(
        KeySources::with_headers([HeaderName::from_static("x-routing-key")]).with_query(true),
    );

    let extracted = keys.extract(&headers, &uri);

    let (mut h, mut u) = (headers.clone(), uri.clone());
    let normalized = keys.normalize(&mut h, &mut u);
    assert_eq!(normalized.key, extracted.key, "normalize and extract disagree");
    if let Some(key) = &normalized.key {
        let again = keys.extract(&h, &u);
        assert_eq!(again.key.as_ref(), Some(key), "the normalized request lost its key");
        assert_ne!(again.source, KeySource::Query, "the query key was not moved");
    }

    let (mut h, mut u) = (headers.clone(), uri.clone());
    keys.strip(&mut h, &mut u);
    let after = keys.extract(&h, &u);
    assert_eq!(after.key, None, "a key survived stripping (from {})", after.source);

    let parsed: Vec<httparse::Header<'_>> = raw
        .iter()
        .map(|(name, value)| httparse::Header { name, value })
        .collect();
    let (in_place, _rewrite) = keys.normalize_raw(&parsed, &target, false);
    assert_eq!(in_place.key, extracted.key, "the HTTP/1.1 path disagrees");
    let _ = keys.extract(&RawHeaders(&parsed), &uri);
});
