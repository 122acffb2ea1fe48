//! netpeer's HTTP modes: several requests on ONE connection (HTTP/1.1 keep-alive, or HTTP/2
//! streams, optionally concurrent), and a websocket exchange.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Req {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

/// Who answered: the backend's `x-served-by` header.
pub fn served_by(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn get() -> String {
    "GET".into()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn run(addr: SocketAddr, args: &[String]) -> anyhow::Result<()> {
    let h2 = args.iter().any(|a| a == "--h2");
    let concurrent = args.iter().any(|a| a == "--concurrent");
    let spec = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .ok_or_else(|| anyhow::anyhow!("requests JSON"))?;
    let reqs: Vec<Req> = serde_json::from_str(spec)?;
    runtime()?.block_on(async move {
        let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr)).await??;
        let io = TokioIo::new(stream);
        let build = |r: &Req| -> anyhow::Result<Request<Full<Bytes>>> {
            let mut b = Request::builder().method(r.method.as_str());
            b = if h2 {
                b.uri(format!("http://{addr}{}", r.path))
            } else {
                b.uri(r.path.as_str())
            };
            if !h2 {
                b = b.header("host", addr.to_string());
            }
            for (k, v) in &r.headers {
                b = b.header(k, v);
            }
            Ok(b.body(Full::new(Bytes::from(r.body.clone())))?)
        };
        if h2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            if concurrent {
                let futs: Vec<_> = reqs
                    .iter()
                    .map(|r| {
                        let mut s = sender.clone();
                        let req = build(r);
                        async move { exchange(req.map(|q| s.send_request(q)), true).await }
                    })
                    .collect();
                for line in futures::future::join_all(futs).await {
                    println!("{line}");
                }
            } else {
                for r in &reqs {
                    let mut s = sender.clone();
                    let line = exchange(build(r).map(|q| s.send_request(q)), true).await;
                    println!("{line}");
                }
            }
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            for r in &reqs {
                if sender.ready().await.is_err() {
                    println!("{}", json!({ "error": "connection closed" }));
                    continue;
                }
                let line = exchange(build(r).map(|q| sender.send_request(q)), false).await;
                println!("{line}");
            }
        }
        Ok(())
    })
}

async fn exchange<F>(send: anyhow::Result<F>, _h2: bool) -> serde_json::Value
where
    F: std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    let fut = match send {
        Ok(f) => f,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    match tokio::time::timeout(TIMEOUT, fut).await {
        Err(_) => json!({ "error": "timeout" }),
        Ok(Err(e)) => json!({ "error": e.to_string() }),
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let served_by = served_by(resp.headers());
            let (parts, body) = resp.into_parts();
            match tokio::time::timeout(TIMEOUT, body.collect()).await {
                Ok(Ok(b)) => {
                    let trailers = b.trailers().map(|t| {
                        t.iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect::<BTreeMap<_, _>>()
                    });
                    let body = String::from_utf8_lossy(&b.to_bytes()).into_owned();
                    let served = serde_json::from_str::<serde_json::Value>(&body).ok();
                    json!({ "status": status, "served_by": served_by, "body": body, "served": served,
                            "version": format!("{:?}", parts.version), "trailers": trailers })
                }
                Ok(Err(e)) => json!({ "status": status, "error": format!("body: {e}") }),
                Err(_) => json!({ "status": status, "error": "body timeout" }),
            }
        }
    }
}

/// Opens a websocket at `/ws` with the given headers, sends MESSAGE, prints the reply.
pub fn websocket(addr: SocketAddr, args: &[String]) -> anyhow::Result<()> {
    let headers: BTreeMap<String, String> =
        serde_json::from_str(args.first().map(String::as_str).unwrap_or("{}"))?;
    let message = args.get(1).cloned().unwrap_or_else(|| "hello".into());
    runtime()?.block_on(async move {
        let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr)).await??;
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{addr}/ws"),
            )?;
        for (k, v) in &headers {
            req.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes())?,
                v.parse()?,
            );
        }
        let (mut ws, resp) =
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(req, stream)).await??;
        let served_by = served_by(resp.headers());
        let mut replies = Vec::new();
        for i in 0..3 {
            ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
                "{message} {i}"
            )))
            .await?;
            match tokio::time::timeout(TIMEOUT, ws.next()).await? {
                Some(Ok(m)) => replies.push(m.to_text().unwrap_or("").to_string()),
                other => anyhow::bail!("no websocket reply: {other:?}"),
            }
        }
        println!("{}", json!({ "served_by": served_by, "replies": replies }));
        Ok(())
    })
}
