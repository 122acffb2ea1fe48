//! The HTTP/1.1 request-head path as the proxy runs it: `parse_request` on the bytes a client
//! sent, with the proxy's default limits, keys read from every source and the query, for a
//! client whose keys are kept and for one whose keys are stripped. Checked: never a panic; a
//! head that parses is rewritten into a head that still parses, with the same method, path and
//! key (or, stripped, no key).
#![no_main]
use agent::proxy::{
    h1::head::{HeadLimits, parse_request},
    key::{KeyExtractor, KeySources},
};
use libfuzzer_sys::fuzz_target;

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 16 * 1024,
    max_headers: 100,
};

const REWRITTEN_LIMITS: HeadLimits = HeadLimits {
    max_bytes: LIMITS.max_bytes + 4096,
    max_headers: LIMITS.max_headers + 1,
};

fuzz_target!(|data: &[u8]| {
    let keys = KeyExtractor::new(KeySources::default().with_query(true));
    for strip in [false, true] {
        let Ok(Some(head)) = parse_request(data, LIMITS, &keys, strip) else {
            continue;
        };
        assert!(head.len <= data.len());
        if strip {
            assert_eq!(head.extracted.key, None, "a stripped client kept its key");
        }
        let out: Vec<u8> = head
            .out
            .slices(&data[..head.len], &[])
            .iter()
            .flat_map(|s| s.to_vec())
            .collect();
        // Moving a query key into `baggage` may add one header line to the head the proxy
        // writes, so it is read back with room for that line.
        let again = parse_request(&out, REWRITTEN_LIMITS, &keys, strip)
            .unwrap_or_else(|e| panic!("the rewritten head does not parse: {e:?}: {out:?}"))
            .unwrap_or_else(|| panic!("the rewritten head is incomplete: {out:?}"));
        assert_eq!(again.method, head.method);
        assert_eq!(again.path, head.path);
        assert_eq!(again.extracted.key, head.extracted.key);
    }
});
