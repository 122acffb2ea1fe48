//! The HTTP/1.1 path, built for what the proxy does and nothing more: read a request head,
//! find its key, pick the upstream, forward.
//!
//! One task per client connection drives both sides (no channel between them). Heads are parsed
//! in the read buffer ([`head`]) and written upstream in one `writev`, rewritten only where
//! hop-by-hop headers or the key's query parameter require; bodies are relayed by their framing
//! as received ([`body`]). Unkeyed requests of a client connection share one upstream connection
//! to one baseline endpoint (pinned); keyed ones use a connection from a shared per-upstream
//! [`pool`]. Every request is routed on its own key, pipelined ones included.
pub mod body;
pub mod head;
pub mod pool;
mod sandbox_timeout;

use std::{io, io::IoSlice, pin::Pin, sync::Arc, time::Duration};

use bytes::{Buf as _, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{Instant, Sleep},
};

use super::{ConnInfo, Exit, ProxyShared};
use crate::routes::{ConnRoute, Decision, DecisionKind, DecisionReason};
use body::{BodyState, Framing};
use head::{HeadError, HeadLimits, RequestHead, RequestKind, ResponseHead};
use pool::UpstreamConn;

/// What a head read asks for at a time.
const HEAD_CHUNK: usize = 8 * 1024;
/// How long a closing connection keeps reading (and dropping) what the client still sends, so
/// our last response is not destroyed by a reset.
const LINGER: Duration = Duration::from_secs(1);

/// Serves one HTTP/1.1 client connection until it closes.
pub async fn serve(shared: Arc<ProxyShared>, client: TcpStream, info: ConnInfo) {
    let mut conn = Conn {
        shared: &shared,
        strip_keys: shared.keys.strips(info.client.get().ip()),
        info,
        route: info.route(),
        client,
        cbuf: BytesMut::with_capacity(HEAD_CHUNK),
        ubuf: BytesMut::new(),
        pinned: None,
        keyed: None,
        invalid_logged: false,
        inject: super::key_inject::key_for_h1(&info),
    };
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    conn.run(timer.as_mut()).await;
    conn.close().await;
}

/// Which of a client connection's upstream slots a connection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// The baseline connection unkeyed requests share.
    Pinned,
    /// The connection of the last keyed request.
    Keyed,
}

/// Whether the client connection goes on after an exchange.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Close,
}

/// The outcome of waiting for a request head.
enum ReadHead {
    Head(Box<RequestHead>),
    /// The client left, idled out, or the proxy is shutting down between requests.
    Closed,
    /// The head is refused with this status before routing.
    Refuse(u16),
}

/// Why no response head came back.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// The upstream closed or reset before sending anything: on a reused connection this is
    /// usually its idle close, and a request held whole in the buffer may be sent again.
    #[error("upstream closed the connection before responding")]
    Closed,
    #[error("upstream i/o")]
    Io(#[source] io::Error),
    #[error("upstream sent a bad response head")]
    BadResponse(#[source] HeadError),
    /// The client went away while its request body was being relayed.
    #[error("client closed during the request body")]
    ClientGone,
    #[error("relaying the request body")]
    RequestBody(#[source] body::RelayError),
}

struct Conn<'a> {
    shared: &'a ProxyShared,
    info: ConnInfo,
    /// The connection's routing state: its baseline endpoint once picked, which `pinned`
    /// connects to.
    route: ConnRoute,
    client: TcpStream,
    /// The client's bytes not yet forwarded: the current request head, then what follows.
    cbuf: BytesMut,
    /// The upstream's bytes not yet relayed.
    ubuf: BytesMut,
    pinned: Option<UpstreamConn>,
    keyed: Option<UpstreamConn>,
    invalid_logged: bool,
    /// The client is one whose routing keys are stripped (`--strip-keys-from`).
    strip_keys: bool,
    /// A marked source's key, added to its requests that carry none.
    inject: Option<crate::routes::RoutingKey>,
}

impl Conn<'_> {
    async fn run(&mut self, mut timer: Pin<&mut Sleep>) {
        loop {
            let head = match self.read_head(timer.as_mut()).await {
                ReadHead::Head(h) => *h,
                ReadHead::Closed => return,
                ReadHead::Refuse(status) => return self.refuse(status).await,
            };
            if self.exchange(head).await == Next::Close || self.shared.shutdown.is_cancelled() {
                return;
            }
        }
    }

    fn limits(&self) -> HeadLimits {
        HeadLimits {
            max_bytes: self.shared.limits.max_header_bytes,
            max_headers: self.shared.limits.max_headers,
        }
    }

    /// Waits for a complete request head. Idle time between requests is bounded by the idle
    /// timeout (closed quietly); once a byte of a head arrives, the rest must follow within the
    /// header read timeout (408).
    async fn read_head(&mut self, mut timer: Pin<&mut Sleep>) -> ReadHead {
        let limits = self.limits();
        let mut header_deadline = None;
        loop {
            if !self.cbuf.is_empty() {
                let (keys, strip, inject) =
                    (&self.shared.keys, self.strip_keys, self.inject.as_ref());
                match head::parse_request_injecting(&self.cbuf, limits, keys, strip, inject) {
                    Ok(Some(h)) => return ReadHead::Head(Box::new(h)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(client = %self.info.client, error = %e, "request head refused");
                        return ReadHead::Refuse(e.status());
                    }
                }
                header_deadline
                    .get_or_insert_with(|| Instant::now() + self.shared.limits.header_read_timeout);
            }
            let idle = self.cbuf.is_empty();
            let deadline =
                header_deadline.unwrap_or_else(|| Instant::now() + self.shared.limits.idle_timeout);
            timer.as_mut().reset(deadline);
            self.cbuf.reserve(HEAD_CHUNK);
            tokio::select! {
                biased;
                r = self.client.read_buf(&mut self.cbuf) => match r {
                    Ok(0) | Err(_) => return ReadHead::Closed,
                    Ok(_) => {}
                },
                _ = self.shared.shutdown.cancelled(), if idle => return ReadHead::Closed,
                _ = upstream_closed(self.pinned.as_ref()), if idle && self.pinned.is_some() => {
                    // The pinned upstream closed between requests: so does this connection.
                    self.pinned = None;
                    return ReadHead::Closed;
                }
                _ = timer.as_mut() => {
                    return match header_deadline {
                        Some(_) => ReadHead::Refuse(408),
                        None => ReadHead::Closed,
                    };
                }
            }
        }
    }

    /// Answers a refused head and closes. A 408 is a routing outcome (logged as a decision);
    /// malformed heads are not.
    async fn refuse(&mut self, status: u16) {
        let _ = self.client.write_all(&head::refusal(status)).await;
        if status == 408 {
            let service = self
                .shared
                .table()
                .resolve(self.info.original_dst, self.info.service)
                .map(|(svc, _)| svc.label.clone());
            self.shared.record(
                &self.info,
                Decision::reject(DecisionReason::HeaderReadTimeout, service),
                Exit {
                    status: Some(408),
                    ..Exit::default()
                },
            );
        }
    }

    /// Routes and forwards one request, and relays its response.
    async fn exchange(&mut self, head: RequestHead) -> Next {
        let started = std::time::Instant::now();
        let shared = self.shared;
        if let Some(invalid) = &head.extracted.invalid
            && !std::mem::replace(&mut self.invalid_logged, true)
        {
            tracing::debug!(client = %self.info.client, source = ?invalid.source, raw = %invalid.raw,
                "malformed routing key, treated as no key");
        }
        let mut decision = shared.decide(
            &mut self.route,
            head.extracted.key.as_ref(),
            head.extracted.invalid.is_some(),
        );
        if decision.drops_connection() {
            // No endpoint on this node under `internalTrafficPolicy: Local`: closed unanswered,
            // as kube-proxy drops it.
            self.shared.record(
                &self.info,
                decision,
                Exit {
                    request: Some((head.method.clone(), head.path.clone())),
                    key: head.extracted.key.clone(),
                    key_injected: head.key_injected(),
                    ..Exit::default()
                },
            );
            return Next::Close;
        }
        // The body bytes already here. A malformed chunked prefix refuses the request before
        // anything is forwarded.
        let mut body = BodyState::new(head.framing);
        let prefix = match body.advance(&self.cbuf[head.len..]) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(client = %self.info.client, error = %e, "request body refused");
                self.refuse(400).await;
                return Next::Close;
            }
        };
        if decision.kind == DecisionKind::Reject {
            let text = reject_text(&decision);
            return self
                .answer_locally(head, decision, 503, &text, body, prefix, started)
                .await;
        }
        // A sandbox-bound request is charged what it holds while it waits (see
        // `buffer_budget`); past the proxy's budget it is refused with a 503.
        let _charge = if decision.kind == DecisionKind::Sandbox {
            let held = super::buffer_budget::REQUEST_OVERHEAD + head.len + prefix;
            match super::buffer_budget::Charge::take(held, None, &shared.buffers) {
                Ok(c) => Some(c),
                Err(over) => {
                    decision.kind = DecisionKind::Reject;
                    decision.reason = DecisionReason::BufferBudgetExhausted;
                    decision.upstream = None;
                    let text = format!("shunt: {over}; try again\n");
                    return self
                        .answer_locally(head, decision, 503, &text, body, prefix, started)
                        .await;
                }
            }
        } else {
            None
        };
        if head.upgrade {
            return self.upgrade(head, decision, prefix, started).await;
        }
        let (up, slot) = match self.upstream_for(&mut decision).await {
            Ok(pair) => pair,
            Err((status, text)) => {
                return self
                    .answer_locally(head, decision, status, &text, body, prefix, started)
                    .await;
            }
        };
        self.forward(head, decision, body, prefix, up, slot, started)
            .await
    }

    /// Sends the request on `up`, relays the response, and puts `up` back in its slot if it
    /// can carry another exchange.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &mut self,
        head: RequestHead,
        mut decision: Decision,
        mut body: BodyState,
        prefix: usize,
        mut up: UpstreamConn,
        slot: Slot,
        started: std::time::Instant,
    ) -> Next {
        let kind = RequestKind {
            head: head.method == http::Method::HEAD,
            connect: false,
            upgrade: false,
        };
        // A request held whole in the buffer can be sent again if a reused connection turns
        // out to be closed; it stays in the buffer until the response head arrives.
        let whole = body.is_done();
        let request_end = head.len + prefix;
        let mut retried = false;
        // Only a sandbox gets a deadline for its response headers: a baseline request waits
        // as long as it would on a direct connection.
        let deadline = (decision.kind == DecisionKind::Sandbox)
            .then_some(self.shared.limits.response_header_timeout);
        let response = loop {
            let sent = self.send(&head, &mut body, request_end, whole, &mut up, kind);
            let sent = match deadline {
                None => sent.await,
                Some(limit) => match tokio::time::timeout(limit, sent).await {
                    Ok(r) => r,
                    Err(_) => {
                        drop(up);
                        return self
                            .sandbox_timed_out(head, decision, body, prefix, whole, started)
                            .await;
                    }
                },
            };
            match sent {
                Ok(r) => break r,
                Err(ExchangeError::Closed) if up.reused && whole && !retried => {
                    retried = true;
                    match self.shared.upstreams.h1.connect(up.source, up.addr).await {
                        Ok(fresh) => up = fresh,
                        Err(e) if decision.kind == DecisionKind::Sandbox => {
                            drop(up);
                            return self
                                .sandbox_went_away(
                                    head,
                                    decision,
                                    body,
                                    prefix,
                                    &e.to_string(),
                                    started,
                                )
                                .await;
                        }
                        Err(e) => {
                            let text = format!("shunt: connecting to {}: {e}\n", up.addr);
                            return self
                                .answer_locally(head, decision, 502, &text, body, prefix, started)
                                .await;
                        }
                    }
                }
                // A sandbox that closes or resets before any response (its pod crashed): an
                // idempotent request still whole in the buffer may be sent again (RFC 9110
                // 9.2.2), so it takes the fallback rather than an error.
                Err(e @ (ExchangeError::Closed | ExchangeError::Io(_)))
                    if decision.kind == DecisionKind::Sandbox
                        && whole
                        && head.method.is_idempotent() =>
                {
                    drop(up);
                    let why = super::upstream::error_chain(&e);
                    return self
                        .sandbox_went_away(head, decision, body, prefix, &why, started)
                        .await;
                }
                Err(e) => {
                    let why = super::upstream::error_chain(&e);
                    tracing::debug!(upstream = %up.addr, error = %why, "forwarding failed");
                    if whole {
                        self.cbuf.advance(request_end);
                    }
                    let close = !body.is_done() || matches!(e, ExchangeError::ClientGone);
                    return self
                        .answer_error(
                            &head,
                            decision,
                            502,
                            &format!("shunt: upstream {}: {why}\n", up.addr),
                            close,
                            started,
                        )
                        .await;
                }
            }
        };
        if whole {
            self.cbuf.advance(request_end);
        }
        let mut response: ResponseHead = response;
        let body_sent = body.is_done();
        let upstream_closes = response.close || !body_sent;
        // A keyed upstream's close reaches the client as its `Connection: close`; a pinned
        // one's closes the client connection whatever it said.
        let close = head.close
            || !body_sent
            || response.close
            || (slot == Slot::Pinned && upstream_closes)
            || self.shared.shutdown.is_cancelled();
        response.finish(close);
        let mut rbody = BodyState::new(response.framing);
        let rprefix = match rbody.advance(&self.ubuf[response.len..]) {
            Ok(n) => n,
            Err(e) => {
                self.ubuf.clear();
                return self
                    .answer_error(
                        &head,
                        decision,
                        502,
                        &format!("shunt: upstream {}: response body: {e}\n", up.addr),
                        true,
                        started,
                    )
                    .await;
            }
        };
        let written = write_all_vectored(
            &mut self.client,
            response
                .out
                .slices(&self.ubuf, &self.ubuf[response.len..response.len + rprefix]),
        )
        .await;
        self.ubuf.advance(response.len + rprefix);
        decision.upstream = Some(up.addr);
        self.record(&head, decision, response.status, started);
        if written.is_err() {
            self.ubuf.clear();
            return Next::Close;
        }
        if let Err(e) =
            body::relay(&mut rbody, &mut self.ubuf, &mut up.stream, &mut self.client).await
        {
            tracing::debug!(upstream = %up.addr, error = %super::upstream::error_chain(&e), "response body relay ended");
            self.ubuf.clear();
            return Next::Close;
        }
        if upstream_closes || !self.ubuf.is_empty() {
            // Not reusable (closing, or stray bytes after the response).
            self.ubuf.clear();
            return if slot == Slot::Pinned || close {
                Next::Close
            } else {
                Next::Continue
            };
        }
        up.reused = true;
        match slot {
            Slot::Pinned => self.pinned = Some(up),
            Slot::Keyed => self.keyed = Some(up),
        }
        if close { Next::Close } else { Next::Continue }
    }

    /// Writes the request head (and the body bytes already here) to `up`, relays the rest of
    /// the body while watching for the response, relays interim responses, and returns the
    /// final response head (left at the start of `ubuf`).
    async fn send(
        &mut self,
        head: &RequestHead,
        body: &mut BodyState,
        request_end: usize,
        whole: bool,
        up: &mut UpstreamConn,
        kind: RequestKind,
    ) -> Result<ResponseHead, ExchangeError> {
        let slices = head
            .out
            .slices(&self.cbuf, &self.cbuf[head.len..request_end]);
        if let Err(e) = write_all_vectored(&mut up.stream, slices).await {
            return Err(if up.reused {
                ExchangeError::Closed
            } else {
                ExchangeError::Io(e)
            });
        }
        if !whole {
            self.cbuf.advance(request_end);
        }
        let limits = HeadLimits {
            max_bytes: self.shared.limits.max_header_bytes.max(64 * 1024),
            max_headers: self.shared.limits.max_headers.max(128),
        };
        self.ubuf.clear();
        let mut seen_response = false;
        loop {
            if !self.ubuf.is_empty() {
                seen_response = true;
                match head::parse_response(&self.ubuf, limits, kind) {
                    Ok(Some(r)) if r.is_interim() => {
                        // 100 Continue and friends go to the client as received.
                        self.client
                            .write_all(&self.ubuf[..r.len])
                            .await
                            .map_err(|_| ExchangeError::ClientGone)?;
                        self.ubuf.advance(r.len);
                        continue;
                    }
                    Ok(Some(r)) => return Ok(r),
                    Ok(None) => {}
                    Err(e) => return Err(ExchangeError::BadResponse(e)),
                }
            }
            self.ubuf.reserve(HEAD_CHUNK);
            let read = if body.is_done() {
                up.stream.read_buf(&mut self.ubuf).await
            } else {
                self.cbuf.reserve(body::READ_CHUNK);
                tokio::select! {
                    r = up.stream.read_buf(&mut self.ubuf) => r,
                    r = self.client.read_buf(&mut self.cbuf) => {
                        match r {
                            Ok(0) | Err(_) => return Err(ExchangeError::ClientGone),
                            Ok(_) => {}
                        }
                        let n = body.advance(&self.cbuf).map_err(|e| ExchangeError::RequestBody(e.into()))?;
                        up.stream.write_all(&self.cbuf[..n]).await.map_err(ExchangeError::Io)?;
                        self.cbuf.advance(n);
                        continue;
                    }
                }
            };
            match read {
                Ok(0) if !seen_response => return Err(ExchangeError::Closed),
                Err(e)
                    if !seen_response
                        && matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) =>
                {
                    return Err(if up.reused {
                        ExchangeError::Closed
                    } else {
                        ExchangeError::Io(e)
                    });
                }
                Ok(0) => {
                    return Err(ExchangeError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                Err(e) => return Err(ExchangeError::Io(e)),
                Ok(_) => {}
            }
        }
    }

    /// The upstream connection for a decision that forwards: the pinned baseline connection,
    /// the keyed one if it goes to the same sandbox, else one from the pool. A sandbox that
    /// refuses the connection falls back to baseline (or Reject), before any byte of the
    /// request was read past what is buffered, so nothing needs replaying.
    async fn upstream_for(
        &mut self,
        decision: &mut Decision,
    ) -> Result<(UpstreamConn, Slot), (u16, String)> {
        if decision.kind == DecisionKind::Sandbox
            && let Some(addr) = decision.upstream
        {
            if let Some(c) = self.keyed.take() {
                if c.addr == addr {
                    return Ok((c, Slot::Keyed));
                }
                self.shared.upstreams.h1.checkin(c);
            }
            match self.shared.upstreams.h1.get(self.info.source, addr).await {
                Ok(c) => return Ok((c, Slot::Keyed)),
                Err(e) => {
                    tracing::debug!(upstream = %addr, error = %e, "sandbox refused the connection");
                    decision.reason = DecisionReason::SandboxUnreachable;
                    match decision.fallback {
                        Some(baseline) => {
                            decision.kind = DecisionKind::Baseline;
                            decision.upstream = Some(baseline);
                        }
                        None => {
                            decision.kind = DecisionKind::Reject;
                            decision.upstream = None;
                            return Err((503, reject_text(decision)));
                        }
                    }
                }
            }
        }
        if let Some(c) = self.pinned.take() {
            return Ok((c, Slot::Pinned));
        }
        let Some(addr) = decision.upstream else {
            return Err((503, reject_text(decision)));
        };
        match self.shared.upstreams.h1.get(self.info.source, addr).await {
            Ok(c) => Ok((c, Slot::Pinned)),
            Err(e) => Err((502, format!("shunt: connecting to {addr}: {e}\n"))),
        }
    }

    /// A websocket or CONNECT upgrade: routed by its key like any request, on its own
    /// connection; if the upstream switches protocols, the bytes are copied both ways.
    async fn upgrade(
        &mut self,
        head: RequestHead,
        mut decision: Decision,
        prefix: usize,
        started: std::time::Instant,
    ) -> Next {
        let Some(addr) = decision.upstream else {
            let text = reject_text(&decision);
            return self
                .answer_error(&head, decision, 503, &text, true, started)
                .await;
        };
        let stream = match self.shared.upstreams.connect(self.info.source, addr).await {
            Ok(s) => s,
            Err(e) => {
                let text = format!("shunt: connecting to {addr}: {e}\n");
                return self
                    .answer_error(&head, decision, 502, &text, true, started)
                    .await;
            }
        };
        let mut up = UpstreamConn {
            stream,
            addr,
            source: self.info.source,
            reused: false,
        };
        let connect = head.method == http::Method::CONNECT;
        let kind = RequestKind {
            head: false,
            connect,
            upgrade: true,
        };
        let mut body = BodyState::new(Framing::Empty);
        let request_end = head.len + prefix;
        let response = match self
            .send(&head, &mut body, request_end, false, &mut up, kind)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let text = format!(
                    "shunt: upstream {addr}: {}\n",
                    super::upstream::error_chain(&e)
                );
                return self
                    .answer_error(&head, decision, 502, &text, true, started)
                    .await;
            }
        };
        let mut response = response;
        let switched = response.status == 101 || (connect && (200..300).contains(&response.status));
        response.finish(!switched);
        let written = write_all_vectored(
            &mut self.client,
            response.out.slices(&self.ubuf, &self.ubuf[response.len..]),
        )
        .await;
        let status = response.status;
        decision.upstream = Some(addr);
        self.record(&head, decision, status, started);
        if written.is_err() || !switched {
            // Not upgraded: whatever body follows is relayed until the upstream closes.
            if written.is_ok() {
                self.ubuf.advance(response.len);
                let mut rbody = BodyState::new(response.framing);
                let _ =
                    body::relay(&mut rbody, &mut self.ubuf, &mut up.stream, &mut self.client).await;
            }
            self.ubuf.clear();
            return Next::Close;
        }
        self.ubuf.clear();
        if !self.cbuf.is_empty() && up.stream.write_all(&self.cbuf).await.is_err() {
            return Next::Close;
        }
        self.cbuf.clear();
        // The tunnel runs in this connection's task, so it keeps the connection's slots (the
        // cap's and its client's) until it ends; idle, it ends like an opaque connection.
        let idle = self.shared.limits.opaque_idle_timeout;
        if let Err(super::relay::RelayError::Idle(_)) =
            super::relay::relay(&mut self.client, &mut up.stream, idle).await
        {
            self.shared.metrics.opaque_idle_closed();
        }
        Next::Close
    }

    /// Answers with a local response (Reject, a failed connect); the connection goes on if the
    /// request's body was here whole, so the next request's start is known.
    #[allow(clippy::too_many_arguments)]
    async fn answer_locally(
        &mut self,
        head: RequestHead,
        decision: Decision,
        status: u16,
        text: &str,
        body: BodyState,
        prefix: usize,
        started: std::time::Instant,
    ) -> Next {
        let close = !body.is_done() || head.close;
        if body.is_done() {
            self.cbuf.advance(head.len + prefix);
        }
        self.answer_error(&head, decision, status, text, close, started)
            .await
    }

    async fn answer_error(
        &mut self,
        head: &RequestHead,
        decision: Decision,
        status: u16,
        text: &str,
        close: bool,
        started: std::time::Instant,
    ) -> Next {
        let close = close || self.shared.shutdown.is_cancelled();
        let response = head::local_response(status, text, close, head.method == http::Method::HEAD);
        let written = self.client.write_all(&response).await;
        self.record(head, decision, status, started);
        if close || written.is_err() {
            Next::Close
        } else {
            Next::Continue
        }
    }

    fn record(
        &self,
        head: &RequestHead,
        decision: Decision,
        status: u16,
        started: std::time::Instant,
    ) {
        // The method is a tag for the standard ones; only the path is copied.
        self.shared.record(
            &self.info,
            decision,
            Exit {
                request: Some((head.method.clone(), head.path.clone())),
                key: head.extracted.key.clone(),
                status: Some(status),
                latency: Some(started.elapsed()),
                key_injected: head.key_injected(),
            },
        );
    }

    /// Gives idle upstream connections back to the pool and closes the client connection,
    /// reading what it still sends for a moment so the last response is not lost to a reset.
    async fn close(mut self) {
        let pool = &self.shared.upstreams.h1;
        if let Some(c) = self.pinned.take() {
            pool.checkin(c);
        }
        if let Some(c) = self.keyed.take() {
            pool.checkin(c);
        }
        if self.client.shutdown().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(LINGER, async {
            let mut sink = [0u8; 4096];
            let mut left = 256 * 1024usize;
            while let Ok(n @ 1..) = self.client.read(&mut sink).await {
                left = match left.checked_sub(n) {
                    Some(l) => l,
                    None => return,
                };
            }
        })
        .await;
    }
}

/// The 503 text of a Reject decision, naming the route.
fn reject_text(decision: &Decision) -> String {
    format!(
        "shunt: route {} has no ready sandbox endpoint for service {} ({}; fallback: Reject)\n",
        decision.route.as_deref().unwrap_or("?"),
        decision.service.as_deref().unwrap_or("?"),
        decision.reason.as_str(),
    )
}

/// Resolves when an idle upstream connection is closed by its end (or sends stray bytes).
async fn upstream_closed(conn: Option<&UpstreamConn>) {
    let Some(conn) = conn else {
        return std::future::pending().await;
    };
    loop {
        if conn.stream.readable().await.is_err() || !pool::is_open(&conn.stream) {
            return;
        }
    }
}

/// Writes every slice, in as few `writev` calls as the socket allows (one, normally).
async fn write_all_vectored(
    stream: &mut TcpStream,
    mut slices: Vec<IoSlice<'_>>,
) -> io::Result<()> {
    let mut bufs = &mut slices[..];
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = stream.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}
