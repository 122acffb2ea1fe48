//! Routing-key extraction: which sandbox key, if any, a request carries.
//!
//! Keys normally travel as W3C baggage (`baggage: sd-routing-key=pr-42`), which tracing
//! middleware propagates from service to service. The other sources cover tracers that carry
//! baggage differently (Jaeger's `uberctx-*`, OpenTracing's `ot-baggage-*`), vendors that only
//! pass `tracestate`, explicit headers, and a query parameter for the first hop from a browser.
//!
//! The proxy makes one call per request, [`KeyExtractor::normalize`]. How a key is spelled in
//! baggage, which clients without the proxy need too, is in [`crate::routes::key`].
//!
//! Everything here reads attacker-controlled bytes: it works on raw header bytes (no UTF-8
//! assumption), never panics, and does linear work in the size of the input.
use std::{borrow::Cow, fmt};

use http::{HeaderMap, HeaderName, HeaderValue, Uri, uri::PathAndQuery};
use percent_encoding::percent_decode;

use super::key_strip::{HeaderFate, StripKeysFrom, header_fate, strip_keys};
pub use crate::routes::key::MEMBER;
use crate::routes::{
    KeyError, RoutingKey,
    key::{
        key_member, key_member_value as our_baggage_value, split_member, strip_key_members,
        trim_ows as trim,
    },
};

const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
const TRACESTATE: &str = "tracestate";
const UBERCTX: &str = "uberctx-sd-routing-key";
const OT_BAGGAGE: &str = "ot-baggage-sd-routing-key";

/// Header values by (lowercase) name: a hyper `HeaderMap` (HTTP/2) or the raw parsed head of an
/// HTTP/1.1 request, which the proxy reads in place.
pub trait HeaderValues {
    /// Every value of `name`, in the order received.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;
}

impl HeaderValues for HeaderMap {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

/// The headers of a request head parsed in place (names compared without case).
pub struct RawHeaders<'h, 'b>(pub &'h [httparse::Header<'b>]);

impl HeaderValues for RawHeaders<'_, '_> {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .iter()
            .filter(move |h| h.name.len() == name.len() && h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// How an HTTP/1.1 request head changes: when its key came from the query parameter (moved to
/// baggage), or when its client's keys are stripped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadRewrite {
    /// The request target to send instead (without the key parameter).
    pub target: Option<String>,
    /// What becomes of each header, by index in the parsed head.
    pub fates: Vec<HeaderFate>,
    /// `baggage` values to append (the request's own, with the key appended).
    pub append_baggage: Vec<HeaderValue>,
}

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
    /// None in the request: added by the proxy for a marked source
    /// ([`key_inject`](super::key_inject)). Never a source to read.
    Injected,
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
            KeySource::Injected => "injected",
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
    /// baggage, tracestate, `uberctx-sd-routing-key`, `ot-baggage-sd-routing-key`. The query
    /// parameter is opt-in ([`KeySources::with_query`]): a key in a link reaches sandbox code
    /// from anywhere the link travels, an ingress included.
    fn default() -> Self {
        Self {
            order: vec![
                KeySource::Baggage,
                KeySource::TraceState,
                KeySource::UberCtx,
                KeySource::OtBaggage,
            ],
        }
    }
}

impl KeySources {
    /// The defaults with extra header names, tried after the tracing headers.
    pub fn with_headers(headers: impl IntoIterator<Item = HeaderName>) -> Self {
        let mut s = Self::default();
        s.order.extend(headers.into_iter().map(KeySource::Header));
        s
    }

    /// Also reads the `sd-routing-key` query parameter, last (`--key-from-query`).
    pub fn with_query(mut self, enabled: bool) -> Self {
        if enabled && !self.order.contains(&KeySource::Query) {
            self.order.push(KeySource::Query);
        }
        self
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

/// Reads routing keys from requests, and strips them from the clients that may not carry one.
#[derive(Clone, Debug)]
pub struct KeyExtractor {
    sources: Vec<KeySource>,
    strip_from: StripKeysFrom,
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
            strip_from: StripKeysFrom::default(),
        }
    }

    /// Requests from these clients lose every key form ([`key_strip`](super::key_strip)).
    pub fn stripping_keys_from(mut self, clients: StripKeysFrom) -> Self {
        self.strip_from = clients;
        self
    }

    /// Whether `client`'s requests have their keys stripped.
    pub fn strips(&self, client: std::net::IpAddr) -> bool {
        !self.strip_from.is_empty() && self.strip_from.covers(client)
    }

    /// For a client whose keys are stripped: removes every key form from the request, which is
    /// then decided as unkeyed. Returns whether anything was removed.
    pub fn strip(&self, headers: &mut HeaderMap, uri: &mut Uri) -> bool {
        strip_keys(&self.sources, headers, uri)
    }

    pub fn sources(&self) -> &[KeySource] {
        &self.sources
    }

    /// The first valid key in source order. A malformed key counts as absent, so a later
    /// source can still supply one: a key is useful wherever it is, and one mangled hop should
    /// not hide it.
    pub fn extract(&self, headers: &impl HeaderValues, uri: &Uri) -> Extracted {
        self.find(headers, |seen| {
            uri.query().and_then(|q| query_param(q, seen))
        })
    }

    /// The proxy's one step of key handling: [`extract`](Self::extract), and when the key came
    /// from the query parameter, remove that parameter from `uri` and re-send the key as baggage
    /// (so services that propagate baggage carry it on). The query is read once.
    pub fn normalize(&self, headers: &mut HeaderMap, uri: &mut Uri) -> Extracted {
        let mut stripped = None;
        let found = self.find(headers, |seen| {
            let (rebuilt, key) = strip_key_params(uri, seen);
            if key.is_some() {
                stripped = rebuilt;
            }
            key
        });
        if found.source == KeySource::Query
            && let (Some(key), Some(rebuilt)) = (&found.key, stripped)
        {
            *uri = rebuilt;
            inject_baggage(headers, key);
        }
        found
    }

    /// [`normalize`](Self::normalize) for an HTTP/1.1 head read in place: the key, and how the
    /// head must change when the key came from the query parameter. With `strip` (the client's
    /// keys are stripped), no key: the rewrite removes every key form instead. The target is
    /// parsed as a URI only when its query may hold the parameter.
    pub fn normalize_raw(
        &self,
        headers: &[httparse::Header<'_>],
        target: &str,
        strip: bool,
    ) -> (Extracted, Option<HeadRewrite>) {
        let query_may_hold_key = |target: &str| {
            target
                .split_once('?')
                .is_some_and(|(_, q)| q.contains(MEMBER) || q.contains('%'))
        };
        if strip {
            let fates: Vec<HeaderFate> = headers
                .iter()
                .map(|h| header_fate(&self.sources, h.name, h.value))
                .collect();
            let target = (self.sources.contains(&KeySource::Query) && query_may_hold_key(target))
                .then(|| target.parse::<Uri>().ok())
                .flatten()
                .and_then(|uri| {
                    let (stripped, _) = strip_query_key(&uri);
                    (stripped != uri).then(|| stripped.to_string())
                });
            let changed = target.is_some() || fates.iter().any(|f| *f != HeaderFate::Keep);
            let none = Extracted {
                key: None,
                source: KeySource::None,
                invalid: None,
            };
            return (
                none,
                changed.then_some(HeadRewrite {
                    target,
                    fates,
                    append_baggage: Vec::new(),
                }),
            );
        }
        let raw = RawHeaders(headers);
        let mut stripped = None;
        let found = self.find(&raw, |seen| {
            if !query_may_hold_key(target) {
                return None;
            }
            let uri: Uri = target.parse().ok()?;
            let (rebuilt, key) = strip_key_params(&uri, seen);
            if key.is_some() {
                stripped = rebuilt;
            }
            key
        });
        let rewrite = match (&found.key, stripped) {
            (Some(key), Some(uri)) if found.source == KeySource::Query => {
                let mut baggage = HeaderMap::new();
                for v in raw.values(BAGGAGE.as_str()) {
                    if let Ok(v) = HeaderValue::from_bytes(v) {
                        baggage.append(BAGGAGE, v);
                    }
                }
                inject_baggage(&mut baggage, key);
                let fates = headers
                    .iter()
                    .map(|h| {
                        if h.name.eq_ignore_ascii_case(BAGGAGE.as_str()) {
                            HeaderFate::Drop
                        } else {
                            HeaderFate::Keep
                        }
                    })
                    .collect();
                Some(HeadRewrite {
                    target: Some(uri.to_string()),
                    fates,
                    append_baggage: baggage.get_all(BAGGAGE).iter().cloned().collect(),
                })
            }
            _ => None,
        };
        (found, rewrite)
    }

    /// The first valid key in source order; `query` reads the query parameter source.
    fn find(
        &self,
        headers: &impl HeaderValues,
        mut query: impl FnMut(&mut Seen<'_>) -> Option<RoutingKey>,
    ) -> Extracted {
        let mut invalid = None;
        for source in &self.sources {
            let mut seen = Seen {
                source,
                invalid: &mut invalid,
            };
            let key = match source {
                KeySource::None | KeySource::Injected => None,
                KeySource::Baggage => headers
                    .values(BAGGAGE.as_str())
                    .find_map(|v| baggage_member(v, &mut seen)),
                KeySource::TraceState => headers
                    .values(TRACESTATE)
                    .find_map(|v| tracestate_member(v, &mut seen)),
                KeySource::UberCtx => single_header(headers, UBERCTX, true, &mut seen),
                KeySource::OtBaggage => single_header(headers, OT_BAGGAGE, true, &mut seen),
                KeySource::Header(name) => single_header(headers, name.as_str(), false, &mut seen),
                KeySource::Query => query(&mut seen),
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

/// `bytes` as text safe to log: lossy UTF-8, control characters replaced, truncated.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(RAW_MAX)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
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
    headers: &impl HeaderValues,
    name: &str,
    decode: bool,
    seen: &mut Seen<'_>,
) -> Option<RoutingKey> {
    headers.values(name).find_map(|v| {
        let v = trim(v);
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
    let mut invalid = None;
    let mut seen = Seen {
        source: &KeySource::Query,
        invalid: &mut invalid,
    };
    let (stripped, key) = strip_key_params(uri, &mut seen);
    (stripped.unwrap_or_else(|| uri.clone()), key)
}

/// [`strip_query_key`] reporting malformed keys to `seen`; the URI is `None` when unchanged.
fn strip_key_params(uri: &Uri, seen: &mut Seen<'_>) -> (Option<Uri>, Option<RoutingKey>) {
    let Some(query) = uri.query() else {
        return (None, None);
    };
    let mut found = false;
    let mut key = None;
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
        return (None, None);
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
    (Some(rebuilt.unwrap_or_else(|| uri.clone())), key)
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

    let Ok(member) = HeaderValue::from_str(&key_member(key.as_str())) else {
        // Unreachable: a key is a valid header value by construction.
        return false;
    };
    let mut rebuilt: Vec<HeaderValue> = values
        .iter()
        .filter_map(|v| match strip_key_members(v.as_bytes()) {
            None => Some(v.clone()),
            Some(kept) if kept.is_empty() => None,
            // Only whole members of a valid value were removed, so this cannot fail; keep the
            // original if it ever did.
            Some(kept) => Some(HeaderValue::from_bytes(&kept).unwrap_or_else(|_| v.clone())),
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
#[path = "key_tests.rs"]
mod tests;
