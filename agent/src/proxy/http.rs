//! Per-stream routing for HTTP/2 (h2c) and gRPC, with hyper on both sides. HTTP/1.1 has its own
//! path ([`super::h1`]).
//!
//! Every h2 stream is routed on its own key, so a client connection multiplexing requests with
//! different keys routes each correctly; unkeyed streams share the connection's one baseline
//! endpoint, as they would through kube-proxy.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, Response, StatusCode,
    body::{Body as _, Incoming},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{
    ConnInfo, Exit, ProxyShared,
    upstream::{ProxyBody, UndeclaredLength, error_chain},
};
use crate::routes::{ConnRoute, Decision, DecisionKind, DecisionReason};

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

/// What the streams of one client connection share.
struct ConnState {
    invalid_logged: AtomicBool,
    /// The connection's routing state: every unkeyed stream goes to its one baseline endpoint.
    route: Mutex<ConnRoute>,
    /// Cancelled when the connection is to close after its current streams: its baseline
    /// endpoint failed (as a TCP connection through kube-proxy would break with it).
    closing: CancellationToken,
}

/// A stream refused without an answer: hyper resets it.
#[derive(Debug, thiserror::Error)]
#[error("no endpoint on this node (internalTrafficPolicy: Local)")]
struct Dropped;

/// Serves one h2c connection until it closes; on shutdown it finishes in-flight streams, then
/// closes.
pub async fn serve(shared: Arc<ProxyShared>, stream: TcpStream, info: ConnInfo) {
    let state = Arc::new(ConnState {
        invalid_logged: AtomicBool::new(false),
        route: Mutex::new(info.route()),
        closing: CancellationToken::new(),
    });
    let closing = state.closing.clone();
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let state = state.clone();
            async move { handle(&shared, info, &state, req).await }
        })
    };
    let limits = &shared.limits;
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // No `date` on forwarded responses: the proxy adds no header (gRPC clients would see it as
    // metadata of a trailers-only response).
    b.timer(TokioTimer::new())
        .auto_date_header(false)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.idle_timeout / 2);
    let conn = b.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %info.client, error = %e, "h2c connection ended with an error");
    }
}

async fn handle(
    shared: &ProxyShared,
    info: ConnInfo,
    state: &ConnState,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Dropped> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    if shared.keys.strips(info.client.get().ip()) {
        shared.keys.strip(&mut parts.headers, &mut parts.uri);
    }
    let mut extracted = shared.keys.normalize(&mut parts.headers, &mut parts.uri);
    let key_injected = super::key_inject::inject_h2(&info, &mut parts.headers, &mut extracted);
    let req = Request::from_parts(parts, body);
    if let Some(invalid) = &extracted.invalid
        && !state.invalid_logged.swap(true, Ordering::Relaxed)
    {
        tracing::debug!(client = %info.client, source = ?invalid.source, raw = %invalid.raw,
            "malformed routing key, treated as no key");
    }
    let (mut decision, pinned) = {
        // Held only while deciding (no await): streams decide one at a time.
        let mut route = state.route.lock().unwrap_or_else(|e| e.into_inner());
        let d = shared.decide(
            &mut route,
            extracted.key.as_ref(),
            extracted.invalid.is_some(),
        );
        (d, route.pinned)
    };
    // Kept for the decision log (a standard method is a tag: no allocation).
    let request = (req.method().clone(), Box::<str>::from(req.uri().path()));
    if decision.drops_connection() {
        // No endpoint on this node under `internalTrafficPolicy: Local`: the stream is reset
        // and the connection closed, as kube-proxy drops it.
        state.closing.cancel();
        let exit = Exit {
            request: Some(request),
            key: extracted.key,
            key_injected,
            ..Exit::default()
        };
        shared.record(&info, decision, exit);
        return Err(Dropped);
    }

    let response = if decision.kind == DecisionKind::Reject {
        reject(&decision)
    } else {
        forward(shared, info.source, &mut decision, req).await
    };

    // The connection's baseline endpoint failed: close after the current streams, so the next
    // request opens a new connection and gets a new endpoint.
    if decision.kind == DecisionKind::Baseline
        && decision.upstream.is_some()
        && decision.upstream == pinned
        && response.status() == StatusCode::BAD_GATEWAY
        && response.headers().contains_key("x-shunt-error")
    {
        state.closing.cancel();
    }
    let exit = Exit {
        request: Some(request),
        key: extracted.key,
        status: Some(response.status().as_u16()),
        latency: Some(started.elapsed()),
        key_injected,
    };
    shared.record(&info, decision, exit);
    Ok(response)
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
    source: crate::netns::UpstreamSource,
    decision: &mut Decision,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(upstream) = decision.upstream else {
        return reject(decision);
    };
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // A length the client did not declare stays undeclared upstream.
    let declared = parts.headers.contains_key(header::CONTENT_LENGTH);
    let upstream_body = |b: ProxyBody| {
        if declared {
            b
        } else {
            UndeclaredLength::boxed(b)
        }
    };
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
        .send(
            source,
            upstream,
            Request::from_parts(parts, upstream_body(body)),
        )
        .await;
    let result = match first {
        Err(refused) if refused.not_sent() && decision.kind == DecisionKind::Sandbox => {
            tracing::debug!(%upstream, error = %error_chain(&refused), "sandbox refused the connection");
            match (decision.fallback, retry) {
                (Some(baseline), Some((parts, bytes))) => {
                    decision.kind = DecisionKind::Baseline;
                    decision.reason = DecisionReason::SandboxUnreachable;
                    decision.upstream = Some(baseline);
                    shared
                        .upstreams
                        .send(
                            source,
                            baseline,
                            Request::from_parts(parts, upstream_body(full(bytes))),
                        )
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

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
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
