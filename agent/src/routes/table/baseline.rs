//! The baseline side of a decision: which destinations are virtual (an endpoint is picked for
//! them, as kube-proxy would) and which are pod addresses (kept as dialled), and which Service a
//! pod address shared by several Services stands for.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use super::{RouteTable, ServicePortRef, ServiceRef, lookups::round_robin};
use crate::routes::{ClientAffinity, RoutingKey, addr::canonical};

/// The endpoint chosen for a connection to a virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtualPick {
    To(SocketAddr),
    /// `internalTrafficPolicy: Local` and no ready endpoint on this node: kube-proxy drops such
    /// connections, never sends them to another node.
    NoLocalEndpoint,
    /// No ready endpoint at all: left to whatever the virtual address leads to.
    NoEndpoint,
}

impl RouteTable {
    /// Whether `dst` is a virtual address (a ClusterIP) of Service `id`, as opposed to one of
    /// its endpoints.
    pub fn is_virtual(&self, id: u32, dst: SocketAddr) -> bool {
        let ip = dst.ip().to_canonical();
        self.services.get(&id).is_some_and(|e| e.vips.contains(&ip))
    }

    /// The endpoint for a new connection from `client` to a virtual address of a Service port:
    /// the one `sessionAffinity: ClientIP` binds the client to, else round-robin over the
    /// candidates (this node's only, under `internalTrafficPolicy: Local`).
    pub fn pick_virtual(
        &self,
        id: u32,
        port: u16,
        client: IpAddr,
        affinity: Option<&ClientAffinity>,
    ) -> VirtualPick {
        let Some(entry) = self.services.get(&id) else {
            return VirtualPick::NoEndpoint;
        };
        let Some(p) = entry.ports.iter().find(|p| p.port.port == port) else {
            return VirtualPick::NoEndpoint;
        };
        let rr = || round_robin(&p.candidates, &p.next);
        let picked = match (entry.affinity, affinity) {
            (Some(timeout), Some(a)) => a.pick((id, port, client), timeout, &p.candidates, rr),
            _ => rr(),
        };
        match picked {
            Some(ep) => VirtualPick::To(ep),
            None if entry.local_only && !p.ready.is_empty() => VirtualPick::NoLocalEndpoint,
            None => VirtualPick::NoEndpoint,
        }
    }

    /// For a keyed request dialled to a pod address that several Services share: the first
    /// Service (by namespace/name) whose fork for `key` covers its port for that address.
    /// `None` when the address is not shared or no sharer has such a fork.
    pub fn forked_sharer(
        &self,
        dst: SocketAddr,
        key: &RoutingKey,
    ) -> Option<(&ServiceRef, &ServicePortRef)> {
        self.shared
            .get(&canonical(dst))?
            .iter()
            .find_map(|&(id, pi)| {
                let entry = self.services.get(&id)?;
                let port = &entry.ports.get(pi)?.port;
                self.fork(id, key)
                    .filter(|f| f.covers(port.port))
                    .map(|_| (&entry.svc, port))
            })
    }

    /// Fills `shared` from the Services' endpoint addresses.
    pub(super) fn index_shared(&mut self) {
        let mut by_addr: BTreeMap<SocketAddr, Vec<(&ServiceRef, usize)>> = BTreeMap::new();
        for entry in self.services.values() {
            for (pi, p) in entry.ports.iter().enumerate() {
                for addr in &p.all {
                    by_addr.entry(*addr).or_default().push((&entry.svc, pi));
                }
            }
        }
        let shared = by_addr
            .into_iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(addr, mut v)| {
                v.sort_by(|(a, ai), (b, bi)| {
                    (&a.namespace, &a.name, ai).cmp(&(&b.namespace, &b.name, bi))
                });
                (addr, v.into_iter().map(|(s, pi)| (s.id, pi)).collect())
            })
            .collect();
        self.shared = shared;
    }

    /// Per route, a note for its status when a pod address is shared by two Services that it
    /// forks for its key: requests dialled to that address follow the first Service's fork.
    pub(super) fn shared_fork_notes(&self) -> BTreeMap<String, String> {
        // route → (followed, also forked) → addresses
        type Ties = BTreeMap<(String, BTreeSet<String>), BTreeSet<SocketAddr>>;
        let mut ties: BTreeMap<String, Ties> = BTreeMap::new();
        let mut addrs: Vec<_> = self.shared.iter().collect();
        addrs.sort_unstable_by_key(|(a, _)| **a);
        for (addr, sharers) in addrs {
            let mut by_key: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
            for &(id, pi) in sharers {
                let (Some(entry), Some(forks)) = (self.services.get(&id), self.forks.get(&id))
                else {
                    continue;
                };
                let Some(p) = entry.ports.get(pi) else {
                    continue;
                };
                for fork in forks.values().filter(|f| f.covers(p.port.port)) {
                    by_key
                        .entry(fork.key().as_str())
                        .or_default()
                        .push((fork.route(), &entry.svc.label));
                }
            }
            for forks in by_key.values().filter(|f| f.len() > 1) {
                let followed = forks[0].1.to_owned();
                for (route, _) in forks {
                    let others: BTreeSet<String> = forks
                        .iter()
                        .map(|(_, s)| s.to_string())
                        .filter(|s| s != &followed)
                        .collect();
                    ties.entry(route.to_string())
                        .or_default()
                        .entry((followed.clone(), others))
                        .or_default()
                        .insert(*addr);
                }
            }
        }
        ties.into_iter()
            .map(|(route, ties)| {
                let notes: Vec<String> = ties
                    .into_iter()
                    .map(|((followed, others), addrs)| {
                        let shown: Vec<String> = addrs.iter().take(3).map(|a| a.to_string()).collect();
                        let more = addrs.len().saturating_sub(shown.len());
                        format!(
                            "pod address(es) {}{} of {followed} are also endpoints of {}, forked for the same key; keyed requests dialled to them follow the fork of {followed} (the first by namespace/name)",
                            shown.join(", "),
                            if more > 0 { format!(" and {more} more") } else { String::new() },
                            others.into_iter().collect::<Vec<_>>().join(", "),
                        )
                    })
                    .collect();
                (route, notes.join("; "))
            })
            .collect()
    }
}
