//! Upstream connections, pooled per destination: hyper's HTTP/2 client for h2c, and the idle
//! connections of the HTTP/1.1 path ([`super::h1::pool`]). Their sockets come from the agent's
//! own cgroup, which the capture programs exempt, so forwarding never loops back into the proxy.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::{Request, Response, body::Incoming};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

/// The body type the proxy forwards: a client's streaming body, or a buffered copy of it.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// The HTTP/2 (prior knowledge) client and the HTTP/1.1 pool; both pool by upstream address.
#[derive(Clone)]
pub struct Upstreams {
    http2: Client<HttpConnector, ProxyBody>,
    pub h1: Arc<super::h1::pool::Pool>,
}

/// Why forwarding failed. The message names the upstream; the cause is the source (see
/// [`error_chain`] to print both).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: the request was not sent and may be retried elsewhere.
    #[error("connecting to {upstream}")]
    Connect {
        upstream: SocketAddr,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The upstream failed after the request was (maybe) sent.
    #[error("upstream {upstream}")]
    Request {
        upstream: SocketAddr,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The request's URI could not be made absolute for the upstream.
    #[error("building the upstream URI for {upstream}")]
    Uri {
        upstream: SocketAddr,
        #[source]
        source: http::Error,
    },
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let http2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Self {
            http2,
            h1: Arc::new(super::h1::pool::Pool::new(connect_timeout, idle_timeout)),
        }
    }

    /// Sends an h2c request to `upstream` over HTTP/2.
    pub async fn send(
        &self,
        upstream: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // Absolute form for the pooled client (its pool key is scheme + authority); the path
        // keeps the request's own bytes.
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        let uri_error = |e: http::Error| UpstreamError::Uri {
            upstream,
            source: e,
        };
        parts.authority = Some(
            http::uri::Authority::try_from(upstream.to_string())
                .map_err(|e| uri_error(e.into()))?,
        );
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(|e| uri_error(e.into()))?;
        self.http2.request(req).await.map_err(|source| {
            if source.is_connect() {
                UpstreamError::Connect { upstream, source }
            } else {
                UpstreamError::Request { upstream, source }
            }
        })
    }
}

/// `e` and its sources, joined with `: `, for a response body or a log line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
