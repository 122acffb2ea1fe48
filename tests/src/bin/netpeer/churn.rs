//! netpeer's churn mode: for a fixed time, every request on a NEW connection (HTTP/1.1,
//! `Connection: close`), from several workers at once. One JSON line per connection says when
//! it started, what answered and from which peer the backend saw it, so a test can tell a
//! proxied connection (the node's address) from one that went direct (the pod's).
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(5);

/// `churn ADDR SECS [HEADER:VALUE] [--workers N] [--pause-ms N]`
pub fn run(addr: SocketAddr, args: &[String]) -> anyhow::Result<()> {
    let secs: f64 = args.first().map(|v| v.parse()).transpose()?.unwrap_or(5.0);
    let header = args.get(1).filter(|h| h.contains(':')).and_then(|h| {
        let (k, v) = h.split_once(':')?;
        Some((k.trim().to_string(), v.trim().to_string()))
    });
    let flag = |name: &str, default: u64| -> anyhow::Result<u64> {
        Ok(args
            .iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let workers = flag("--workers", 4)?;
    let pause = Duration::from_millis(flag("--pause-ms", 5)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..workers {
            let (tx, header) = (tx.clone(), header.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let t = start.elapsed().as_millis() as u64;
                    let mut line = one(addr, header.as_ref()).await;
                    line["t_ms"] = t.into();
                    if tx.send(line).is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
        drop(tx);
        while let Some(line) = rx.recv().await {
            println!("{line}");
        }
        Ok(())
    })
}

async fn one(addr: SocketAddr, header: Option<&(String, String)>) -> serde_json::Value {
    match tokio::time::timeout(TIMEOUT, exchange(addr, header)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => json!({ "error": format!("{e:#}") }),
        Err(_) => json!({ "error": "timeout" }),
    }
}

async fn exchange(
    addr: SocketAddr,
    header: Option<&(String, String)>,
) -> anyhow::Result<serde_json::Value> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .uri("/")
        .header("host", addr.to_string())
        .header("connection", "close");
    if let Some((k, v)) = header {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new())?)
        .await?;
    let status = resp.status().as_u16();
    let served_by = crate::http::served_by(resp.headers());
    let body = resp.into_body().collect().await?.to_bytes();
    let served: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Ok(json!({ "status": status, "served_by": served_by, "peer": served["peer"] }))
}
