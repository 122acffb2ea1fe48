//! Opaque byte relay between an accepted client and its upstream (opaque connections and
//! upgraded tunnels), closed when neither side sends a byte for the idle timeout; and the one way
//! upstream connections are made.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf, copy_bidirectional},
    net::{TcpSocket, TcpStream},
    time::Instant,
};

use crate::netns::{SourceSockets, UpstreamSource};

/// How a relay ended.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relaying")]
    Io(#[from] io::Error),
    #[error("no byte either way for {0:?}")]
    Idle(Duration),
}

/// Copies both ways until both sides close, or until no byte has moved either way for
/// `idle_timeout`; returns (client→upstream, upstream→client) bytes.
pub async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    idle_timeout: Duration,
) -> Result<(u64, u64), RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Active {
        inner: client,
        start,
        last: last.clone(),
    };
    let mut upstream = Active {
        inner: upstream,
        start,
        last: last.clone(),
    };
    let copy = copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let idle_until = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle_timeout;
        tokio::select! {
            r = copy.as_mut() => return Ok(r?),
            _ = tokio::time::sleep_until(idle_until) => {
                let since = Duration::from_millis(last.load(Ordering::Relaxed));
                if start + since + idle_timeout <= Instant::now() {
                    return Err(RelayError::Idle(idle_timeout));
                }
            }
        }
    }
}

/// A stream that notes when it last read a byte (milliseconds since `start`).
struct Active<'a, S: ?Sized> {
    inner: &'a mut S,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Active<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = self.start.elapsed().as_millis() as u64;
            self.last.store(now, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Active<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, duplex};

    use super::*;

    #[tokio::test]
    async fn a_quiet_relay_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
        let (mut client, mut client_far) = duplex(64);
        let (mut upstream, mut upstream_far) = duplex(64);
        let relay_task = tokio::spawn(async move {
            relay(&mut client, &mut upstream, Duration::from_millis(400)).await
        });
        // Bytes every 200 ms keep it open past the timeout...
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client_far.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            upstream_far.read_exact(&mut b).await.unwrap();
        }
        assert!(!relay_task.is_finished());
        // ...then silence closes it.
        let quiet = std::time::Instant::now();
        let r = relay_task.await.unwrap();
        assert!(quiet.elapsed() < Duration::from_secs(2));
        assert!(matches!(r, Err(RelayError::Idle(_))), "{r:?}");
    }
}
