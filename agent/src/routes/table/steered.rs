//! Which Service an address belongs to, and which addresses are steered.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use super::{super::addr::canonical, RouteTable, resolve::Index};

impl RouteTable {
    /// Fills `by_addr` and `steered`. ClusterIPs are unique to a Service; endpoint addresses may
    /// be shared (two Services selecting the same pods), and then a Service with forks wins, then
    /// (namespace, name) order, so `service_for` and `STEERED` always agree.
    pub(super) fn index_addresses(
        &mut self,
        ix: &Index<'_>,
        covered: &BTreeMap<u32, BTreeSet<usize>>,
    ) {
        for (id, svc) in ix.services.values() {
            let Some(entry) = self.services.get(id) else {
                continue;
            };
            for ip in &svc.addresses {
                for (pi, p) in entry.ports.iter().enumerate() {
                    let addr = canonical(SocketAddr::new(*ip, p.port.port));
                    self.by_addr.entry(addr).or_insert((*id, pi));
                }
            }
        }
        let forked_first = ix
            .services
            .values()
            .filter(|(id, _)| covered.contains_key(id))
            .chain(
                ix.services
                    .values()
                    .filter(|(id, _)| !covered.contains_key(id)),
            );
        for (id, _) in forked_first {
            let Some(entry) = self.services.get(id) else {
                continue;
            };
            for (pi, p) in entry.ports.iter().enumerate() {
                for addr in &p.all {
                    self.by_addr.entry(*addr).or_insert((*id, pi));
                }
            }
        }

        for (id, svc_port_indexes) in covered {
            let (Some(entry), Some(svc)) = (self.services.get(id), ix.by_id.get(id)) else {
                continue;
            };
            // `covered` holds indexes into the spec's ports; map them to entry ports by number.
            for spi in svc_port_indexes {
                let Some(sp) = svc.ports.get(*spi) else {
                    continue;
                };
                let Some((pi, p)) = entry
                    .ports
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.port.port == sp.port)
                else {
                    continue;
                };
                let vips = svc
                    .addresses
                    .iter()
                    .map(|ip| canonical(SocketAddr::new(*ip, p.port.port)));
                for addr in vips.chain(p.all.iter().copied()) {
                    if self.by_addr.get(&addr) == Some(&(*id, pi)) {
                        self.steered.insert(addr, *id);
                    }
                }
            }
        }

        // Services load-balanced by the agent itself (no kube-proxy): their virtual addresses
        // are steered with or without forks.
        for (id, svc) in ix.services.values().filter(|(_, s)| s.always_steer) {
            let Some(entry) = self.services.get(id) else {
                continue;
            };
            for (pi, p) in entry.ports.iter().enumerate() {
                for ip in &svc.addresses {
                    let addr = canonical(SocketAddr::new(*ip, p.port.port));
                    if self.by_addr.get(&addr) == Some(&(*id, pi)) {
                        self.steered.insert(addr, *id);
                    }
                }
            }
        }
    }
}
