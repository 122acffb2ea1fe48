//! The pod subresources a real API server hands to the node's kubelet: `pods/log` and
//! `pods/proxy`. There is no kubelet here, so the test plays it: it sets a pod's log text
//! ([`super::FakeApiServer::set_pod_log`]) and, for the proxy, says how to reach a pod
//! ([`super::FakeApiServer::set_pod_dialer`]); by default the server dials `status.podIP`.
//!
//! What clients observe is reproduced: 404 for a missing pod, 400 while the container has not
//! started (kubectl's "is waiting to start"), 503 for a pod without an address or one that
//! refuses the connection, and the proxied response (status, headers, body) passed through with
//! hop-by-hop headers removed.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderName;
use hyper::{Request, Response};
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::http::{Body, Query, read_body, text_response};
use super::state::Shared;
use super::upstream::{self, Wording, unavailable};

/// Largest proxied response body (the server buffers it).
const MAX_PROXY_BODY: usize = 16 * 1024 * 1024;
/// How long a proxied request may take in all.
const PROXY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a `pods/proxy` request goes.
#[derive(Clone, Debug)]
pub struct PodTarget {
    pub namespace: String,
    pub name: String,
    /// `status.podIP`, if the pod has one.
    pub ip: Option<IpAddr>,
    pub port: u16,
}

/// Opens the connection for a `pods/proxy` request (a kubelet would dial from the node).
pub type PodDialer = Arc<dyn Fn(&PodTarget) -> std::io::Result<TcpStream> + Send + Sync>;

/// The dialer used unless a test sets its own: `status.podIP:port`.
pub fn dial_pod_ip(t: &PodTarget) -> std::io::Result<TcpStream> {
    let ip = t.ip.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            "pod has no IP address",
        )
    })?;
    TcpStream::connect_timeout(&SocketAddr::new(ip, t.port), Duration::from_secs(5))
}

/// Pod logs the test set, by (namespace, pod).
#[derive(Default)]
pub(crate) struct PodLogs(HashMap<(String, String), String>);

impl PodLogs {
    pub(crate) fn set(&mut self, ns: &str, pod: &str, text: String) {
        self.0.insert((ns.to_string(), pod.to_string()), text);
    }
}

fn pod_rt(shared: &Shared) -> ApiResult<super::resources::ResourceType> {
    shared
        .lock()
        .registry
        .by_plural("", "v1", "pods")
        .cloned()
        .ok_or_else(ApiError::no_route)
}

fn get_pod(shared: &Shared, ns: &str, name: &str) -> ApiResult<Value> {
    let rt = pod_rt(shared)?;
    shared.lock().get(&rt, Some(ns), name)
}

/// `GET /api/v1/namespaces/NS/pods/NAME/log`.
pub(crate) fn log(shared: &Shared, ns: &str, name: &str, q: &Query) -> ApiResult<Response<Body>> {
    let pod = get_pod(shared, ns, name)?;
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let container = match q.get("container") {
        Some(c) if containers.contains(&c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if containers.len() == 1 => containers[0].to_string(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: {containers:?}"
            )));
        }
    };
    let text = shared
        .pod_logs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .0
        .get(&(ns.to_string(), name.to_string()))
        .cloned();
    match text {
        Some(t) => {
            let t = match q.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => {
                    let lines: Vec<&str> = t.lines().collect();
                    let mut s = lines[lines.len().saturating_sub(n)..].join("\n");
                    if !s.is_empty() {
                        s.push('\n');
                    }
                    s
                }
                None => t,
            };
            Ok(text_response(t))
        }
        None if pod["status"]["phase"] == "Pending" => Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        ))),
        None => Ok(text_response("")),
    }
}

/// `NAME` or `NAME:PORT` (a number or a container port name) of a proxy URL.
fn target(pod: &Value, ns: &str, name_port: &str) -> ApiResult<PodTarget> {
    let (name, port) = match name_port.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (name_port, None),
    };
    let port = match port {
        None | Some("") => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) => n,
            Err(_) => pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .find(|cp| cp["name"] == p)
                .and_then(|cp| cp["containerPort"].as_u64())
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("pod {name} has no container port named {p:?}"))
                })?,
        },
    };
    Ok(PodTarget {
        namespace: ns.to_string(),
        name: name.to_string(),
        ip: pod["status"]["podIP"].as_str().and_then(|s| s.parse().ok()),
        port,
    })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and credentials meant for the API server itself.
fn forwardable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
            | "authorization"
            | "content-length"
    )
}

/// `ANY /api/v1/namespaces/NS/pods/NAME[:PORT]/proxy[/PATH]`.
pub(crate) async fn proxy(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    ns: String,
    name_port: String,
    path: String,
) -> ApiResult<Response<Body>> {
    let name = name_port.split(':').next().unwrap_or_default().to_string();
    let pod = get_pod(&shared, &ns, &name)?;
    let target = target(&pod, &ns, &name_port)?;
    if target.ip.is_none() {
        return Err(unavailable(format!(
            "error trying to reach pod {name}: the pod has no IP address yet"
        )));
    }
    let dialer = shared
        .pod_dialer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let t = target.clone();
    let stream = tokio::task::spawn_blocking(move || dialer(&t))
        .await
        .map_err(|e| ApiError::internal(format!("pod dialer: {e}")))?
        .map_err(|e| {
            unavailable(format!(
                "error trying to reach pod {name} on port {}: {e}",
                target.port
            ))
        })?;
    stream
        .set_nonblocking(true)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let stream =
        tokio::net::TcpStream::from_std(stream).map_err(|e| ApiError::internal(e.to_string()))?;

    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(&pq)
        .header(
            hyper::header::HOST,
            format!(
                "{}:{}",
                target.ip.map(|i| i.to_string()).unwrap_or_default(),
                target.port
            ),
        );
    for (n, v) in parts.headers.iter().filter(|(n, _)| forwardable(n)) {
        out = out.header(n, v);
    }
    let out = out
        .body(Full::new(body))
        .map_err(|e| ApiError::bad_request(format!("proxy request: {e}")))?;

    let words = Wording {
        reach: format!("error trying to reach pod {name}"),
        read: format!("reading the response of pod {name}"),
        timeout: format!("pod {name} did not answer in {PROXY_TIMEOUT:?}"),
    };
    let (mut resp, headers) =
        upstream::exchange(stream, out, MAX_PROXY_BODY, PROXY_TIMEOUT, &words).await?;
    for (n, v) in headers.iter().filter(|(n, _)| forwardable(n)) {
        resp.headers_mut().append(n.clone(), v.clone());
    }
    Ok(resp)
}
