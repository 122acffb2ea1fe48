//! An HTTP/1.1 + HTTP/2 (h2c) backend bound inside a pod namespace, answering JSON that names who
//! served the request and what arrived (path, routing headers, peer), so tests can see where a
//! request was routed and what the proxy forwarded.
//!
//! Paths: `/slow?ms=N` answers after N ms; `/ws` accepts a websocket and echoes messages prefixed
//! with the server name; `/status/N` answers status N; anything else answers 200.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::netns::Netns;

/// What the backend answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Served {
    pub server: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: String,
    pub peer: SocketAddr,
    /// Routing-related request headers as received.
    pub headers: BTreeMap<String, String>,
    pub body_len: usize,
}

pub struct HttpBackend {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl HttpBackend {
    pub fn start(netns: &Netns, server: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = netns.run(move || std::net::TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let stop = CancellationToken::new();
        let requests = Arc::new(AtomicUsize::new(0));
        let (s, r, name) = (stop.clone(), requests.clone(), server.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("backend runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let (io, peer) = tokio::select! {
                        _ = s.cancelled() => return,
                        a = listener.accept() => match a { Ok(c) => c, Err(_) => continue },
                    };
                    let (name, r) = (name.clone(), r.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            r.fetch_add(1, Ordering::Relaxed);
                            serve(name.clone(), peer, req)
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(io), svc)
                            .await;
                    });
                }
            });
        });
        Ok(Self {
            addr,
            requests,
            stop,
        })
    }
}

const ROUTING_HEADERS: [&str; 6] = [
    "baggage",
    "tracestate",
    "uberctx-sd-routing-key",
    "ot-baggage-sd-routing-key",
    "x-route-key",
    "host",
];

async fn serve(
    server: String,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/ws" {
        return Ok(websocket(server, &mut req));
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        // A fixed-size payload, for benchmarks.
        let mut resp = Response::new(Full::new(Bytes::from(vec![b'x'; n])));
        resp.headers_mut()
            .insert("x-served-by", server.parse().expect("header value"));
        return Ok(resp);
    }
    if let Some(ms) = path.strip_prefix("/slow") {
        let _ = ms;
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let headers = ROUTING_HEADERS
        .iter()
        .filter_map(|h| {
            let v: Vec<&str> = req
                .headers()
                .get_all(*h)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!v.is_empty()).then(|| (h.to_string(), v.join(", ")))
        })
        .collect();
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_string);
    let version = format!("{:?}", req.version());
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let served = Served {
        server: server.clone(),
        method,
        path,
        query,
        version,
        peer,
        headers,
        body_len,
    };
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&served).unwrap_or_default(),
    )));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("x-served-by", server.parse().expect("header value"));
    Ok(resp)
}

fn websocket(server: String, req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let Some(key) = key else {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"expected a websocket upgrade",
        )));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let on_upgrade = hyper::upgrade::on(req);
    let name = server.clone();
    tokio::spawn(async move {
        let server = name;
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                let reply = format!("{server}: {t}");
                if ws
                    .send(tokio_tungstenite::tungstenite::Message::text(reply))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .header("x-served-by", server.as_str())
        .body(Full::new(Bytes::new()))
        .expect("response")
}
