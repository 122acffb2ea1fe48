//! Idle HTTP/1.1 upstream connections, shared by every client connection, per upstream
//! address and source (a connection carries its client pod's address, so only that pod's
//! requests may reuse it: [`crate::netns`]). A client connection takes one out for as long as it sends there and gives it back
//! when it closes (or switches upstream), so a pooled connection is never shared mid-exchange
//! and needs no lock on the data path.
use std::{
    collections::HashMap,
    fmt, io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use crate::netns::{NetnsId, SourceSockets, UpstreamSource};

/// What a pooled connection is reused for: the same upstream, from the same namespace.
type PoolKey = (Option<NetnsId>, SocketAddr);

/// Idle connections kept per upstream address; more are closed when given back.
const MAX_IDLE_PER_UPSTREAM: usize = 32;

/// A connection to one upstream.
#[derive(Debug)]
pub struct UpstreamConn {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Where it was made (its source address is that namespace's).
    pub source: UpstreamSource,
    /// It carried an exchange before: a failure before any response byte may be the upstream
    /// closing it while idle, and the request may be sent again on a new connection.
    pub reused: bool,
}

/// The shared pool.
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<(TcpStream, Instant)>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    sources: Arc<dyn SourceSockets>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        sources: Arc<dyn SourceSockets>,
    ) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout,
            sources,
        }
    }

    /// An idle connection to `addr` from `source` that is still open, most recently used
    /// first.
    pub fn checkout(&self, source: UpstreamSource, addr: SocketAddr) -> Option<UpstreamConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(&(source.netns(), addr))?;
        while let Some((stream, since)) = conns.pop() {
            if since.elapsed() < self.idle_timeout && is_open(&stream) {
                return Some(UpstreamConn {
                    stream,
                    addr,
                    source,
                    reused: true,
                });
            }
        }
        None
    }

    /// Gives an idle connection back (it must be between exchanges, with nothing unread).
    pub fn checkin(&self, conn: UpstreamConn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.entry((conn.source.netns(), conn.addr)).or_default();
        let now = Instant::now();
        conns.retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
        if conns.len() < MAX_IDLE_PER_UPSTREAM {
            conns.push((conn.stream, now));
        }
    }

    /// A pooled connection to `addr` from `source`, or a new one.
    pub async fn get(&self, source: UpstreamSource, addr: SocketAddr) -> io::Result<UpstreamConn> {
        if let Some(c) = self.checkout(source, addr) {
            return Ok(c);
        }
        self.connect(source, addr).await
    }

    /// A new connection to `addr` from `source`.
    pub async fn connect(
        &self,
        source: UpstreamSource,
        addr: SocketAddr,
    ) -> io::Result<UpstreamConn> {
        // `source` as made: the node's, if the pod's namespace had no socket to give.
        let (stream, source) =
            crate::proxy::relay::connect_from(&*self.sources, source, addr, self.connect_timeout)
                .await?;
        Ok(UpstreamConn {
            stream,
            addr,
            source,
            reused: false,
        })
    }
}

/// Whether an idle connection is still open: the upstream has sent neither EOF nor stray
/// bytes (either makes it unusable). Costs no syscall unless the socket became readable.
pub fn is_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}
