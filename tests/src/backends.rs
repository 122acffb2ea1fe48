//! In-process backends bound inside pod namespaces. Each answers one line per connection (or
//! datagram) with JSON naming who answered, on which address, and whom it saw as the peer, so a
//! test can tell a proxied connection (peer = the node) from a direct one (peer = the client).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::netns::Netns;

/// What a backend answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    pub server: String,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub got: String,
}

/// A running backend; stops on drop.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicUsize>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Backend {
    /// A TCP backend named `server` on `addr` inside `netns`.
    pub fn tcp(netns: &Netns, server: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        Self::tcp_with_banner(netns, server, addr, false)
    }

    fn tcp_with_banner(
        netns: &Netns,
        server: &str,
        addr: SocketAddr,
        banner: bool,
    ) -> anyhow::Result<Self> {
        let listener = netns.run(move || TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a, name) = (stop.clone(), accepted.clone(), server.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        if banner {
                            let _ = conn.write_all(format!("220 {name} ready\n").as_bytes());
                        }
                        let name = name.clone();
                        std::thread::spawn(move || serve_tcp(conn, peer, addr, &name));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            accepted,
        })
    }

    /// A server-speaks-first backend: sends `220 <name> ready` on accept, then answers lines.
    pub fn greeter(netns: &Netns, server: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        Self::tcp_with_banner(netns, server, addr, true)
    }

    /// A UDP backend answering each datagram.
    pub fn udp(netns: &Netns, server: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let sock = netns.run(move || UdpSocket::bind(addr))??;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a, name) = (stop.clone(), accepted.clone(), server.to_string());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    a.fetch_add(1, Ordering::Relaxed);
                    let reply = Reply {
                        server: name.clone(),
                        local: addr,
                        peer,
                        got: String::from_utf8_lossy(&buf[..n]).trim().to_string(),
                    };
                    if let Ok(mut line) = serde_json::to_vec(&reply) {
                        line.push(b'\n');
                        let _ = sock.send_to(&line, peer);
                    }
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            accepted,
        })
    }
}

fn serve_tcp(conn: std::net::TcpStream, peer: SocketAddr, local: SocketAddr, name: &str) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    // One reply per line, until the client closes.
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        let reply = Reply {
            server: name.to_string(),
            local,
            peer,
            got: line.trim().to_string(),
        };
        let Ok(mut out) = serde_json::to_vec(&reply) else {
            return;
        };
        out.push(b'\n');
        if writer.write_all(&out).is_err() {
            return;
        }
        line.clear();
    }
}
