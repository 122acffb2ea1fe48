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
    future::poll_fn,
    sync::{Arc, Mutex, atomic::AtomicBool},
};

use bytes::Bytes;
use futures::{StreamExt as _, stream::FuturesUnordered};
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
    let mut ping = conn.ping_pong();
    let keepalive = shared.limits.idle_timeout / 2;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut awaiting_pong = false;
    let mut draining = false;
    let mut streams = FuturesUnordered::new();
    // Made once: a fresh `cancelled()` per turn of the loop would register with each token anew.
    let shutdown = shared.shutdown.cancelled();
    let closing = state.closing.cancelled();
    tokio::pin!(shutdown, closing);
    let result = loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    streams.push(stream::serve(&shared, info, &state, req, respond));
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
            Some(()) = streams.next(), if !streams.is_empty() => {}
            _ = &mut shutdown, if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            _ = &mut closing, if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            _ = tick.tick(), if ping.is_some() => {
                let Some(ping) = ping.as_mut() else { continue };
                if awaiting_pong {
                    tracing::debug!(client = %info.client, "h2c keep-alive timed out");
                    break Ok(());
                }
                awaiting_pong = ping.send_ping(h2::Ping::opaque()).is_ok();
            }
            pong = poll_fn(|cx| ping.as_mut().expect("guarded").poll_pong(cx)), if awaiting_pong => {
                awaiting_pong = false;
                if pong.is_err() {
                    ping = None;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %info.client, error = %e, "h2c connection ended with an error");
    }
    // The connection is gone (or given up): the streams still open end with it.
    drop(conn);
    while streams.next().await.is_some() {}
}
