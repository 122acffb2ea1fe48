//! Wire fidelity (issue 15): for unkeyed traffic, an exchange through Shunt is the exchange
//! without it, field by field, except for hop-by-hop headers.
//!
//! - `proxied_exchange_differs_from_direct_only_in_hop_by_hop_headers`: the same requests, sent
//!   once directly (the client outside the captured cgroup) and once through the proxy (inside
//!   it), to backends that record what they receive. HTTP/1.1 with a raw-socket client and a
//!   raw-socket backend (so name case and order are visible), h2c with the h2 crate on both
//!   sides (`:authority`, `:scheme`, `:path`, repeated fields, an empty POST), and a gRPC
//!   trailers-only error (HEADERS with END_STREAM carrying `grpc-status`).
//!
//! Real agent, real eBPF capture, between network namespaces.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use serde_json::{Value, json};
use tests::{
    bins,
    harness::Env,
    netns::Netns,
    process::spawn_in,
    routes_fixture::{POD_PORT, RoutesSpec, routes_yaml},
};
use tokio_util::sync::CancellationToken;

/// Steered ports of `reviews` (named ports of the routes fixture): the raw HTTP/1.1 backend on
/// `opaque`, the h2 backend on `grpc`.
const H1_PORT: u16 = POD_PORT + 1;
const H2_PORT: u16 = 8085;

/// Headers that describe a connection, not the message (RFC 9110 §7.6.1), and so may differ.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// An HTTP/1.x message as bytes show it: start line, fields (name case kept, in order), body.
#[derive(Debug, PartialEq, Eq)]
struct H1Message {
    start: String,
    fields: Vec<(String, String)>,
    body: String,
}

impl H1Message {
    fn parse(raw: &str) -> Self {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap_or_default().to_string();
        let fields = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or((l, ""));
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        Self {
            start,
            fields,
            body: body.to_string(),
        }
    }

    /// The message without its hop-by-hop fields (those named, and those `Connection` lists).
    fn end_to_end(&self) -> Self {
        let listed: Vec<String> = self
            .fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .collect();
        Self {
            start: self.start.clone(),
            fields: self
                .fields
                .iter()
                .filter(|(n, _)| {
                    let n = n.to_ascii_lowercase();
                    !HOP_BY_HOP.contains(&n.as_str()) && !listed.contains(&n)
                })
                .cloned()
                .collect(),
            body: self.body.clone(),
        }
    }
}

/// What a backend received on one connection or stream, and from whom.
#[derive(Clone, Debug)]
struct Received {
    peer: IpAddr,
    what: Value,
}

/// A raw-socket HTTP/1.1 backend: keeps the exact bytes of each request (head and
/// `Content-Length` body), answers `reply` and closes.
struct RawH1Backend {
    received: Arc<Mutex<Vec<Received>>>,
}

impl RawH1Backend {
    fn start(netns: &Netns, addr: SocketAddr, reply: &'static [u8]) -> Self {
        let listener = netns.run(move || TcpListener::bind(addr)).unwrap().unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let peer = c.peer_addr().map(|a| a.ip()).expect("peer address");
                let mut bytes = Vec::new();
                let mut buf = [0u8; 4096];
                let complete = |b: &[u8]| {
                    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return false;
                    };
                    let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .split("\r\n")
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap_or(0));
                    b.len() >= end + 4 + len
                };
                while !complete(&bytes) {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    }
                }
                log.lock().unwrap().push(Received {
                    peer,
                    what: Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                });
                let _ = c.write_all(reply);
            }
        });
        Self { received }
    }
}

/// An HTTP/2 backend on the h2 crate (no hyper): records every field of each request as
/// received, and answers `/grpc.*` with a trailers-only gRPC error (one HEADERS frame with
/// END_STREAM) and anything else with repeated headers, a body and trailers.
struct H2Backend {
    received: Arc<Mutex<Vec<Received>>>,
    stop: CancellationToken,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn h2_fields(map: &http::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

impl H2Backend {
    fn start(netns: &Netns, addr: SocketAddr) -> Self {
        let listener = netns.run(move || TcpListener::bind(addr)).unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let stop = CancellationToken::new();
        let (log, s) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("h2 backend runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let (sock, peer) = tokio::select! {
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                        _ = s.cancelled() => return,
                    };
                    let log = log.clone();
                    tokio::spawn(async move {
                        let Ok(mut conn) = h2::server::handshake(sock).await else {
                            return;
                        };
                        while let Some(Ok((req, respond))) = conn.accept().await {
                            tokio::spawn(Self::serve(req, respond, peer.ip(), log.clone()));
                        }
                    });
                }
            });
        });
        Self { received, stop }
    }

    async fn serve(
        req: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        peer: IpAddr,
        log: Arc<Mutex<Vec<Received>>>,
    ) {
        let (parts, mut body) = req.into_parts();
        let mut data = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.ok().flatten();
        log.lock().unwrap().push(Received {
            peer,
            what: json!({
                "method": parts.method.as_str(),
                "scheme": parts.uri.scheme_str(),
                "authority": parts.uri.authority().map(|a| a.as_str()),
                "path": parts.uri.path_and_query().map(|p| p.as_str()),
                "headers": h2_fields(&parts.headers),
                "body": String::from_utf8_lossy(&data),
                "trailers": trailers.as_ref().map(h2_fields),
            }),
        });
        if parts.uri.path().starts_with("/grpc.") {
            let response = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "5")
                .header("grpc-message", "no such service")
                .body(())
                .unwrap();
            let _ = respond.send_response(response, true);
            return;
        }
        let response = http::Response::builder()
            .header("x-dup", "1")
            .header("cache-control", "no-store")
            .header("x-dup", "2")
            .body(())
            .unwrap();
        let Ok(mut send) = respond.send_response(response, false) else {
            return;
        };
        let _ = send.send_data(Bytes::from_static(b"ok"), false);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-trailer", http::HeaderValue::from_static("t"));
        let _ = send.send_trailers(trailers);
    }
}

/// Runs `program args` in pod `pod`, inside the captured cgroup when `captured`; its stdout.
fn run_in_pod(env: &Env, pod: usize, captured: bool, program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let cgroup = captured.then(|| env.cgroup.path());
    let child = spawn_in(program, cmd, Some(&env.topo.pods[pod].netns), cgroup)
        .expect("spawning the client");
    let (status, out, err) = child
        .output_timeout(Duration::from_secs(30))
        .expect("the client finished in time");
    assert!(status.success(), "{program} {args:?} failed: {err}");
    out
}

/// One exchange, direct then proxied; returns what the backend received and what the client
/// received, each as (direct, proxied). Asserts the proxied one did go through the proxy.
fn direct_and_proxied(
    env: &Env,
    received: &Mutex<Vec<Received>>,
    exchange: impl Fn(bool) -> String,
) -> ((Value, Value), (String, String)) {
    let mut backend = Vec::new();
    let mut client = Vec::new();
    for captured in [false, true] {
        received.lock().unwrap().clear();
        client.push(exchange(captured));
        let got = received.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "one request reached the backend: {got:?}");
        let expected_peer = if captured {
            // Through the proxy: the node's address on the backend's link.
            IpAddr::V4(env.topo.pods[1].node_ip4)
        } else {
            IpAddr::V4(env.topo.pods[0].ip4)
        };
        assert_eq!(
            got[0].peer, expected_peer,
            "captured={captured}: the connection came from the expected side"
        );
        backend.push(got[0].what.clone());
    }
    let proxied_backend = backend.pop().unwrap();
    let direct_backend = backend.pop().unwrap();
    let proxied_client = client.pop().unwrap();
    let direct_client = client.pop().unwrap();
    (
        (direct_backend, proxied_backend),
        (direct_client, proxied_client),
    )
}

#[test]
fn proxied_exchange_differs_from_direct_only_in_hop_by_hop_headers() {
    let Some(env) = Env::new("proxied_exchange_differs_from_direct", 5, bins!()) else {
        return;
    };
    let routes = env.run.path.join("routes.yaml");
    std::fs::write(&routes, routes_yaml(&env.topo, &RoutesSpec::default())).unwrap();
    let pod1 = &env.topo.pods[1];
    const H1_REPLY: &[u8] = b"HTTP/1.1 201 Created\r\nX-Mixed-Case: A\r\nx-dup: 1\r\nServer: raw\r\nX-Dup: 2\r\nConnection: close, X-Hop-Back\r\nX-Hop-Back: gone\r\nContent-Length: 2\r\n\r\nok";
    let h1 = RawH1Backend::start(&pod1.netns, pod1.addr4(H1_PORT), H1_REPLY);
    let h2 = H2Backend::start(&pod1.netns, pod1.addr4(H2_PORT));
    let _agent = env.start_agent(&["--routes".into(), routes.display().to_string()], None);
    let netpeer = env.bins.netpeer.display().to_string();
    let h2peer = env!("CARGO_BIN_EXE_h2peer");

    // HTTP/1.1: mixed-case names, repeated fields, Host as sent, a connection option and the
    // header it names (hop-by-hop), a body.
    let request = "POST /p?q=1 HTTP/1.1\r\nHost: MyHost:8087\r\nX-Client-Case: B\r\nx-rep: 1\r\n\
                   Connection: X-Hop\r\nX-Hop: gone\r\nUser-Agent: raw\r\nX-Rep: 2\r\n\
                   Content-Length: 5\r\n\r\nhello";
    let dst = pod1.addr4(H1_PORT).to_string();
    let ((direct_in, proxied_in), (direct_out, proxied_out)) =
        direct_and_proxied(&env, &h1.received, |captured| {
            let out = run_in_pod(&env, 0, captured, &netpeer, &["raw", &dst, request]);
            let line: Value = serde_json::from_str(out.trim()).expect("netpeer line");
            line["response"].as_str().unwrap_or_default().to_string()
        });
    let direct_in = H1Message::parse(direct_in.as_str().unwrap());
    let proxied_in = H1Message::parse(proxied_in.as_str().unwrap());
    assert_eq!(
        direct_in,
        H1Message::parse(request),
        "HTTP/1.1: the direct request arrives as sent"
    );
    assert_eq!(
        proxied_in,
        direct_in.end_to_end(),
        "HTTP/1.1: the backend receives the request less its hop-by-hop headers, nothing else"
    );
    let (direct_out, proxied_out) = (
        H1Message::parse(&direct_out),
        H1Message::parse(&proxied_out),
    );
    assert_eq!(
        direct_out,
        H1Message::parse(std::str::from_utf8(H1_REPLY).unwrap())
    );
    assert_eq!(
        proxied_out.end_to_end(),
        direct_out.end_to_end(),
        "HTTP/1.1: the client receives the response less its hop-by-hop headers, nothing else"
    );

    // h2c: the client's own :authority (not the pod's address), :scheme and :path, repeated
    // fields in order, then an empty POST (no content-length added).
    let dst = pod1.addr4(H2_PORT).to_string();
    let h2_requests = [
        json!({
            "method": "GET", "scheme": "http", "authority": "reviews.shop.svc:9085",
            "path": "/wire?q=1",
            "headers": [["x-rep", "1"], ["user-agent", "h2peer"], ["x-rep", "2"],
                        ["accept", "*/*"]],
        }),
        json!({
            "method": "POST", "scheme": "http", "authority": "reviews.shop.svc:9085",
            "path": "/empty", "headers": [["x-empty", "yes"]],
        }),
    ];
    for spec in h2_requests {
        let spec = spec.to_string();
        let ((direct_in, proxied_in), (direct_out, proxied_out)) =
            direct_and_proxied(&env, &h2.received, |captured| {
                run_in_pod(&env, 0, captured, h2peer, &[&dst, &spec])
            });
        let direct_out: Value = serde_json::from_str(direct_out.trim()).unwrap();
        let proxied_out: Value = serde_json::from_str(proxied_out.trim()).unwrap();
        assert_eq!(direct_out["status"], 200, "h2c direct: {direct_out}");
        assert_eq!(
            proxied_in, direct_in,
            "h2c {spec}: the backend receives every field as sent (:authority included)"
        );
        assert_eq!(
            proxied_out, direct_out,
            "h2c {spec}: the client receives every field the backend sent, and nothing more"
        );
    }

    // gRPC: a trailers-only error. The client sees the backend's fields and nothing else (no
    // `date`), still in one HEADERS frame that ends the stream.
    let spec = json!({
        "method": "POST", "scheme": "http", "authority": "reviews.shop.svc:9085",
        "path": "/grpc.health.v1.Health/Check",
        "headers": [["content-type", "application/grpc"], ["te", "trailers"],
                    ["grpc-timeout", "5S"], ["user-agent", "grpc-h2peer/1.0"]],
        "body": "\u{0}\u{0}\u{0}\u{0}\u{0}",
    })
    .to_string();
    let ((direct_in, proxied_in), (direct_out, proxied_out)) =
        direct_and_proxied(&env, &h2.received, |captured| {
            run_in_pod(&env, 0, captured, h2peer, &[&dst, &spec])
        });
    let direct_out: Value = serde_json::from_str(direct_out.trim()).unwrap();
    let proxied_out: Value = serde_json::from_str(proxied_out.trim()).unwrap();
    assert_eq!(
        direct_out["end_stream_on_headers"], true,
        "the backend answers trailers-only: {direct_out}"
    );
    assert_eq!(
        proxied_in, direct_in,
        "gRPC: the backend receives every field as sent"
    );
    assert_eq!(
        proxied_out, direct_out,
        "gRPC trailers-only: the client receives exactly the backend's fields (no date)"
    );
}
