//! Key injection for marked sources (sandbox pods, `shunt test` runners): a request from one
//! that carries no routing key gets the source's key as a `baggage` member, merged into the
//! request's own `baggage` (other members intact), and is then decided as usual. A request with
//! its own key keeps it; one with a malformed key is left as it is (decided as unkeyed, as
//! from anyone else). Opaque bytes (TLS, anything not HTTP) are never touched, and a
//! connection to a destination the route table does not know is relayed opaquely to it.
use http::{HeaderMap, HeaderValue};

use super::{
    ConnInfo, ProxyShared,
    key::{Extracted, HeadRewrite, KeySource, inject_baggage},
    key_strip::HeaderFate,
};
use crate::routes::{AppliedSource, RoutingKey, ServiceId};

const BAGGAGE: &str = "baggage";

/// What a connection from a marked source carries: the source's cgroup id and its key, inline
/// so [`ConnInfo`] stays `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkedConn {
    pub cgroup_id: u64,
    len: u8,
    key: [u8; RoutingKey::MAX_LEN],
}

impl MarkedConn {
    pub fn new(source: &AppliedSource) -> Self {
        let b = source.key.as_str().as_bytes();
        let mut key = [0u8; RoutingKey::MAX_LEN];
        // A RoutingKey is at most MAX_LEN bytes.
        let len = b.len().min(RoutingKey::MAX_LEN);
        key[..len].copy_from_slice(&b[..len]);
        Self {
            cgroup_id: source.cgroup_id,
            len: len as u8,
            key,
        }
    }

    /// The key to inject (valid by construction; `None` never happens in practice).
    pub fn key(&self) -> Option<RoutingKey> {
        RoutingKey::parse_bytes(&self.key[..self.len as usize]).ok()
    }
}

/// Whether a connection from a marked source skips HTTP handling: its destination is no
/// Service the route table knows, so it is relayed opaquely to where it was going.
pub fn relay_unknown_opaquely(shared: &ProxyShared, info: &ConnInfo) -> bool {
    info.marked.is_some()
        && info.service == ServiceId::NONE
        && shared
            .table()
            .resolve(info.original_dst, info.service)
            .is_none()
}

/// The key to inject into a request of `info` that extracted `extracted`: the source's, when
/// the connection is marked and the request carries no key (valid or not).
fn key_to_inject(info: &ConnInfo, extracted: &Extracted) -> Option<RoutingKey> {
    let marked = info.marked?;
    if extracted.key.is_some() || extracted.invalid.is_some() {
        return None;
    }
    marked.key()
}

/// HTTP/2: adds the key to `headers` when [`key_to_inject`] says so, and records it in
/// `extracted`. Returns whether it did.
pub fn inject_h2(info: &ConnInfo, headers: &mut HeaderMap, extracted: &mut Extracted) -> bool {
    let Some(key) = key_to_inject(info, extracted) else {
        return false;
    };
    inject_baggage(headers, &key);
    extracted.key = Some(key);
    extracted.source = KeySource::Injected;
    true
}

/// HTTP/1.1, for a head parsed in place: the key for [`inject_raw`], when one is due.
pub fn key_for_h1(info: &ConnInfo) -> Option<RoutingKey> {
    info.marked.and_then(|m| m.key())
}

/// HTTP/1.1: when `inject` is set and the request carries no key, rewrites the head so every
/// `baggage` header is dropped and one merged value (the request's members, then the key) is
/// appended, on top of whatever `rewrite` already does. Returns whether it injected.
pub fn inject_raw(
    inject: Option<&RoutingKey>,
    headers: &[httparse::Header<'_>],
    extracted: &mut Extracted,
    rewrite: &mut Option<HeadRewrite>,
) -> bool {
    let Some(key) = inject else {
        return false;
    };
    if extracted.key.is_some() || extracted.invalid.is_some() {
        return false;
    }
    let mut rw = rewrite.take().unwrap_or_else(|| HeadRewrite {
        target: None,
        fates: vec![HeaderFate::Keep; headers.len()],
        append_baggage: Vec::new(),
    });
    let mut baggage = HeaderMap::new();
    for (h, fate) in headers.iter().zip(rw.fates.iter_mut()) {
        if !(h.name.len() == BAGGAGE.len() && h.name.eq_ignore_ascii_case(BAGGAGE)) {
            continue;
        }
        let value = match fate {
            HeaderFate::Keep => h.value,
            HeaderFate::Replace(v) => v.as_slice(),
            HeaderFate::Drop => continue,
        };
        // A value that is not a valid header value is left where it is.
        if let Ok(v) = HeaderValue::from_bytes(value) {
            baggage.append(BAGGAGE, v);
            *fate = HeaderFate::Drop;
        }
    }
    for v in rw.append_baggage.drain(..) {
        baggage.append(BAGGAGE, v);
    }
    inject_baggage(&mut baggage, key);
    rw.append_baggage = baggage.get_all(BAGGAGE).iter().cloned().collect();
    *rewrite = Some(rw);
    extracted.key = Some(key.clone());
    extracted.source = KeySource::Injected;
    true
}

#[cfg(test)]
#[path = "key_inject_tests.rs"]
mod tests;
