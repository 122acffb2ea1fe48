//! `--admin-addr`: `/healthz`, `/readyz` and `/metrics`, nothing else. In a cluster this listens
//! on the node address, where every pod of the node reaches it, so it serves nothing that names
//! a key, a path or a client (the metrics' labels are decisions and reasons only).
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::listener::{ListenerLimits, text};

/// What the health listener reports.
pub struct HealthState {
    pub registry: Registry,
    /// Set once capture is attached and the proxy listens.
    pub ready: AtomicBool,
}

impl HealthState {
    pub fn new(registry: Registry) -> Arc<Self> {
        Arc::new(Self {
            registry,
            ready: AtomicBool::new(false),
        })
    }
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    limits: ListenerLimits,
    state: Arc<HealthState>,
    shutdown: CancellationToken,
) {
    let handler = Arc::new(move |req: Request<Incoming>| {
        let resp = route(&state, &req);
        async move { resp }
    });
    super::listener::serve(listener, limits, handler, shutdown).await;
}

fn route(state: &HealthState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
                Ok(()) => {
                    let mut r = text(StatusCode::OK, out);
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    r
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding: {e}\n"),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}
