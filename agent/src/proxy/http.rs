//! Per-request routing for HTTP/1.1, HTTP/2 and gRPC, with hyper on both sides.
//!
//! Every request (every h2 stream) is routed on its own key, so a client connection pooled across
//! requests with different keys routes each correctly.
use std::{
    convert::Infallible,
    io::Write as _,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body as _, Incoming},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{
    ConnInfo, Exit, ProxyShared,
    detect::Protocol,
    upstream::{ProxyBody, UpstreamError, error_chain},
};
use crate::routes::{Decision, DecisionKind, DecisionReason};

/// A body held in memory: one we answer with ourselves, or a buffered request replayed.
fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn local_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert("x-shunt-error", HeaderValue::from_static("1"));
    r
}

/// Drives a hyper server connection; on shutdown it finishes in-flight requests, then closes.
/// A macro because hyper's h1 upgradeable and h2 connections share no graceful-shutdown trait.
macro_rules! until_shutdown {
    ($conn:expr, $shutdown:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = $shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}

/// Serves one HTTP connection until it closes.
pub async fn serve(shared: Arc<ProxyShared>, stream: TcpStream, info: ConnInfo) {
    // Keep a duplicate of the socket: when our header-read timer fires, hyper drops the
    // connection silently, and we still owe the client a 408.
    let (stream, dup) = match dup_socket(stream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "dup of the client socket failed");
            return;
        }
    };
    let pending = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(TrackRequestBytes {
        inner: stream,
        pending: pending.clone(),
    });
    let invalid_logged = Arc::new(AtomicBool::new(false));
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let invalid_logged = invalid_logged.clone();
            async move { Ok::<_, Infallible>(handle(&shared, info, &invalid_logged, req).await) }
        })
    };
    let limits = &shared.limits;
    let result = match info.protocol {
        Protocol::H2c => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32)
                .keep_alive_interval(Some(limits.idle_timeout / 2))
                .keep_alive_timeout(limits.idle_timeout / 2);
            until_shutdown!(b.serve_connection(io, svc), shared.shutdown)
        }
        _ => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(Some(limits.header_read_timeout))
                .max_header_size(limits.max_header_bytes)
                .max_headers(limits.max_headers);
            until_shutdown!(b.serve_connection(io, svc).with_upgrades(), shared.shutdown)
        }
    };
    if let Err(e) = result {
        let timed_out = e.is_timeout();
        tracing::debug!(client = %info.client, error = %e, timed_out, "HTTP connection ended with an error");
        if timed_out && pending.load(Ordering::Relaxed) {
            // Part of a request arrived but its headers did not finish in time (slowloris).
            let _ = (&dup).write_all(
                b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            );
            let service = shared
                .table()
                .resolve(info.original_dst, info.service)
                .map(|(svc, _)| svc.label.clone());
            shared.record(
                &info,
                Decision::reject(DecisionReason::HeaderReadTimeout, service),
                Exit {
                    status: Some(408),
                    ..Exit::default()
                },
            );
        }
        let _ = dup.shutdown(std::net::Shutdown::Both);
    }
}

fn dup_socket(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std = stream.into_std()?;
    let dup = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, dup))
}

async fn handle(
    shared: &ProxyShared,
    info: ConnInfo,
    invalid_logged: &AtomicBool,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let extracted = shared.keys.normalize(&mut parts.headers, &mut parts.uri);
    let req = Request::from_parts(parts, body);
    if let Some(invalid) = &extracted.invalid
        && !invalid_logged.swap(true, Ordering::Relaxed)
    {
        tracing::debug!(client = %info.client, source = ?invalid.source, raw = %invalid.raw,
            "malformed routing key, treated as no key");
    }
    let mut decision = shared.table().decide(
        info.original_dst,
        info.service,
        extracted.key.as_ref(),
        extracted.invalid.is_some(),
    );
    // Kept for the decision log (a standard method is a tag: no allocation).
    let request = (req.method().clone(), Box::<str>::from(req.uri().path()));

    let response = if decision.kind == DecisionKind::Reject {
        reject(&decision)
    } else if is_upgrade(&req) {
        forward_upgrade(shared, &mut decision, req).await
    } else {
        forward(shared, &mut decision, req).await
    };

    let exit = Exit {
        request: Some(request),
        key: extracted.key,
        status: Some(response.status().as_u16()),
        latency: Some(started.elapsed()),
    };
    shared.record(&info, decision, exit);
    response
}

fn reject(decision: &Decision) -> Response<ProxyBody> {
    local_response(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "shunt: route {} has no ready sandbox endpoint for service {} ({}; fallback: Reject)\n",
            decision.route.as_deref().unwrap_or("?"),
            decision.service.as_deref().unwrap_or("?"),
            decision.reason.as_str(),
        ),
    )
}

/// Largest request body kept in memory so a sandbox that refuses the connection can be retried
/// on baseline.
const REPLAY_LIMIT: u64 = 64 * 1024;

async fn forward(
    shared: &ProxyShared,
    decision: &mut Decision,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(upstream) = decision.upstream else {
        return reject(decision);
    };
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let replayable = decision.kind == DecisionKind::Sandbox
        && body.size_hint().upper().is_some_and(|n| n <= REPLAY_LIMIT);
    let (body, replay) = if replayable {
        match body.collect().await {
            Ok(c) => {
                let bytes = c.to_bytes();
                (full(bytes.clone()), Some(bytes))
            }
            Err(e) => {
                return local_response(
                    StatusCode::BAD_REQUEST,
                    format!("shunt: reading the request body: {e}\n"),
                );
            }
        }
    } else {
        (body.boxed_unsync(), None)
    };
    // The request head is copied only when a retry on baseline is possible (a replayable body):
    // most requests never pay for the clone.
    let retry = replay.map(|bytes| (parts.clone(), bytes));
    let first = shared
        .upstreams
        .send(upstream, Request::from_parts(parts, body))
        .await;
    let result = match first {
        Err(refused @ UpstreamError::Connect { .. }) if decision.kind == DecisionKind::Sandbox => {
            tracing::debug!(%upstream, error = %error_chain(&refused), "sandbox refused the connection");
            match (decision.fallback, retry) {
                (Some(baseline), Some((parts, bytes))) => {
                    decision.kind = DecisionKind::Baseline;
                    decision.reason = DecisionReason::SandboxUnreachable;
                    decision.upstream = Some(baseline);
                    shared
                        .upstreams
                        .send(baseline, Request::from_parts(parts, full(bytes)))
                        .await
                }
                (None, _) => {
                    decision.kind = DecisionKind::Reject;
                    decision.reason = DecisionReason::SandboxUnreachable;
                    return reject(decision);
                }
                (Some(_), None) => Err(refused),
            }
        }
        other => other,
    };
    match result {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed_unsync())
        }
        Err(e) => {
            let why = error_chain(&e);
            tracing::debug!(error = %why, "forwarding failed");
            local_response(StatusCode::BAD_GATEWAY, format!("shunt: {why}\n"))
        }
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT
        || req.headers().get(header::CONNECTION).is_some_and(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

/// A websocket or CONNECT upgrade: routed by its key like any request, then the bytes of the
/// upgraded connection are copied both ways. Upgrades use their own (unpooled) connection.
async fn forward_upgrade(
    shared: &ProxyShared,
    decision: &mut Decision,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(upstream) = decision.upstream else {
        return reject(decision);
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let stream = match super::relay::connect(upstream, shared.limits.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            return local_response(
                StatusCode::BAD_GATEWAY,
                format!("shunt: connecting to {upstream}: {e}\n"),
            );
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => {
            return local_response(
                StatusCode::BAD_GATEWAY,
                format!("shunt: upstream handshake: {e}\n"),
            );
        }
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let is_connect = req.method() == Method::CONNECT;
    let req = req.map(|b| b.boxed_unsync());
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            return local_response(
                StatusCode::BAD_GATEWAY,
                format!("shunt: upstream {upstream}: {e}\n"),
            );
        }
    };
    let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && resp.status().is_success());
    if upgraded {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((c, u)) => {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    }
    resp.map(|b| b.boxed_unsync())
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1). Upgrade requests keep
/// theirs; they never come here.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// Tracks whether bytes of a request arrived since the last response was written, so a
/// header-read timeout can tell slowloris (owed a 408) from an idle keep-alive (closed quietly).
struct TrackRequestBytes {
    inner: TcpStream,
    pending: Arc<AtomicBool>,
}

impl AsyncRead for TrackRequestBytes {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.pending.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for TrackRequestBytes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.pending.store(false, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.pending.store(false, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
