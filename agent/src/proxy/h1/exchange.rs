//! One request's exchange: route it, take an upstream connection, send the head and body, relay
//! the response.
use super::*;

impl Conn<'_> {
    /// Routes and forwards one request, and relays its response.
    pub(super) async fn exchange(&mut self, head: RequestHead) -> Next {
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
            self.shared
                .record(&self.info, decision, super::answer::exit_of(&head));
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
            let held = crate::proxy::buffer_budget::REQUEST_OVERHEAD + head.len + prefix;
            match crate::proxy::buffer_budget::Charge::take(held, None, &shared.buffers) {
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
    pub(super) async fn forward(
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
                    let why = crate::proxy::upstream::error_chain(&e);
                    return self
                        .sandbox_went_away(head, decision, body, prefix, &why, started)
                        .await;
                }
                Err(e) => {
                    let why = crate::proxy::upstream::error_chain(&e);
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
            tracing::debug!(upstream = %up.addr, error = %crate::proxy::upstream::error_chain(&e), "response body relay ended");
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
    pub(super) async fn send(
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
    pub(super) async fn upstream_for(
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
}

/// Writes every slice, in as few `writev` calls as the socket allows (one, normally).
pub(super) async fn write_all_vectored(
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
