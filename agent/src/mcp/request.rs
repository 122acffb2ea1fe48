//! send_test_request's client: a child process (this same binary, `shunt mcp
//! --internal-request`) that joins the client pod's network namespace and the captured cgroup
//! before exec, so its connection is captured and routed exactly like a pod's. (cgroup v2 moves
//! whole processes and `setns` is per thread, so the server itself must not move.)
//!
//! The parent writes a [`ChildRequest`] as JSON on the child's stdin and reads a
//! [`ChildResponse`] from its stdout.
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The variable a request pod gets its [`ChildRequest`] in (cluster mode has no stdin to write).
pub const REQUEST_ENV: &str = "SHUNT_REQUEST";

/// Largest response body returned.
pub const BODY_LIMIT: usize = 256 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct ChildRequest {
    pub method: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub timeout_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ChildResponse {
    /// The client socket's own address: the `client` of the first routing decision.
    pub local: Option<SocketAddr>,
    pub status: Option<u16>,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub truncated: bool,
    pub error: Option<String>,
}

/// Where the child runs.
#[derive(Clone, Debug, Default)]
pub struct ClientPlacement {
    pub netns: Option<PathBuf>,
    pub cgroup: Option<PathBuf>,
}

/// Runs the request in a child placed per `placement`.
pub async fn run_in_child(
    placement: &ClientPlacement,
    req: &ChildRequest,
) -> anyhow::Result<ChildResponse> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["mcp", "--internal-request"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::placement::join_before_exec(
        cmd.as_std_mut(),
        placement.netns.as_deref(),
        placement.cgroup.as_deref(),
    )
    .context("placing the request client in the client pod")?;
    let mut child = cmd.spawn().context("starting the request client")?;
    let input = serde_json::to_vec(req)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&input).await?;
        drop(stdin);
    }
    let mut stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    let deadline = Duration::from_millis(req.timeout_ms) + Duration::from_secs(5);
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        a?;
        b?;
        let status = child.wait().await?;
        anyhow::Ok((status, out, err))
    };
    let (status, out, err) = tokio::time::timeout(deadline, run)
        .await
        .context("the request client did not finish in time")??;
    serde_json::from_slice(&out).with_context(|| {
        format!(
            "the request client failed ({status}): {}",
            String::from_utf8_lossy(&err).trim()
        )
    })
}

/// The child side: reads a request from `SHUNT_REQUEST` (a request pod) or stdin, prints the
/// response on stdout.
pub fn child_main() -> anyhow::Result<()> {
    let req: ChildRequest = match std::env::var(REQUEST_ENV) {
        Ok(json) => {
            serde_json::from_str(&json).with_context(|| format!("request in {REQUEST_ENV}"))?
        }
        Err(_) => {
            let mut input = Vec::new();
            std::io::stdin().read_to_end(&mut input)?;
            serde_json::from_slice(&input).context("request on stdin")?
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut resp = ChildResponse::default();
    if let Err(e) = rt.block_on(send(&req, &mut resp)) {
        resp.error = Some(format!("{e:#}"));
    }
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &resp)?;
    // One line: a request pod's log is read back and its last line parsed.
    stdout.write_all(b"\n")?;
    stdout.flush()?;
    Ok(())
}

async fn send(req: &ChildRequest, resp: &mut ChildResponse) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(req.timeout_ms);
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(req.addr))
        .await
        .with_context(|| format!("connecting to {}: timed out", req.addr))?
        .with_context(|| format!("connecting to {}", req.addr))?;
    resp.local = stream.local_addr().ok();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method(req.method.as_str())
        .uri(req.path_and_query.as_str())
        .header(hyper::header::HOST, req.host.as_str());
    for (n, v) in &req.headers {
        builder = builder.header(n.as_str(), v.as_str());
    }
    let body = Full::new(Bytes::from(req.body.clone().unwrap_or_default()));
    let request = builder.body(body)?;
    let response = tokio::time::timeout(timeout, sender.send_request(request))
        .await
        .context("no response in time")??;
    resp.status = Some(response.status().as_u16());
    for (n, v) in response.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        resp.headers
            .entry(n.as_str().to_string())
            .and_modify(|cur| {
                cur.push_str(", ");
                cur.push_str(&v);
            })
            .or_insert(v);
    }
    let mut body = Vec::new();
    let mut incoming = response.into_body();
    let read = tokio::time::timeout(timeout, async {
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| anyhow::anyhow!("reading the body: {e}"))?;
            if let Ok(data) = frame.into_data() {
                let room = BODY_LIMIT.saturating_sub(body.len());
                if data.len() > room {
                    body.extend_from_slice(&data[..room]);
                    resp.truncated = true;
                    break;
                }
                body.extend_from_slice(&data);
            }
        }
        anyhow::Ok(())
    })
    .await;
    resp.body = String::from_utf8_lossy(&body).into_owned();
    match read {
        Ok(r) => r,
        Err(_) => anyhow::bail!("the response body did not finish in time"),
    }
}
