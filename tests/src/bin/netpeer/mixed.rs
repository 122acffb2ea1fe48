//! netpeer's mixed mode, the soak's load: HTTP/1.1, h2c and gRPC at a fixed total rate (open
//! loop), a share of the requests keyed, each connection replaced after 100 requests. One JSON
//! line per request: when it was sent, over what, with which key, who answered, how long it took.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;
use tonic::metadata::MetadataValue;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Requests per connection before a new one is opened.
const PER_CONNECTION: usize = 100;
/// Connections per protocol, each carrying an equal share of the rate.
const CONNECTIONS: usize = 3;

/// `mixed HTTP_ADDR GRPC_ADDR SECS RPS KEY[,KEY...] EXPECT[,EXPECT...]`: every second request
/// is keyed (the keys in turn); EXPECT names who should answer a gRPC request with that key
/// (the first EXPECT is the baseline's, for unkeyed requests).
pub fn run(http: SocketAddr, args: &[String]) -> anyhow::Result<()> {
    let usage = "mixed HTTP_ADDR GRPC_ADDR SECS RPS KEYS EXPECTS";
    let arg = |i: usize| args.get(i).ok_or_else(|| anyhow::anyhow!(usage));
    let grpc: SocketAddr = arg(0)?.parse()?;
    let secs: f64 = arg(1)?.parse()?;
    let rps: f64 = arg(2)?.parse()?;
    let keys: Vec<String> = arg(3)?.split(',').map(str::to_string).collect();
    let expects: Vec<String> = arg(4)?.split(',').map(str::to_string).collect();
    anyhow::ensure!(
        expects.len() == keys.len() + 1,
        "{usage}: one EXPECT per key, plus one"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let plan = Arc::new(Plan {
            start,
            deadline,
            keys,
            expects,
        });
        let workers = 3 * CONNECTIONS;
        let interval = Duration::from_secs_f64(workers as f64 / rps);
        for w in 0..workers {
            let (tx, plan) = (tx.clone(), plan.clone());
            let proto = ["h1", "h2c", "grpc"][w % 3];
            let addr = if proto == "grpc" { grpc } else { http };
            // Spread the workers' ticks over one interval.
            let offset = interval.mul_f64(w as f64 / workers as f64);
            tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                worker(proto, addr, interval, w, plan, tx).await
            });
        }
        drop(tx);
        while let Some(line) = rx.recv().await {
            println!("{line}");
        }
        Ok(())
    })
}

struct Plan {
    start: Instant,
    deadline: Instant,
    keys: Vec<String>,
    expects: Vec<String>,
}

impl Plan {
    /// The key of request `n` of worker `w` (None: unkeyed) and who should answer it over gRPC.
    fn key(&self, w: usize, n: usize) -> (Option<&str>, &str) {
        let i = w + n;
        if i.is_multiple_of(2) {
            (None, &self.expects[0])
        } else {
            let k = (i / 2) % self.keys.len();
            (Some(&self.keys[k]), &self.expects[k + 1])
        }
    }
}

async fn worker(
    proto: &'static str,
    addr: SocketAddr,
    interval: Duration,
    w: usize,
    plan: Arc<Plan>,
    tx: UnboundedSender<serde_json::Value>,
) {
    let mut ticks = tokio::time::interval(interval);
    // Open loop: a late tick (a reconnect, a slow answer) is caught up, so the rate holds.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0usize;
    while Instant::now() < plan.deadline {
        let mut conn = match Conn::open(proto, addr).await {
            Ok(c) => Some(c),
            Err(e) => {
                let _ = tx.send(json!({ "t_ms": plan.start.elapsed().as_millis() as u64,
                    "proto": proto, "error": format!("connect: {e:#}") }));
                None
            }
        };
        for _ in 0..PER_CONNECTION {
            ticks.tick().await;
            if Instant::now() >= plan.deadline {
                return;
            }
            let (key, expect) = plan.key(w, n);
            n += 1;
            let t = plan.start.elapsed();
            let sent = Instant::now();
            let result = match conn.as_mut() {
                Some(c) => tokio::time::timeout(TIMEOUT, c.request(key, expect))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("timeout"))),
                None => Err(anyhow::anyhow!("no connection")),
            };
            let mut line = json!({ "t_ms": t.as_millis() as u64, "proto": proto, "key": key,
                "lat_us": sent.elapsed().as_micros() as u64 });
            match result {
                Ok(served_by) => line["served_by"] = served_by.into(),
                Err(e) => {
                    line["error"] = format!("{e:#}").into();
                    // A broken connection is replaced at once.
                    break;
                }
            }
            if tx.send(line).is_err() {
                return;
            }
        }
    }
}

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(
        hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
        SocketAddr,
    ),
    Grpc(HealthClient<tonic::transport::Channel>),
}

impl Conn {
    async fn open(proto: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let connect = async {
            if proto == "grpc" {
                // One channel, one connection: replaced with the Conn.
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect()
                    .await?;
                return Ok(Conn::Grpc(HealthClient::new(channel)));
            }
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            let io = TokioIo::new(stream);
            Ok(if proto == "h2c" {
                let (s, c) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(c);
                Conn::H2(s, addr)
            } else {
                let (s, c) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(c);
                Conn::H1(s)
            })
        };
        tokio::time::timeout(TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("connect timeout")))
    }

    /// One request; who answered (`x-served-by`; for gRPC, `expect` or `other`).
    async fn request(&mut self, key: Option<&str>, expect: &str) -> anyhow::Result<String> {
        let baggage = key.map(|k| format!("sd-routing-key={k}"));
        let resp = match self {
            Conn::Grpc(client) => {
                // Only the expected server knows its own service name: NOT_FOUND means another
                // one answered.
                let mut r = tonic::Request::new(HealthCheckRequest {
                    service: tests::grpc_backend::service_name(expect),
                });
                if let Some(b) = &baggage {
                    r.metadata_mut()
                        .insert("baggage", MetadataValue::try_from(b.as_str())?);
                }
                return match client.check(r).await {
                    Ok(_) => Ok(expect.to_string()),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok("other".into()),
                    Err(s) => Err(anyhow::anyhow!("grpc {:?}: {}", s.code(), s.message())),
                };
            }
            Conn::H1(s) => {
                let mut b = Request::builder().uri("/").header("host", "reviews");
                if let Some(v) = &baggage {
                    b = b.header("baggage", v.as_str());
                }
                s.ready().await?;
                s.send_request(b.body(Empty::new())?).await?
            }
            Conn::H2(s, addr) => {
                let mut b = Request::builder().uri(format!("http://{addr}/"));
                if let Some(v) = &baggage {
                    b = b.header("baggage", v.as_str());
                }
                s.ready().await?;
                s.send_request(b.body(Empty::new())?).await?
            }
        };
        let status = resp.status();
        let served_by = crate::http::served_by(resp.headers()).unwrap_or_default();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "status {status}");
        // The backend names the peer it saw: the node (through a proxy) or the client (direct).
        let peer = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["peer"].as_str().map(str::to_string))
            .unwrap_or_default();
        Ok(format!("{served_by} {peer}"))
    }
}
