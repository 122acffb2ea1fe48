//! Opaque byte relay between an accepted client and its upstream, and the one way upstream
//! connections are made.
use std::{io, time::Duration};

use tokio::{
    io::copy_bidirectional,
    net::{TcpSocket, TcpStream},
};

use crate::netns::{SourceSockets, UpstreamSource};

/// Copies both ways until both sides close; returns (client→upstream, upstream→client) bytes.
pub async fn relay(mut client: TcpStream, mut upstream: TcpStream) -> io::Result<(u64, u64)> {
    copy_bidirectional(&mut client, &mut upstream).await
}

/// Connects to `dst` with a deadline, from the node's network namespace.
pub async fn connect(dst: std::net::SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    connect_from(
        &crate::netns::NodeSockets,
        UpstreamSource::Node,
        dst,
        timeout,
    )
    .await
    .map(|(s, _)| s)
}

/// Connects to `dst` with a deadline, from `source`'s network namespace (the client pod's, so
/// the upstream sees the pod's address), or from the node's when that namespace has no socket
/// to give (fail open; `sources` counted it). Returns where the connection was made.
pub async fn connect_from(
    sources: &dyn SourceSockets,
    source: UpstreamSource,
    dst: std::net::SocketAddr,
    timeout: Duration,
) -> io::Result<(TcpStream, UpstreamSource)> {
    let connecting = async {
        let in_pod = match source.netns() {
            Some(netns) => sources.socket(netns, dst.is_ipv6()).await,
            None => None,
        };
        match in_pod {
            Some(fd) => TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
                .connect(dst)
                .await
                .map(|s| (s, source)),
            None if source.netns().is_some() => TcpStream::connect(dst)
                .await
                .map(|s| (s, UpstreamSource::NodeFallback)),
            None => TcpStream::connect(dst).await.map(|s| (s, source)),
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(r) => {
            let (s, from) = r?;
            s.set_nodelay(true)?;
            Ok((s, from))
        }
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {dst} timed out after {timeout:?}"),
        )),
    }
}
