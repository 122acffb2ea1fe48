//! Prometheus metrics (prometheus-client), served on the admin endpoint's `/metrics`.
use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    capture::CaptureStats,
    routes::{DecisionKind, DecisionReason},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    reason: &'static str,
}

/// Why the proxy closed a connection it accepted without serving it (the `reason` label of
/// `shunt_proxy_connections_shed_total`).
pub mod shed {
    /// Its client already had `--max-client-connections` open: reset.
    pub const CLIENT_LIMIT: &str = "client_limit";
    /// The proxy was out of file descriptors: answered 503 (HTTP/1.x) or closed.
    pub const OUT_OF_FDS: &str = "out_of_fds";
}

/// The agent's own counters.
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    request_duration: Histogram,
    table_reloads: Counter,
    table_reload_errors: Counter,
    watchdog_trips: Counter,
    connections_accepted: Counter,
    orig_dst_misses: Counter,
    upstream_connect_errors: Counter,
    source_netns_fallbacks: Counter,
    steer_insert_failures: Counter,
    routes_not_applied: Gauge,
    node_status_write_errors: Counter,
    unready_agent_nodes: Gauge,
    connections_shed: Family<ShedLabels, Counter>,
    opaque_idle_closes: Counter,
    sandbox_response_timeouts: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them (and, if given, the capture programs' counters).
    pub fn register(registry: &mut Registry, capture: Option<Arc<CaptureStats>>) -> Arc<Self> {
        let m = Arc::new(Self {
            requests: Family::default(),
            // 50 µs .. ~26 s
            request_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 20)),
            table_reloads: Counter::default(),
            table_reload_errors: Counter::default(),
            watchdog_trips: Counter::default(),
            connections_accepted: Counter::default(),
            orig_dst_misses: Counter::default(),
            upstream_connect_errors: Counter::default(),
            source_netns_fallbacks: Counter::default(),
            steer_insert_failures: Counter::default(),
            routes_not_applied: Gauge::default(),
            node_status_write_errors: Counter::default(),
            unready_agent_nodes: Gauge::default(),
            connections_shed: Family::default(),
            opaque_idle_closes: Counter::default(),
            sandbox_response_timeouts: Counter::default(),
        });
        registry.register(
            "shunt_proxy_connections_shed",
            "Connections accepted and closed unserved, by reason (client_limit: reset, the \
             client was over --max-client-connections; out_of_fds: answered 503 or closed)",
            m.connections_shed.clone(),
        );
        registry.register(
            "shunt_proxy_opaque_idle_closes",
            "Opaque connections and upgraded tunnels closed after --opaque-idle-timeout idle",
            m.opaque_idle_closes.clone(),
        );
        registry.register(
            "shunt_proxy_sandbox_response_timeouts",
            "Sandbox-bound requests with no response headers within --response-header-timeout",
            m.sandbox_response_timeouts.clone(),
        );
        registry.register(
            "shunt_requests",
            "Requests (and opaque connections) by routing decision and reason",
            m.requests.clone(),
        );
        registry.register(
            "shunt_request_duration_seconds",
            "Time from a request's arrival at the proxy to its response headers",
            m.request_duration.clone(),
        );
        registry.register(
            "shunt_route_table_reloads",
            "Route tables applied",
            m.table_reloads.clone(),
        );
        registry.register(
            "shunt_route_table_reload_errors",
            "Route table updates rejected (the last good table was kept)",
            m.table_reload_errors.clone(),
        );
        registry.register(
            "shunt_watchdog_trips",
            "Times the watchdog found the proxy not accepting and cleared STEERED",
            m.watchdog_trips.clone(),
        );
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
            "shunt_source_netns_fallbacks",
            "Client connections (and upstream sockets) that left from the node's address because \
             the client pod's network namespace could not be entered",
            m.source_netns_fallbacks.clone(),
        );
        registry.register(
            "shunt_steer_insert_failures",
            "Destinations the kernel refused to add to STEERED (map full); they stay direct",
            m.steer_insert_failures.clone(),
        );
        registry.register(
            "shunt_routes_not_applied",
            "Routes this node could not apply (fully) at the last apply: reported in their \
             status.nodes[]",
            m.routes_not_applied.clone(),
        );
        registry.register(
            "shunt_node_status_write_errors",
            "Failed writes of this node's entry in a SandboxRoute's status.nodes[]",
            m.node_status_write_errors.clone(),
        );
        registry.register(
            "shunt_unready_agent_nodes",
            "Nodes whose agent pod is not Ready, as the status writer last saw them",
            m.unready_agent_nodes.clone(),
        );
        if let Some(stats) = capture {
            register_capture(registry, stats);
        }
        m
    }

    /// Metrics that no registry serves: for tools and tests that drive parts of the agent.
    pub fn unregistered() -> Arc<Self> {
        Self::register(&mut Registry::default(), None)
    }

    /// One routed request (or opaque connection), labelled by its decision.
    pub fn request(
        &self,
        kind: DecisionKind,
        reason: DecisionReason,
        latency: Option<std::time::Duration>,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                decision: kind.as_str(),
                reason: reason.as_str(),
            })
            .inc();
        if let Some(l) = latency {
            self.request_duration.observe(l.as_secs_f64());
        }
    }
    pub fn table_reloaded(&self) {
        self.table_reloads.inc();
    }
    pub fn table_reload_error(&self) {
        self.table_reload_errors.inc();
    }
    pub fn watchdog_tripped(&self) {
        self.watchdog_trips.inc();
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
    pub fn set_routes_not_applied(&self, n: usize) {
        self.routes_not_applied
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn node_status_write_failed(&self) {
        self.node_status_write_errors.inc();
    }

    pub fn set_unready_agent_nodes(&self, n: usize) {
        self.unready_agent_nodes
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn steer_insert_failed(&self, n: u64) {
        self.steer_insert_failures.inc_by(n);
    }
    /// An accepted connection closed unserved; `reason` is one of [`shed`]'s.
    pub fn connection_shed(&self, reason: &'static str) {
        self.connections_shed
            .get_or_create(&ShedLabels { reason })
            .inc();
    }
    pub fn opaque_idle_closed(&self) {
        self.opaque_idle_closes.inc();
    }
    pub fn sandbox_response_timeout(&self) {
        self.sandbox_response_timeouts.inc();
    }
    pub fn orig_dst_misses(&self) -> u64 {
        self.orig_dst_misses.get()
    }
    pub fn source_netns_fallback(&self) {
        self.source_netns_fallbacks.inc();
    }
    pub fn source_netns_fallbacks(&self) -> u64 {
        self.source_netns_fallbacks.get()
    }
}

/// Registers the capture programs' counters (they exist once capture is attached, after the
/// agent's own metrics).
pub fn register_capture(registry: &mut Registry, stats: Arc<CaptureStats>) {
    registry.register_collector(Box::new(CaptureCollector(stats)));
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
