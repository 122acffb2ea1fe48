//! netpeer's gRPC mode: a unary `Check` and a server-streaming `Watch` on the Health service,
//! each carrying the given baggage, over one HTTP/2 channel.
use std::time::Duration;

use serde_json::json;
use tonic::metadata::MetadataValue;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const TIMEOUT: Duration = Duration::from_secs(10);

/// `grpc ADDR SERVICE BAGGAGE|-`
pub fn run(addr: std::net::SocketAddr, args: &[String]) -> anyhow::Result<()> {
    let service = args.first().cloned().unwrap_or_default();
    let baggage = args.get(1).filter(|b| *b != "-").cloned();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(TIMEOUT)
                .timeout(TIMEOUT)
                .connect()
                .await?;
            let mut client = HealthClient::new(channel);
            let request = |service: &str| {
                let mut r = tonic::Request::new(HealthCheckRequest {
                    service: service.to_string(),
                });
                if let Some(b) = &baggage
                    && let Ok(v) = MetadataValue::try_from(b.as_str())
                {
                    r.metadata_mut().insert("baggage", v);
                }
                r
            };
            let unary = match client.check(request(&service)).await {
                Ok(resp) => json!({ "ok": resp.into_inner().status }),
                Err(status) => {
                    json!({ "code": format!("{:?}", status.code()), "message": status.message() })
                }
            };
            let stream = match client.watch(request(&service)).await {
                Ok(resp) => {
                    let mut s = resp.into_inner();
                    let mut got = Vec::new();
                    while got.len() < 3 {
                        match tokio::time::timeout(TIMEOUT, s.message()).await {
                            Ok(Ok(Some(m))) => got.push(m.status),
                            Ok(Ok(None)) => break,
                            Ok(Err(status)) => {
                                got.push(-1);
                                eprintln!("watch: {status}");
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    json!({ "messages": got })
                }
                Err(status) => json!({ "code": format!("{:?}", status.code()) }),
            };
            println!("{}", json!({ "unary": unary, "watch": stream }));
            Ok(())
        })
}
