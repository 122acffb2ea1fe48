//! An HTTP/2 (prior knowledge) client on the h2 crate, run inside a pod namespace: sends one
//! request exactly as described (pseudo-headers included) and prints, as one JSON line, every
//! field of the response as received: status, headers in order, whether the HEADERS frame ended
//! the stream (a trailers-only gRPC response), body and trailers.
//!
//! `h2peer ADDR REQUEST_JSON`, REQUEST_JSON:
//! `{"method","scheme","authority","path","headers":[[name,value]...],"body"}`.
use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Spec {
    method: String,
    scheme: String,
    authority: String,
    path: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

fn fields(map: &http::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn exchange(addr: SocketAddr, spec: Spec) -> anyhow::Result<serde_json::Value> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (client, conn) = h2::client::handshake(tcp).await?;
    tokio::spawn(conn);
    let mut client = client.ready().await?;
    let uri = http::Uri::builder()
        .scheme(spec.scheme.as_str())
        .authority(spec.authority.as_str())
        .path_and_query(spec.path.as_str())
        .build()?;
    let mut builder = http::Request::builder()
        .method(spec.method.as_str())
        .uri(uri);
    for (n, v) in &spec.headers {
        builder = builder.header(n, v);
    }
    let end = spec.body.is_empty();
    let (response, mut send) = client.send_request(builder.body(())?, end)?;
    if !end {
        send.send_data(Bytes::from(spec.body.into_bytes()), true)?;
    }
    let (parts, mut body) = response.await.context("response head")?.into_parts();
    let end_stream_on_headers = body.is_end_stream();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?;
    Ok(json!({
        "status": parts.status.as_u16(),
        "headers": fields(&parts.headers),
        "end_stream_on_headers": end_stream_on_headers,
        "body": String::from_utf8_lossy(&data),
        "trailers": trailers.as_ref().map(fields),
    }))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(spec)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: h2peer ADDR REQUEST_JSON");
    };
    let addr: SocketAddr = addr.parse()?;
    let spec: Spec = serde_json::from_str(spec)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let line = rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(10), exchange(addr, spec)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => json!({ "error": format!("{e:#}") }),
            Err(_) => json!({ "error": "timed out after 10s" }),
        }
    });
    println!("{line}");
    Ok(())
}
