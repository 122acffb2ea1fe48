//! The read-only admin API: `/healthz`, `/readyz`, `/metrics`, `/routes` (the current table) and
//! `/decisions?key=K&since=UNIX_MS` (recent routing decisions with their reasons) and
//! `/topology` (the service graph from observed connections).
pub mod client;
pub mod topology;
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;

use crate::{proxy::decision_log::DecisionLog, routes::RouteTable};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoint reports.
pub struct AdminState {
    pub registry: Registry,
    /// Set once capture is attached and the proxy listens.
    pub ready: AtomicBool,
    pub table: Arc<ArcSwap<RouteTable>>,
    pub log: Arc<DecisionLog>,
    /// The capture programs' flow counters (absent when capture is not running).
    pub flows: Option<crate::capture::FlowsMap>,
}

impl AdminState {
    pub fn new(
        registry: Registry,
        table: Arc<ArcSwap<RouteTable>>,
        log: Arc<DecisionLog>,
        flows: Option<crate::capture::FlowsMap>,
    ) -> Arc<Self> {
        Arc::new(Self {
            registry,
            ready: AtomicBool::new(false),
            table,
            log,
            flows,
        })
    }
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    loop {
        let (io, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
    }
}

fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/routes" => json(&state.table.load().routes()),
        "/topology" => {
            let flows = state.flows.as_ref().map(|f| f.flows()).unwrap_or_default();
            json(&topology::build(&flows, &state.table.load()))
        }
        "/decisions" => {
            let mut key = None;
            let mut since = None;
            for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
                match &*k {
                    "key" => key = Some(v.into_owned()),
                    "since" => match v.parse::<u64>() {
                        Ok(ms) => {
                            since =
                                Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
                        }
                        Err(_) => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                "since: expected unix milliseconds\n".into(),
                            );
                        }
                    },
                    _ => {}
                }
            }
            json(&state.log.query(key.as_deref(), since))
        }
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

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(mut body) => {
            body.push('\n');
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
