//! Stripping routing keys at the edge: requests from clients the operator does not trust to
//! carry a key (`--strip-keys-from CIDR`, or with `--kube` `--strip-keys-from-namespace NS`,
//! for example an ingress controller's pods) lose every key form before they are decided and
//! forwarded, so a key typed in on the internet reaches neither sandbox code nor any service
//! behind the proxy.
//!
//! Removed: the `sd-routing-key` member of `baggage` and of `tracestate` (the other members keep
//! their bytes and order), the `uberctx-sd-routing-key` and `ot-baggage-sd-routing-key` headers,
//! the configured key headers, and the query parameter when it is a key source.
use std::{fmt, net::IpAddr, sync::Arc};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue, Uri};
use ipnet::IpNet;

use super::key::{KeySource, MEMBER, strip_query_key};
use crate::routes::{
    RouteTable,
    key::{split_member, strip_key_members, strip_members},
};

/// What becomes of one request header when its keys are stripped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderFate {
    Keep,
    Drop,
    /// The value without its key member.
    Replace(Vec<u8>),
}

/// The clients whose keys are stripped: addresses in some networks, and this node's pods of
/// some namespaces.
#[derive(Clone, Default)]
pub struct StripKeysFrom {
    nets: Vec<IpNet>,
    namespaces: Vec<String>,
    /// The route table the proxy uses: its node pods say which namespace a client address is
    /// in, as of the same snapshot the request is routed by.
    table: Option<Arc<ArcSwap<RouteTable>>>,
}

impl fmt::Debug for StripKeysFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripKeysFrom")
            .field("nets", &self.nets)
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl StripKeysFrom {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self {
            nets,
            ..Self::default()
        }
    }

    /// Also strips the keys of this node's pods in `namespaces`, looked up by client address
    /// in the node pods of `table`'s current snapshot (so a pod that leaves, or an address
    /// given to another pod, follows the Pod watch).
    pub fn with_namespaces(
        mut self,
        namespaces: Vec<String>,
        table: Arc<ArcSwap<RouteTable>>,
    ) -> Self {
        self.table = (!namespaces.is_empty()).then_some(table);
        self.namespaces = namespaces;
        self
    }

    /// Whether `client`'s requests lose their keys. An IPv4-mapped IPv6 client (a dual-stack
    /// listener) is matched by its IPv4 address. A client address shared by pods of several
    /// namespaces (host-network pods) loses its keys when any of them is listed.
    pub fn covers(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        if self.nets.iter().any(|n| n.contains(&client)) {
            return true;
        }
        // One atomic load and one hash lookup: cheap enough per connection and per request.
        self.table.as_ref().is_some_and(|t| {
            t.load()
                .node_pod_namespaces(client)
                .iter()
                .any(|ns| self.namespaces.iter().any(|n| **n == **ns))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.namespaces.is_empty()
    }
}

/// What stripping does to the header `name: value` (`name` compared without case), given the
/// enabled key sources.
pub fn header_fate(sources: &[KeySource], name: &str, value: &[u8]) -> HeaderFate {
    let is = |n: &str| name.len() == n.len() && name.eq_ignore_ascii_case(n);
    let whole_header = sources.iter().any(|s| match s {
        KeySource::UberCtx => is("uberctx-sd-routing-key"),
        KeySource::OtBaggage => is("ot-baggage-sd-routing-key"),
        KeySource::Header(h) => is(h.as_str()),
        _ => false,
    });
    if whole_header {
        return HeaderFate::Drop;
    }
    let kept = if is("baggage") {
        strip_key_members(value)
    } else if is("tracestate") {
        strip_tracestate_member(value)
    } else {
        None
    };
    match kept {
        None => HeaderFate::Keep,
        Some(v) if v.is_empty() => HeaderFate::Drop,
        Some(v) => HeaderFate::Replace(v),
    }
}

/// [`header_fate`] applied to every header of an HTTP/2 request, and the query parameter
/// removed from `uri` when the query is a key source. Returns whether anything was removed.
pub fn strip_keys(sources: &[KeySource], headers: &mut HeaderMap, uri: &mut Uri) -> bool {
    let mut changed = false;
    let names: Vec<_> = headers.keys().cloned().collect();
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let fates: Vec<HeaderFate> = values
            .iter()
            .map(|v| header_fate(sources, name.as_str(), v.as_bytes()))
            .collect();
        if fates.iter().all(|f| *f == HeaderFate::Keep) {
            continue;
        }
        changed = true;
        headers.remove(&name);
        for (v, fate) in values.into_iter().zip(fates) {
            match fate {
                HeaderFate::Keep => {
                    headers.append(&name, v);
                }
                HeaderFate::Drop => {}
                HeaderFate::Replace(kept) => {
                    // Only whole members of a valid value were removed; keep nothing rather
                    // than the key if it ever failed.
                    if let Ok(kept) = HeaderValue::from_bytes(&kept) {
                        headers.append(&name, kept);
                    }
                }
            }
        }
    }
    if sources.contains(&KeySource::Query) {
        let (stripped, _) = strip_query_key(uri);
        if stripped != *uri {
            *uri = stripped;
            changed = true;
        }
    }
    changed
}

/// One `tracestate` value without its `sd-routing-key` members; `None` when it has none, empty
/// when nothing else was in it.
pub fn strip_tracestate_member(value: &[u8]) -> Option<Vec<u8>> {
    strip_members(value, |m| {
        split_member(m).is_some_and(|(k, _)| k == MEMBER.as_bytes())
    })
}

#[cfg(test)]
#[path = "key_strip_tests.rs"]
mod tests;
