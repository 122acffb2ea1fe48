//! A bounded ring of recent routing decisions, so "why did my keyed request land on baseline?"
//! has an answer at `/decisions?key=K`.
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
    pub path: Option<Box<str>>,
    #[serde(serialize_with = "as_str::shared")]
    pub service: Option<Arc<str>>,
    pub key: Option<RoutingKey>,
    pub decision: DecisionKind,
    pub reason: DecisionReason,
    #[serde(serialize_with = "as_str::shared")]
    pub route: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub status: Option<u16>,
    pub latency_us: u64,
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

/// The most recent decisions, at most `capacity` of them.
pub struct DecisionLog {
    capacity: usize,
    ring: Mutex<VecDeque<DecisionRecord>>,
}

impl DecisionLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
        }
    }

    pub fn push(&self, record: DecisionRecord) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    /// Records, oldest first, optionally only those for `key` and newer than `since`.
    pub fn query(&self, key: Option<&str>, since: Option<SystemTime>) -> Vec<DecisionRecord> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .filter(|r| key.is_none_or(|k| r.key_str() == Some(k)))
            .filter(|r| since.is_none_or(|s| r.time >= s))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&str>) -> DecisionRecord {
        DecisionRecord {
            time: SystemTime::now(),
            client: ClientAddr::from_peer("10.0.0.1:1234".parse().expect("addr")),
            original_dst: OrigDstAddr("10.96.0.7:80".parse().expect("addr")),
            protocol: "http1",
            method: None,
            path: None,
            service: None,
            key: key.map(|k| RoutingKey::parse(k).expect("valid key")),
            decision: DecisionKind::Baseline,
            reason: DecisionReason::NoKey,
            route: None,
            upstream: None,
            status: Some(200),
            latency_us: 1,
        }
    }

    #[test]
    fn ring_keeps_only_the_newest_entries() {
        let log = DecisionLog::new(2);
        log.push(record(Some("a")));
        log.push(record(Some("b")));
        log.push(record(Some("c")));
        let keys: Vec<_> = log
            .query(None, None)
            .into_iter()
            .filter_map(|r| r.key.map(|k| k.as_str().to_string()))
            .collect();
        assert_eq!(keys, ["b", "c"]);
    }

    #[test]
    fn query_filters_by_key() {
        let log = DecisionLog::new(10);
        log.push(record(Some("a")));
        log.push(record(None));
        log.push(record(Some("a")));
        assert_eq!(log.query(Some("a"), None).len(), 2);
    }
}
