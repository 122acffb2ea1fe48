//! The node proxy: accepts connections redirected by capture, resolves where each was going, and
//! forwards it: per request for HTTP/1.1, HTTP/2 and gRPC, opaquely for TLS and anything else.
pub mod decision;
pub mod decision_log;
pub mod detect;
pub mod http;
pub mod key;
pub mod orig_dst;
pub mod relay;
pub mod router;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration, time::SystemTime};

use arc_swap::ArcSwap;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{metrics::Metrics, routes::RouteTable};
use decision::{DecisionKind, DecisionRecord, Reason};
use decision_log::DecisionLog;
use detect::Protocol;
pub use orig_dst::{OrigDstAddr, OrigDstLookup, ServiceId};

/// Limits and timeouts of the proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub connect_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub detect_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// State shared by every connection of the proxy.
pub struct ProxyShared {
    pub cfg: ProxyConfig,
    pub keys: key::KeyExtractor,
    pub table: Arc<ArcSwap<RouteTable>>,
    pub upstreams: upstream::Upstreams,
    pub log: Arc<DecisionLog>,
    pub metrics: Arc<Metrics>,
    pub lookup: Arc<dyn OrigDstLookup>,
    /// Cancelled on shutdown: stop accepting, finish in-flight requests.
    pub shutdown: CancellationToken,
    /// Bumped on every accept, for the watchdog.
    pub heartbeat: Arc<std::sync::atomic::AtomicU64>,
}

impl ProxyShared {
    /// The current route table snapshot (swapped atomically by route sync).
    pub fn router(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.table.load()
    }
}

/// Serves one listener until shutdown, then stops accepting and waits for in-flight connections
/// for at most `grace`.
pub async fn serve(listener: TcpListener, shared: Arc<ProxyShared>, grace: Duration) {
    let permits = Arc::new(Semaphore::new(shared.cfg.max_connections));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (client, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        shared
            .heartbeat
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared.metrics.accepted();
        let shared = shared.clone();
        conns.spawn(async move {
            handle(&shared, client, peer).await;
            drop(permit);
        });
        // Reap finished tasks so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::info!(
            remaining = conns.len(),
            "grace period over, closing connections"
        );
        conns.abort_all();
    }
}

async fn handle(shared: &Arc<ProxyShared>, client: tokio::net::TcpStream, peer: SocketAddr) {
    let peer = orig_dst::normalize(peer);
    let Some((OrigDstAddr(dst), _service)) = shared.lookup.lookup(peer) else {
        // Never guess: an evicted entry means we do not know where this was going.
        shared.metrics.orig_dst_miss();
        tracing::warn!(%peer, "no original destination for this connection (evicted?); closing it");
        return;
    };
    let _ = client.set_nodelay(true);
    let protocol = detect::detect(&client, shared.cfg.detect_timeout).await;
    let info = http::ConnInfo {
        client: peer,
        original_dst: dst,
        protocol,
    };
    match protocol {
        Protocol::Http1 | Protocol::H2c => http::serve(shared.clone(), client, info).await,
        Protocol::Tls | Protocol::Opaque => opaque(shared, client, info).await,
    }
}

/// TLS and unknown bytes: no key can be read, so the connection goes to baseline.
async fn opaque(shared: &ProxyShared, client: tokio::net::TcpStream, info: http::ConnInfo) {
    let started = std::time::Instant::now();
    let d = shared.router().decide(info.original_dst, None, false);
    let upstream = d.upstream.unwrap_or(info.original_dst);
    shared.metrics.request(
        DecisionKind::Baseline,
        Reason::OpaqueProtocol.as_str(),
        None,
    );
    shared.log.push(DecisionRecord {
        time: SystemTime::now(),
        client: info.client,
        original_dst: info.original_dst,
        protocol: info.protocol.as_str(),
        method: None,
        path: None,
        service: d.service.clone(),
        key: None,
        decision: if d.kind == DecisionKind::Passthrough {
            d.kind
        } else {
            DecisionKind::Baseline
        },
        reason: Reason::OpaqueProtocol,
        route: None,
        upstream: Some(upstream),
        status: None,
        latency_us: 0,
    });
    let up = match relay::connect(upstream, shared.cfg.connect_timeout).await {
        Ok(u) => u,
        Err(e) => {
            shared.metrics.upstream_connect_error();
            tracing::debug!(client = %info.client, %upstream, error = %e, "upstream connect failed");
            return;
        }
    };
    // Opaque streams have no request boundary to drain at: on shutdown they get the grace
    // period, then are closed.
    match relay::relay(client, up).await {
        Ok((a, b)) => {
            tracing::trace!(%upstream, up = a, down = b, elapsed = ?started.elapsed(), "opaque relay done")
        }
        Err(e) => tracing::debug!(%upstream, error = %e, "opaque relay ended with an error"),
    }
}
