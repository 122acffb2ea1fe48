//! `--admin-addr`: `/healthz`, `/readyz` and `/metrics`, nothing else. In a cluster this listens
//! on the node address, where every pod of the node reaches it, so it serves nothing that names
//! a key, a path or a client (the metrics' labels are decisions and reasons only).
//!
//! `/healthz` is the liveness probe: 200 only if a request sent through the proxy's own
//! listener reaches the agent's in-process responder ([`SelfProbe`]). A backend outage never
//! fails it (the responder is inside the agent); a wedged proxy (stuck runtime, accept loop
//! that takes nothing) does, and kubelet restarts the agent, which meanwhile fails open through
//! the watchdog. However many callers ask, the proxy sees at most one probe per second.
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
use crate::proxy::self_probe::SelfProbe;

/// How long the self-probe waits for its answer (kubelet's probe timeout is 2 s).
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);
/// A probe result answers the callers of the following second too.
const PROBE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// What the health listener reports.
pub struct HealthState {
    pub registry: Registry,
    /// Set once capture is attached and the proxy listens.
    pub ready: AtomicBool,
    /// The proxy's self-probe; without one (no proxy), `/healthz` answers 200.
    pub probe: Option<Arc<SelfProbe>>,
}

impl HealthState {
    pub fn new(registry: Registry, probe: Option<Arc<SelfProbe>>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            ready: AtomicBool::new(false),
            probe,
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
        let state = state.clone();
        let path = req.uri().path().to_string();
        async move {
            if path == "/healthz" {
                return liveness(&state).await;
            }
            route(&state, &path)
        }
    });
    super::listener::serve(listener, limits, handler, shutdown).await;
}

/// The self-probe's verdict (run off the admin runtime's threads: it blocks).
async fn liveness(state: &HealthState) -> Response<Full<Bytes>> {
    let Some(probe) = state.probe.clone() else {
        return text(StatusCode::OK, "ok\n".into());
    };
    let verdict =
        tokio::task::spawn_blocking(move || probe.probe_shared(PROBE_TIMEOUT, PROBE_MAX_AGE))
            .await
            .unwrap_or_else(|e| Err(format!("probe task: {e}")));
    match verdict {
        Ok(()) => text(StatusCode::OK, "ok\n".into()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the proxy does not serve: {why}\n"),
        ),
    }
}

fn route(state: &HealthState, path: &str) -> Response<Full<Bytes>> {
    match path {
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
