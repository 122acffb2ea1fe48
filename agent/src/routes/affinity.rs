//! `sessionAffinity: ClientIP`: which endpoint each client IP was last given, per Service port.
//!
//! The one piece of routing state that outlives a connection and a table, so it lives beside the
//! immutable [`RouteTable`](super::RouteTable) snapshot (the proxy holds one for all its
//! connections). Like kube-proxy's `recent` match, an entry lasts `timeout` after the client's
//! last new connection, and an endpoint that is no longer a candidate is forgotten.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Entries kept at most: past this, expired ones are dropped, and if none expired a new client
/// gets a plain pick (remembered later, once room frees up). Bounded so a scan of many client
/// addresses cannot grow the agent without limit.
pub const MAX_AFFINITY_ENTRIES: usize = 65_536;

/// (service id, service port, client IP).
type Key = (u32, u16, IpAddr);

/// The endpoint each client IP is bound to, per Service port.
#[derive(Debug)]
pub struct ClientAffinity {
    entries: Mutex<HashMap<Key, Entry>>,
    max: usize,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    endpoint: SocketAddr,
    expires: Instant,
}

impl Default for ClientAffinity {
    fn default() -> Self {
        Self::with_capacity(MAX_AFFINITY_ENTRIES)
    }
}

impl ClientAffinity {
    /// A table that keeps at most `max` entries.
    pub fn with_capacity(max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// The endpoint for a new connection of `client` to a Service port: the one it was given
    /// before, while unexpired and still among `candidates`, else `pick()`'s, which is then
    /// remembered. Either way the entry lasts `timeout` from now.
    pub fn pick(
        &self,
        (service, port, client): Key,
        timeout: Duration,
        candidates: &[SocketAddr],
        pick: impl FnOnce() -> Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        let now = Instant::now();
        let key = (service, port, client.to_canonical());
        // A poisoned lock only means another connection panicked mid-update; the map is still
        // a valid map.
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let kept = entries
            .get(&key)
            .filter(|e| e.expires > now && candidates.contains(&e.endpoint))
            .map(|e| e.endpoint);
        let endpoint = kept.or_else(pick)?;
        let entry = Entry {
            endpoint,
            expires: now + timeout,
        };
        if entries.len() >= self.max && !entries.contains_key(&key) {
            entries.retain(|_, e| e.expires > now);
        }
        if entries.len() < self.max || entries.contains_key(&key) {
            entries.insert(key, entry);
        }
        Some(endpoint)
    }

    /// How many clients are remembered (expired entries included until evicted).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::test_support::{ip, sa};

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_client_keeps_its_endpoint_while_it_is_a_candidate() {
        let a = ClientAffinity::default();
        let eps = [sa("10.1.0.1:80"), sa("10.1.0.2:80")];
        let key = (7, 80, ip("10.0.0.9"));
        assert_eq!(a.pick(key, HOUR, &eps, || Some(eps[1])), Some(eps[1]));
        assert_eq!(a.pick(key, HOUR, &eps, || Some(eps[0])), Some(eps[1]));
        // Another client, another port: their own picks.
        assert_eq!(
            a.pick((7, 80, ip("10.0.0.8")), HOUR, &eps, || Some(eps[0])),
            Some(eps[0])
        );
        assert_eq!(
            a.pick((7, 81, ip("10.0.0.9")), HOUR, &eps, || Some(eps[0])),
            Some(eps[0])
        );
        // The endpoint left: a new pick, remembered.
        assert_eq!(a.pick(key, HOUR, &eps[..1], || Some(eps[0])), Some(eps[0]));
        assert_eq!(a.pick(key, HOUR, &eps, || Some(eps[1])), Some(eps[0]));
    }

    #[test]
    fn an_expired_entry_is_picked_again() {
        let a = ClientAffinity::default();
        let eps = [sa("10.1.0.1:80"), sa("10.1.0.2:80")];
        let key = (7, 80, ip("10.0.0.9"));
        a.pick(key, Duration::ZERO, &eps, || Some(eps[0]));
        assert_eq!(a.pick(key, HOUR, &eps, || Some(eps[1])), Some(eps[1]));
    }

    #[test]
    fn the_table_is_bounded() {
        let a = ClientAffinity::with_capacity(2);
        let eps = [sa("10.1.0.1:80")];
        for i in 0..5u8 {
            let client = IpAddr::from([10, 0, 0, i]);
            assert_eq!(
                a.pick((7, 80, client), HOUR, &eps, || Some(eps[0])),
                Some(eps[0])
            );
        }
        assert_eq!(a.len(), 2);
        // Expired entries make room.
        let b = ClientAffinity::with_capacity(1);
        b.pick((7, 80, ip("10.0.0.1")), Duration::ZERO, &eps, || {
            Some(eps[0])
        });
        b.pick((7, 80, ip("10.0.0.2")), HOUR, &eps, || Some(eps[0]));
        assert_eq!(b.len(), 1);
    }
}
