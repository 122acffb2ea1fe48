//! Routing-key extraction: which sandbox key, if any, a request carries.
//!
//! Keys normally travel as W3C baggage (`baggage: sd-routing-key=pr-42`), which tracing
//! middleware propagates from service to service. The other sources cover tracers that carry
//! baggage differently (Jaeger's `uberctx-*`, OpenTracing's `ot-baggage-*`), vendors that only
//! pass `tracestate`, explicit headers, and a query parameter for the first hop from a browser.
//!
//! Everything here reads attacker-controlled bytes: it works on raw header bytes (no UTF-8
//! assumption), never panics, and does linear work in the size of the input.
use std::{borrow::Cow, fmt};

use http::{HeaderMap, HeaderName, HeaderValue, Uri, uri::PathAndQuery};
use percent_encoding::percent_decode;

use crate::routes::{KeyError, RoutingKey};

/// The baggage/tracestate member name, and the query parameter name.
pub const MEMBER: &str = "sd-routing-key";

const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const UBERCTX: HeaderName = HeaderName::from_static("uberctx-sd-routing-key");
const OT_BAGGAGE: HeaderName = HeaderName::from_static("ot-baggage-sd-routing-key");

/// Longest raw value kept in an [`InvalidKey`] report, in characters.
const RAW_MAX: usize = 80;

/// Where a key was found.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// No key was found.
    None,
    /// W3C `baggage` member `sd-routing-key` (percent-decoded).
    Baggage,
    /// W3C `tracestate` member `sd-routing-key`.
    TraceState,
    /// Jaeger baggage header `uberctx-sd-routing-key` (percent-decoded).
    UberCtx,
    /// OpenTracing baggage header `ot-baggage-sd-routing-key` (percent-decoded).
    OtBaggage,
    /// A configured header, taken literally.
    Header(HeaderName),
    /// The `sd-routing-key` query parameter (percent-decoded).
    Query,
}

impl KeySource {
    pub fn as_str(&self) -> &str {
        match self {
            KeySource::None => "none",
            KeySource::Baggage => "baggage",
            KeySource::TraceState => "tracestate",
            KeySource::UberCtx => "uberctx-sd-routing-key",
            KeySource::OtBaggage => "ot-baggage-sd-routing-key",
            KeySource::Header(h) => h.as_str(),
            KeySource::Query => "query",
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The sources to read, in priority order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySources {
    pub order: Vec<KeySource>,
}

impl Default for KeySources {
    /// baggage, tracestate, `uberctx-sd-routing-key`, `ot-baggage-sd-routing-key`, query.
    fn default() -> Self {
        Self {
            order: vec![
                KeySource::Baggage,
                KeySource::TraceState,
                KeySource::UberCtx,
                KeySource::OtBaggage,
                KeySource::Query,
            ],
        }
    }
}

impl KeySources {
    /// The defaults with extra header names, tried after the tracing headers and before the
    /// query parameter.
    pub fn with_headers(headers: impl IntoIterator<Item = HeaderName>) -> Self {
        let mut s = Self::default();
        let at = s
            .order
            .iter()
            .position(|src| *src == KeySource::Query)
            .unwrap_or(s.order.len());
        s.order
            .splice(at..at, headers.into_iter().map(KeySource::Header));
        s
    }
}

/// A key that was present but malformed. It counts as no key; this report lets the caller log
/// it once per connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidKey {
    pub source: KeySource,
    /// The value (decoded where the source is), at most 80 characters, control characters
    /// replaced: it is client input headed for logs.
    pub raw: String,
    pub error: KeyError,
}

/// The result of [`KeyExtractor::extract`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    pub key: Option<RoutingKey>,
    /// Where `key` came from ([`KeySource::None`] without a key).
    pub source: KeySource,
    /// The first malformed key met, whether or not a valid one was found after it.
    pub invalid: Option<InvalidKey>,
}

/// Reads routing keys from requests.
#[derive(Clone, Debug)]
pub struct KeyExtractor {
    sources: Vec<KeySource>,
}

impl Default for KeyExtractor {
    /// The default sources ([`KeySources::default`]).
    fn default() -> Self {
        Self::new(KeySources::default())
    }
}

impl KeyExtractor {
    pub fn new(config: KeySources) -> Self {
        Self {
            sources: config.order,
        }
    }

    pub fn sources(&self) -> &[KeySource] {
        &self.sources
    }

    /// The first valid key in source order. A malformed key counts as absent, so a later
    /// source can still supply one: a key is useful wherever it is, and one mangled hop should
    /// not hide it.
    pub fn extract(&self, headers: &HeaderMap, uri: &Uri) -> Extracted {
        let mut invalid = None;
        for source in &self.sources {
            let mut seen = Seen {
                source,
                invalid: &mut invalid,
            };
            let key = match source {
                KeySource::None => None,
                KeySource::Baggage => headers
                    .get_all(BAGGAGE)
                    .iter()
                    .find_map(|v| baggage_member(v.as_bytes(), &mut seen)),
                KeySource::TraceState => headers
                    .get_all(TRACESTATE)
                    .iter()
                    .find_map(|v| tracestate_member(v.as_bytes(), &mut seen)),
                KeySource::UberCtx => single_header(headers, &UBERCTX, true, &mut seen),
                KeySource::OtBaggage => single_header(headers, &OT_BAGGAGE, true, &mut seen),
                KeySource::Header(name) => single_header(headers, name, false, &mut seen),
                KeySource::Query => uri.query().and_then(|q| query_param(q, &mut seen)),
            };
            if let Some(key) = key {
                return Extracted {
                    key: Some(key),
                    source: source.clone(),
                    invalid,
                };
            }
        }
        Extracted {
            key: None,
            source: KeySource::None,
            invalid,
        }
    }
}

/// Validation of candidate values, remembering the first malformed one.
struct Seen<'a> {
    source: &'a KeySource,
    invalid: &'a mut Option<InvalidKey>,
}

impl Seen<'_> {
    fn consider(&mut self, value: &[u8], decode: bool) -> Option<RoutingKey> {
        let value = trim(value);
        let value: Cow<'_, [u8]> = if decode {
            percent_decode(value).into()
        } else {
            value.into()
        };
        match RoutingKey::parse_bytes(&value) {
            Ok(k) => Some(k),
            Err(error) => {
                if self.invalid.is_none() {
                    *self.invalid = Some(InvalidKey {
                        source: self.source.clone(),
                        raw: printable(&value),
                        error,
                    });
                }
                None
            }
        }
    }
}

/// Optional whitespace (space and tab) trimmed from both ends, as HTTP and W3C lists allow.
fn trim(b: &[u8]) -> &[u8] {
    let is_ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !is_ows(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !is_ows(c)).map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

/// `bytes` as text safe to log: lossy UTF-8, control characters replaced, truncated.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(RAW_MAX)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// `key = value` split at the first `=`, both sides trimmed; `None` for a member without `=`.
fn split_member(member: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = member.iter().position(|c| *c == b'=')?;
    Some((trim(&member[..eq]), trim(&member[eq + 1..])))
}

/// The (raw) value of a baggage list member if it is `sd-routing-key`.
fn our_baggage_value(member: &[u8]) -> Option<&[u8]> {
    // Properties (`;prop=x`) qualify a member; they are not part of its value.
    let kv = member.split(|c| *c == b';').next().unwrap_or_default();
    let (k, v) = split_member(kv)?;
    (k == MEMBER.as_bytes()).then_some(v)
}

/// The `sd-routing-key` member of one W3C baggage header value.
///
/// `baggage = list-member *( OWS "," OWS list-member )`,
/// `list-member = key OWS "=" OWS value *( OWS ";" OWS property )`, values percent-encoded.
/// Malformed members are skipped, not fatal: baggage is shared by every vendor on the path, and
/// one bad member must not hide ours.
fn baggage_member(value: &[u8], seen: &mut Seen<'_>) -> Option<RoutingKey> {
    value
        .split(|c| *c == b',')
        .filter_map(our_baggage_value)
        .find_map(|v| seen.consider(v, true))
}

/// The `sd-routing-key` member of one W3C tracestate header value (`key=value` list, values
/// are not encoded).
fn tracestate_member(value: &[u8], seen: &mut Seen<'_>) -> Option<RoutingKey> {
    value.split(|c| *c == b',').find_map(|member| {
        let (k, v) = split_member(member)?;
        (k == MEMBER.as_bytes())
            .then(|| seen.consider(v, false))
            .flatten()
    })
}

/// A header whose whole value is the key. Repeated headers, or one whose copies an
/// intermediary joined with commas (RFC 9110 §5.3), give several candidates: the first valid
/// one wins.
fn single_header(
    headers: &HeaderMap,
    name: &HeaderName,
    decode: bool,
    seen: &mut Seen<'_>,
) -> Option<RoutingKey> {
    headers.get_all(name).iter().find_map(|v| {
        let v = trim(v.as_bytes());
        if v.is_empty() {
            // Present but empty: report it, there is nothing else to try in this value.
            return seen.consider(v, decode);
        }
        v.split(|c| *c == b',')
            .filter(|piece| !trim(piece).is_empty())
            .find_map(|piece| seen.consider(piece, decode))
    })
}

/// Whether a raw (still encoded) query parameter name is `sd-routing-key`.
fn is_key_param(name: &[u8]) -> bool {
    name == MEMBER.as_bytes() || { name.contains(&b'%') && percent_decode(name).eq(MEMBER.bytes()) }
}

fn query_param(query: &str, seen: &mut Seen<'_>) -> Option<RoutingKey> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        is_key_param(name.as_bytes())
            .then(|| seen.consider(value.as_bytes(), true))
            .flatten()
    })
}

/// Removes every `sd-routing-key` parameter from `uri` (so the upstream sees the URL it would
/// have without shunt) and returns the first valid key among them. Other parameters keep their
/// bytes and order. Returns `uri` unchanged when there is no such parameter.
pub fn strip_query_key(uri: &Uri) -> (Uri, Option<RoutingKey>) {
    let Some(query) = uri.query() else {
        return (uri.clone(), None);
    };
    let mut found = false;
    let mut key = None;
    let mut invalid = None;
    let mut seen = Seen {
        source: &KeySource::Query,
        invalid: &mut invalid,
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !is_key_param(name.as_bytes()) {
                return true;
            }
            found = true;
            if key.is_none() {
                key = seen.consider(value.as_bytes(), true);
            }
            false
        })
        .collect();
    if !found {
        return (uri.clone(), None);
    }
    let pq = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    let rebuilt = PathAndQuery::try_from(pq).ok().and_then(|pq| {
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).ok()
    });
    // Rebuilding only drops bytes from a URI that already parsed, so it cannot fail; if it ever
    // did, forwarding the original URI is the safe choice.
    (rebuilt.unwrap_or_else(|| uri.clone()), key)
}

/// Makes `key` travel on as baggage: appends `sd-routing-key=KEY` to the last `baggage` header
/// (or adds one), after removing any other `sd-routing-key` member so downstream services see a
/// single, consistent key. Returns whether the headers changed (they do not when the baggage
/// already leads with this key).
pub fn inject_baggage(headers: &mut HeaderMap, key: &RoutingKey) -> bool {
    let values: Vec<HeaderValue> = headers.get_all(BAGGAGE).iter().cloned().collect();
    let ours: Vec<&[u8]> = values
        .iter()
        .flat_map(|v| v.as_bytes().split(|c| *c == b','))
        .filter_map(our_baggage_value)
        .collect();
    if let [only] = ours.as_slice()
        && percent_decode(only).eq(key.as_str().bytes())
    {
        return false;
    }

    // Keys need no percent-encoding (see `RoutingKey`), so the member is written as is.
    let Ok(member) = HeaderValue::from_str(&format!("{MEMBER}={key}")) else {
        // Unreachable: a key is a valid header value by construction.
        return false;
    };
    let is_ours = |m: &[u8]| our_baggage_value(m).is_some();
    let mut rebuilt: Vec<HeaderValue> = values
        .iter()
        .filter_map(|v| {
            if !v.as_bytes().split(|c| *c == b',').any(is_ours) {
                return Some(v.clone());
            }
            let kept: Vec<&[u8]> = v
                .as_bytes()
                .split(|c| *c == b',')
                .filter(|m| !is_ours(m))
                .collect();
            let joined = kept.join(&b","[..]);
            if trim(&joined).is_empty() {
                return None;
            }
            // Only whole members of a valid value were removed, so this cannot fail; keep the
            // original if it ever did.
            Some(HeaderValue::from_bytes(&joined).unwrap_or_else(|_| v.clone()))
        })
        .collect();
    match rebuilt.pop() {
        Some(last) => {
            let mut b = last.as_bytes().to_vec();
            b.push(b',');
            b.extend_from_slice(member.as_bytes());
            match HeaderValue::from_bytes(&b) {
                Ok(v) => rebuilt.push(v),
                Err(_) => rebuilt.extend([last, member]),
            }
        }
        None => rebuilt.push(member),
    }
    headers.remove(BAGGAGE);
    for v in rebuilt {
        headers.append(BAGGAGE, v);
    }
    true
}

#[cfg(test)]
mod tests {
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
        let ex = KeyExtractor::new(KeySources::with_headers([HeaderName::from_static(
            "x-sandbox",
        )]));
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
            ex.sources().last(),
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
        let e = extractor().extract(&HeaderMap::new(), &uri("/x?a=1&sd-routing-key=pr%2D6&b"));
        assert_eq!(e.key.map(|k| k.to_string()), Some("pr-6".into()));
        assert_eq!(e.source, KeySource::Query);
        let e = extractor().extract(&HeaderMap::new(), &uri("/x?sd-routing-key-x=1&key=2"));
        assert_eq!((e.key, e.invalid), (None, None));
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
}
