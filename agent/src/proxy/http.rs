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
    buffer_budget::{ByteBudget, Charge, REQUEST_OVERHEAD},
    upstream::{ProxyBody, UndeclaredLength, UpstreamError, error_chain},
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
    /// What the connection's in-flight sandbox-bound streams hold (`--max-connection-buffer`).
    budget: Arc<ByteBudget>,
}

/// A stream refused without an answer: hyper resets it, with the h2 reason found among the
/// error's sources (INTERNAL_ERROR when there is none).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("no endpoint on this node (internalTrafficPolicy: Local)")]
    Dropped,
    /// REFUSED_STREAM: the stream was not processed, so the client may send it again.
    #[error("over the buffer budget")]
    OverBudget(#[source] h2::Error),
}

/// Serves one h2c connection until it closes; on shutdown it finishes in-flight streams, then
/// closes.
pub async fn serve(shared: Arc<ProxyShared>, stream: TcpStream, info: ConnInfo) {
    let state = Arc::new(ConnState {
        invalid_logged: AtomicBool::new(false),
        route: Mutex::new(info.route()),
        closing: CancellationToken::new(),
        budget: ByteBudget::new(shared.limits.max_connection_buffer),
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
        .max_concurrent_streams(limits.max_concurrent_streams)
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
) -> Result<Response<ProxyBody>, Refused> {
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
        return Err(Refused::Dropped);
    }
    // A sandbox-bound stream is charged what it holds while it waits (its kept body, its head,
    // its state), so streams behind a silent sandbox cannot take the agent's memory.
    let _charge = if decision.kind == DecisionKind::Sandbox {
        let kept = replay_size(&req, shared.limits.max_request_buffer).unwrap_or(0);
        let head = req.uri().to_string().len()
            + req
                .headers()
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum::<usize>();
        match Charge::take(
            REQUEST_OVERHEAD + head + kept,
            Some(&state.budget),
            &shared.buffers,
        ) {
            Ok(c) => Some(c),
            Err(over) => {
                tracing::debug!(client = %info.client, reason = %over, "sandbox-bound stream refused");
                let refused = Decision {
                    kind: DecisionKind::Reject,
                    reason: DecisionReason::BufferBudgetExhausted,
                    ..decision
                };
                let exit = Exit {
                    request: Some(request),
                    key: extracted.key,
                    ..Exit::default()
                };
                shared.record(&info, refused, exit);
                return Err(Refused::OverBudget(h2::Reason::REFUSED_STREAM.into()));
            }
        }
    } else {
        None
    };

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

/// The size of the body to keep for a sandbox-bound request's fallback: its declared length,
/// if it is at most `limit`.
fn replay_size<B: hyper::body::Body>(req: &Request<B>, limit: usize) -> Option<usize> {
    req.body()
        .size_hint()
        .upper()
        .filter(|&n| n <= limit as u64)
        .map(|n| n as usize)
}

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
        && body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= shared.limits.max_request_buffer as u64);
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
    let sent = shared.upstreams.send(
        source,
        upstream,
        Request::from_parts(parts, upstream_body(body)),
    );
    // Only a sandbox gets a deadline for its response headers: a baseline request waits as
    // long as it would on a direct connection.
    let first = if decision.kind == DecisionKind::Sandbox {
        let limit = shared.limits.response_header_timeout;
        match tokio::time::timeout(limit, sent).await {
            Ok(r) => r.map_err(Failed::Upstream),
            Err(_) => {
                shared.metrics.sandbox_response_timeout();
                Err(Failed::Timeout(limit))
            }
        }
    } else {
        sent.await.map_err(Failed::Upstream)
    };
    let result = match first {
        Err(failed) if failed.may_fall_back() && decision.kind == DecisionKind::Sandbox => {
            tracing::debug!(%upstream, error = %error_chain(&failed), "sandbox failed");
            decision.reason = match failed {
                Failed::Timeout(_) => DecisionReason::SandboxTimeout,
                Failed::Upstream(_) => DecisionReason::SandboxUnreachable,
            };
            match (decision.fallback, retry) {
                (Some(baseline), Some((parts, bytes))) => {
                    decision.kind = DecisionKind::Baseline;
                    decision.upstream = Some(baseline);
                    shared
                        .upstreams
                        .send(
                            source,
                            baseline,
                            Request::from_parts(parts, upstream_body(full(bytes))),
                        )
                        .await
                        .map_err(Failed::Upstream)
                }
                (None, _) => {
                    decision.kind = DecisionKind::Reject;
                    return reject(decision);
                }
                (Some(_), None) => {
                    // The body was streamed, not kept: this request has no fallback.
                    decision.reason = DecisionReason::BodyTooLargeToRetry;
                    Err(failed)
                }
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
            let status = match e {
                Failed::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                Failed::Upstream(_) => StatusCode::BAD_GATEWAY,
            };
            let hint = if decision.reason == DecisionReason::BodyTooLargeToRetry {
                " (the body was over --max-request-buffer, so it was not kept for the fallback)"
            } else {
                ""
            };
            local_response(status, format!("shunt: {why}{hint}\n"))
        }
    }
}

/// Why a forwarded request got no response.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error("the sandbox sent no response headers within {0:?} (--response-header-timeout)")]
    Timeout(std::time::Duration),
}

impl Failed {
    /// A sandbox failure the route's fallback applies to: the request was not sent, or the
    /// sandbox did not answer in time.
    fn may_fall_back(&self) -> bool {
        match self {
            Self::Upstream(e) => e.not_sent(),
            Self::Timeout(_) => true,
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
