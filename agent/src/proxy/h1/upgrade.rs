//! Websocket and CONNECT upgrades: routed by key like any request, then a byte tunnel.
use super::{exchange::write_all_vectored, *};

impl Conn<'_> {
    /// A websocket or CONNECT upgrade: routed by its key like any request, on its own
    /// connection; if the upstream switches protocols, the bytes are copied both ways.
    pub(super) async fn upgrade(
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
                    crate::proxy::upstream::error_chain(&e)
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
        if let Err(crate::proxy::relay::RelayError::Idle(_)) =
            crate::proxy::relay::relay(&mut self.client, &mut up.stream, idle).await
        {
            self.shared.metrics.opaque_idle_closed();
        }
        Next::Close
    }
}
