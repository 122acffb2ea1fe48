//! The node proxy: accepts connections redirected by capture, resolves where each was going, and
//! dispatches it: per request for HTTP/1.1 ([`h1`]), per stream for HTTP/2 and gRPC ([`http`]),
//! opaquely for TLS and anything else ([`opaque`]). Every path reports through
//! [`ProxyShared::record`].
pub mod admission;
pub mod buffer_budget;
pub mod decision_log;
pub mod detect;
pub mod h1;
pub mod h2c;
pub mod key;
pub mod key_inject;
pub mod key_strip;
pub mod listen;
pub mod opaque;
pub mod orig_dst;
pub mod relay;
pub mod self_probe;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration, time::SystemTime};

use arc_swap::ArcSwap;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{Metrics, shed as metrics_shed},
    routes::{AppliedSources, ClientAffinity, ConnRoute, Decision, RouteTable, RoutingKey},
};
use decision_log::{DecisionLog, DecisionRecord};
use detect::Protocol;
pub use orig_dst::{
    CapturedOrigDst, ClientAddr, OrigDstAddr, OrigDstLookup, Redirected, ServiceId,
};

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
    /// Connections one client address may hold open (tunnels included).
    pub max_client_connections: usize,
    /// An opaque connection or upgraded tunnel with no byte either way for this long is closed.
    pub opaque_idle_timeout: Duration,
    /// Time a sandbox has to send response headers before the route's fallback applies.
    pub response_header_timeout: Duration,
    /// HTTP/2 streams a client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Largest request body kept to send again to a sandbox-bound request's fallback.
    pub max_request_buffer: usize,
    /// What one client connection's in-flight sandbox-bound requests may hold.
    pub max_connection_buffer: usize,
}

impl Default for ProxyLimits {
    /// The defaults of `shunt run`'s flags.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            detect_timeout: Duration::from_millis(500),
            max_connections: 16_384,
            max_header_bytes: 65_536,
            max_headers: 128,
            max_client_connections: 1024,
            opaque_idle_timeout: Duration::from_secs(3600),
            response_header_timeout: Duration::from_secs(30),
            max_concurrent_streams: 200,
            max_request_buffer: buffer_budget::DEFAULT_REQUEST_BUFFER,
            max_connection_buffer: buffer_budget::DEFAULT_CONNECTION_BUFFER,
        }
    }
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
    /// The marked sources route sync applied, for the decision log's `source`.
    pub sources: Arc<ArcSwap<AppliedSources>>,
    /// Cancelled on shutdown: stop accepting, finish in-flight requests.
    pub shutdown: CancellationToken,
    /// Bumped on every accept, for the watchdog.
    pub heartbeat: Arc<std::sync::atomic::AtomicU64>,
    /// `sessionAffinity: ClientIP` bindings: they outlive connections and route tables.
    pub affinity: ClientAffinity,
    /// What all in-flight sandbox-bound requests may hold (`--max-buffered-bytes`).
    pub buffers: Arc<buffer_budget::ByteBudget>,
    /// The liveness self-probe's responder: its connections are neither counted nor logged.
    pub self_probe: Option<SocketAddr>,
}

/// What is known about one client connection, from accept on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub client: ClientAddr,
    pub original_dst: OrigDstAddr,
    /// The Service capture found the destination under (kept, not re-derived, for the decision).
    pub service: ServiceId,
    pub protocol: Protocol,
    /// Where its upstream connections leave from (the client pod's namespace: source identity).
    pub source: crate::netns::UpstreamSource,
    /// The marked source the connection came from: its requests without a key get its key.
    pub marked: Option<key_inject::MarkedConn>,
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
    /// `key` was added by the proxy ([`key_inject`]), not sent by the client.
    pub key_injected: bool,
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
        if Some(conn.original_dst.0) == self.self_probe {
            return;
        }
        self.metrics
            .request(decision.kind, decision.reason, exit.latency);
        let (method, path) = exit.request.unzip();
        // Who the key came from, for an injected one.
        let marked_source = exit
            .key_injected
            .then_some(conn.marked)
            .flatten()
            .and_then(|m| {
                let sources = self.sources.load();
                sources
                    .get(m.cgroup_id)
                    .map(|s| Arc::<str>::from(s.origin.as_str()))
            });
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
            source: conn.source,
            status: exit.status,
            latency_us: exit.latency.map_or(0, |l| l.as_micros() as u64),
            key_injected: exit.key_injected,
            marked_source,
        });
    }
}

/// Serves one listener until shutdown, then stops accepting and waits for in-flight connections
/// for at most `grace`.
///
/// Admission, in order:
/// - The connection cap (`--max-connections`): at the cap the loop stops accepting, so new
///   clients wait in the kernel's accept queue rather than being reset. Resetting them would
///   lose connections that fail-open can still serve: the watchdog sees the stalled queue within
///   one interval and empties `STEERED`, so newer connections go direct, and the queued ones are
///   served as soon as a slot frees. Slots free up: opaque connections and tunnels idle out
///   (`--opaque-idle-timeout`), and no client may hold more than its share.
/// - The client's share (`--max-client-connections`), checked after `accept` (the peer is
///   known only then): over it, the connection is reset and counted. One pod's idle or
///   tunnelled connections cannot fill the cap, so they can neither starve other clients nor
///   make the watchdog switch steering off for the whole node.
/// - File descriptors: on EMFILE the reserve descriptor is given up to take the waiting
///   connection, which is answered and closed ([`shed`]), then the reserve is taken again.
pub async fn serve(listener: TcpListener, shared: Arc<ProxyShared>, grace: Duration) {
    let permits = Arc::new(Semaphore::new(shared.limits.max_connections));
    let clients = admission::ClientSlots::new(shared.limits.max_client_connections);
    let mut reserve = admission::FdReserve::new();
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
                Err(e) if admission::out_of_fds(&e) => {
                    shed_one(&listener, &shared, &mut reserve).await;
                    continue;
                }
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
        let canonical = ClientAddr::from_peer(peer);
        let Some(slot) = clients.admit(canonical.get().ip()) else {
            shared.metrics.connection_shed(metrics_shed::CLIENT_LIMIT);
            tracing::debug!(client = %canonical, "over --max-client-connections: reset");
            // Its original destination is of no further use.
            let _ = shared.lookup.lookup(canonical);
            admission::reset(client);
            continue;
        };
        let shared = shared.clone();
        conns.spawn(async move {
            handle(&shared, client, peer).await;
            drop(slot);
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

/// Out of file descriptors: gives up the reserve descriptor to take one waiting connection,
/// answers it ([`shed`]) and takes the reserve again. With no reserve to give (the descriptors
/// are still all taken), backs off for a moment: never a busy loop.
async fn shed_one(
    listener: &TcpListener,
    shared: &ProxyShared,
    reserve: &mut admission::FdReserve,
) {
    if !reserve.release() {
        tracing::debug!("out of file descriptors, and no reserve to give");
        reserve.rearm();
        tokio::time::sleep(Duration::from_millis(10)).await;
        return;
    }
    let accepted = tokio::time::timeout(Duration::from_millis(10), listener.accept()).await;
    if let Ok(Err(e)) = &accepted {
        tracing::debug!(error = %e, "out of file descriptors: accept failed with the reserve given");
    }
    if let Ok(Ok((client, peer))) = accepted {
        shared
            .heartbeat
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared.metrics.connection_shed(metrics_shed::OUT_OF_FDS);
        let peer = ClientAddr::from_peer(peer);
        let _ = shared.lookup.lookup(peer);
        tracing::warn!(client = %peer, "out of file descriptors: connection answered and closed");
        shed(client).await;
    }
    if !reserve.rearm() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Answers a connection the proxy has no descriptor to serve. An HTTP/1.x client (its request
/// line already here, or within 50 ms) gets a 503 naming the cause; anything else is closed at
/// once: without detection there is no telling what a 503 would mean to it (TLS, a database
/// protocol), and a close is what such a client handles as "try again".
async fn shed(client: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    let mut buf = [0u8; 24];
    let protocol = tokio::time::timeout(Duration::from_millis(50), async {
        loop {
            match client.peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    if let Some(p) = detect::classify(&buf[..n]) {
                        return Some(p);
                    }
                    if n == buf.len() {
                        return None;
                    }
                    // Wait for more bytes without spinning on the same ones.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    })
    .await
    .ok()
    .flatten();
    let mut client = client;
    if protocol == Some(Protocol::Http1) {
        // Read what the client sent, so closing does not turn into a reset that destroys the
        // answer before the client reads it.
        let mut sink = [0u8; 4096];
        while let Ok(1..) = client.try_read(&mut sink) {}
        let _ = client
            .write_all(&h1::head::local_response(
                503,
                "shunt: the node proxy is out of file descriptors; try again\n",
                true,
                false,
            ))
            .await;
        let _ = client.shutdown().await;
        return;
    }
    admission::reset(client);
}

/// Resolves where the connection was going, detects its protocol and hands it to its path.
async fn handle(shared: &Arc<ProxyShared>, client: tokio::net::TcpStream, peer: SocketAddr) {
    let peer = ClientAddr::from_peer(peer);
    let Some(redirected) = shared.lookup.lookup(peer) else {
        // Never guess: an evicted entry means we do not know where this was going.
        shared.metrics.orig_dst_miss();
        tracing::warn!(%peer, "no original destination for this connection (evicted?); closing it");
        return;
    };
    let _ = client.set_nodelay(true);
    let mut info = ConnInfo {
        client: peer,
        original_dst: redirected.dst,
        service: redirected.service,
        protocol: Protocol::Opaque,
        marked: redirected
            .source
            .as_deref()
            .map(key_inject::MarkedConn::new),
        source: shared.upstreams.source_for(peer.get().ip()),
    };
    if key_inject::relay_unknown_opaquely(shared, &info) {
        return opaque::serve(shared, client, info).await;
    }
    let protocol = detect::detect(&client, shared.limits.detect_timeout).await;
    info.protocol = protocol;
    match protocol {
        Protocol::Http1 => h1::serve(shared.clone(), client, info).await,
        Protocol::H2c => h2c::serve(shared.clone(), client, info).await,
        Protocol::Tls | Protocol::Opaque => opaque::serve(shared, client, info).await,
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
