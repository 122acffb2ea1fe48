//! The HTTP/1.1 path's `--response-header-timeout`: what happens to a sandbox-bound request whose
//! sandbox sends no response headers in time.
use super::{BodyState, Conn, Next, RequestHead, Slot, reject_text};
use crate::routes::{Decision, DecisionKind, DecisionReason};

impl Conn<'_> {
    /// The sandbox sent no response headers in time: the route's fallback. A request still
    /// held whole in the buffer goes to the connection's baseline endpoint; one whose body was
    /// streamed cannot be sent again (504, and the connection closes); under fallback Reject,
    /// 503.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn sandbox_timed_out(
        &mut self,
        head: RequestHead,
        mut decision: Decision,
        body: BodyState,
        prefix: usize,
        whole: bool,
        started: std::time::Instant,
    ) -> Next {
        let limit = self.shared.limits.response_header_timeout;
        self.shared.metrics.sandbox_response_timeout();
        // Whatever the sandbox sent of a response is dropped with its connection.
        self.ubuf.clear();
        decision.reason = DecisionReason::SandboxTimeout;
        tracing::debug!(client = %self.info.client, upstream = ?decision.upstream, ?limit, "sandbox response timeout");
        let Some(baseline) = decision.fallback else {
            decision.kind = DecisionKind::Reject;
            decision.upstream = None;
            let text = reject_text(&decision);
            return self
                .answer_error(&head, decision, 503, &text, !whole, started)
                .await;
        };
        if !whole {
            decision.reason = DecisionReason::BodyTooLargeToRetry;
            let text = format!(
                "shunt: the sandbox sent no response headers within {limit:?} \
                 (--response-header-timeout); the request body was streamed, so it cannot be \
                 sent to the fallback\n"
            );
            return self
                .answer_error(&head, decision, 504, &text, true, started)
                .await;
        }
        self.send_to_fallback(head, decision, baseline, body, prefix, started)
            .await
    }

    /// The sandbox went away under a request still whole in the buffer (the pod died while
    /// still listed ready): a reused connection turned out closed and a fresh one was refused,
    /// or an idempotent request's connection closed before any response. The request takes the
    /// route's fallback like any refused sandbox connection.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn sandbox_went_away(
        &mut self,
        head: RequestHead,
        mut decision: Decision,
        body: BodyState,
        prefix: usize,
        error: &str,
        started: std::time::Instant,
    ) -> Next {
        tracing::debug!(upstream = ?decision.upstream, %error, "sandbox went away under a request");
        // Whatever the sandbox sent of a response is dropped with its connection.
        self.ubuf.clear();
        decision.reason = DecisionReason::SandboxUnreachable;
        let Some(baseline) = decision.fallback else {
            decision.kind = DecisionKind::Reject;
            decision.upstream = None;
            let text = reject_text(&decision);
            return self
                .answer_locally(head, decision, 503, &text, body, prefix, started)
                .await;
        };
        self.send_to_fallback(head, decision, baseline, body, prefix, started)
            .await
    }

    /// Sends a whole, buffered request to the connection's baseline endpoint instead of its
    /// sandbox.
    async fn send_to_fallback(
        &mut self,
        head: RequestHead,
        mut decision: Decision,
        baseline: std::net::SocketAddr,
        body: BodyState,
        prefix: usize,
        started: std::time::Instant,
    ) -> Next {
        decision.kind = DecisionKind::Baseline;
        decision.upstream = Some(baseline);
        let up = match self.pinned.take() {
            Some(c) => c,
            None => match self
                .shared
                .upstreams
                .h1
                .get(self.info.source, baseline)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    let text = format!("shunt: connecting to {baseline}: {e}\n");
                    return self
                        .answer_locally(head, decision, 502, &text, body, prefix, started)
                        .await;
                }
            },
        };
        Box::pin(self.forward(head, decision, body, prefix, up, Slot::Pinned, started)).await
    }
}
