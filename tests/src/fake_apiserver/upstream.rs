//! One HTTP/1.1 exchange with a backend the fake API server proxies to (a pod for
//! `pods/proxy`, an aggregated API server for an APIService): what both proxies share.
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::error::{ApiError, ApiResult};
use super::http::{Body, full};

/// How a failed exchange is worded (each proxy says it as the real API server does).
pub(crate) struct Wording {
    /// Prefix of a connection or request failure.
    pub reach: String,
    /// Prefix of a failure while reading the response body.
    pub read: String,
    /// The whole message when the backend does not answer in time.
    pub timeout: String,
}

pub(crate) fn unavailable(message: String) -> ApiError {
    ApiError {
        code: 503,
        reason: "ServiceUnavailable".into(),
        message,
        details: None,
    }
}

/// Sends `req` over `io` and reads the whole response (at most `max_body` bytes) within
/// `timeout`. The response keeps the backend's status; its headers are left to the caller, which
/// knows which of them to pass on.
pub(crate) async fn exchange<IO>(
    io: IO,
    req: Request<Full<bytes::Bytes>>,
    max_body: usize,
    timeout: Duration,
    words: &Wording,
) -> ApiResult<(Response<Body>, hyper::HeaderMap)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| unavailable(format!("{}: {e}", words.reach)))?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unavailable(format!("{}: {e}", words.reach)))?;
        let (rparts, rbody) = resp.into_parts();
        let bytes = Limited::new(rbody, max_body)
            .collect()
            .await
            .map_err(|e| unavailable(format!("{}: {e}", words.read)))?
            .to_bytes();
        ApiResult::Ok((rparts, bytes))
    };
    let (rparts, bytes) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| unavailable(words.timeout.clone()))??;
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() =
        StatusCode::from_u16(rparts.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok((resp, rparts.headers))
}
