//! One h2c stream: its key, its decision, its forwarding (with the replay buffer for a
//! sandbox-bound request's fallback), its response, and its line in the decision log.
use std::{future::poll_fn, sync::atomic::Ordering, task::Poll, time::Instant};

use bytes::Bytes;
use h2::{Reason, RecvStream, client::ResponseFuture, server::SendResponse};
use hyper::{
    Request, Response, StatusCode,
    header::{self, HeaderMap, HeaderValue},
    http::request,
};

use super::{
    ConnState,
    pipe::{BodyPipe, Buffered, collect},
};
use crate::proxy::{
    ConnInfo, Exit, ProxyShared,
    buffer_budget::{Charge, REQUEST_OVERHEAD},
    upstream::{UpstreamError, error_chain},
};
use crate::routes::{Decision, DecisionKind, DecisionReason};

fn local_response(status: StatusCode, text: String) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert("x-shunt-error", HeaderValue::from_static("1"));
    r
}

/// What a stream is answered with.
enum Reply {
    /// An answer of the proxy's own (a 503, 502, 504 or 400).
    Local(Response<Bytes>),
    /// The upstream's response, and the request body's pipe if the body was still coming.
    Upstream(Response<RecvStream>, Option<BodyPipe>),
}

impl Reply {
    fn status(&self) -> StatusCode {
        match self {
            Self::Local(r) => r.status(),
            Self::Upstream(r, _) => r.status(),
        }
    }

    fn is_local_error(&self, status: StatusCode) -> bool {
        matches!(self, Self::Local(r) if r.status() == status && r.headers().contains_key("x-shunt-error"))
    }
}

/// Serves one stream of a client connection: routes it, forwards it, answers it.
pub(super) async fn serve(
    shared: &ProxyShared,
    info: ConnInfo,
    state: &ConnState,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    // The client may reset the stream while it waits: stop (dropping the upstream stream resets
    // it), as hyper dropped the service's future.
    let reply = tokio::select! {
        r = handle(shared, info, state, req) => r,
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    match reply {
        Err(reason) => respond.send_reset(reason),
        Ok(Reply::Local(resp)) => send_local(&mut respond, resp),
        Ok(Reply::Upstream(resp, request_pipe)) => {
            // Nothing hop-by-hop to strip, here or from the request: `h2` refuses a message
            // carrying a connection-specific field (RFC 9113 §8.2.2) before it reaches us.
            let (head, body) = resp.into_parts();
            let eos = body.is_end_stream();
            let response_pipe = match respond.send_response(Response::from_parts(head, ()), eos) {
                Ok(send) => (!eos).then(|| BodyPipe::new(body, send)),
                Err(e) => {
                    tracing::debug!(error = %e, "the upstream's response could not be sent on");
                    respond.send_reset(Reason::INTERNAL_ERROR);
                    None
                }
            };
            drive(response_pipe, request_pipe).await;
        }
    }
}

/// Runs the response's and the request's body pipes to their ends, side by side (a gRPC
/// bidirectional stream uses both at once).
async fn drive(mut a: Option<BodyPipe>, mut b: Option<BodyPipe>) {
    poll_fn(|cx| {
        for pipe in [&mut a, &mut b] {
            if let Some(p) = pipe
                && p.poll_to_end(cx).is_ready()
            {
                *pipe = None;
            }
        }
        if a.is_none() && b.is_none() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

fn send_local(respond: &mut SendResponse<Bytes>, resp: Response<Bytes>) {
    let (mut head, body) = resp.into_parts();
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let eos = body.is_empty();
    match respond.send_response(Response::from_parts(head, ()), eos) {
        Ok(mut send) if !eos => {
            let _ = send.send_data(body, true);
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "the proxy's answer could not be sent"),
    }
}

/// Decides where the stream goes and forwards it; `Err` resets the stream with that reason.
async fn handle(
    shared: &ProxyShared,
    info: ConnInfo,
    state: &ConnState,
    req: Request<RecvStream>,
) -> Result<Reply, Reason> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    if shared.keys.strips(info.client.get().ip()) {
        shared.keys.strip(&mut parts.headers, &mut parts.uri);
    }
    let mut extracted = shared.keys.normalize(&mut parts.headers, &mut parts.uri);
    let key_injected =
        crate::proxy::key_inject::inject_h2(&info, &mut parts.headers, &mut extracted);
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
    let request = (parts.method.clone(), Box::<str>::from(parts.uri.path()));
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
        return Err(Reason::INTERNAL_ERROR);
    }
    // A sandbox-bound stream is charged what it holds while it waits (its kept body, its head,
    // its state), so streams behind a silent sandbox cannot take the agent's memory.
    let _charge = if decision.kind == DecisionKind::Sandbox {
        let kept =
            replay_size(&parts.headers, &body, shared.limits.max_request_buffer).unwrap_or(0);
        let head = uri_len(&parts.uri)
            + parts
                .headers
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
                // REFUSED_STREAM: the stream was not processed, so the client may send it again.
                return Err(Reason::REFUSED_STREAM);
            }
        }
    } else {
        None
    };

    let reply = if decision.kind == DecisionKind::Reject {
        Reply::Local(reject(&decision))
    } else {
        forward(shared, info.source, &mut decision, parts, body).await
    };

    // The connection's baseline endpoint failed: close after the current streams, so the next
    // request opens a new connection and gets a new endpoint.
    if decision.kind == DecisionKind::Baseline
        && decision.upstream.is_some()
        && decision.upstream == pinned
        && reply.is_local_error(StatusCode::BAD_GATEWAY)
    {
        state.closing.cancel();
    }
    let exit = Exit {
        request: Some(request),
        key: extracted.key,
        status: Some(reply.status().as_u16()),
        latency: Some(started.elapsed()),
        key_injected,
    };
    shared.record(&info, decision, exit);
    Ok(reply)
}

/// The length of `uri` as it is written out (`Display`), without writing it.
fn uri_len(uri: &hyper::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + "?".len())
}

fn reject(decision: &Decision) -> Response<Bytes> {
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

/// The size of the body to keep for a sandbox-bound request's fallback: its declared length
/// (none when the request ended with its head), if it is at most `limit`.
fn replay_size(headers: &HeaderMap, body: &RecvStream, limit: usize) -> Option<usize> {
    declared_length(headers, body)
        .filter(|&n| n <= limit as u64)
        .map(|n| n as usize)
}

/// The body's length as the request declared it: 0 when the stream ended with the head, else
/// its `content-length` (every value the same, as hyper read it).
fn declared_length(headers: &HeaderMap, body: &RecvStream) -> Option<u64> {
    if body.is_end_stream() {
        return Some(0);
    }
    let mut len = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.to_str().ok()?.split(',') {
            let n: u64 = part.trim().parse().ok()?;
            if len.is_some_and(|l| l != n) {
                return None;
            }
            len = Some(n);
        }
    }
    len
}

/// The request's body, as it goes upstream.
enum Outgoing {
    /// Piped from the client as it comes.
    Streamed(RecvStream),
    /// Read whole first (a sandbox-bound request's fallback may need it again).
    Buffered(Buffered),
}

async fn forward(
    shared: &ProxyShared,
    source: crate::netns::UpstreamSource,
    decision: &mut Decision,
    parts: request::Parts,
    body: RecvStream,
) -> Reply {
    let Some(upstream) = decision.upstream else {
        return Reply::Local(reject(decision));
    };
    let replayable = decision.kind == DecisionKind::Sandbox
        && replay_size(&parts.headers, &body, shared.limits.max_request_buffer).is_some();
    let body = if replayable {
        match collect(body).await {
            Ok(b) => Outgoing::Buffered(b),
            Err(e) => {
                return Reply::Local(local_response(
                    StatusCode::BAD_REQUEST,
                    format!("shunt: reading the request body: {e}\n"),
                ));
            }
        }
    } else {
        Outgoing::Streamed(body)
    };
    // The request head is copied only when a retry on baseline is possible (a kept body and a
    // baseline to fall back to): most requests never pay for the clone.
    let retry = match &body {
        Outgoing::Buffered(b) if decision.fallback.is_some() => Some((parts.clone(), b.clone())),
        _ => None,
    };
    let sent = exchange(shared, source, upstream, parts, body);
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
                (Some(baseline), Some((parts, kept))) => {
                    decision.kind = DecisionKind::Baseline;
                    decision.upstream = Some(baseline);
                    exchange(shared, source, baseline, parts, Outgoing::Buffered(kept))
                        .await
                        .map_err(Failed::Upstream)
                }
                (None, _) => {
                    decision.kind = DecisionKind::Reject;
                    return Reply::Local(reject(decision));
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
        Ok((resp, pipe)) => Reply::Upstream(resp, pipe),
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
            Reply::Local(local_response(status, format!("shunt: {why}{hint}\n")))
        }
    }
}

/// Sends the request to `upstream` and waits for its response head, sending the body
/// meanwhile; a streamed body still coming when the head arrives is handed back as its pipe.
async fn exchange(
    shared: &ProxyShared,
    source: crate::netns::UpstreamSource,
    upstream: std::net::SocketAddr,
    parts: request::Parts,
    body: Outgoing,
) -> Result<(Response<RecvStream>, Option<BodyPipe>), UpstreamError> {
    let eos = match &body {
        Outgoing::Streamed(b) => b.is_end_stream(),
        Outgoing::Buffered(b) => b.is_empty(),
    };
    let request_failed = |source| UpstreamError::Request { upstream, source };
    let (response, mut send) = shared
        .upstreams
        .send(source, upstream, Request::from_parts(parts, ()), eos)
        .await?;
    let mut pipe = match body {
        Outgoing::Streamed(_) if eos => None,
        Outgoing::Streamed(b) => Some(BodyPipe::new(b, send)),
        Outgoing::Buffered(b) => {
            b.send(&mut send).map_err(request_failed)?;
            None
        }
    };
    let response = wait_for_head(response, &mut pipe)
        .await
        .map_err(request_failed)?;
    Ok((response, pipe))
}

/// The upstream's response head, while the request's body goes on.
async fn wait_for_head(
    mut response: ResponseFuture,
    pipe: &mut Option<BodyPipe>,
) -> Result<Response<RecvStream>, h2::Error> {
    poll_fn(|cx| {
        if let Some(p) = pipe
            && p.poll_to_end(cx).is_ready()
        {
            *pipe = None;
        }
        std::pin::Pin::new(&mut response).poll(cx)
    })
    .await
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

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
