//! The lookups the proxy makes per request, against a computed [`RouteTable`].
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use jiff::Timestamp;

use super::{ForkPort, ForkRoute, PortEntry, RouteTable, RouteView, ServicePortRef, ServiceRef};
use crate::routes::{Fallback, RoutingKey, addr::canonical};

impl ForkRoute {
    /// The SandboxRoute this fork comes from, `namespace/name`.
    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    pub fn key(&self) -> &RoutingKey {
        &self.key
    }

    pub fn fallback(&self) -> Fallback {
        self.fallback
    }

    /// Whether the fork applies to this Service port. A port it does not cover goes to the
    /// baseline whatever the fallback says (the route never claimed it).
    pub fn covers(&self, port: u16) -> bool {
        self.port(port).is_some()
    }

    /// Ready sandbox endpoints for a Service port (empty when none or not covered).
    pub fn endpoints(&self, port: u16) -> &[SocketAddr] {
        self.port(port).map_or(&[], |p| &p.endpoints)
    }

    /// Round-robin over the ready sandbox endpoints of a Service port. `None` on a covered port
    /// means the fallback applies.
    pub fn pick_sandbox(&self, port: u16) -> Option<SocketAddr> {
        self.port(port)
            .and_then(|p| round_robin(&p.endpoints, &p.next))
    }

    fn port(&self, port: u16) -> Option<&ForkPort> {
        // A Service has a handful of ports: a scan beats hashing.
        self.ports.iter().find(|p| p.port == port)
    }
}

pub(super) fn round_robin(list: &[SocketAddr], next: &AtomicUsize) -> Option<SocketAddr> {
    if list.is_empty() {
        return None;
    }
    // Relaxed: fairness across threads only needs the counter to move, not ordering.
    let i = next.fetch_add(1, Ordering::Relaxed) % list.len();
    list.get(i).copied()
}

impl RouteTable {
    /// The Service and port a connection's original destination belongs to: a ClusterIP:port,
    /// or a baseline endpoint ip:targetPort (when another hook translated the ClusterIP first).
    pub fn service_for(&self, dst: SocketAddr) -> Option<(&ServiceRef, &ServicePortRef)> {
        let (id, pi) = self.by_addr.get(&canonical(dst))?;
        let entry = self.services.get(id)?;
        Some((&entry.svc, &entry.ports.get(*pi)?.port))
    }

    /// The port of Service `id` that `dst` addresses, with capture's word (`id`) for which
    /// Service was meant: the port `dst` is indexed under when that is this Service; the port
    /// `dst` is a baseline endpoint of when the endpoint is shared with another Service; the
    /// Service port numbered like `dst` when this table does not know the address at all.
    /// `None` otherwise (the current table gives the address to another Service).
    pub fn service_port(&self, id: u32, dst: SocketAddr) -> Option<(&ServiceRef, &ServicePortRef)> {
        let dst = canonical(dst);
        let entry = self.services.get(&id)?;
        let pi = match self.by_addr.get(&dst) {
            Some(&(owner, pi)) if owner == id => pi,
            Some(_) => entry.ports.iter().position(|p| p.all.contains(&dst))?,
            None => entry.ports.iter().position(|p| p.port.port == dst.port())?,
        };
        Some((&entry.svc, &entry.ports.get(pi)?.port))
    }

    /// A Service by id.
    pub fn service(&self, id: u32) -> Option<&ServiceRef> {
        self.services.get(&id).map(|e| &e.svc)
    }

    /// The fork of a Service for a key, if some route installed one.
    pub fn fork(&self, service_id: u32, key: &RoutingKey) -> Option<&ForkRoute> {
        self.forks.get(&service_id)?.get(key.as_str())
    }

    /// Ready baseline endpoints of a Service port (target port resolved).
    pub fn baseline(&self, service_id: u32, port: u16) -> &[SocketAddr] {
        self.port_entry(service_id, port).map_or(&[], |p| &p.ready)
    }

    /// Round-robin over the endpoints a connection to a virtual address of the port may get:
    /// [`RouteTable::baseline`], only this node's under `internalTrafficPolicy: Local`.
    pub fn pick_baseline(&self, service_id: u32, port: u16) -> Option<SocketAddr> {
        self.port_entry(service_id, port)
            .and_then(|p| round_robin(&p.candidates, &p.next))
    }

    fn port_entry(&self, service_id: u32, port: u16) -> Option<&PortEntry> {
        self.services
            .get(&service_id)?
            .ports
            .iter()
            .find(|p| p.port.port == port)
    }

    /// Destinations to capture: for every Service with at least one installed fork, each
    /// ClusterIP:port and baseline endpoint ip:targetPort of its forked ports → service id.
    pub fn steered(&self) -> &BTreeMap<SocketAddr, u32> {
        &self.steered
    }

    /// Every route with its status and installed endpoints, sorted by namespace/name (built
    /// on each call: for the admin and debug views).
    pub fn routes(&self) -> Vec<RouteView> {
        self.views
            .views(|id| self.services.get(&id).map(|s| &s.declared_ports[..]))
    }

    /// Who owns an IP address: a known pod, else the Service it is an endpoint of.
    pub fn owner_of(&self, ip: IpAddr) -> Option<&str> {
        self.owners.get(&ip.to_canonical()).map(String::as_str)
    }

    /// The namespaces of this node's pods with address `ip` (empty when no pod of this node has
    /// it; several only for host-network pods, which share the node's addresses).
    pub fn node_pod_namespaces(&self, ip: IpAddr) -> &[Arc<str>] {
        self.node_pod_namespaces
            .get(&ip.to_canonical())
            .map_or(&[], Vec::as_slice)
    }

    /// The earliest future `expiresAt`: recompute then, since expiry needs no cluster change.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.next_expiry
    }
}
