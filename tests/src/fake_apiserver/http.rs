//! The HTTP layer: a hyper 1 HTTP/1.1 server on loopback, request routing, fault injection
//! and response encoding. Resource verbs are in `rest.rs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

use super::aggregator;
use super::auth::{self, User};
use super::discovery;
use super::error::{ApiError, ApiResult};
use super::kubelet;
use super::resources::ResourceType;
use super::rest;
use super::state::Shared;

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// kube-apiserver's limit on request bodies (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Bind with SO_REUSEADDR so that a restart can reuse the port while old connections linger in
/// TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Bind, retrying briefly (the old listener may still be closing).
pub(crate) async fn bind_retrying(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!(
        "rebinding {addr}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Run the accept loop. The task owns every connection task (in a `JoinSet`), so aborting it
/// closes the listener and drops all connections at once: an outage.
pub(crate) fn spawn_server(shared: Arc<Shared>, listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        let shared = shared.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req| handle(shared.clone(), req));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub(crate) fn text_response(text: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(text));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(crate) fn json_response(code: u16, value: &Value, content_type: &str) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, ct);
    }
    resp
}

pub(crate) fn error_response(err: &ApiError) -> Response<Body> {
    let mut resp = json_response(err.code, &err.to_status(), "application/json");
    if let Some(secs) = err
        .details
        .as_ref()
        .and_then(|d| d.get("retryAfterSeconds"))
        .and_then(Value::as_u64)
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert("Retry-After", v);
    }
    resp
}

/// Read a request body, bounded.
pub(crate) async fn read_body(body: Incoming) -> ApiResult<Bytes> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(MAX_BODY)),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// Decoded query parameters (repeated keys: the first wins, like Go's `url.Values.Get`).
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean flag as Go's `strconv.ParseBool` reads it (`1`, `true`, ...).
    pub(crate) fn flag(&self, key: &str) -> ApiResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
            Some("" | "0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
            Some(other) => Err(ApiError::bad_request(format!(
                "{key}: invalid boolean value {other:?}"
            ))),
        }
    }
}

/// A request to a resource endpoint, after routing.
pub(crate) struct ResourceRequest {
    pub(crate) rt: ResourceType,
    /// The namespace in the URL (None for cluster-scoped resources and all-namespace lists).
    pub(crate) ns: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
    /// `/api/v1/watch/...` (the deprecated watch path prefix).
    pub(crate) legacy_watch: bool,
}

pub(crate) enum Route {
    Version,
    Health,
    Api,
    Apis,
    ApiGroup(String),
    ResourceList(String, String),
    OpenApiV2,
    OpenApiV3Index,
    OpenApiV3(String, String),
    Resource(Box<ResourceRequest>),
    /// `pods/NAME/log` (served by the kubelet in a real cluster).
    PodLog {
        ns: String,
        name: String,
    },
    /// `pods/NAME[:PORT]/proxy/PATH`; `path` is raw (still percent-encoded), `/` at least.
    PodProxy {
        ns: String,
        name_port: String,
        path: String,
    },
    /// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`.
    SubjectAccessReview,
    /// `/apis/GROUP/VERSION/...` served by an APIService's Service.
    Aggregated {
        api_service: Box<Value>,
        group: String,
        /// The path after `/apis/GROUP/VERSION`.
        rest: Vec<String>,
    },
}

fn percent_decode(seg: &str) -> String {
    form_urlencoded::parse(format!("x={}", seg.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn route(shared: &Shared, path: &str) -> ApiResult<Route> {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["healthz" | "livez" | "readyz", ..] => return Ok(Route::Health),
        ["api"] => return Ok(Route::Api),
        ["apis"] => return Ok(Route::Apis),
        ["openapi", "v2"] => return Ok(Route::OpenApiV2),
        ["openapi", "v3"] => return Ok(Route::OpenApiV3Index),
        ["openapi", "v3", "api", v] => return Ok(Route::OpenApiV3(String::new(), v.to_string())),
        ["openapi", "v3", "apis", g, v] => {
            return Ok(Route::OpenApiV3(g.to_string(), v.to_string()));
        }
        ["apis", g] => return Ok(Route::ApiGroup(g.to_string())),
        _ => {}
    }
    match s.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, "log"] => {
            return Ok(Route::PodLog {
                ns: ns.to_string(),
                name: name.to_string(),
            });
        }
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "pods",
            name_port,
            "proxy",
            ..,
        ] => {
            // The raw remainder: "/api/v1/namespaces/NS/pods/NAME/proxy" is 8 '/'-separated
            // pieces after the leading empty one.
            let raw: Vec<&str> = path.split('/').collect();
            let rest = raw.get(8..).map(|r| r.join("/")).unwrap_or_default();
            return Ok(Route::PodProxy {
                ns: ns.to_string(),
                name_port: name_port.to_string(),
                path: format!("/{rest}"),
            });
        }
        _ => {}
    }
    match s.as_slice() {
        ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"] => {
            return Ok(Route::SubjectAccessReview);
        }
        ["apis", g, v, rest @ ..] => {
            if let Some(svc) = aggregator::api_service(shared, g, v) {
                return Ok(Route::Aggregated {
                    api_service: Box::new(svc),
                    group: g.to_string(),
                    rest: rest.iter().map(|r| r.to_string()).collect(),
                });
            }
        }
        _ => {}
    }
    let (group, version, rest) = match s.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    if rest.is_empty() {
        return if legacy_watch {
            Err(ApiError::no_route())
        } else {
            Ok(Route::ResourceList(group.into(), version.into()))
        };
    }
    let cluster = shared.lock();
    let lookup = |plural: &str| cluster.registry.by_plural(group, version, plural).cloned();
    let req = |rt: ResourceType, ns: Option<&str>, tail: &[&str]| {
        Route::Resource(Box::new(ResourceRequest {
            rt,
            ns: ns.map(str::to_string),
            name: tail.first().map(|s| s.to_string()),
            subresource: tail.get(1).map(|s| s.to_string()),
            legacy_watch,
        }))
    };
    match rest {
        // /api/v1/namespaces/NAME/status: the namespace's own subresource.
        ["namespaces", _, "status" | "finalize"] if group.is_empty() => {
            let rt = lookup("namespaces").ok_or_else(ApiError::no_route)?;
            Ok(req(rt, None, &rest[1..]))
        }
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => match lookup(plural) {
            Some(rt) if rt.namespaced => Ok(req(rt, Some(ns), tail)),
            _ => Err(ApiError::no_route()),
        },
        [plural, tail @ ..] if tail.len() <= 2 => match lookup(plural) {
            Some(rt) if !rt.namespaced => Ok(req(rt, None, tail)),
            // Namespaced resources without a namespace: only the all-namespaces collection.
            Some(rt) if tail.is_empty() => Ok(req(rt, None, tail)),
            _ => Err(ApiError::no_route()),
        },
        _ => Err(ApiError::no_route()),
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let line = format!(
        "{} {}",
        req.method(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    shared.log_request(line);
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(code) = shared.faults.take_failure() {
        let err = match code {
            429 => ApiError::too_many_requests(shared.options.retry_after_seconds),
            500 => ApiError::internal("injected fault"),
            other => ApiError {
                code: other,
                ..ApiError::internal("injected fault")
            },
        };
        return Ok(error_response(&err));
    }
    let user = match authenticate(&shared, &req) {
        Ok(u) => u,
        Err(err) => return Ok(error_response(&err)),
    };
    Ok(match dispatch(shared, req, user).await {
        Ok(resp) => resp,
        Err(err) => error_response(&err),
    })
}

/// The user a bearer token stands for; `None` without credentials (the unrestricted admin).
/// Until a test registers a token, credentials are not looked at at all (as before
/// authentication existed).
fn authenticate(shared: &Shared, req: &Request<Incoming>) -> ApiResult<Option<User>> {
    let Some(auth) = header(req, "authorization") else {
        return Ok(None);
    };
    let tokens = shared.tokens.lock().unwrap_or_else(|e| e.into_inner());
    if tokens.0.is_empty() {
        return Ok(None);
    }
    let token = auth.strip_prefix("Bearer ").unwrap_or_default().trim();
    tokens
        .0
        .get(token)
        .cloned()
        .map(Some)
        .ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn dispatch(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    user: Option<User>,
) -> ApiResult<Response<Body>> {
    let route = route(&shared, req.uri().path())?;
    let query = Query::parse(req.uri().query());
    if let Some(u) = &user
        && let Some(a) = auth::attributes(&route, &req, &query)
        && !auth::allowed(&shared.lock(), u, &a)
    {
        return Err(auth::forbidden(u, &a));
    }
    let accept = header(&req, "accept").map(str::to_string);
    let discovery_only = |req: &Request<Incoming>| -> ApiResult<()> {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    let json = |v: &Value| json_response(200, v, "application/json");
    match route {
        Route::Version => {
            discovery_only(&req)?;
            Ok(json(&discovery::version()))
        }
        Route::Health => Ok(text_response("ok")),
        Route::Api | Route::Apis => {
            discovery_only(&req)?;
            let core = matches!(route, Route::Api);
            if let Some(v) = discovery::wants_aggregated(accept.as_deref()) {
                let body = discovery::aggregated(&shared.lock().registry, core, v);
                let ct = format!(
                    "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"
                );
                return Ok(json_response(200, &body, &ct));
            }
            if core {
                Ok(json(&discovery::api_versions(shared.addr)))
            } else {
                Ok(json(&discovery::api_group_list(&shared.lock().registry)))
            }
        }
        Route::ApiGroup(g) => {
            discovery_only(&req)?;
            let v =
                discovery::api_group(&shared.lock().registry, &g).ok_or_else(ApiError::no_route)?;
            Ok(json(&v))
        }
        Route::ResourceList(g, v) => {
            discovery_only(&req)?;
            let list = discovery::resource_list(&shared.lock().registry, &g, &v)
                .ok_or_else(ApiError::no_route)?;
            Ok(json(&list))
        }
        Route::OpenApiV2 => {
            discovery_only(&req)?;
            let wants_proto = accept.as_deref().is_some_and(|a| a.contains("protobuf"));
            if wants_proto {
                // An empty protobuf message is a valid, empty OpenAPI v2 Document.
                let mut resp = Response::new(full(Bytes::new()));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
                    ),
                );
                Ok(resp)
            } else {
                Ok(json(&discovery::openapi_v2_json()))
            }
        }
        Route::OpenApiV3Index => {
            discovery_only(&req)?;
            Ok(json(&discovery::openapi_v3_index(&shared.lock().registry)))
        }
        Route::OpenApiV3(g, v) => {
            discovery_only(&req)?;
            let doc = discovery::openapi_v3_gv(&shared.lock().registry, &g, &v)
                .ok_or_else(ApiError::no_route)?;
            Ok(json(&doc))
        }
        Route::Resource(r) => rest::handle(shared, req, *r, query, accept).await,
        Route::PodLog { ns, name } => {
            discovery_only(&req)?;
            kubelet::log(&shared, &ns, &name, &query)
        }
        Route::PodProxy {
            ns,
            name_port,
            path,
        } => kubelet::proxy(shared, req, ns, name_port, path).await,
        Route::SubjectAccessReview => {
            if req.method() != Method::POST {
                return Err(ApiError::method_not_allowed());
            }
            let body = read_body(req.into_body()).await?;
            auth::subject_access_review(&shared.lock(), &body)
        }
        Route::Aggregated { api_service, .. } => {
            let user = user.unwrap_or_else(User::admin);
            aggregator::proxy(shared, req, *api_service, user).await
        }
    }
}
