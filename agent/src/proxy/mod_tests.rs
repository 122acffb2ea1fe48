//! Tests of [`ProxyShared::record`]: the metric and the log come from one decision.
use std::collections::HashMap;

use prometheus_client::registry::Registry;

use super::*;
use crate::routes::{DecisionKind, DecisionReason};

fn shared(registry: &mut Registry) -> ProxyShared {
    ProxyShared {
        limits: ProxyLimits {
            connect_timeout: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            detect_timeout: Duration::from_secs(1),
            max_connections: 1,
            max_header_bytes: 1024,
            max_headers: 10,
            ..ProxyLimits::default()
        },
        keys: key::KeyExtractor::default(),
        table: Arc::new(ArcSwap::from_pointee(RouteTable::default())),
        upstreams: upstream::Upstreams::new(Duration::from_secs(1), Duration::from_secs(1)),
        log: Arc::new(DecisionLog::new(64 * 1024)),
        metrics: Metrics::register(registry, None),
        lookup: Arc::new(HashMap::<ClientAddr, (OrigDstAddr, ServiceId)>::new()),
        sources: Arc::default(),
        shutdown: CancellationToken::new(),
        heartbeat: Arc::default(),
        affinity: Default::default(),
        buffers: buffer_budget::ByteBudget::new(1 << 20),
        self_probe: None,
    }
}

fn metrics_text(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
    out
}

#[test]
fn an_opaque_connection_is_counted_and_logged_alike() {
    let mut registry = Registry::default();
    let shared = shared(&mut registry);
    let conn = ConnInfo {
        client: ClientAddr::from_peer("[::ffff:10.0.0.1]:4000".parse().expect("addr")),
        original_dst: OrigDstAddr("10.9.9.9:443".parse().expect("addr")),
        service: ServiceId::NONE,
        protocol: Protocol::Tls,
        source: Default::default(),
        marked: None,
    };
    let decision = Decision {
        reason: DecisionReason::OpaqueProtocol,
        ..shared
            .table()
            .decide(conn.original_dst, conn.service, None, false)
    };
    shared.record(&conn, decision, Exit::default());

    let logged = shared.log.query(None, None);
    assert_eq!(logged.len(), 1);
    assert_eq!(
        (logged[0].decision, logged[0].reason),
        (DecisionKind::Passthrough, DecisionReason::OpaqueProtocol)
    );
    assert_eq!(logged[0].client.to_string(), "10.0.0.1:4000");
    assert!(
        metrics_text(&registry)
            .contains(r#"shunt_requests_total{decision="passthrough",reason="opaque_protocol"} 1"#),
        "{}",
        metrics_text(&registry)
    );
}

#[test]
fn a_header_read_timeout_keeps_its_metric_label() {
    let mut registry = Registry::default();
    let shared = shared(&mut registry);
    let conn = ConnInfo {
        client: ClientAddr::from_peer("10.0.0.1:4000".parse().expect("addr")),
        original_dst: OrigDstAddr("10.96.0.7:80".parse().expect("addr")),
        service: ServiceId(7),
        protocol: Protocol::Http1,
        source: Default::default(),
        marked: None,
    };
    let exit = Exit {
        status: Some(408),
        ..Exit::default()
    };
    shared.record(
        &conn,
        Decision::reject(DecisionReason::HeaderReadTimeout, None),
        exit,
    );
    assert!(
        metrics_text(&registry)
            .contains(r#"shunt_requests_total{decision="reject",reason="header_read_timeout"} 1"#)
    );
    let logged = shared.log.query(None, None);
    assert_eq!(logged[0].status, Some(408));
    assert_eq!(
        serde_json::to_value(&logged[0]).expect("json")["reason"],
        "header_read_timeout"
    );
}
