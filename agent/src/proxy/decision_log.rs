//! A ring of recent routing decisions bounded in bytes, so "why did my keyed request land on
//! baseline?" has an answer at the debug listener's `/decisions?key=K`. Paths are stored cut to
//! [`MAX_PATH_BYTES`], and reads filter and page under the lock without copying the ring: a pod
//! that sends long paths and reads the log cannot grow the agent or stall the proxy.
use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde::Serialize;

use super::orig_dst::{ClientAddr, OrigDstAddr};
use crate::routes::{DecisionKind, DecisionReason, RoutingKey};

/// One entry of the decision log, as `/decisions` shows it.
///
/// One is written per request, so it takes what the request already owns (its method and key)
/// and the route table's shared names; only the path is copied.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionRecord {
    #[serde(with = "unix_ms")]
    pub time: SystemTime,
    pub client: ClientAddr,
    pub original_dst: OrigDstAddr,
    pub protocol: &'static str,
    #[serde(serialize_with = "as_str::method")]
    pub method: Option<http::Method>,
    /// The request's path (not its query, which may hold secrets). Copied: a shared slice
    /// would keep the connection's whole read buffer alive for as long as the log holds it.
    /// The log keeps at most [`MAX_PATH_BYTES`] of it, and marks a cut path with a trailing `…`.
    pub path: Option<Box<str>>,
    #[serde(serialize_with = "as_str::shared")]
    pub service: Option<Arc<str>>,
    pub key: Option<RoutingKey>,
    pub decision: DecisionKind,
    pub reason: DecisionReason,
    #[serde(serialize_with = "as_str::shared")]
    pub route: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    /// Where the upstream connection left from: `pod` (the client pod's own address), `node`
    /// (not a pod of this node, or a hostNetwork one), or `node_fallback` (the pod's network
    /// namespace could not be entered).
    pub source: crate::netns::UpstreamSource,
    pub status: Option<u16>,
    pub latency_us: u64,
    /// The key was added by the proxy for a marked source: the request carried none.
    pub key_injected: bool,
    /// The marked source the injected key is for (`pod NS/NAME`, `file`, `shunt test`).
    #[serde(
        serialize_with = "as_str::shared",
        skip_serializing_if = "Option::is_none"
    )]
    pub marked_source: Option<Arc<str>>,
}

impl DecisionRecord {
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_ref().map(RoutingKey::as_str)
    }
}

/// Optional values serialized as their string form (`null` when absent).
mod as_str {
    use std::sync::Arc;

    use serde::Serializer;

    pub fn method<S: Serializer>(m: &Option<http::Method>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => s.serialize_str(m.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn shared<S: Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(v),
            None => s.serialize_none(),
        }
    }
}

mod unix_ms {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        s.serialize_u64(ms as u64)
    }
}

/// Longest request path kept in a record, in bytes. Paths up to the header limit (64 KiB) would
/// let a pod fill the log with a few MiB per request; the start of a path is what tells requests
/// apart.
pub const MAX_PATH_BYTES: usize = 512;

/// Default bound of the log (`--decision-log-bytes`).
pub const DEFAULT_LOG_BYTES: usize = 8 * 1024 * 1024;

/// Most records one read returns (`limit` is capped to it), so one answer stays small.
pub const MAX_PAGE: usize = 1024;

/// Which records a read wants.
#[derive(Clone, Debug, Default)]
pub struct DecisionQuery<'a> {
    /// Only this routing key.
    pub key: Option<&'a str>,
    /// Only records at or after this time.
    pub since: Option<SystemTime>,
    /// Only decisions for services of this namespace.
    pub namespace: Option<&'a str>,
    /// At most this many (the newest), capped to [`MAX_PAGE`]; none: [`MAX_PAGE`].
    pub limit: Option<usize>,
}

impl DecisionQuery<'_> {
    fn matches(&self, r: &DecisionRecord) -> bool {
        self.key.is_none_or(|k| r.key_str() == Some(k))
            && self.since.is_none_or(|s| r.time >= s)
            && self.namespace.is_none_or(|ns| r.namespace() == Some(ns))
    }
}

struct Ring {
    records: VecDeque<DecisionRecord>,
    /// What the records cost, by [`DecisionRecord::cost`].
    bytes: usize,
}

/// The most recent decisions, together costing at most `capacity_bytes`.
pub struct DecisionLog {
    capacity_bytes: usize,
    ring: Mutex<Ring>,
}

impl DecisionLog {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            ring: Mutex::new(Ring {
                records: VecDeque::new(),
                bytes: 0,
            }),
        }
    }

    pub fn push(&self, mut record: DecisionRecord) {
        if self.capacity_bytes == 0 {
            return;
        }
        // Truncated before the lock: the copy is the only work that grows with the request.
        record.truncate_path();
        let cost = record.cost();
        if cost > self.capacity_bytes {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        while ring.bytes + cost > self.capacity_bytes {
            match ring.records.pop_front() {
                Some(old) => ring.bytes -= old.cost(),
                None => break,
            }
        }
        ring.bytes += cost;
        ring.records.push_back(record);
    }

    /// The newest records (at most [`MAX_PAGE`]), oldest first, optionally only those for `key`
    /// and newer than `since`.
    pub fn query(&self, key: Option<&str>, since: Option<SystemTime>) -> Vec<DecisionRecord> {
        self.page(&DecisionQuery {
            key,
            since,
            ..DecisionQuery::default()
        })
    }

    /// The newest records matching `q` (at most its limit), oldest first. Only the page is
    /// copied out of the lock, never the whole ring: every proxied request waits on it.
    pub fn page(&self, q: &DecisionQuery<'_>) -> Vec<DecisionRecord> {
        let limit = q.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut page: Vec<DecisionRecord> = ring
            .records
            .iter()
            .rev()
            .filter(|r| q.matches(r))
            .take(limit)
            .cloned()
            .collect();
        drop(ring);
        page.reverse();
        page
    }

    /// Bytes the records cost now (by [`DecisionRecord::cost`]).
    pub fn bytes(&self) -> usize {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

impl DecisionRecord {
    /// What the record holds on the heap and in the ring, roughly: the record itself and the
    /// bytes it owns (the path and the key; service and route names are shared with the table).
    fn cost(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.path.as_deref().map_or(0, str::len)
            + self.key.as_ref().map_or(0, |k| k.as_str().len())
            + self.marked_source.as_deref().map_or(0, str::len)
    }

    /// Cuts the path to [`MAX_PATH_BYTES`] (on a character boundary), ending it with `…`.
    fn truncate_path(&mut self) {
        if let Some(p) = &self.path
            && p.len() > MAX_PATH_BYTES
        {
            let mut end = MAX_PATH_BYTES;
            while !p.is_char_boundary(end) {
                end -= 1;
            }
            let mut cut = String::with_capacity(end + '…'.len_utf8());
            cut.push_str(&p[..end]);
            cut.push('…');
            self.path = Some(cut.into_boxed_str());
        }
    }

    /// The namespace of the service the decision was for (`None` when the destination was not a
    /// known service).
    pub fn namespace(&self) -> Option<&str> {
        self.service.as_deref()?.split_once('/').map(|(ns, _)| ns)
    }
}

#[cfg(test)]
#[path = "decision_log_tests.rs"]
mod tests;
