//! `--debug-addr`: what the agent saw of the node's traffic. `/routes` (the table),
//! `/routes/sources` (the marked sources applied to `MARKED`, which `shunt test` waits for),
//! `/decisions?key=K&since=UNIX_MS&namespace=NS&limit=N` (recent routing decisions with their
//! reasons, newest `limit`, oldest first) and `/topology?namespace=NS` (the service graph from
//! observed connections). `namespace` keeps only what concerns that namespace: the traffic API
//! asks for exactly what the user may see.
//!
//! `/decisions` holds only requests that reached the proxy. A connection opened while `STEERED`
//! was empty (the agent failing open: a SIGTERM with no ready successor, a crash, the watchdog)
//! went direct and stays direct for as long as it lives; HTTP/2 and gRPC pools keep such
//! connections for long. Keyed requests on it reach the baseline and leave no decision here: a
//! keyed request cannot be steered on a connection that never reached the proxy. A restart with a
//! ready successor keeps `STEERED` and opens no such connection ([`crate::handover`]).
//!
//! On loopback (no cluster) anyone on the host may read it, as they may read the routes file.
//! In a cluster it listens on the node address and answers only requests carrying the
//! [`DebugToken`] as a bearer token.
use std::{path::Path, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{
    listener::{ListenerLimits, json, text},
    topology,
};
use crate::{
    proxy::decision_log::{DecisionLog, DecisionQuery},
    routes::{AppliedSources, RouteTable},
};

/// The secret the traffic API shows the agents' debug listeners. Compared in constant time.
#[derive(Clone)]
pub struct DebugToken(Arc<[u8]>);

/// Why a debug token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DebugTokenError {
    #[error("reading the debug token file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the debug token file {path} is empty")]
    Empty { path: String },
}

impl DebugToken {
    /// The token in `path` (surrounding whitespace trimmed, as a Secret's file may end in a
    /// newline).
    pub fn from_file(path: &Path) -> Result<Self, DebugTokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| DebugTokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(text.trim()).ok_or_else(|| DebugTokenError::Empty {
            path: path.display().to_string(),
        })
    }

    pub fn new(token: &str) -> Option<Self> {
        (!token.is_empty()).then(|| Self(Arc::from(token.as_bytes())))
    }

    /// The `Authorization` header value that carries this token.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.0))
    }

    /// Whether `authorization` is `Bearer <this token>`.
    pub fn admits(&self, authorization: Option<&hyper::header::HeaderValue>) -> bool {
        let Some(given) = authorization
            .map(|v| v.as_bytes())
            .and_then(|v| v.strip_prefix(b"Bearer "))
        else {
            return false;
        };
        given.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for DebugToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DebugToken(..)")
    }
}

/// What the debug listener reads.
pub struct DebugState {
    pub table: Arc<ArcSwap<RouteTable>>,
    pub log: Arc<DecisionLog>,
    /// The capture programs' flow counters (absent when capture is not running).
    pub flows: Option<crate::capture::FlowsMap>,
    /// Required of every request when set.
    pub token: Option<DebugToken>,
    /// The marked sources route sync applied (`/routes/sources`).
    pub sources: Arc<ArcSwap<AppliedSources>>,
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    limits: ListenerLimits,
    state: Arc<DebugState>,
    shutdown: CancellationToken,
) {
    let handler = Arc::new(move |req: Request<Incoming>| route(state.clone(), req));
    super::listener::serve(listener, limits, handler, shutdown).await;
}

/// Query parameters of the debug endpoints.
#[derive(Default)]
struct Params {
    key: Option<String>,
    since: Option<std::time::SystemTime>,
    namespace: Option<String>,
    limit: Option<usize>,
}

fn params(query: Option<&str>) -> Result<Params, String> {
    let mut p = Params::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "key" => p.key = Some(v.into_owned()),
            "namespace" => p.namespace = Some(v.into_owned()),
            "since" => {
                let ms = v
                    .parse::<u64>()
                    .map_err(|_| "since: expected unix milliseconds")?;
                p.since = Some(std::time::UNIX_EPOCH + Duration::from_millis(ms));
            }
            "limit" => {
                p.limit = Some(v.parse().map_err(|_| "limit: expected a number")?);
            }
            _ => {}
        }
    }
    Ok(p)
}

async fn route(state: Arc<DebugState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(token) = &state.token
        && !token.admits(req.headers().get(hyper::header::AUTHORIZATION))
    {
        return text(
            StatusCode::UNAUTHORIZED,
            "the debug API needs the agents' debug token\n".into(),
        );
    }
    let p = match params(req.uri().query()) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    match req.uri().path() {
        "/routes" => {
            let table = state.table.load();
            let mut routes = table.routes();
            routes.retain(|r| p.namespace.as_deref().is_none_or(|ns| r.namespace == ns));
            json(&routes)
        }
        "/routes/sources" => json(&state.sources.load().list()),
        "/topology" => {
            // Reading the flow map walks a per-CPU kernel map: off the proxy's runtime.
            let s = state.clone();
            let built = tokio::task::spawn_blocking(move || {
                let flows = s.flows.as_ref().map(|f| f.flows()).unwrap_or_default();
                let mut t = topology::build(&flows, &s.table.load());
                if let Some(ns) = &p.namespace {
                    t.keep_namespace(ns);
                }
                t
            })
            .await;
            match built {
                Ok(t) => json(&t),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("building the topology: {e}\n"),
                ),
            }
        }
        "/decisions" => {
            // Paging and encoding take a while for a full page: off the proxy's runtime too,
            // so concurrent readers cannot take its worker threads.
            let s = state.clone();
            let answer = tokio::task::spawn_blocking(move || {
                let q = DecisionQuery {
                    key: p.key.as_deref(),
                    since: p.since,
                    namespace: p.namespace.as_deref(),
                    limit: p.limit,
                };
                json(&s.log.page(&q))
            })
            .await;
            answer.unwrap_or_else(|e| {
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading the decisions: {e}\n"),
                )
            })
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_admits_only_its_own_bearer() {
        let t = DebugToken::new("s3cret").expect("token");
        let h = |s: &str| hyper::header::HeaderValue::from_str(s).expect("header");
        assert!(t.admits(Some(&h("Bearer s3cret"))));
        assert!(!t.admits(Some(&h("Bearer s3cre"))));
        assert!(!t.admits(Some(&h("Bearer s3cret2"))));
        assert!(!t.admits(Some(&h("s3cret"))));
        assert!(!t.admits(None));
        assert!(DebugToken::new("").is_none());
        assert_eq!(format!("{t:?}"), "DebugToken(..)");
    }
}
