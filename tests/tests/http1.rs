//! The HTTP/1.1 path on the wire: pipelined requests routed one by one, request smuggling
//! refused before any byte reaches an upstream, and responses relayed byte for byte.
//! Real agent, real eBPF capture, raw sockets on both sides, between network namespaces.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use tests::{
    bins,
    harness::{AgentProc, Env},
    http_backend::HttpBackend,
    netns::Netns,
    routes_fixture::{POD_PORT, REVIEWS_VIP, RoutesSpec, SERVICE_PORT, routes_yaml},
};

/// Pods: 0 client, 1 reviews-v1 (baseline), 2 reviews-v2 (sandbox of pr-42), 3 ratings-v1.
struct World {
    env: Env,
    _backends: Vec<HttpBackend>,
    routes: std::path::PathBuf,
}

impl World {
    fn new(test: &str) -> Option<Self> {
        let env = Env::new(test, 5, bins!())?;
        let backends = [(1, "reviews-v1"), (2, "reviews-v2"), (3, "ratings-v1")]
            .into_iter()
            .map(|(pod, name)| {
                let p = &env.topo.pods[pod];
                HttpBackend::start(&p.netns, name, p.addr4(POD_PORT)).unwrap()
            })
            .collect();
        let routes = env.run.path.join("routes.yaml");
        std::fs::write(&routes, routes_yaml(&env.topo, &RoutesSpec::default())).unwrap();
        Some(Self {
            env,
            _backends: backends,
            routes,
        })
    }

    fn agent(&self) -> AgentProc {
        self.env.start_agent(
            &["--routes".into(), self.routes.display().to_string()],
            None,
        )
    }

    /// Sends `bytes` from the client pod in one write; returns all that came back until the
    /// proxy closed the connection.
    fn raw(&self, dst: SocketAddr, bytes: &str) -> Value {
        let dst = dst.to_string();
        let mut out = self.env.peer(0, &["raw", &dst, bytes]);
        out.remove(0)
    }
}

/// A backend speaking raw bytes: counts connections and bytes received, keeps what arrived,
/// and answers each request head with `reply`, then closes.
struct RawBackend {
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
}

impl RawBackend {
    fn start(netns: &Netns, addr: SocketAddr, reply: &'static [u8]) -> Self {
        let listener = netns.run(move || TcpListener::bind(addr)).unwrap().unwrap();
        let b = Self {
            connections: Arc::default(),
            bytes: Arc::default(),
            received: Arc::default(),
        };
        let (conns, bytes, received) = (b.connections.clone(), b.bytes.clone(), b.received.clone());
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                conns.fetch_add(1, Ordering::SeqCst);
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::SeqCst);
                            head.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                received.lock().unwrap().extend_from_slice(&head);
                let _ = c.write_all(reply);
            }
        });
        b
    }
}

fn reviews() -> SocketAddr {
    SocketAddr::from((REVIEWS_VIP, SERVICE_PORT))
}

/// The `x-served-by` values of a stream of responses, in order.
fn served_by(response: &str) -> Vec<&str> {
    response
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("x-served-by: "))
        .collect()
}

#[test]
fn pipelined_requests_with_different_keys_each_reach_their_upstream() {
    let Some(w) = World::new("pipelined_requests_with_different_keys") else {
        return;
    };
    let _agent = w.agent();
    // Four requests in one write: the proxy reads them all at once and must route each on its
    // own key (the last asks to close, so the client reads to the end).
    let keyed = "GET /a HTTP/1.1\r\nhost: reviews\r\nbaggage: sd-routing-key=pr-42\r\n\r\n";
    let plain = "GET /b HTTP/1.1\r\nhost: reviews\r\n\r\n";
    let other = "GET /c HTTP/1.1\r\nhost: reviews\r\nbaggage: sd-routing-key=nope\r\n\r\n";
    let last = "GET /d HTTP/1.1\r\nhost: reviews\r\nbaggage: sd-routing-key=pr-42\r\nconnection: close\r\n\r\n";
    let out = w.raw(reviews(), &format!("{keyed}{plain}{other}{last}"));
    let response = out["response"].as_str().unwrap();
    assert_eq!(
        served_by(response),
        ["reviews-v2", "reviews-v1", "reviews-v1", "reviews-v2"],
        "{response}"
    );
    assert_eq!(
        response.matches("HTTP/1.1 200 OK\r\n").count(),
        4,
        "{response}"
    );
    // Each response is the answer to its own request, in order.
    let paths: Vec<&str> = response
        .match_indices("\"path\":\"")
        .map(|(i, m)| &response[i + m.len()..i + m.len() + 2])
        .collect();
    assert_eq!(paths, ["/a", "/b", "/c", "/d"], "{response}");
}

#[test]
fn request_smuggling_attempts_are_rejected() {
    let Some(w) = World::new("request_smuggling_attempts_are_rejected") else {
        return;
    };
    // Counting backends behind reviews' second named port (a port the routes declare, so it is
    // steered): baseline pod 1, sandbox pod 2.
    let port = POD_PORT + 1;
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
    let baseline = RawBackend::start(
        &w.env.topo.pods[1].netns,
        w.env.topo.pods[1].addr4(port),
        OK,
    );
    let sandbox = RawBackend::start(
        &w.env.topo.pods[2].netns,
        w.env.topo.pods[2].addr4(port),
        OK,
    );
    let _agent = w.agent();
    let dst = w.env.topo.pods[1].addr4(port);
    let attempts = [
        (
            "CL+TE",
            "POST / HTTP/1.1\r\nhost: x\r\n{key}content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "duplicate Content-Length",
            "POST / HTTP/1.1\r\nhost: x\r\n{key}content-length: 3\r\ncontent-length: 3\r\n\r\nabc",
        ),
        (
            "conflicting Content-Length",
            "POST / HTTP/1.1\r\nhost: x\r\n{key}content-length: 3\r\ncontent-length: 30\r\n\r\nabc",
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nhost: x\r\n{key}x-a: 1\r\n folded\r\n\r\n",
        ),
        ("bare LF", "GET / HTTP/1.1\nhost: x\n{key}\n"),
        (
            "chunk-size overflow",
            "POST / HTTP/1.1\r\nhost: x\r\n{key}transfer-encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n",
        ),
    ];
    for (what, template) in attempts {
        for key in ["", "baggage: sd-routing-key=pr-42\r\n"] {
            let key = if template.contains("\r\n") {
                key.to_string()
            } else {
                key.replace("\r\n", "\n")
            };
            let request = template.replace("{key}", &key);
            let out = w.raw(dst, &request);
            let response = out["response"].as_str().unwrap();
            assert!(
                response.starts_with("HTTP/1.1 400 "),
                "{what} (key {key:?}): {response:?}"
            );
            assert_eq!(out["closed"], true, "{what}: the connection is closed");
        }
    }
    for (name, b) in [("baseline", &baseline), ("sandbox", &sandbox)] {
        assert_eq!(
            b.connections.load(Ordering::SeqCst),
            0,
            "{name} was dialled"
        );
        assert_eq!(b.bytes.load(Ordering::SeqCst), 0, "{name} got bytes");
    }
    // The backends do count: a well-formed request reaches each.
    let out = w.raw(dst, "GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    assert!(
        out["response"].as_str().unwrap().ends_with("\r\n\r\nok"),
        "{out}"
    );
    let out = w.raw(
        dst,
        "GET / HTTP/1.1\r\nhost: x\r\nbaggage: sd-routing-key=pr-42\r\n\r\n",
    );
    assert!(
        out["response"].as_str().unwrap().ends_with("\r\n\r\nok"),
        "{out}"
    );
    assert_eq!(baseline.connections.load(Ordering::SeqCst), 1);
    assert_eq!(sandbox.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn proxy_adds_no_response_header_and_keeps_header_case() {
    let Some(w) = World::new("proxy_adds_no_response_header_and_keeps_header_case") else {
        return;
    };
    // Behind reviews' second named port, so it is steered.
    let port = POD_PORT + 1;
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nX-Mixed-Case: A\r\nx-dup: 1\r\nServer: raw\r\nX-Dup: 2\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
    let backend = RawBackend::start(
        &w.env.topo.pods[1].netns,
        w.env.topo.pods[1].addr4(port),
        REPLY,
    );
    let _agent = w.agent();
    let dst = w.env.topo.pods[1].addr4(port);
    let request = "GET /p?q=1 HTTP/1.1\r\nHost: MyHost:8087\r\nX-Client-Case: B\r\nx-rep: 1\r\nUser-Agent: raw\r\nX-Rep: 2\r\n\r\n";
    let out = w.raw(dst, request);
    // The response arrives byte for byte: no date, same case, repeated headers in order.
    assert_eq!(
        out["response"].as_str().unwrap(),
        std::str::from_utf8(REPLY).unwrap()
    );
    // And so does the request: Host as sent, case and order kept.
    assert_eq!(
        String::from_utf8(backend.received.lock().unwrap().clone()).unwrap(),
        request
    );
}

#[test]
fn http10_request_follows_its_key_and_ends_with_its_connection() {
    let Some(w) = World::new("http10_request_follows_its_key") else {
        return;
    };
    let _agent = w.agent();
    // An HTTP/1.0 client gets one exchange per connection: the proxy closes it after the
    // response (the raw peer reads until then, for 10 s at most).
    for (key, expect) in [(Some("pr-42"), "reviews-v2"), (None, "reviews-v1")] {
        let baggage = key
            .map(|k| format!("baggage: sd-routing-key={k}\r\n"))
            .unwrap_or_default();
        let out = w.raw(
            reviews(),
            &format!("GET /x HTTP/1.0\r\nhost: reviews\r\n{baggage}\r\n"),
        );
        let response = out["response"].as_str().unwrap();
        assert!(response.starts_with("HTTP/1."), "{response}");
        assert_eq!(served_by(response), [expect], "{response}");
        assert_eq!(
            out["closed"], true,
            "the proxy closed the connection: {out}"
        );
    }
}
