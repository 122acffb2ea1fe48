//! The HTTP/1.1 path, built for what the proxy does and nothing more: read a request head,
//! find its key, pick the upstream, forward.
//!
//! One task per client connection drives both sides (no channel between them). Heads are parsed
//! in the read buffer ([`head`]) and written upstream in one `writev`, rewritten only where
//! hop-by-hop headers or the key's query parameter require; bodies are relayed by their framing
//! as received ([`body`]). Unkeyed requests of a client connection share one upstream connection
//! to one baseline endpoint (pinned); keyed ones use a connection from a shared per-upstream
//! [`pool`]. Every request is routed on its own key, pipelined ones included.
mod answer;
pub mod body;
mod exchange;
pub mod head;
pub mod pool;
mod sandbox_timeout;
mod upgrade;

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
