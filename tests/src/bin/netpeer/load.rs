//! netpeer's load mode: closed-loop HTTP/1.1 (or h2c) requests over N connections for a fixed
//! time, reporting requests/s and latency percentiles as JSON.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

/// `load ADDR CONNS SECS [HEADER:VALUE] [--h2]`
pub fn run(addr: SocketAddr, args: &[String]) -> anyhow::Result<()> {
    let conns: usize = args.first().map(|v| v.parse()).transpose()?.unwrap_or(1);
    let secs: f64 = args.get(1).map(|v| v.parse()).transpose()?.unwrap_or(5.0);
    let header = args.get(2).filter(|h| h.contains(':')).and_then(|h| {
        let (k, v) = h.split_once(':')?;
        Some((k.trim().to_string(), v.trim().to_string()))
    });
    let h2 = args.iter().any(|a| a == "--h2");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let header = header.clone();
            tasks.push(tokio::spawn(async move {
                one_conn(addr, h2, header, deadline).await
            }));
        }
        let mut lat: Vec<u32> = Vec::new();
        let mut errors = 0u64;
        for t in tasks {
            let (l, e) = t.await.unwrap_or_default();
            lat.extend(l);
            errors += e;
        }
        lat.sort_unstable();
        let pct = |p: f64| -> u32 {
            if lat.is_empty() {
                0
            } else {
                lat[((lat.len() as f64 - 1.0) * p).round() as usize]
            }
        };
        println!(
            "{}",
            json!({
                "requests": lat.len(), "errors": errors, "rps": lat.len() as f64 / secs,
                "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99),
            })
        );
        Ok(())
    })
}

async fn one_conn(
    addr: SocketAddr,
    h2: bool,
    header: Option<(String, String)>,
    deadline: Instant,
) -> (Vec<u32>, u64) {
    let mut lat = Vec::new();
    let mut errors = 0;
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return (lat, 1);
    };
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    let build = || {
        let mut b = Request::builder();
        b = if h2 {
            b.uri(format!("http://{addr}/bytes/1024"))
        } else {
            b.uri("/bytes/1024").header("host", "bench")
        };
        if let Some((k, v)) = &header {
            b = b.header(k.as_str(), v.as_str());
        }
        b.body(Empty::<Bytes>::new()).expect("request")
    };
    macro_rules! drive {
        ($sender:expr) => {
            while Instant::now() < deadline {
                let t = Instant::now();
                match $sender.send_request(build()).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if ok {
                            lat.push(t.elapsed().as_micros() as u32)
                        } else {
                            errors += 1
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
        };
    }
    if h2 {
        let Ok((mut sender, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await
        else {
            return (lat, 1);
        };
        tokio::spawn(conn);
        drive!(sender);
    } else {
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
            return (lat, 1);
        };
        tokio::spawn(conn);
        drive!(sender);
    }
    (lat, errors)
}
