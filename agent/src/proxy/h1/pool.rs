//! Idle HTTP/1.1 upstream connections, shared by every client connection, per upstream
//! address. A client connection takes one out for as long as it sends there and gives it back
//! when it closes (or switches upstream), so a pooled connection is never shared mid-exchange
//! and needs no lock on the data path.
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

/// Idle connections kept per upstream address; more are closed when given back.
const MAX_IDLE_PER_UPSTREAM: usize = 32;

/// A connection to one upstream.
#[derive(Debug)]
pub struct UpstreamConn {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// It carried an exchange before: a failure before any response byte may be the upstream
    /// closing it while idle, and the request may be sent again on a new connection.
    pub reused: bool,
}

/// The shared pool.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout,
        }
    }

    /// An idle connection to `addr` that is still open, most recently used first.
    pub fn checkout(&self, addr: SocketAddr) -> Option<UpstreamConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(&addr)?;
        while let Some((stream, since)) = conns.pop() {
            if since.elapsed() < self.idle_timeout && is_open(&stream) {
                return Some(UpstreamConn {
                    stream,
                    addr,
                    reused: true,
                });
            }
        }
        None
    }

    /// Gives an idle connection back (it must be between exchanges, with nothing unread).
    pub fn checkin(&self, conn: UpstreamConn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.entry(conn.addr).or_default();
        let now = Instant::now();
        conns.retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
        if conns.len() < MAX_IDLE_PER_UPSTREAM {
            conns.push((conn.stream, now));
        }
    }

    /// A pooled connection to `addr`, or a new one.
    pub async fn get(&self, addr: SocketAddr) -> io::Result<UpstreamConn> {
        if let Some(c) = self.checkout(addr) {
            return Ok(c);
        }
        self.connect(addr).await
    }

    /// A new connection to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<UpstreamConn> {
        let stream = crate::proxy::relay::connect(addr, self.connect_timeout).await?;
        Ok(UpstreamConn {
            stream,
            addr,
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
