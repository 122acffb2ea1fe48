//! The proxy under hostile load and faults: one client's connections cannot starve the others,
//! tunnels count, the watchdog comes back, liveness tells the truth, memory and descriptors are
//! bounded, and the admin API never stalls proxying. Real agent, real eBPF capture, real
//! sockets, between network namespaces.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    bins,
    harness::{AgentProc, DEBUG_PORT},
    netns::Netns,
    process::spawn_in,
    routes_fixture::{POD_PORT, RoutesSpec},
    routing_world::{World, reviews},
};

fn world(test: &str, spec: RoutesSpec) -> Option<World> {
    World::new(test, bins!(), spec)
}

/// The JSON line of a background netpeer.
fn line(out: String) -> Value {
    let first = out
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no output: {out:?}"));
    serde_json::from_str(first).unwrap_or_else(|e| panic!("bad line {first:?}: {e}"))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The peer address the backend saw for one GET from `pod` (captured) to `dst`.
fn served_peer(w: &World, pod: usize, dst: SocketAddr) -> String {
    let lines = w
        .env
        .peer(pod, &["http", &dst.to_string(), r#"[{"path":"/"}]"#]);
    lines
        .first()
        .and_then(|l| l["served"]["peer"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("error: {lines:?}"))
}

/// Whether `peer` is the node side of pod 1's link: the proxy dialled the backend.
fn via_proxy(w: &World, peer: &str) -> bool {
    peer.starts_with(&format!("{}:", w.env.topo.pods[1].node_ip4))
}

fn shed(agent: &AgentProc, reason: &str) -> f64 {
    agent.metric(&format!(
        "shunt_proxy_connections_shed_total{{reason=\"{reason}\"}}"
    ))
}

const WEBSOCKET_UPGRADE: &str = "GET /ws HTTP/1.1\\r\\nHost: reviews\\r\\nUpgrade: websocket\\r\\n\
    Connection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\
    Sec-WebSocket-Version: 13\\r\\n\\r\\n";

#[test]
fn idle_connections_from_one_client_do_not_starve_another_client() {
    let Some(w) = world(
        "idle_connections_from_one_client_do_not_starve_another_client",
        RoutesSpec::default(),
    ) else {
        return;
    };
    let agent = w.agent(&[
        "--max-connections",
        "32",
        "--max-client-connections",
        "8",
        "--detect-timeout",
        "200ms",
        "--watchdog-interval",
        "200ms",
    ]);
    let dst = w.env.topo.pods[1].addr4(POD_PORT).to_string();
    // Pod 0 opens 40 connections and sends nothing: more than the whole cap.
    let idle = w.env.peer_in_background(0, &["hold", &dst, "40", "5000"]);
    wait_until(
        "the idle client's extra connections reset",
        Duration::from_secs(5),
        || shed(&agent, "client_limit") >= 32.0,
    );
    std::thread::sleep(Duration::from_millis(500));
    // Another pod is served through the proxy, at once, every time.
    for _ in 0..3 {
        let started = Instant::now();
        let peer = served_peer(&w, 4, w.env.topo.pods[1].addr4(POD_PORT));
        assert!(
            via_proxy(&w, &peer),
            "pod 4 served through the proxy: {peer}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        agent.metric("shunt_watchdog_trips_total"),
        0.0,
        "one client never switches steering off"
    );
    let idle = line(idle.join().unwrap());
    // (A reset that beats the client's connect() to its poll shows as a failed connect.)
    assert_eq!(
        idle["connected"].as_u64().unwrap() + idle["connect_failed"].as_u64().unwrap(),
        40,
        "{idle}"
    );
    // (Counted at the end of the hold: a busy machine may deliver the last resets late.)
    assert_eq!(idle["open_at_end"], 8, "only its share stays open: {idle}");
}

#[test]
fn upgraded_tunnels_count_against_the_connection_limit() {
    let Some(w) = world(
        "upgraded_tunnels_count_against_the_connection_limit",
        RoutesSpec::default(),
    ) else {
        return;
    };
    let agent = w.agent(&["--max-client-connections", "3"]);
    let dst = w.env.topo.pods[1].addr4(POD_PORT).to_string();
    let upgrade = ["--send", WEBSOCKET_UPGRADE, "--expect", "HTTP/1.1 101"];
    let tunnels = |pod: usize, count: &str, hold_ms: &str| {
        let mut args = vec!["hold", dst.as_str(), count, hold_ms];
        args.extend_from_slice(&upgrade);
        w.env.peer_in_background(pod, &args)
    };
    // Three websocket tunnels from pod 0 take its share...
    let held = tunnels(0, "3", "4000");
    wait_until("three tunnels up", Duration::from_secs(5), || {
        agent.metric("shunt_proxy_connections_accepted_total") >= 3.0
    });
    std::thread::sleep(Duration::from_millis(500));
    // ...so a fourth is reset before it is upgraded.
    let fourth = line(tunnels(0, "1", "500").join().unwrap());
    assert_eq!(fourth["answered"], 0, "{fourth}");
    assert_eq!(fourth["open"], 0, "{fourth}");
    assert!(shed(&agent, "client_limit") >= 1.0);
    // Another client is not affected.
    let other = line(tunnels(4, "1", "500").join().unwrap());
    assert_eq!(other["answered"], 1, "{other}");
    let held = line(held.join().unwrap());
    assert_eq!(held["answered"], 3, "{held}");
    assert_eq!(held["open_at_end"], 3, "the tunnels stayed up: {held}");
    // Once they close, pod 0 may open a tunnel again.
    wait_until("pod 0 tunnels again", Duration::from_secs(5), || {
        line(tunnels(0, "1", "300").join().unwrap())["answered"] == 1
    });
}

/// An agent whose proxy has one connection slot, a fast watchdog and fast detection: one idle
/// connection wedges it until `opaque_idle_timeout` closes that connection.
fn one_slot_agent(w: &World, opaque_idle_timeout: &str) -> AgentProc {
    w.agent(&[
        "--max-connections",
        "1",
        "--watchdog-interval",
        "200ms",
        "--detect-timeout",
        "200ms",
        "--opaque-idle-timeout",
        opaque_idle_timeout,
    ])
}

#[test]
fn watchdog_restores_steering_after_the_queue_drains() {
    let Some(w) = world(
        "watchdog_restores_steering_after_the_queue_drains",
        RoutesSpec::default(),
    ) else {
        return;
    };
    let agent = one_slot_agent(&w, "3s");
    let dst = w.env.topo.pods[1].addr4(POD_PORT);
    // An idle connection holds the only slot...
    let idle = w
        .env
        .peer_in_background(0, &["hold", &dst.to_string(), "1", "10000"]);
    std::thread::sleep(Duration::from_millis(500));
    // ...clients queue behind it and give up (reset) while queued...
    let quitters: Vec<_> = (0..3)
        .map(|_| {
            w.env.peer_in_background(
                0,
                &[
                    "raw",
                    &dst.to_string(),
                    "GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
                    "--stall-ms",
                    "300",
                    "--reset",
                ],
            )
        })
        .collect();
    for q in quitters {
        q.join().unwrap();
    }
    // ...and the watchdog fails open: new connections go direct.
    wait_until("the watchdog trips", Duration::from_secs(3), || {
        agent.metric("shunt_watchdog_trips_total") >= 1.0
    });
    let direct = served_peer(&w, 0, dst);
    assert!(
        direct.starts_with(&format!("{}:", w.env.topo.pods[0].ip4)),
        "went direct: {direct}"
    );
    // The idle connection is closed after --opaque-idle-timeout; the proxy drains the queue of
    // quitters and serves again: steering comes back.
    wait_until("steering restored", Duration::from_secs(8), || {
        via_proxy(&w, &served_peer(&w, 0, dst))
    });
    assert!(agent.metric("shunt_proxy_opaque_idle_closes_total") >= 1.0);
    let idle = line(idle.join().unwrap());
    assert_eq!(
        idle["open_at_end"], 0,
        "the idle connection was closed: {idle}"
    );
}

#[test]
fn liveness_fails_while_the_proxy_is_wedged() {
    let Some(w) = world(
        "liveness_fails_while_the_proxy_is_wedged",
        RoutesSpec::default(),
    ) else {
        return;
    };
    let agent = one_slot_agent(&w, "4s");
    assert_eq!(agent.admin_get("/healthz").unwrap().0, 200);
    // The only slot taken by an idle connection: the proxy accepts nothing.
    let dst = w.env.topo.pods[1].addr4(POD_PORT).to_string();
    let idle = w.env.peer_in_background(0, &["hold", &dst, "1", "6000"]);
    // (A probe result answers for a second: kubelet asks every 10 s.)
    let mut last = (0, String::new());
    wait_until("liveness fails", Duration::from_secs(4), || {
        last = agent.admin_get("/healthz").unwrap();
        last.0 == 503
    });
    assert!(last.1.contains("the proxy does not serve"), "{}", last.1);
    // Readiness and metrics still answer (the admin API has its own thread).
    assert_eq!(agent.admin_get("/readyz").unwrap().0, 200);
    // Once the idle connection is closed the proxy serves again, and liveness says so.
    wait_until("liveness back", Duration::from_secs(8), || {
        matches!(agent.admin_get("/healthz"), Ok((200, _)))
    });
    idle.join().unwrap();
}

/// Sets the agent's open-file soft limit; returns the one it had.
fn set_nofile(pid: i32, limit: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit value; the pid is our child.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    // The soft limit only: raising the hard one needs a capability the runner may lack.
    let new = libc::rlimit {
        rlim_cur: limit.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: valid pointers to rlimit values; the pid is our child.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// The highest descriptor number the agent has open.
fn highest_fd(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .max()
        .unwrap()
}

#[test]
fn fd_exhaustion_returns_503_and_recovers() {
    let Some(w) = world(
        "fd_exhaustion_returns_503_and_recovers",
        RoutesSpec::default(),
    ) else {
        return;
    };
    let agent = w.agent(&["--header-read-timeout", "60s"]);
    let pid = agent.child.pid();
    let dst = w.env.topo.pods[1].addr4(POD_PORT);
    assert!(via_proxy(&w, &served_peer(&w, 0, dst)));
    // Past the closing connection's linger: the agent's descriptors are steady.
    std::thread::sleep(Duration::from_millis(1500));
    // 20 descriptors above the highest in use...
    let limit = highest_fd(pid) + 21;
    let free = limit
        - std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64;
    let was = set_nofile(pid, limit);
    let holders_n = (free + 20).to_string();
    // ...taken by clients that send half a request head and wait (one descriptor each; the
    // extra ones are shed, as a real exhaustion would go: every descriptor below the limit
    // in use).
    let holders = w.env.peer_in_background(
        0,
        &[
            "hold",
            &dst.to_string(),
            &holders_n,
            "7000",
            "--send",
            "GET / HTTP/1.1\\r\\nHost: x\\r\\n",
        ],
    );
    std::thread::sleep(Duration::from_millis(2500));
    let started = Instant::now();
    for _ in 0..3 {
        let lines = w
            .env
            .peer(0, &["http", &dst.to_string(), r#"[{"path":"/"}]"#]);
        assert_eq!(lines[0]["status"], 503, "{}", lines[0]);
        assert!(
            lines[0]["body"]
                .as_str()
                .unwrap_or("")
                .contains("out of file descriptors"),
            "{}",
            lines[0]
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // Not spinning while out of descriptors: under half a CPU over a quiet second.
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu();
    std::thread::sleep(Duration::from_secs(1));
    let ticks = cpu() - before;
    assert!(ticks < 50, "{ticks} clock ticks in a quiet second");
    // The holders leave: descriptors are free again, and clients are served through the
    // proxy again (the limit unchanged).
    let holders = line(holders.join().unwrap());
    assert!(
        holders["open"].as_u64().unwrap() < free + 20,
        "some were shed: {holders}"
    );
    wait_until("served again", Duration::from_secs(5), || {
        via_proxy(&w, &served_peer(&w, 0, dst))
    });
    set_nofile(pid, was);
    assert!(shed(&agent, "out_of_fds") >= 3.0);
    assert_eq!(
        agent.admin_get("/healthz").unwrap().0,
        200,
        "alive and serving"
    );
}

/// A sandbox that accepts, reads everything and never answers.
struct SilentBackend {
    stop: Arc<AtomicBool>,
}

impl SilentBackend {
    fn start(netns: &Netns, addr: SocketAddr) -> Self {
        Self::start_with(netns, addr, false)
    }

    /// `reset`: each connection is reset once a request has arrived, as when the sandbox's
    /// process dies under it.
    fn start_with(netns: &Netns, addr: SocketAddr, reset: bool) -> Self {
        let listener = netns.run(move || TcpListener::bind(addr)).unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                            let mut buf = [0u8; 65536];
                            while !s.load(Ordering::Relaxed) {
                                match c.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(_) if reset => {
                                        let _ = socket2::SockRef::from(&c)
                                            .set_linger(Some(Duration::ZERO));
                                        return;
                                    }
                                    _ => {}
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self { stop }
    }
}

impl Drop for SilentBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The agent's anonymous resident memory: what it allocated. (Its file-backed pages are the
/// binary's code, 34 MiB of a debug build, shared and clean, and the same at rest as under load.)
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn h2_streams_behind_a_silent_sandbox_stay_within_the_memory_budget() {
    // The pr-42 sandbox is pod 4, where a silent backend listens.
    let spec = RoutesSpec {
        sandbox_pod: 4,
        ..RoutesSpec::default()
    };
    let Some(w) = world(
        "h2_streams_behind_a_silent_sandbox_stay_within_the_memory_budget",
        spec,
    ) else {
        return;
    };
    let _silent = SilentBackend::start(
        &w.env.topo.pods[4].netns,
        w.env.topo.pods[4].addr4(POD_PORT),
    );
    const BUDGET: u64 = 8 << 20;
    let agent = w.agent(&[
        "--max-buffered-bytes",
        &BUDGET.to_string(),
        "--response-header-timeout",
        "60s",
    ]);
    let rss_before = rss_bytes(agent.child.pid());
    // 8 connections × 100 streams, each a 32 KiB POST for the sandbox: 25 MiB of bodies.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_h2flood"));
    cmd.args([&reviews().to_string(), "8", "100", "32768", "5000", "pr-42"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let flood = spawn_in(
        "h2flood",
        cmd,
        Some(&w.env.topo.pods[0].netns),
        Some(w.env.cgroup.path()),
    )
    .unwrap();
    let pid = agent.child.pid();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_millis(4500);
    while Instant::now() < deadline {
        peak = peak.max(rss_bytes(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, out, err) = flood.output_timeout(Duration::from_secs(30)).unwrap();
    let result: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?} {err}: {e}"));
    let refused = result["refused"].as_u64().unwrap();
    let pending = result["pending"].as_u64().unwrap();
    assert!(
        peak <= BUDGET + (32 << 20),
        "peak RSS {} MiB (at start {} MiB) over the budget + 32 MiB: {result}",
        peak >> 20,
        rss_before >> 20
    );
    // What fits waits for the silent sandbox; the rest is refused, to be retried.
    assert!(pending >= 100, "{result}");
    assert!(pending * 32 * 1024 <= BUDGET, "{result}");
    assert!(refused >= 500, "{result}");
    assert_eq!(refused + pending, 800, "{result}");
    let (_, decisions) = agent.debug_get("/decisions?key=pr-42&limit=1000").unwrap();
    assert!(
        decisions.contains("buffer_budget_exhausted"),
        "the decisions say why"
    );
    eprintln!(
        "rss: start {} MiB, peak {} MiB; {result}",
        rss_before >> 20,
        peak >> 20
    );
}

/// A GET on the debug API with a long read timeout (a big topology takes a while).
fn slow_debug_get(node: &Netns, path: &str) -> (u16, usize, Duration) {
    let path = path.to_string();
    node.run(move || {
        let started = Instant::now();
        let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], DEBUG_PORT))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let status = String::from_utf8_lossy(&buf[..12.min(buf.len())])
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, buf.len(), started.elapsed())
    })
    .unwrap()
}

#[test]
fn topology_requests_do_not_delay_proxied_requests() {
    use agent_common::flows::{self, FlowCounters, FlowKey};
    use aya::maps::{Map, MapData, PerCpuHashMap, PerCpuValues};

    let Some(w) = world(
        "topology_requests_do_not_delay_proxied_requests",
        RoutesSpec::default(),
    ) else {
        return;
    };
    const FLOWS: u32 = 200_000;
    let _agent = w.agent(&[
        "--worker-threads",
        "1",
        "--flows-max-entries",
        &(FLOWS + 10_000).to_string(),
    ]);
    // 200k flows from distinct sources: as many edges.
    let data = MapData::from_pin(w.env.run.bpffs().join(flows::MAP_NAME)).unwrap();
    let mut map =
        PerCpuHashMap::<_, FlowKey, FlowCounters>::try_from(Map::from_map_data(data).unwrap())
            .unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    let dst = agent_common::Endpoint::from_socket_addr(reviews());
    for i in 0..FLOWS {
        let src = std::net::Ipv4Addr::from(0x0a80_0000 + i);
        let key = FlowKey {
            src: agent_common::NetAddr::from_ip(src.into()),
            dst: dst.addr,
            dst_port_be: dst.port_be,
            _pad: 0,
        };
        let values = PerCpuValues::try_from(vec![
            FlowCounters {
                connections: 1,
                last_seen_ns: 1,
            };
            cpus.get() as usize
        ])
        .unwrap();
        map.insert(&key, values, 0).unwrap();
    }
    let node = Netns {
        name: w.env.node().name.clone(),
    };
    let walking = Arc::new(AtomicBool::new(true));
    let walker = {
        let walking = walking.clone();
        std::thread::spawn(move || {
            let r = slow_debug_get(&node, "/topology");
            walking.store(false, Ordering::Relaxed);
            std::mem::forget(node); // not ours to delete
            r
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    // Proxied requests while the walk runs: each answered quickly.
    let dst = w.env.topo.pods[1].addr4(POD_PORT).to_string();
    let mut during = Vec::new();
    while walking.load(Ordering::Relaxed) {
        let out = w.env.peer(
            0,
            &[
                "raw",
                &dst,
                "GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
                "--until-line",
            ],
        );
        if walking.load(Ordering::Relaxed) {
            assert!(
                out[0]["response"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("HTTP/1.1 200"),
                "{}",
                out[0]
            );
            during.push(out[0]["after_ms"].as_u64().unwrap());
        }
    }
    let (status, bytes, took) = walker.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        took >= Duration::from_secs(1),
        "the walk must take >= 1 s to show anything: {took:?} ({bytes} bytes)"
    );
    assert!(!during.is_empty(), "no request during the walk ({took:?})");
    let worst = during.iter().max().copied().unwrap_or(0);
    assert!(
        worst < 200,
        "proxied requests during a {took:?} topology walk: {during:?} ms"
    );
    eprintln!("walk {took:?}, {bytes} bytes; proxied during it: {during:?} ms");
}

/// The routes world with the `pr-42` sandbox silent (pod 4: accepts, never answers).
fn silent_sandbox_world(test: &str) -> Option<(World, SilentBackend)> {
    let spec = RoutesSpec {
        sandbox_pod: 4,
        ..RoutesSpec::default()
    };
    let w = world(test, spec)?;
    let silent = SilentBackend::start(
        &w.env.topo.pods[4].netns,
        w.env.topo.pods[4].addr4(POD_PORT),
    );
    Some((w, silent))
}

fn last_decision(agent: &AgentProc) -> Value {
    let (_, text) = agent.debug_get("/decisions?key=pr-42").unwrap();
    let decisions: Vec<Value> = serde_json::from_str(&text).unwrap();
    decisions.last().cloned().unwrap_or(Value::Null)
}

#[test]
fn keyed_requests_fall_back_when_the_sandbox_does_not_answer_in_time() {
    let Some((w, _silent)) =
        silent_sandbox_world("keyed_requests_fall_back_when_the_sandbox_does_not_answer_in_time")
    else {
        return;
    };
    let agent = w.agent(&["--response-header-timeout", "1s"]);
    let keyed = r#"[{"path":"/","headers":{"baggage":"sd-routing-key=pr-42"}}]"#;
    let keyed_post = r#"[{"method":"POST","path":"/","headers":{"baggage":"sd-routing-key=pr-42"},"body":"hello"}]"#;
    for (flags, reqs) in [(None, keyed), (Some("--h2"), keyed_post)] {
        let started = Instant::now();
        let dst = reviews().to_string();
        let mut args = vec!["http", dst.as_str()];
        args.extend(flags);
        args.push(reqs);
        let lines = w.env.peer(0, &args);
        let took = started.elapsed();
        assert_eq!(lines[0]["status"], 200, "{flags:?}: {}", lines[0]);
        assert_eq!(
            lines[0]["served_by"], "reviews-v1",
            "{flags:?}: {}",
            lines[0]
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{flags:?}: {took:?}"
        );
        let d = last_decision(&agent);
        assert_eq!(d["decision"], "baseline", "{d}");
        assert_eq!(d["reason"], "sandbox_timeout", "{d}");
    }
    assert!(agent.metric("shunt_proxy_sandbox_response_timeouts_total") >= 2.0);
}

#[test]
fn a_body_over_the_request_buffer_has_no_fallback_and_the_decision_says_so() {
    let Some((w, _silent)) = silent_sandbox_world(
        "a_body_over_the_request_buffer_has_no_fallback_and_the_decision_says_so",
    ) else {
        return;
    };
    let agent = w.agent(&[
        "--response-header-timeout",
        "1s",
        "--max-request-buffer",
        "16",
    ]);
    let body = "x".repeat(100);
    let reqs = json!([{
        "method": "POST",
        "path": "/",
        "headers": { "baggage": "sd-routing-key=pr-42", "content-length": body.len().to_string() },
        "body": body,
    }])
    .to_string();
    let lines = w
        .env
        .peer(0, &["http", &reviews().to_string(), "--h2", &reqs]);
    assert_eq!(lines[0]["status"], 504, "{}", lines[0]);
    let d = last_decision(&agent);
    assert_eq!(d["reason"], "body_too_large_to_retry", "{d}");
}

#[test]
fn sandbox_that_resets_under_an_idempotent_request_sends_it_to_the_fallback() {
    let test = "sandbox_that_resets_under_an_idempotent_request_sends_it_to_the_fallback";
    let spec = RoutesSpec {
        sandbox_pod: 4,
        ..RoutesSpec::default()
    };
    let Some(w) = world(test, spec) else {
        return;
    };
    let pod = &w.env.topo.pods[4];
    let _crashing = SilentBackend::start_with(&pod.netns, pod.addr4(POD_PORT), true);
    let agent = w.agent(&[]);
    let dst = reviews().to_string();
    // A GET may be sent again (RFC 9110 9.2.2): the fallback answers it.
    let get = r#"[{"path":"/","headers":{"baggage":"sd-routing-key=pr-42"}}]"#;
    let lines = w.env.peer(0, &["http", &dst, get]);
    assert_eq!(lines[0]["status"], 200, "{}", lines[0]);
    assert_eq!(lines[0]["served_by"], "reviews-v1", "{}", lines[0]);
    let d = last_decision(&agent);
    assert_eq!(d["decision"], "baseline", "{d}");
    assert_eq!(d["reason"], "sandbox_unreachable", "{d}");
    // A POST may have been processed: it is not sent twice, the client gets the error.
    let post = r#"[{"method":"POST","path":"/","headers":{"baggage":"sd-routing-key=pr-42"},"body":"hello"}]"#;
    let lines = w.env.peer(0, &["http", &dst, post]);
    assert_eq!(lines[0]["status"], 502, "{}", lines[0]);
}
