//! A real gRPC server (tonic's grpc.health.v1 Health service) inside a pod namespace.
//!
//! Each backend reports only its own service name (`shop.reviews.<server>`) as known, so a
//! client can tell who answered: `Check` on another name fails with NOT_FOUND in the trailers.
//! Its status flips between SERVING and NOT_SERVING every 150 ms, so `Watch` (server
//! streaming) keeps sending messages.
use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::netns::Netns;

pub struct GrpcBackend {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The health-service name a backend named `server` reports.
pub fn service_name(server: &str) -> String {
    format!("shop.reviews.{server}")
}

impl GrpcBackend {
    pub fn start(netns: &Netns, server: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = netns.run(move || std::net::TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let stop = CancellationToken::new();
        let (s, name) = (stop.clone(), service_name(server));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("grpc runtime");
            rt.block_on(async move {
                let (reporter, service) = tonic_health::server::health_reporter();
                reporter
                    .set_service_status(&name, ServingStatus::Serving)
                    .await;
                let flipper = {
                    let (reporter, name) = (reporter.clone(), name.clone());
                    tokio::spawn(async move {
                        let mut serving = true;
                        loop {
                            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                            serving = !serving;
                            let st = if serving {
                                ServingStatus::Serving
                            } else {
                                ServingStatus::NotServing
                            };
                            reporter.set_service_status(&name, st).await;
                        }
                    })
                };
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let _ = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, s.cancelled())
                    .await;
                flipper.abort();
            });
        });
        Ok(Self { addr, stop })
    }
}
