//! Upstream connections, pooled per destination: one HTTP/2 connection per upstream address for
//! h2c (its streams multiplexed), and the idle connections of the HTTP/1.1 path
//! ([`super::h1::pool`]). Their sockets come from the agent's own cgroup, which the capture
//! programs exempt, so forwarding never loops back into the proxy. They are made in the client
//! pod's network namespace ([`crate::netns`]), so a connection carries one pod's address and
//! both pools are keyed by (source namespace, upstream address).
//!
//! The h2 pool is keyed by the upstream's address, not by the request's URI: a request goes on
//! with the `:scheme`, `:authority` and `:path` the client sent (authority-based virtual hosting
//! and authorization upstream see what they would see without the proxy).
use std::{
    collections::HashMap,
    future::poll_fn,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use hyper::Request;
use tokio::net::TcpStream;

use crate::netns::{NetnsId, NodeSockets, SourceSockets, UpstreamSource};

/// The HTTP/2 (prior knowledge) pool and the HTTP/1.1 pool; both pool by upstream address and
/// source namespace.
#[derive(Clone)]
pub struct Upstreams {
    http2: Arc<H2Pool>,
    pub h1: Arc<super::h1::pool::Pool>,
    sources: Arc<dyn SourceSockets>,
}

/// Why forwarding failed. The message names the upstream; the cause is the source (see
/// [`error_chain`] to print both).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: the request was not sent and may be retried elsewhere.
    #[error("connecting to {upstream}")]
    Connect {
        upstream: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The connection was made but HTTP/2 could not start on it: the request was not sent.
    #[error("starting HTTP/2 with {upstream}")]
    Handshake {
        upstream: SocketAddr,
        #[source]
        source: h2::Error,
    },
    /// The upstream failed after the request was (maybe) sent.
    #[error("upstream {upstream}")]
    Request {
        upstream: SocketAddr,
        #[source]
        source: h2::Error,
    },
}

impl UpstreamError {
    /// The request never left the proxy, so it may be sent elsewhere.
    pub fn not_sent(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Handshake { .. })
    }
}

/// An h2c request on its way upstream: its response to come, and its body's stream (closed
/// already when the request was sent with END_STREAM).
pub type Opened = (ResponseFuture, h2::SendStream<Bytes>);

impl Upstreams {
    /// Upstreams connected from the node's network namespace.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self::with_sources(connect_timeout, idle_timeout, Arc::new(NodeSockets))
    }

    /// Upstreams connected from wherever `sources` says each client's connections leave from.
    pub fn with_sources(
        connect_timeout: Duration,
        idle_timeout: Duration,
        sources: Arc<dyn SourceSockets>,
    ) -> Self {
        Self {
            http2: Arc::new(H2Pool {
                conns: Mutex::new(HashMap::new()),
                connect_timeout,
                idle_timeout,
                sources: sources.clone(),
            }),
            h1: Arc::new(super::h1::pool::Pool::new(
                connect_timeout,
                idle_timeout,
                sources.clone(),
            )),
            sources,
        }
    }

    /// Where the upstream connections of the client at `client` leave from (once per accepted
    /// connection).
    pub fn source_for(&self, client: std::net::IpAddr) -> UpstreamSource {
        self.sources.source_for(client)
    }

    /// A new connection to `dst` from `source`, for a path that relays bytes.
    pub async fn connect(&self, source: UpstreamSource, dst: SocketAddr) -> io::Result<TcpStream> {
        super::relay::connect_from(&*self.sources, source, dst, self.http2.connect_timeout)
            .await
            .map(|(s, _)| s)
    }

    /// Opens an h2c stream to `upstream` from `source` with the request head `head` (its URI:
    /// scheme, authority, path, as the client sent it); `eos` when the request has no body.
    /// The caller sends the body on the returned stream.
    pub async fn send(
        &self,
        source: UpstreamSource,
        upstream: SocketAddr,
        head: Request<()>,
        eos: bool,
    ) -> Result<Opened, UpstreamError> {
        let key = (source.netns(), upstream);
        // Connecting is boxed: it is rare, and its future (connect, handshake) would otherwise
        // be part of every request's future, which is moved into place once per request.
        let pooled = match self.http2.checkout(key) {
            // A pooled connection that failed (or was told to go away) takes no new stream: the
            // request has not left, so it goes on a new connection.
            Some(mut pooled) => match poll_fn(|cx| pooled.sender.poll_ready(cx)).await {
                Ok(()) => Some(pooled.sender),
                Err(_) => {
                    self.http2.forget(key, pooled.id);
                    None
                }
            },
            None => None,
        };
        let mut sender = match pooled {
            Some(sender) => sender,
            None => Box::pin(H2Pool::connect(&self.http2, source, upstream)).await?,
        };
        sender
            .send_request(head, eos)
            .map_err(|source| UpstreamError::Request { upstream, source })
    }
}

/// What an h2 connection is shared for: one upstream, from one namespace.
type PoolKey = (Option<NetnsId>, SocketAddr);

/// One HTTP/2 connection per upstream address and source namespace; a connection unused for the
/// idle timeout is let go (it closes once its last stream ends).
struct H2Pool {
    conns: Mutex<HashMap<PoolKey, Pooled>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    sources: Arc<dyn SourceSockets>,
}

struct Pooled {
    sender: SendRequest<Bytes>,
    /// Tells this connection from a later one to the same address.
    id: u64,
    last_used: Instant,
    /// Set when the connection's task ends.
    closed: Arc<AtomicBool>,
}

impl Pooled {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The settings hyper's HTTP/2 client used here before (its defaults): windows large enough
/// that a 64 KiB body is not held up waiting for WINDOW_UPDATEs.
fn client_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_header_list_size(16 * 1024)
        .initial_max_send_streams(100)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false);
    b
}

impl H2Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Pooled>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open connection to `addr`, if any.
    fn checkout(&self, addr: PoolKey) -> Option<Pooled> {
        let mut conns = self.lock();
        let pooled = conns.get_mut(&addr)?;
        let now = Instant::now();
        if pooled.is_closed() || now.duration_since(pooled.last_used) >= self.idle_timeout {
            conns.remove(&addr);
            return None;
        }
        pooled.last_used = now;
        Some(Pooled {
            sender: pooled.sender.clone(),
            id: pooled.id,
            last_used: now,
            closed: pooled.closed.clone(),
        })
    }

    fn forget(&self, addr: PoolKey, id: u64) {
        let mut conns = self.lock();
        if conns.get(&addr).is_some_and(|p| p.id == id) {
            conns.remove(&addr);
        }
    }

    /// A new connection to `upstream` from `from`, pooled for the requests that follow; ready
    /// for a stream.
    async fn connect(
        pool: &Arc<Self>,
        from: UpstreamSource,
        upstream: SocketAddr,
    ) -> Result<SendRequest<Bytes>, UpstreamError> {
        let (stream, made_from) =
            super::relay::connect_from(&*pool.sources, from, upstream, pool.connect_timeout)
                .await
                .map_err(|source| UpstreamError::Connect { upstream, source })?;
        let (sender, conn) = client_builder()
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|source| UpstreamError::Handshake { upstream, source })?;
        let closed = Arc::new(AtomicBool::new(false));
        {
            let closed = closed.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%upstream, error = %e, "upstream h2 connection ended with an error");
                }
                closed.store(true, Ordering::Release);
            });
        }
        let sender = sender
            .ready()
            .await
            .map_err(|source| UpstreamError::Handshake { upstream, source })?;
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // Pooled for the namespace it was made in: one that fell back to the node is shared
        // with the node's connections, not handed to the pod's next request as the pod's.
        let key = (made_from.netns(), upstream);
        pool.lock().insert(
            key,
            Pooled {
                sender: sender.clone(),
                id,
                last_used: Instant::now(),
                closed,
            },
        );
        tokio::spawn(let_go_when_idle(Arc::downgrade(pool), key, id));
        Ok(sender)
    }
}

/// Drops the pool's handle on connection `id` once it has been unused for the idle timeout (or
/// has closed); streams still open keep the connection until they end.
async fn let_go_when_idle(pool: Weak<H2Pool>, addr: PoolKey, id: u64) {
    let Some(idle_timeout) = pool.upgrade().map(|p| p.idle_timeout) else {
        return;
    };
    let mut due = Instant::now() + idle_timeout;
    loop {
        tokio::time::sleep_until(due.into()).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut conns = pool.lock();
        let Some(pooled) = conns.get(&addr).filter(|p| p.id == id) else {
            return;
        };
        let next = pooled.last_used + idle_timeout;
        if pooled.is_closed() || next <= Instant::now() {
            conns.remove(&addr);
            return;
        }
        due = next;
    }
}

/// `e` and its sources, joined with `: `, for a response body or a log line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
