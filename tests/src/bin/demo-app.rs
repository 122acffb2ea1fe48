//! The tiny service of `cargo xtask demo`: one binary plays frontend, reviews and ratings.
//!
//! `demo-app serve --service S --version V --pod P --listen ADDR [--call URL]` answers every
//! request with JSON naming who served it and, with `--call`, what its downstream call returned
//! (nested). Like a service with tracing middleware, it propagates the routing headers (W3C
//! `baggage`, `traceparent`, `tracestate`, `uberctx-*`, `ot-baggage-*`) from the incoming request
//! to its outgoing call; that is all a service needs to do for Shunt to steer its calls.
//!
//! With `--drop-baggage` it is a build that never propagates the routing headers (a service
//! without tracing middleware, or one that lost it): its outgoing call carries none of them.
//!
//! With `--fail REASON` it is a broken build: it answers every request 500 (with REASON in its
//! JSON body) without calling downstream, and logs why, as a service with a bug would.
//!
//! Each log line starts with an RFC 3339 timestamp, like most services' logs.
//!
//! `demo-app get URL [-H 'name: value']...` is a minimal curl: one GET, the body on stdout.
use std::{convert::Infallible, net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    HeaderMap, Request, Response, StatusCode, Uri,
    body::Incoming,
    header::{HOST, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "usage:
  demo-app serve --service NAME --version V --pod POD --listen IP:PORT [--call http://IP:PORT/PATH] [--drop-baggage] [--fail REASON]
  demo-app get http://IP:PORT/PATH [-H 'name: value']...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("get") => get(&args[1..]),
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo-app: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Who this instance is, and where it calls.
#[derive(Clone)]
struct App {
    service: String,
    version: String,
    pod: String,
    call: Option<Uri>,
    /// A broken build: answer 500 for this reason.
    fail: Option<String>,
    /// A build that propagates no routing header.
    drop_baggage: bool,
}

/// One log line, dated.
fn log(line: std::fmt::Arguments<'_>) {
    eprintln!("{} {line}", jiff::Timestamp::now());
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn serve(args: &[String]) -> anyhow::Result<ExitCode> {
    let need = |n: &str| flag(args, n).with_context(|| format!("{n} is required\n{USAGE}"));
    let app = App {
        service: need("--service")?,
        version: need("--version")?,
        pod: need("--pod")?,
        call: flag(args, "--call")
            .map(|u| u.parse::<Uri>())
            .transpose()
            .context("--call")?,
        fail: flag(args, "--fail"),
        drop_baggage: args.iter().any(|a| a == "--drop-baggage"),
    };
    let listen: SocketAddr = need("--listen")?.parse().context("--listen")?;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        log(format_args!(
            "{} {} ({}) listening on {listen}",
            app.service, app.version, app.pod
        ));
        loop {
            let (io, peer) = listener.accept().await?;
            let app = app.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(app.clone(), peer, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    })
}

/// What a demo app answers: who served the request, the `baggage` it received, and its
/// downstream call's answer (nested) or error.
#[derive(Serialize, Deserialize)]
struct Answer {
    service: String,
    version: String,
    pod: String,
    baggage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    downstream: Option<Downstream>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Downstream {
    Answer(Box<Answer>),
    Other(Value),
}

/// Headers a traced service forwards from its incoming request to its outgoing calls.
fn propagated(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            matches!(n, "baggage" | "traceparent" | "tracestate")
                || n.starts_with("uberctx-")
                || n.starts_with("ot-baggage-")
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

async fn handle(
    app: App,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let baggage = req
        .headers()
        .get("baggage")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut answer = Answer {
        service: app.service.clone(),
        version: app.version.clone(),
        pod: app.pod.clone(),
        baggage,
        downstream: None,
    };
    let mut status = StatusCode::OK;
    if let Some(reason) = &app.fail {
        log(format_args!(
            "{peer} {} {} baggage: {} -> 500: ERROR {reason}",
            req.method(),
            req.uri(),
            answer.baggage.as_deref().unwrap_or("-"),
        ));
        let body = json!({ "service": app.service, "version": app.version, "pod": app.pod,
            "error": reason });
        let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    if let Some(url) = &app.call {
        let headers = if app.drop_baggage {
            Vec::new()
        } else {
            propagated(req.headers())
        };
        let downstream = match fetch(url, &headers).await {
            Ok((200, v)) => match serde_json::from_value::<Answer>(v.clone()) {
                Ok(a) => Downstream::Answer(Box::new(a)),
                Err(_) => Downstream::Other(v),
            },
            Ok((code, v)) => {
                status = StatusCode::BAD_GATEWAY;
                Downstream::Other(json!({ "status": code, "body": v }))
            }
            Err(e) => {
                status = StatusCode::BAD_GATEWAY;
                Downstream::Other(json!({ "error": format!("calling {url}: {e:#}") }))
            }
        };
        answer.downstream = Some(downstream);
    }
    log(format_args!(
        "{peer} {} {} baggage: {} -> {}",
        req.method(),
        req.uri(),
        answer.baggage.as_deref().unwrap_or("-"),
        status.as_u16()
    ));
    let mut text = serde_json::to_string_pretty(&answer).unwrap_or_default();
    text.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// One HTTP/1.1 GET on a new connection; returns the status and the body (JSON when it parses,
/// else a string).
async fn fetch(url: &Uri, headers: &[(HeaderName, HeaderValue)]) -> anyhow::Result<(u16, Value)> {
    let authority = url
        .authority()
        .context("the URL has no host:port")?
        .as_str();
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("{authority}: expected IP:PORT"))?;
    let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::get(path).body(Full::new(Bytes::new()))?;
    req.headers_mut()
        .insert(HOST, HeaderValue::from_str(authority)?);
    for (n, v) in headers {
        req.headers_mut().append(n.clone(), v.clone());
    }
    let resp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
        .await
        .context("no response in time")??;
    let status = resp.status().as_u16();
    let bytes = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
        .await
        .context("body timed out")??
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, value))
}

fn get(args: &[String]) -> anyhow::Result<ExitCode> {
    let mut url = None;
    let mut headers = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-H" || a == "--header" {
            let h = it.next().context("-H needs 'name: value'")?;
            let (n, v) = h.split_once(':').context("-H needs 'name: value'")?;
            headers.push((
                HeaderName::from_bytes(n.trim().as_bytes())?,
                HeaderValue::from_str(v.trim())?,
            ));
        } else if url.is_none() {
            url = Some(a.parse::<Uri>().with_context(|| format!("bad URL {a}"))?);
        } else {
            bail!("unexpected argument {a}\n{USAGE}");
        }
    }
    let url = url.with_context(|| format!("a URL is required\n{USAGE}"))?;
    let (status, body) = runtime()?.block_on(fetch(&url, &headers))?;
    match &body {
        Value::String(s) => print!("{s}"),
        v => println!("{}", serde_json::to_string_pretty(v)?),
    }
    if !(200..300).contains(&status) {
        eprintln!("demo-app: HTTP {status}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
