//! Opaque byte relay between an accepted client and its upstream.
use std::{io, time::Duration};

use tokio::{io::copy_bidirectional, net::TcpStream};

/// Copies both ways until both sides close; returns (client→upstream, upstream→client) bytes.
pub async fn relay(mut client: TcpStream, mut upstream: TcpStream) -> io::Result<(u64, u64)> {
    copy_bidirectional(&mut client, &mut upstream).await
}

/// Connects to `dst` with a deadline.
pub async fn connect(dst: std::net::SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(dst)).await {
        Ok(r) => {
            let s = r?;
            s.set_nodelay(true)?;
            Ok(s)
        }
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {dst} timed out after {timeout:?}"),
        )),
    }
}
