//! The node proxy: accepts connections redirected by capture, resolves where each was going, and
//! dispatches it: per request for HTTP/1.1 ([`h1`]), per stream for HTTP/2 and gRPC ([`http`]),
//! opaquely for TLS and anything else ([`opaque`]). Every path reports through
//! [`ProxyShared::record`].
pub mod decision_log;
pub mod detect;
pub mod h1;
pub mod http;
pub mod key;
pub mod key_strip;
pub mod listen;
pub mod opaque;
pub mod orig_dst;
pub mod relay;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration, time::SystemTime};

use arc_swap::ArcSwap;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    routes::{ClientAffinity, ConnRoute, Decision, RouteTable, RoutingKey},
};
use decision_log::{DecisionLog, DecisionRecord};
use detect::Protocol;
pub use orig_dst::{ClientAddr, OrigDstAddr, OrigDstLookup, ServiceId};

/// Limits and timeouts of the proxy.
#[derive(Clone, Debug)]
pub struct ProxyLimits {
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
    pub limits: ProxyLimits,
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
    /// `sessionAffinity: ClientIP` bindings: they outlive connections and route tables.
    pub affinity: ClientAffinity,
}

/// What is known about one client connection, from accept on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub client: ClientAddr,
    pub original_dst: OrigDstAddr,
    /// The Service capture found the destination under (kept, not re-derived, for the decision).
    pub service: ServiceId,
    pub protocol: Protocol,
}

impl ConnInfo {
    /// The route table's view of this connection, before its first request.
    pub fn route(&self) -> ConnRoute {
        ConnRoute::new(self.original_dst, self.service, self.client.get().ip())
    }
}

/// How one request or connection left the proxy, beside its decision.
#[derive(Debug, Default)]
pub struct Exit {
    /// Method and path of an HTTP request; `None` for an opaque connection or a request whose
    /// headers never arrived.
    pub request: Option<(hyper::Method, Box<str>)>,
    pub key: Option<RoutingKey>,
    /// The status answered; `None` for an opaque connection.
    pub status: Option<u16>,
    /// From the request's arrival to its response headers; `None` when nothing was forwarded
    /// per request (an opaque connection, a 408).
    pub latency: Option<Duration>,
}

impl ProxyShared {
    /// The current route table snapshot (swapped atomically by route sync).
    pub fn table(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.table.load()
    }

    /// Where a request on the connection `conn` goes: the current table's decision, with the
    /// connection's baseline endpoint and the client's affinity (both kept across requests).
    pub fn decide(
        &self,
        conn: &mut ConnRoute,
        key: Option<&RoutingKey>,
        invalid_key: bool,
    ) -> Decision {
        self.table()
            .decide_on(conn, Some(&self.affinity), key, invalid_key)
    }

    /// The one exit of every request and connection: the request metric and the decision log
    /// entry come from the same decision, so they cannot disagree.
    pub fn record(&self, conn: &ConnInfo, decision: Decision, exit: Exit) {
        self.metrics
            .request(decision.kind, decision.reason, exit.latency);
        let (method, path) = exit.request.unzip();
        self.log.push(DecisionRecord {
            time: SystemTime::now(),
            client: conn.client,
            original_dst: conn.original_dst,
            protocol: conn.protocol.as_str(),
            method,
            path,
            service: decision.service,
            key: exit.key,
            decision: decision.kind,
            reason: decision.reason,
            route: decision.route,
            upstream: decision.upstream,
            status: exit.status,
            latency_us: exit.latency.map_or(0, |l| l.as_micros() as u64),
        });
    }
}

/// Serves one listener until shutdown, then stops accepting and waits for in-flight connections
/// for at most `grace`.
pub async fn serve(listener: TcpListener, shared: Arc<ProxyShared>, grace: Duration) {
    let permits = Arc::new(Semaphore::new(shared.limits.max_connections));
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

/// Resolves where the connection was going, detects its protocol and hands it to its path.
async fn handle(shared: &Arc<ProxyShared>, client: tokio::net::TcpStream, peer: SocketAddr) {
    let peer = ClientAddr::from_peer(peer);
    let Some((original_dst, service)) = shared.lookup.lookup(peer) else {
        // Never guess: an evicted entry means we do not know where this was going.
        shared.metrics.orig_dst_miss();
        tracing::warn!(%peer, "no original destination for this connection (evicted?); closing it");
        return;
    };
    let _ = client.set_nodelay(true);
    let protocol = detect::detect(&client, shared.limits.detect_timeout).await;
    let info = ConnInfo {
        client: peer,
        original_dst,
        service,
        protocol,
    };
    match protocol {
        Protocol::Http1 => h1::serve(shared.clone(), client, info).await,
        Protocol::H2c => http::serve(shared.clone(), client, info).await,
        Protocol::Tls | Protocol::Opaque => opaque::serve(shared, client, info).await,
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
