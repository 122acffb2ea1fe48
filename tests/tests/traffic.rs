//! Who may read traffic data, and what reading it costs the agent (issue 17).
//!
//! - `decision_log_memory_stays_bounded_under_long_paths`: a pod floods the decision log with
//!   long paths and the log is read concurrently; the agent's memory stays bounded and a proxied
//!   request is not stalled meanwhile. Real agent, real capture, between network namespaces.
use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tests::{
    bins,
    harness::{DEBUG_PORT, Env, http_get},
    http_backend::HttpBackend,
    process::spawn_in,
};

const PORT: u16 = 8080;

/// A client that sends `N` keyed GETs of `SIZE`-byte paths on one keep-alive connection
/// (`flood`), or times one request on a fresh connection (`one`, prints milliseconds).
const CLIENT: &str = r#"
import http.client, sys, time
host, port, mode, n, size, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
headers = {"baggage": "sd-routing-key=" + key}
if mode == "flood":
    conn = http.client.HTTPConnection(host, port, timeout=10)
    ok = 0
    for i in range(n):
        prefix = "/%d/" % i
        conn.request("GET", prefix + "a" * (size - len(prefix)), headers=headers)
        r = conn.getresponse()
        r.read()
        ok += r.status == 200
    print(ok)
else:
    t = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/timed", headers=headers)
    r = conn.getresponse()
    r.read()
    print(r.status, (time.monotonic() - t) * 1000)
"#;

/// Runs the client in pod 0 (captured); its stdout.
fn client(env: &Env, dst: SocketAddr, mode: &str, n: usize, size: usize) -> String {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", CLIENT])
        .arg(dst.ip().to_string())
        .arg(dst.port().to_string())
        .args([mode, &n.to_string(), &size.to_string(), "flood-key"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn_in(
        "client",
        cmd,
        Some(&env.topo.pods[0].netns),
        Some(env.cgroup.path()),
    )
    .expect("spawning the client");
    let (status, out, err) = child
        .output_timeout(Duration::from_secs(180))
        .expect("the client finished");
    assert!(status.success(), "client {mode}: {err}");
    out.trim().to_string()
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn decision_log_memory_stays_bounded_under_long_paths() {
    let Some(env) = Env::new(
        "decision_log_memory_stays_bounded_under_long_paths",
        2,
        bins!(),
    ) else {
        return;
    };
    let backend = &env.topo.pods[1];
    let dst = backend.addr4(PORT);
    let _b = HttpBackend::start(&backend.netns, "b", dst).unwrap();
    let agent = env.start_agent(&["--steer".into(), dst.to_string()], None);
    let pid = agent.child.pid();

    // Warm up (allocator arenas, connection pools), then take the baseline.
    assert_eq!(client(&env, dst, "flood", 64, 64), "64");
    let before = rss_kib(pid);

    // 4096 requests with 60 KiB paths: as much path as the old log held (~240 MiB).
    let n = 4096;
    assert_eq!(
        client(&env, dst, "flood", n, 60 * 1024),
        n.to_string(),
        "{}",
        agent.log_text()
    );

    // Four readers of the whole log at once, while a proxied request is timed.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, reads) = (stop.clone(), reads.clone());
            let node = env.node().open().expect("node netns");
            std::thread::spawn(move || {
                // SAFETY: a valid namespace fd; setns affects only this thread.
                use std::os::fd::AsRawFd as _;
                assert_eq!(
                    unsafe { libc::setns(node.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) =
                        http_get(SocketAddr::from(([127, 0, 0, 1], DEBUG_PORT)), "/decisions")
                            .expect("reading /decisions");
                    assert_eq!(status, 200);
                    assert!(body.len() > 2, "{body}");
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let timed = client(&env, dst, "one", 1, 0);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader");
    }
    let after = rss_kib(pid);
    let (_, body) = agent.debug_get("/decisions").expect("/decisions");
    let ds: Vec<serde_json::Value> = serde_json::from_str(&body).expect("decisions JSON");
    let longest = ds
        .iter()
        .map(|d| d["path"].as_str().map_or(0, str::len))
        .max()
        .unwrap_or(0);

    let (status, ms) = timed.split_once(' ').expect("status and time");
    let ms: f64 = ms.parse().expect("milliseconds");
    eprintln!(
        "RSS {before} KiB -> {after} KiB; {} concurrent reads; proxied request {ms:.1} ms; \
         longest stored path {longest} bytes",
        reads.load(Ordering::Relaxed)
    );
    assert_eq!(status, "200");
    assert!(reads.load(Ordering::Relaxed) >= 4, "the readers read");
    assert!(
        longest <= agent::proxy::decision_log::MAX_PATH_BYTES + '…'.len_utf8(),
        "paths are stored cut: {longest}"
    );
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "the agent's RSS grew from {before} KiB to {after} KiB"
    );
    assert!(
        ms < 200.0,
        "a proxied request took {ms} ms during the reads"
    );
}
