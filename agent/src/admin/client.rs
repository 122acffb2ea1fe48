//! A client for the agent's debug API on loopback (no cluster), used by `shunt routes`,
//! `shunt topology` and `shunt mcp --routes`.
use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

/// GETs `path` from the debug API at `addr`; errors name the address and the status.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .with_context(|| format!("connecting to the agent's debug API at {addr}: timed out"))?
    .with_context(|| {
        format!(
            "connecting to the agent's debug API at {addr} (is `shunt run` up? see --debug-addr)"
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        anyhow::bail!("GET {path} from {addr}: {status}: {}", text.trim());
    }
    Ok(text)
}
