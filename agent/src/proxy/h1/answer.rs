//! Local answers (a Reject, a failed connect, a budget refusal) and their decision records.
use super::*;

impl Conn<'_> {
    /// Answers with a local response (Reject, a failed connect); the connection goes on if the
    /// request's body was here whole, so the next request's start is known.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn answer_locally(
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

    pub(super) async fn answer_error(
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

    pub(super) fn record(
        &self,
        head: &RequestHead,
        decision: Decision,
        status: u16,
        started: std::time::Instant,
    ) {
        self.shared.record(
            &self.info,
            decision,
            Exit {
                status: Some(status),
                latency: Some(started.elapsed()),
                ..exit_of(head)
            },
        );
    }
}

/// What a decision record says of the request: its method and path, and its key.
pub(super) fn exit_of(head: &RequestHead) -> Exit {
    // The method is a tag for the standard ones; only the path is copied.
    Exit {
        request: Some((head.method.clone(), head.path.clone())),
        key: head.extracted.key.clone(),
        key_injected: head.key_injected(),
        ..Exit::default()
    }
}
