//! Tests of the sync loop: sources in, table swaps and steered-set diffs out.
use std::sync::Mutex;

use super::*;
use crate::{
    capture::MapError,
    routes::{RoutingKey, file::parse_routes, service_id},
    sync::steering::SteeredStore,
};

/// What the stand-in map holds, and the operations made on it since the last look.
type Recorded = (BTreeMap<SocketAddr, u32>, Vec<String>);

/// A kernel map stand-in that records every write.
#[derive(Clone, Default)]
struct RecordingMap(Arc<Mutex<Recorded>>);

impl SteeredStore for RecordingMap {
    fn steer(&mut self, dst: SocketAddr, id: u32) -> Result<(), MapError> {
        let mut g = self.0.lock().expect("lock");
        g.0.insert(dst, id);
        g.1.push(format!("+{dst}"));
        Ok(())
    }
    fn unsteer(&mut self, dst: SocketAddr) -> Result<(), MapError> {
        let mut g = self.0.lock().expect("lock");
        g.0.remove(&dst);
        g.1.push(format!("-{dst}"));
        Ok(())
    }
    fn entries(&self) -> Vec<(SocketAddr, u32)> {
        let mut g = self.0.lock().expect("lock");
        g.1.push("walk".into());
        g.0.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

impl RecordingMap {
    fn ops(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().expect("lock").1)
    }
    fn keys(&self) -> Vec<SocketAddr> {
        self.0.lock().expect("lock").0.keys().copied().collect()
    }
}

/// One service steered with no kube-proxy (`alwaysSteer`), and a route for key `k1` that
/// expires at `expires` (if any).
fn cluster(addr: &str, expires: Option<jiff::Timestamp>) -> Arc<ClusterState> {
    let expires = expires.map_or(String::new(), |t| format!(", expiresAt: \"{t}\""));
    let yaml = format!(
        r#"
services:
  - {{ name: reviews, namespace: shop, addresses: [{addr}], alwaysSteer: true,
      ports: [{{ name: http, port: 9080, targetPort: 9080 }}],
      endpoints: [{{ ip: 198.18.2.2 }}] }}
pods:
  - {{ name: reviews-v2, namespace: shop, ips: [198.18.3.2], ports: {{ http: 9080 }},
      labels: {{ app: reviews-v2, shunt.dev/sandbox: k1 }} }}
routes:
  - name: r1
    namespace: shop
    spec: {{ routingKey: k1{expires},
            forks: [ {{ service: reviews, to: {{ selector: {{ app: reviews-v2, shunt.dev/sandbox: k1 }} }} }} ] }}
"#
    );
    Arc::new(parse_routes(&yaml, "test.yaml").expect("valid routes"))
}

struct Harness {
    table: Arc<ArcSwap<RouteTable>>,
    map: RecordingMap,
    states: watch::Sender<Arc<ClusterState>>,
    relists: watch::Sender<u64>,
    out: RouteSyncOutputs,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(initial: Arc<ClusterState>, debounce: Duration) -> Harness {
    let map = RecordingMap::default();
    let table = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
    let (sync, out) = RouteSync::new(RouteSyncConfig {
        table: table.clone(),
        steering: Arc::new(Steering::new(map.clone())),
        metrics: Metrics::unregistered(),
        always_steered: vec!["10.0.0.9:80".parse().expect("addr")],
        debounce,
        reconcile_interval: Duration::from_secs(3600),
    });
    let (states, mut rx) = watch::channel(initial);
    rx.mark_changed();
    let (relists, relists_rx) = watch::channel(0);
    let stop = CancellationToken::new();
    let task = tokio::spawn(sync.run(
        SourceFeed {
            name: "test",
            states: rx,
            relists: Some(relists_rx),
        },
        stop.clone(),
    ));
    Harness {
        table,
        map,
        states,
        relists,
        out,
        stop,
        task,
    }
}

impl Harness {
    async fn applied(&mut self, n: u64) {
        tokio::time::timeout(
            Duration::from_secs(5),
            self.out.applied.wait_for(|a| *a >= n),
        )
        .await
        .expect("applied in time")
        .expect("sync alive");
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("sync stops")
            .expect("no panic");
    }
}

fn key(k: &str) -> RoutingKey {
    RoutingKey::parse(k).expect("key")
}

#[tokio::test]
async fn first_view_is_applied_with_a_reconcile_then_changes_as_diffs() {
    let mut h = start(cluster("10.96.0.7", None), Duration::from_millis(20));
    h.applied(1).await;
    // The first apply walks the map (a reconcile), then writes what is wanted.
    let ops = h.map.ops();
    assert_eq!(ops[0], "walk", "{ops:?}");
    assert!(ops.contains(&"+10.96.0.7:9080".to_string()), "{ops:?}");
    assert!(
        ops.contains(&"+10.0.0.9:80".to_string()),
        "--steer: {ops:?}"
    );
    assert!(
        h.table
            .load()
            .fork(service_id("shop", "reviews"), &key("k1"))
            .is_some(),
        "the proxy's table was swapped"
    );
    // The service moves to another address: one add, one remove, no walk.
    h.states.send(cluster("10.96.0.8", None)).expect("send");
    h.applied(2).await;
    assert_eq!(h.map.ops(), ["-10.96.0.7:9080", "+10.96.0.8:9080"]);
    assert_eq!(h.out.statuses.borrow().len(), 1, "statuses published");
    h.stop().await;
}

#[tokio::test]
async fn a_burst_of_changes_costs_one_apply_after_a_quiet_period() {
    let mut h = start(cluster("10.96.0.7", None), Duration::from_millis(200));
    h.applied(1).await;
    h.map.ops();
    let t0 = tokio::time::Instant::now();
    for i in 0..5 {
        h.states
            .send(cluster(&format!("10.96.1.{i}"), None))
            .expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.applied(2).await;
    // Quiet for 200 ms after the last of five changes 50 ms apart.
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*h.out.applied.borrow(), 2, "one apply for the whole burst");
    assert_eq!(h.map.ops(), ["-10.96.0.7:9080", "+10.96.1.4:9080"]);
    h.stop().await;
}

#[tokio::test]
async fn a_lone_change_after_a_quiet_period_skips_the_debounce_and_a_burst_still_coalesces() {
    let mut h = start(cluster("10.96.0.7", None), Duration::from_millis(300));
    h.applied(1).await;
    // Quiet for longer than the debounce.
    tokio::time::sleep(Duration::from_millis(400)).await;
    h.map.ops();
    let t0 = tokio::time::Instant::now();
    h.states.send(cluster("10.96.3.0", None)).expect("send");
    h.applied(2).await;
    assert!(
        t0.elapsed() < Duration::from_millis(150),
        "a lone change does not wait out the 300 ms debounce: {:?}",
        t0.elapsed()
    );
    assert_eq!(h.map.ops(), ["-10.96.0.7:9080", "+10.96.3.0:9080"]);
    // Quiet again, then a burst: its first change goes at once, the other four coalesce into
    // one apply after the quiet period.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t1 = tokio::time::Instant::now();
    for i in 1..=5 {
        h.states
            .send(cluster(&format!("10.96.3.{i}"), None))
            .expect("send");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    h.applied(4).await;
    assert!(
        t1.elapsed() >= Duration::from_millis(120 + 300),
        "the burst's tail waited for the quiet period: {:?}",
        t1.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        *h.out.applied.borrow(),
        4,
        "two applies for a burst of five"
    );
    let keys = h.map.keys();
    assert!(
        keys.contains(&"10.96.3.5:9080".parse().expect("addr")),
        "{keys:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_source_that_never_goes_quiet_is_still_applied() {
    let mut h = start(cluster("10.96.0.7", None), Duration::from_millis(50));
    h.applied(1).await;
    let t0 = tokio::time::Instant::now();
    let sender = h.states.clone();
    let churn = tokio::spawn(async move {
        for i in 0..100u32 {
            let _ = sender.send(cluster(&format!("10.96.2.{}", i % 200), None));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    h.applied(2).await;
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "applied within the cap of ten quiet periods: {:?}",
        t0.elapsed()
    );
    churn.abort();
    h.stop().await;
}

#[tokio::test]
async fn a_route_is_dropped_at_its_expiry_without_any_change() {
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(300);
    let mut h = start(
        cluster("10.96.0.7", Some(expires)),
        Duration::from_millis(20),
    );
    h.applied(1).await;
    let id = service_id("shop", "reviews");
    assert!(h.table.load().fork(id, &key("k1")).is_some());
    h.applied(2).await;
    assert!(
        jiff::Timestamp::now() >= expires,
        "woke at the expiry, not before"
    );
    assert!(
        h.table.load().fork(id, &key("k1")).is_none(),
        "expired route gone"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_relist_reconciles_against_the_kernel_map() {
    let mut h = start(cluster("10.96.0.7", None), Duration::from_millis(20));
    h.applied(1).await;
    // Someone removed an entry behind our back: only a reconcile notices.
    h.map.0.lock().expect("lock").0.clear();
    h.map.ops();
    h.relists.send(1).expect("send");
    h.applied(2).await;
    assert_eq!(h.map.ops()[0], "walk");
    let keys = h.map.keys();
    assert!(
        keys.contains(&"10.96.0.7:9080".parse().expect("addr")),
        "{keys:?}"
    );
    h.stop().await;
}
