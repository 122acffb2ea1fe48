//! A bounded ring of recent routing decisions, so "why did my keyed request land on baseline?"
//! has an answer at `/decisions?key=K`.
use std::{collections::VecDeque, sync::Mutex, time::SystemTime};

use super::decision::DecisionRecord;

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
    use crate::proxy::decision::{DecisionKind, Reason};
    use crate::routes::RoutingKey;

    fn record(key: Option<&str>) -> DecisionRecord {
        DecisionRecord {
            time: SystemTime::now(),
            client: "10.0.0.1:1234".parse().expect("addr"),
            original_dst: "10.96.0.7:80".parse().expect("addr"),
            protocol: "http1",
            method: None,
            path: None,
            service: None,
            key: key.map(|k| RoutingKey::parse(k).expect("valid key")),
            decision: DecisionKind::Baseline,
            reason: Reason::NoKey,
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
