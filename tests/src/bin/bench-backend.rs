//! The benchmark backend: one small hyper server (HTTP/1.1 and h2c, one thread) so the bench can
//! pin it to a CPU with `taskset`. Every response carries `x-served-by: NAME`.
//!
//! `bench-backend NAME ADDR[,ADDR...]`
//! - `GET /bytes/N`: N bytes (at most 1 MiB) of `x`; counted.
//! - `GET /stats`: `{"server": NAME, "requests": N}`, the number of counted requests so far.
//! - anything else: `ok`; counted.
//!
//! Prints `ready` on stdout once every address is bound.
use std::{
    convert::Infallible,
    io::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, header::HeaderValue, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

const MAX_BYTES: usize = 1 << 20;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench-backend NAME ADDR[,ADDR...]";
    let name = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let addrs: Vec<SocketAddr> = args
        .next()
        .ok_or_else(|| anyhow::anyhow!(usage))?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let served_by = HeaderValue::from_str(&name)?;
    let payload = Bytes::from(vec![b'x'; MAX_BYTES]);
    let requests = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut listeners = Vec::new();
        for a in &addrs {
            let sock = if a.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.set_reuseaddr(true)?;
            sock.bind(*a)?;
            listeners.push(sock.listen(4096)?);
        }
        println!("ready");
        std::io::stdout().flush()?;
        let mut tasks = Vec::new();
        for listener in listeners {
            let (name, served_by, payload, requests) = (
                name.clone(),
                served_by.clone(),
                payload.clone(),
                requests.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((io, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = io.set_nodelay(true);
                    let (name, served_by, payload, requests) = (
                        name.clone(),
                        served_by.clone(),
                        payload.clone(),
                        requests.clone(),
                    );
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            std::future::ready(serve(&name, &served_by, &payload, &requests, req))
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(io), svc)
                            .await;
                    });
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })
}

fn serve(
    name: &str,
    served_by: &HeaderValue,
    payload: &Bytes,
    requests: &AtomicU64,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let body = if path == "/stats" {
        let n = requests.load(Ordering::Relaxed);
        Bytes::from(format!(r#"{{"server":"{name}","requests":{n}}}"#))
    } else {
        requests.fetch_add(1, Ordering::Relaxed);
        match path.strip_prefix("/bytes/").and_then(|n| n.parse().ok()) {
            Some(n) => payload.slice(..usize::min(n, MAX_BYTES)),
            None => Bytes::from_static(b"ok"),
        }
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert("x-served-by", served_by.clone());
    Ok(resp)
}
