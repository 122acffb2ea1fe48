//! Moving an HTTP/2 body from one stream to another, the way hyper's pipe did it but with no task
//! of its own: DATA as the receiving side's window allows (capacity is reserved before a frame is
//! read, so at most one frame waits in the proxy), then the trailers (gRPC's status) or the end
//! of the stream. What is read is released to the sender's flow control as it is handed on.
use std::{
    future::poll_fn,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use hyper::HeaderMap;

/// Pipes `from` into `to` until `from` ends (or either side fails).
pub struct BodyPipe {
    from: RecvStream,
    to: SendStream<Bytes>,
    data_done: bool,
}

/// The h2 reason to reset with for `e`: its own, or INTERNAL_ERROR.
pub fn reason_of(e: &h2::Error) -> Reason {
    e.reason().unwrap_or(Reason::INTERNAL_ERROR)
}

impl BodyPipe {
    pub fn new(from: RecvStream, to: SendStream<Bytes>) -> Self {
        Self {
            from,
            to,
            data_done: false,
        }
    }

    /// Drives the pipe; ready when it has ended. A failure on the reading side resets the
    /// writing side with its reason (the peer sees the stream broken, not a truncated body
    /// ending cleanly); a failure on the writing side drops the reading side, which cancels it.
    pub fn poll_to_end(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match ready!(self.poll_pipe(cx)) {
            Ok(()) => {}
            Err(Broken::Recv(e)) => {
                tracing::debug!(error = %e, "h2 body ended with an error");
                self.to.send_reset(reason_of(&e));
            }
            Err(Broken::Send(e)) => {
                tracing::debug!(error = %e, "h2 body could not be sent on");
            }
        }
        Poll::Ready(())
    }

    fn poll_pipe(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Broken>> {
        loop {
            // The receiving side reset the stream: nothing more can go to it.
            if let Poll::Ready(r) = self.to.poll_reset(cx) {
                let e = match r {
                    Ok(reason) => h2::Error::from(reason),
                    Err(e) => e,
                };
                return Poll::Ready(Err(Broken::Send(e)));
            }
            if self.data_done {
                let trailers = ready!(self.from.poll_trailers(cx)).map_err(Broken::Recv)?;
                return Poll::Ready(self.finish(trailers).map_err(Broken::Send));
            }
            self.to.reserve_capacity(1);
            while self.to.capacity() == 0 {
                match ready!(self.to.poll_capacity(cx)) {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Poll::Ready(Err(Broken::Send(e))),
                    None => return Poll::Ready(Err(Broken::Send(Reason::CANCEL.into()))),
                }
            }
            match ready!(self.from.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = self.from.flow_control().release_capacity(chunk.len());
                    let eos = self.from.is_end_stream();
                    self.to.send_data(chunk, eos).map_err(Broken::Send)?;
                    if eos {
                        return Poll::Ready(Ok(()));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(Broken::Recv(e))),
                None => {
                    self.data_done = true;
                    self.to.reserve_capacity(0);
                }
            }
        }
    }

    fn finish(&mut self, trailers: Option<HeaderMap>) -> Result<(), h2::Error> {
        match trailers {
            Some(t) => self.to.send_trailers(t),
            None => self.to.send_data(Bytes::new(), true),
        }
    }
}

enum Broken {
    Recv(h2::Error),
    Send(h2::Error),
}

/// A request body read whole, to be sent again if its first destination fails.
#[derive(Clone)]
pub struct Buffered {
    pub data: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Buffered {
    /// The stream can end with the request head: nothing follows it.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }

    /// Sends it on `to` (its head sent already, without END_STREAM unless it is empty).
    pub fn send(&self, to: &mut SendStream<Bytes>) -> Result<(), h2::Error> {
        if self.is_empty() {
            return Ok(());
        }
        to.send_data(self.data.clone(), self.trailers.is_none())?;
        if let Some(t) = &self.trailers {
            to.send_trailers(t.clone())?;
        }
        Ok(())
    }
}

/// Reads `body` to its end (its declared length was checked against the buffer limit, and h2
/// holds the peer to it).
pub async fn collect(mut body: RecvStream) -> Result<Buffered, h2::Error> {
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = poll_fn(|cx| body.poll_trailers(cx)).await?;
    Ok(Buffered {
        data: data.freeze(),
        trailers,
    })
}
