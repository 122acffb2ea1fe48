//! Per-stream routing for HTTP/2 (h2c) and gRPC, on the `h2` crate directly. HTTP/1.1 has its
//! own path ([`super::h1`]).
//!
//! Every h2 stream is routed on its own key, so a client connection multiplexing requests with
//! different keys routes each correctly; unkeyed streams share the connection's one baseline
//! endpoint, as they would through kube-proxy.
//!
//! One task serves a client connection and all its streams: the streams are futures it polls
//! beside the connection, and an upstream stream's response wakes that task directly. (Through
//! hyper a request took a task per server stream, a dispatch channel into the client
//! connection's task, a task per client response and a oneshot back: four task hops a request.)
mod pipe;
mod stream;

use std::{
    future::{Future as _, poll_fn},
    sync::{Arc, Mutex, atomic::AtomicBool},
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::{StreamExt as _, future::Either, stream::FuturesUnordered};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{ConnInfo, ProxyShared, buffer_budget::ByteBudget};
use crate::routes::ConnRoute;

/// What the streams of one client connection share.
struct ConnState {
    invalid_logged: AtomicBool,
    /// The connection's routing state: every unkeyed stream goes to its one baseline endpoint.
    route: Mutex<ConnRoute>,
    /// Cancelled when the connection is to close after its current streams: its baseline
    /// endpoint failed (as a TCP connection through kube-proxy would break with it).
    closing: CancellationToken,
    /// What the connection's in-flight sandbox-bound streams hold (`--max-connection-buffer`).
    budget: Arc<ByteBudget>,
}

/// The settings hyper's HTTP/2 server used here before (its defaults, and the limits' flags).
fn server_builder(limits: &super::ProxyLimits) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_send_buffer_size(400 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(limits.max_concurrent_streams);
    b
}

/// The connection's keep-alive: a PING every tick, and the connection given up when the previous
/// one is still unanswered at the next.
struct KeepAlive {
    /// None once PINGs can no longer be sent.
    ping: Option<h2::PingPong>,
    tick: tokio::time::Interval,
    awaiting_pong: bool,
}

impl KeepAlive {
    /// True when a PING went unanswered for a whole tick.
    fn poll_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(ping) = self.ping.as_mut() else {
            return false;
        };
        if self.awaiting_pong
            && let Poll::Ready(pong) = ping.poll_pong(cx)
        {
            self.awaiting_pong = false;
            if pong.is_err() {
                self.ping = None;
                return false;
            }
        }
        while self.tick.poll_tick(cx).is_ready() {
            if self.awaiting_pong {
                return true;
            }
            self.awaiting_pong = ping.send_ping(h2::Ping::opaque()).is_ok();
            if self.awaiting_pong {
                // Registers for the PONG.
                if let Poll::Ready(pong) = ping.poll_pong(cx) {
                    self.awaiting_pong = false;
                    if pong.is_err() {
                        self.ping = None;
                        return false;
                    }
                }
            }
        }
        false
    }
}

/// Serves one h2c connection until it closes; on shutdown it finishes in-flight streams, then
/// closes.
pub async fn serve(shared: Arc<ProxyShared>, stream: TcpStream, info: ConnInfo) {
    let state = ConnState {
        invalid_logged: AtomicBool::new(false),
        route: Mutex::new(info.route()),
        closing: CancellationToken::new(),
        budget: ByteBudget::new(shared.limits.max_connection_buffer),
    };
    let handshake = server_builder(&shared.limits).handshake::<_, Bytes>(stream);
    let mut conn = tokio::select! {
        r = handshake => match r {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(client = %info.client, error = %e, "h2c handshake failed");
                return;
            }
        },
        _ = shared.shutdown.cancelled() => return,
    };
    // Keep-alive as hyper did it: a PING every half idle timeout; a connection that does not
    // answer one before the next is closed.
    let mut keepalive = KeepAlive {
        ping: conn.ping_pong(),
        tick: {
            let every = shared.limits.idle_timeout / 2;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        },
        awaiting_pong: false,
    };
    let mut draining = false;
    // The streams in flight, and one future that never ends nor wakes: `FuturesUnordered` wakes
    // its task again whenever one call has polled as many futures as it holds (so it cannot
    // starve others), which with one stream in flight was every stream still waiting upstream:
    // one more pass over the connection per request, for nothing. Polled once, when first
    // pushed, the sentinel keeps that count out of reach.
    let mut streams = FuturesUnordered::new();
    streams.push(Either::Right(std::future::pending::<()>()));
    // Made once: a fresh `cancelled()` per poll would register with each token anew.
    let shutdown = shared.shutdown.cancelled();
    let closing = state.closing.cancelled();
    tokio::pin!(shutdown, closing);
    // One pass per wake-up, in this order: the streams first, so what they send (a response,
    // a body) goes out in the same pass, then the connection (which reads new frames and
    // flushes), then the streams it has just accepted. (A `select!` loop polled the connection
    // again after every stream that ended and every stream accepted.)
    let result = poll_fn(|cx| {
        if !draining
            && (shutdown.as_mut().poll(cx).is_ready() || closing.as_mut().poll(cx).is_ready())
        {
            draining = true;
            conn.graceful_shutdown();
        }
        if keepalive.poll_timed_out(cx) {
            tracing::debug!(client = %info.client, "h2c keep-alive timed out");
            return Poll::Ready(Ok(()));
        }
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        let mut accepted = false;
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    streams.push(Either::Left(stream::serve(
                        &shared, info, &state, req, respond,
                    )));
                    accepted = true;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        if accepted {
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        }
        Poll::Pending
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(client = %info.client, error = %e, "h2c connection ended with an error");
    }
    // The connection is gone (or given up): the streams still open end with it.
    drop(conn);
    while streams.len() > 1 {
        streams.next().await;
    }
}
