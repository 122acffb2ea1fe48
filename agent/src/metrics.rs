//! Prometheus metrics (prometheus-client), served on the admin endpoint's `/metrics`.
use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::counter::{ConstCounter, Counter},
    registry::Registry,
};

use crate::capture::CaptureStats;

/// The agent's own counters.
#[derive(Default)]
pub struct Metrics {
    connections_accepted: Counter,
    orig_dst_misses: Counter,
    upstream_connect_errors: Counter,
    steer_insert_failures: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them (and, if given, the capture programs' counters).
    pub fn register(registry: &mut Registry, capture: Option<Arc<CaptureStats>>) -> Arc<Self> {
        let m = Arc::new(Self::default());
        registry.register(
            "shunt_proxy_connections_accepted",
            "Connections accepted by the node proxy",
            m.connections_accepted.clone(),
        );
        registry.register(
            "shunt_proxy_orig_dst_misses",
            "Accepted connections whose original destination was unknown (closed, never guessed)",
            m.orig_dst_misses.clone(),
        );
        registry.register(
            "shunt_proxy_upstream_connect_errors",
            "Upstream connects that failed or timed out",
            m.upstream_connect_errors.clone(),
        );
        registry.register(
            "shunt_steer_insert_failures",
            "Destinations the kernel refused to add to STEERED (map full); they stay direct",
            m.steer_insert_failures.clone(),
        );
        if let Some(stats) = capture {
            registry.register_collector(Box::new(CaptureCollector(stats)));
        }
        m
    }

    pub fn accepted(&self) {
        self.connections_accepted.inc();
    }
    pub fn orig_dst_miss(&self) {
        self.orig_dst_misses.inc();
    }
    pub fn upstream_connect_error(&self) {
        self.upstream_connect_errors.inc();
    }
    pub fn steer_insert_failed(&self, n: u64) {
        self.steer_insert_failures.inc_by(n);
    }
    pub fn orig_dst_misses(&self) -> u64 {
        self.orig_dst_misses.get()
    }
}

/// Reads the capture programs' per-CPU counters on each scrape.
struct CaptureCollector(Arc<CaptureStats>);

impl std::fmt::Debug for CaptureCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaptureCollector")
    }
}

impl Collector for CaptureCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "shunt_capture_events",
            "What the capture programs did, by event (from the STATS map)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (event, total) in self.0.totals() {
            let labels = [("event", event)];
            ConstCounter::new(total).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
