//! The liveness self-probe: an HTTP request sent through the proxy's own listener to a responder
//! inside the agent, so `/healthz` (and the watchdog, to restore steering) learn whether the
//! proxy accepts and forwards, whatever the backends do.
//!
//! How the probe's connection gets an original destination without capture: the probe binds its
//! socket first, so it knows its source address before it connects, and registers that address
//! here; the proxy's lookup ([`ProbeAwareLookup`]) answers for a registered address with the
//! responder, exactly as `ORIG_DST` answers for a captured connection. The probe runs in the
//! agent's cgroup, which capture never redirects, so it dials the listener itself. Everything
//! after the lookup is the proxy's ordinary path: accept, detection, the HTTP/1.1 path, a
//! decision (an unknown destination: passthrough) and an upstream connect. No other connection
//! can be taken for the probe: the registered address is a port the probe itself holds bound.
use std::{
    collections::HashMap,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use super::{
    ClientAddr, OrigDstAddr, OrigDstLookup, ServiceId, orig_dst::Redirected, upstream::error_chain,
};

/// What the responder answers; the probe checks for it, so an answer from anything else fails.
const ANSWER_BODY: &str = "shunt self-probe\n";

/// Why the proxy failed its self-probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connecting to the proxy listener {target}")]
    Connect {
        target: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("no answer through the proxy listener {target}")]
    Exchange {
        target: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("unexpected answer through the proxy listener {target}: {first_line:?}")]
    BadAnswer {
        target: SocketAddr,
        first_line: String,
    },
}

/// The responder, the probe, and the probe connections in flight.
pub struct SelfProbe {
    responder: SocketAddr,
    targets: Vec<SocketAddr>,
    /// Source addresses of probe connections not yet accepted by the proxy.
    pending: Mutex<HashMap<ClientAddr, ()>>,
    /// `pending.len()`, read without the lock on every accept.
    pending_count: AtomicUsize,
    /// The last result, shared by concurrent and closely following callers.
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl SelfProbe {
    /// Starts the responder (a thread on loopback) for probes through `listeners` (the proxy's
    /// listening addresses; an unspecified address is probed on loopback).
    pub fn start(listeners: &[SocketAddr]) -> io::Result<Arc<Self>> {
        let responder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = responder.local_addr()?;
        std::thread::Builder::new()
            .name("shunt-probe-responder".into())
            .spawn(move || respond(responder))?;
        let targets = listeners
            .iter()
            .map(|l| match l.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => {
                    SocketAddr::from((Ipv4Addr::LOCALHOST, l.port()))
                }
                IpAddr::V6(ip) if ip.is_unspecified() => {
                    SocketAddr::from((Ipv6Addr::LOCALHOST, l.port()))
                }
                _ => *l,
            })
            .collect();
        Ok(Arc::new(Self {
            responder: addr,
            targets,
            pending: Mutex::new(HashMap::new()),
            pending_count: AtomicUsize::new(0),
            last: Mutex::new(None),
        }))
    }

    /// The responder's address: the original destination of every probe connection.
    pub fn responder(&self) -> SocketAddr {
        self.responder
    }

    /// Probes every listener (blocking), within `timeout` each.
    pub fn probe(&self, timeout: Duration) -> Result<(), ProbeError> {
        for &target in &self.targets {
            self.probe_one(target, timeout)?;
        }
        Ok(())
    }

    /// [`probe`](Self::probe), or the result of one that finished less than `max_age` ago:
    /// however many callers ask, the proxy sees at most one probe at a time and one per
    /// `max_age`.
    pub fn probe_shared(&self, timeout: Duration, max_age: Duration) -> Result<(), String> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < max_age
        {
            return result.clone();
        }
        let result = self.probe(timeout).map_err(|e| error_chain(&e));
        *last = Some((Instant::now(), result.clone()));
        result
    }

    fn probe_one(&self, target: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
        let deadline = Instant::now() + timeout;
        let connect = |source| ProbeError::Connect { target, source };
        let sock = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(connect)?;
        // Bound before connecting, so the source address is known and can be registered.
        sock.bind(&SocketAddr::new(target.ip(), 0).into())
            .map_err(connect)?;
        let local = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| connect(io::ErrorKind::AddrNotAvailable.into()))?;
        let _registered = Registered::new(self, ClientAddr::from_peer(local));
        sock.connect_timeout(&target.into(), timeout)
            .map_err(connect)?;
        let mut stream = TcpStream::from(sock);
        let exchange = |source| ProbeError::Exchange { target, source };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).map_err(exchange)?;
        stream.set_write_timeout(Some(left)).map_err(exchange)?;
        stream
            .write_all(
                b"GET /shunt-self-probe HTTP/1.1\r\nHost: shunt-self-probe\r\nConnection: close\r\n\r\n",
            )
            .map_err(exchange)?;
        let mut answer = Vec::with_capacity(256);
        stream
            .take(4096)
            .read_to_end(&mut answer)
            .map_err(exchange)?;
        let text = String::from_utf8_lossy(&answer);
        if text.starts_with("HTTP/1.1 200 ") && text.ends_with(ANSWER_BODY) {
            Ok(())
        } else {
            Err(ProbeError::BadAnswer {
                target,
                first_line: text.lines().next().unwrap_or("").to_string(),
            })
        }
    }

    /// Takes a pending probe connection's entry: the responder, if `client` is one.
    fn take(&self, client: ClientAddr) -> Option<OrigDstAddr> {
        if self.pending_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.remove(&client)?;
        self.pending_count.store(pending.len(), Ordering::Release);
        Some(OrigDstAddr(self.responder))
    }
}

/// A probe's source address, registered while its connection is in flight.
struct Registered<'a> {
    probe: &'a SelfProbe,
    client: ClientAddr,
}

impl<'a> Registered<'a> {
    fn new(probe: &'a SelfProbe, client: ClientAddr) -> Self {
        let mut pending = probe.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.insert(client, ());
        probe.pending_count.store(pending.len(), Ordering::Release);
        Self { probe, client }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut pending = self.probe.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.remove(&self.client);
        self.probe
            .pending_count
            .store(pending.len(), Ordering::Release);
    }
}

/// The proxy's lookup with the probe in front: a registered probe connection goes to the
/// responder, every other connection to what `inner` (capture's `ORIG_DST`) says.
pub struct ProbeAwareLookup {
    pub probe: Arc<SelfProbe>,
    pub inner: Arc<dyn OrigDstLookup>,
}

impl OrigDstLookup for ProbeAwareLookup {
    fn lookup(&self, client: ClientAddr) -> Option<Redirected> {
        match self.probe.take(client) {
            Some(dst) => Some(Redirected {
                dst,
                service: ServiceId::NONE,
                source: None,
            }),
            None => self.inner.lookup(client),
        }
    }
}

/// Answers each connection's request head with a fixed 200, one connection at a time.
fn respond(listener: TcpListener) {
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ANSWER_BODY}",
        ANSWER_BODY.len()
    );
    loop {
        let mut conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                // Out of descriptors and the like: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = conn.set_write_timeout(Some(Duration::from_millis(500)));
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = conn.write_all(answer.as_bytes());
    }
}

#[cfg(test)]
#[path = "self_probe_tests.rs"]
mod tests;
