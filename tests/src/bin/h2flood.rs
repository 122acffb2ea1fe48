//! HTTP/2 (prior knowledge) load that waits: `h2flood ADDR CONNS STREAMS BODY_BYTES HOLD_MS
//! KEY`. Opens CONNS connections and STREAMS streams on each, every stream a POST with a
//! declared BODY_BYTES body and the routing key KEY (baggage), then waits up to HOLD_MS for
//! every answer and prints one JSON line: responses by status, streams reset with
//! REFUSED_STREAM, streams reset otherwise (or failed), and streams still waiting.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bytes::Bytes;
use serde_json::json;

#[derive(Debug)]
enum Outcome {
    Status(u16),
    Refused,
    Failed(String),
    Pending,
}

async fn flood(
    addr: SocketAddr,
    streams: usize,
    body: Bytes,
    hold: Duration,
    key: String,
) -> Vec<Outcome> {
    let tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(t) => t,
        Err(e) => return vec![Outcome::Failed(format!("connect: {e}"))],
    };
    let (client, conn) = match h2::client::handshake(tcp).await {
        Ok(p) => p,
        Err(e) => return vec![Outcome::Failed(format!("handshake: {e}"))],
    };
    tokio::spawn(conn);
    let deadline = tokio::time::Instant::now() + hold;
    let mut waiting = Vec::new();
    let mut client = client;
    for i in 0..streams {
        client = match tokio::time::timeout_at(deadline, client.clone().ready()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                waiting.push(tokio::spawn(async move { Outcome::Failed(e.to_string()) }));
                break;
            }
            Err(_) => break,
        };
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/flood/{i}"))
            .header("baggage", format!("sd-routing-key={key}"))
            .header("content-length", body.len())
            .body(())
            .expect("request");
        let (response, mut send) = match client.send_request(req, false) {
            Ok(p) => p,
            Err(e) => {
                waiting.push(tokio::spawn(async move { Outcome::Failed(e.to_string()) }));
                continue;
            }
        };
        let _ = send.send_data(body.clone(), true);
        waiting.push(tokio::spawn(async move {
            // Kept until the end, so the stream stays open while it waits.
            let _send = send;
            match tokio::time::timeout_at(deadline, response).await {
                Ok(Ok(r)) => Outcome::Status(r.status().as_u16()),
                Ok(Err(e)) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => Outcome::Refused,
                Ok(Err(e)) => Outcome::Failed(e.to_string()),
                Err(_) => Outcome::Pending,
            }
        }));
    }
    let mut out = Vec::new();
    for w in waiting {
        out.push(w.await.unwrap_or_else(|e| Outcome::Failed(e.to_string())));
    }
    // Keep the connection (and its pending streams) until every connection is done.
    tokio::time::sleep_until(deadline).await;
    drop(client);
    out
}

impl Clone for Outcome {
    fn clone(&self) -> Self {
        match self {
            Self::Status(s) => Self::Status(*s),
            Self::Refused => Self::Refused,
            Self::Failed(s) => Self::Failed(s.clone()),
            Self::Pending => Self::Pending,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: h2flood ADDR CONNS STREAMS BODY_BYTES HOLD_MS KEY";
    let arg = |i: usize| args.get(i).ok_or_else(|| anyhow::anyhow!(usage));
    let addr: SocketAddr = arg(1)?.parse()?;
    let conns: usize = arg(2)?.parse()?;
    let streams: usize = arg(3)?.parse()?;
    let body = Bytes::from(vec![b'x'; arg(4)?.parse()?]);
    let hold = Duration::from_millis(arg(5)?.parse()?);
    let key = arg(6)?.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcomes = rt.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|_| tokio::spawn(flood(addr, streams, body.clone(), hold, key.clone())))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    });
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let (mut refused, mut pending) = (0, 0);
    let mut failed: Vec<String> = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Status(s) => *statuses.entry(s.to_string()).or_default() += 1,
            Outcome::Refused => refused += 1,
            Outcome::Pending => pending += 1,
            Outcome::Failed(e) => failed.push(e),
        }
    }
    failed.truncate(5);
    println!(
        "{}",
        json!({ "statuses": statuses, "refused": refused, "pending": pending, "failed": failed })
    );
    Ok(())
}
