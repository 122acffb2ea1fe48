//! The self-probe against the real proxy accept loop on loopback.
use std::collections::HashMap;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    metrics::Metrics,
    proxy::{
        ProxyLimits, ProxyShared, buffer_budget::ByteBudget, decision_log::DecisionLog, key,
        upstream,
    },
    routes::RouteTable,
};

fn shared(lookup: Arc<dyn OrigDstLookup>, responder: SocketAddr) -> Arc<ProxyShared> {
    Arc::new(ProxyShared {
        limits: ProxyLimits::default(),
        keys: key::KeyExtractor::default(),
        table: Arc::new(ArcSwap::from_pointee(RouteTable::default())),
        upstreams: upstream::Upstreams::new(Duration::from_secs(1), Duration::from_secs(5)),
        log: Arc::new(DecisionLog::new(64 * 1024)),
        metrics: Metrics::unregistered(),
        lookup,
        sources: Arc::default(),
        shutdown: CancellationToken::new(),
        heartbeat: Arc::default(),
        affinity: Default::default(),
        buffers: ByteBudget::new(1 << 20),
        self_probe: Some(responder),
    })
}

#[test]
fn the_probe_goes_through_the_proxy_to_the_responder_and_is_not_logged() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let probe = SelfProbe::start(&[addr]).unwrap();
    let lookup = Arc::new(ProbeAwareLookup {
        probe: probe.clone(),
        inner: Arc::new(HashMap::<ClientAddr, (OrigDstAddr, ServiceId)>::new()),
    });
    let shared = shared(lookup, probe.responder());
    let proxy = shared.clone();
    let _guard = rt.enter();
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    let served = rt.spawn(crate::proxy::serve(listener, proxy, Duration::from_secs(1)));
    let p = probe.clone();
    let result = rt.block_on(tokio::task::spawn_blocking(move || {
        p.probe(Duration::from_secs(5))
    }));
    result
        .unwrap()
        .expect("the probe is answered through the proxy");
    assert_eq!(shared.heartbeat.load(Ordering::Relaxed), 1, "accepted once");
    assert!(
        shared.log.query(None, None).is_empty(),
        "the probe's decisions are not logged"
    );
    shared.shutdown.cancel();
    rt.block_on(served).unwrap();
}

#[test]
fn the_probe_fails_when_nothing_accepts() {
    // A listener whose connections are never accepted: a wedged proxy.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let probe = SelfProbe::start(&[listener.local_addr().unwrap()]).unwrap();
    let started = Instant::now();
    let err = probe
        .probe(Duration::from_millis(300))
        .expect_err("nothing serves");
    assert!(matches!(err, ProbeError::Exchange { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Its registration is gone: a later connection from that address is not the probe's.
    assert_eq!(probe.pending_count.load(Ordering::Relaxed), 0);
}

#[test]
fn only_registered_addresses_are_the_probes() {
    let probe = SelfProbe::start(&["127.0.0.1:1".parse().unwrap()]).unwrap();
    let client = ClientAddr::from_peer("127.0.0.1:40000".parse().unwrap());
    assert_eq!(probe.take(client), None);
    let registered = Registered::new(&probe, client);
    assert_eq!(probe.take(client), Some(OrigDstAddr(probe.responder())));
    // Taken once: a second connection from the same address is not the probe's.
    assert_eq!(probe.take(client), None);
    drop(registered);
}
