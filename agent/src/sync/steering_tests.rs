//! Tests of the steering owner, against a map that counts its syscalls.
use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::*;

/// Every map operation, counted: one insert or delete is one `bpf()` syscall; a walk is two per
/// entry (next key, lookup).
#[derive(Clone, Default)]
struct Counters {
    inserts: Arc<AtomicUsize>,
    deletes: Arc<AtomicUsize>,
    walks: Arc<AtomicUsize>,
}

impl Counters {
    fn take(&self) -> (usize, usize, usize) {
        (
            self.inserts.swap(0, Ordering::Relaxed),
            self.deletes.swap(0, Ordering::Relaxed),
            self.walks.swap(0, Ordering::Relaxed),
        )
    }
}

/// A kernel map stand-in with a capacity, like `STEERED`'s max_entries.
struct FakeMap {
    entries: BTreeMap<SocketAddr, u32>,
    capacity: usize,
    counters: Counters,
}

impl SteeredStore for FakeMap {
    fn steer(&mut self, dst: SocketAddr, service_id: u32) -> Result<(), MapError> {
        self.counters.inserts.fetch_add(1, Ordering::Relaxed);
        if !self.entries.contains_key(&dst) && self.entries.len() >= self.capacity {
            return Err(MapError::OutOfBounds {
                index: self.entries.len() as u32,
                max_entries: self.capacity as u32,
            });
        }
        self.entries.insert(dst, service_id);
        Ok(())
    }
    fn unsteer(&mut self, dst: SocketAddr) -> Result<(), MapError> {
        self.counters.deletes.fetch_add(1, Ordering::Relaxed);
        self.entries.remove(&dst);
        Ok(())
    }
    fn entries(&self) -> Vec<(SocketAddr, u32)> {
        self.counters.walks.fetch_add(1, Ordering::Relaxed);
        self.entries.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

fn addr(i: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i)), 80)
}

fn set(range: std::ops::Range<u32>) -> BTreeMap<SocketAddr, u32> {
    range.map(|i| (addr(i), i % 97)).collect()
}

fn steering(capacity: usize, preloaded: &[(SocketAddr, u32)]) -> (Steering, Counters) {
    let counters = Counters::default();
    let map = FakeMap {
        entries: preloaded.iter().copied().collect(),
        capacity,
        counters: counters.clone(),
    };
    (Steering::new(map), counters)
}

/// What the (stand-in) kernel map holds, as a set.
fn kernel(s: &Steering) -> BTreeMap<SocketAddr, u32> {
    s.entries().into_iter().collect()
}

fn metrics() -> Arc<Metrics> {
    Metrics::unregistered()
}

#[test]
fn apply_touches_only_the_changed_steered_entries() {
    let m = metrics();
    let (s, c) = steering(100_000, &[]);
    let mut desired = set(0..10_000);
    s.apply(desired.clone(), ApplyMode::Reconcile, &m)
        .expect("applied");
    assert_eq!(
        c.take(),
        (10_000, 0, 1),
        "the first apply writes every entry"
    );

    // One route change: one destination added, one removed, one moved to another service.
    desired.insert(addr(20_000), 7);
    desired.remove(&addr(5));
    desired.insert(addr(6), 1_000);
    let r = s
        .apply(desired.clone(), ApplyMode::Incremental, &m)
        .expect("applied");
    assert_eq!((r.added, r.removed, r.unchanged), (2, 1, 9_998));
    assert_eq!(
        c.take(),
        (2, 1, 0),
        "an incremental apply makes one syscall per changed entry and never walks the map"
    );

    // Nothing changed: no syscall at all.
    s.apply(desired.clone(), ApplyMode::Incremental, &m)
        .expect("applied");
    assert_eq!(c.take(), (0, 0, 0));
    assert_eq!(kernel(&s), desired);
}

#[test]
fn reconcile_collects_entries_left_by_an_earlier_agent() {
    let m = metrics();
    let stale = [(addr(1), 1), (addr(2), 2), (addr(3), 3)];
    let (s, c) = steering(100, &stale);
    let r = s
        .apply(set(2..5), ApplyMode::Reconcile, &m)
        .expect("applied");
    // addr(2) keeps its id (2 % 97 = 2), addr(3) too; addr(4) is new; addr(1) was stale.
    assert_eq!((r.added, r.removed, r.unchanged), (1, 1, 2));
    assert_eq!(c.take(), (1, 1, 1));
    assert_eq!(kernel(&s), set(2..5));
}

#[test]
fn suspend_empties_the_map_and_resume_restores_it() {
    let m = metrics();
    let (s, c) = steering(100, &[]);
    s.apply(set(0..10), ApplyMode::Reconcile, &m);
    c.take();
    assert_eq!(s.suspend(), 10);
    assert!(s.is_suspended());
    assert!(s.entries().is_empty());
    // Applies while suspended only record what is wanted.
    assert!(s.apply(set(0..12), ApplyMode::Incremental, &m).is_none());
    c.take();
    s.resume(&m);
    assert!(!s.is_suspended());
    assert_eq!(kernel(&s), set(0..12));
}

#[test]
fn refused_inserts_are_reported_and_retried_on_the_next_apply() {
    let m = metrics();
    let (s, _c) = steering(5, &[]);
    let r = s
        .apply(set(0..8), ApplyMode::Reconcile, &m)
        .expect("applied");
    assert_eq!((r.added, r.failed.len()), (5, 3));
    // Room freed: the same desired set now fits, and the incremental apply retries the three.
    let r = s
        .apply(set(3..8), ApplyMode::Incremental, &m)
        .expect("applied");
    assert_eq!((r.added, r.removed, r.failed.len()), (3, 3, 0));
    assert_eq!(kernel(&s), set(3..8));
}

#[test]
fn destinations_left_unsteered_are_reported_against_the_routes_forking_their_service() {
    // `reviews` (forked by r1) has a ClusterIP and an endpoint; `ratings` (forked by r2) too.
    let yaml = r#"
services:
  - { name: reviews, namespace: shop, addresses: [10.96.0.7],
      ports: [{ name: http, port: 9080, targetPort: 9080 }], endpoints: [{ ip: 198.18.2.2 }] }
  - { name: ratings, namespace: shop, addresses: [10.96.0.8],
      ports: [{ name: http, port: 9080, targetPort: 9080 }], endpoints: [{ ip: 198.18.4.2 }] }
pods:
  - { name: reviews-v2, namespace: shop, ips: [198.18.3.2], ports: { http: 9080 },
      labels: { app: reviews-v2, shunt.dev/sandbox: k1 } }
  - { name: ratings-v2, namespace: shop, ips: [198.18.5.2], ports: { http: 9080 },
      labels: { app: ratings-v2, shunt.dev/sandbox: k2 } }
routes:
  - name: r1
    namespace: shop
    spec: { routingKey: k1,
            forks: [ { service: reviews, to: { selector: { app: reviews-v2, shunt.dev/sandbox: k1 } } } ] }
  - name: r2
    namespace: shop
    spec: { routingKey: k2,
            forks: [ { service: ratings, to: { selector: { app: ratings-v2, shunt.dev/sandbox: k2 } } } ] }
"#;
    let state = crate::routes::file::parse_routes(yaml, "test.yaml").expect("valid routes");
    let (table, statuses) = RouteTable::compute(&state, jiff::Timestamp::now());
    assert_eq!(table.steered().len(), 4, "{:?}", table.steered());
    // Room for three: the highest address (ratings' endpoint) is left direct.
    let (s, _) = steering(3, &[]);
    let report = s
        .apply(table.steered().clone(), ApplyMode::Incremental, &metrics())
        .expect("not suspended");
    assert_eq!(report.failed.len(), 1);
    let failures = route_failures(&report, table.steered(), &table, &statuses);
    assert_eq!(failures.len(), 1, "{failures:?}");
    let f = &failures[0];
    assert_eq!((f.namespace.as_str(), f.name.as_str()), ("shop", "r2"));
    assert_eq!(f.reason, STEERED_MAP_FULL);
    assert!(
        f.message
            .starts_with("1 destination(s) of Service shop/ratings not steered ("),
        "{}",
        f.message
    );
    // Nothing failed: nothing to report.
    let (s, _) = steering(4, &[]);
    let report = s
        .apply(table.steered().clone(), ApplyMode::Incremental, &metrics())
        .expect("not suspended");
    assert!(route_failures(&report, table.steered(), &table, &statuses).is_empty());
}
