//! Kubernetes source benchmark: the real agent (`--kube`) against the fake API server, in a
//! netns topology.
//!
//! 1. Propagation: with N existing SandboxRoutes (default 1,000, each forking its own
//!    Service), M changes (default 200), one at a time: even changes create a route forking a
//!    fresh Service, odd ones delete it. Each is timed from the API write to the moment the
//!    Service's ClusterIP appears in (or leaves) the pinned `STEERED` map. Prints p50/p90/p99.
//! 2. Memory: routes are added (distinct keys over the same Services) up to a total
//!    (default 10,000); once the agent has applied them and written their status, prints its
//!    VmRSS (and VmHWM), plus propagation samples at that size (`--big` of each: a create more
//!    than the debounce after the last change, and one right after the last change was
//!    applied; and the delete written as soon as each of those creates was applied, which is
//!    within the debounce of it), then VmRSS again after 2 s idle (route sync trims the freed
//!    heap after 500 ms).
//!
//! Run: `cargo build --release -p tests --bins && sudo target/release/kube-bench
//! [--routes 1000] [--changes 200] [--total 10000] [--big 20] [--debounce 50ms]`
//! (`KUBE_BENCH_LOG=info,agent::kube=debug` also prints the agent's own recompute timings;
//! `KUBE_BENCH_WRAP="heaptrack -o /tmp/agent"` runs the agent under a profiler.)
use std::{
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tests::{
    harness::Bins,
    kube_world::{FakeCluster, KubeNode, NS, POD_PORT, SERVICE_PORT, selector_spec},
    process::{ChildGuard, spawn_in},
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num(name: &str, default: usize) -> usize {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Service `svc-i` with one ready endpoint; returns its allocated ClusterIP.
fn service(c: &FakeCluster, i: usize) -> anyhow::Result<Ipv4Addr> {
    let name = format!("svc-{i}");
    let svc = c.api.create(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": NS },
        "spec": { "ports": [{ "name": "http", "port": SERVICE_PORT, "targetPort": "http" }] },
    }))?;
    let ip: Ipv4Addr = svc["spec"]["clusterIP"]
        .as_str()
        .context("no clusterIP")?
        .parse()?;
    let ep = Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 1) as u8);
    c.api.create(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("{name}-x1"), "namespace": NS,
                      "labels": { "kubernetes.io/service-name": name } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": POD_PORT }],
        // A Pod of the Service's namespace: other addresses are never steered (issue 16).
        "endpoints": [{ "addresses": [ep.to_string()], "conditions": { "ready": true },
                        "targetRef": { "kind": "Pod", "namespace": NS, "name": format!("{name}-pod") } }],
    }))?;
    Ok(ip)
}

fn route(c: &FakeCluster, name: &str, key: &str, svc: usize) -> anyhow::Result<Value> {
    Ok(c.api.create(json!({
        "apiVersion": "shunt.dev/v1alpha1", "kind": "SandboxRoute",
        "metadata": { "name": name, "namespace": NS },
        "spec": selector_spec(key, &format!("svc-{svc}"), "bench"),
    }))?)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what}: n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
        v.len(),
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.9)),
        ms(pct(&v, 0.99)),
        ms(v.last().copied().unwrap_or_default()),
    );
}

/// VmRSS with its heap (anonymous) and file-backed (the binary's pages) parts.
fn rss(pid: i32) -> String {
    format!(
        "VmRSS {} (anon {}, file {})",
        status_field(pid, "VmRSS:"),
        status_field(pid, "RssAnon:"),
        status_field(pid, "RssFile:")
    )
}

fn status_field(pid: i32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.trim_start_matches(field).trim().to_string())
        .unwrap_or_default()
}

/// The pinned `STEERED` map, for single-key lookups: one `bpf(2)` call per poll, where
/// walking the whole map (thousands of entries) would load the CPU the agent needs.
struct PinnedSteered {
    fd: std::os::fd::OwnedFd,
}

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    // Explicit, so no uninitialised padding reaches the kernel (it wants zeroes there).
    _pad: u32,
}

#[repr(C)]
struct LookupAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl PinnedSteered {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_OBJ_GET: libc::c_long = 7;

    fn open(bpffs: &std::path::Path) -> anyhow::Result<Self> {
        use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
        let path = std::ffi::CString::new(
            bpffs
                .join(agent_common::steered::MAP_NAME)
                .as_os_str()
                .as_bytes(),
        )?;
        let attr = ObjGetAttr {
            pathname: path.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
            path_fd: 0,
            _pad: 0,
        };
        // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET; `path` outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                Self::BPF_OBJ_GET,
                &attr as *const ObjGetAttr,
                std::mem::size_of::<ObjGetAttr>(),
            )
        };
        anyhow::ensure!(fd >= 0, "BPF_OBJ_GET: {}", std::io::Error::last_os_error());
        // SAFETY: a new fd we own.
        Ok(Self {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Whether `dst` is a key (agent-common's `Endpoint`: IPv4-mapped address, port in
    /// network order, 2 bytes of padding).
    fn contains(&self, dst: SocketAddr) -> bool {
        use std::os::fd::AsRawFd as _;
        let ip6 = match dst.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        let mut key = [0u8; 20];
        key[..16].copy_from_slice(&ip6.octets());
        key[16..18].copy_from_slice(&dst.port().to_be_bytes());
        let mut value = [0u8; 4];
        let attr = LookupAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: key and value buffers of the map's sizes, alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                Self::BPF_MAP_LOOKUP_ELEM,
                &attr as *const LookupAttr,
                std::mem::size_of::<LookupAttr>(),
            )
        };
        rc == 0
    }
}

/// Waits (polling the pinned map) until `dst` is steered (`present`) or not; returns the time
/// since `since`.
fn wait_steered(m: &PinnedSteered, dst: SocketAddr, present: bool, since: Instant) -> Duration {
    loop {
        if m.contains(dst) == present {
            return since.elapsed();
        }
        if since.elapsed() > Duration::from_secs(60) {
            panic!("{dst} never became steered={present}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn main() -> anyhow::Result<()> {
    let existing = num("--routes", 1000);
    let changes = num("--changes", 200);
    let total = num("--total", 10_000);
    let debounce = arg("--debounce").unwrap_or_else(|| "50ms".into());
    let bins = Bins::beside_current_exe()?;
    let c = FakeCluster::start(true)?;
    let n =
        KubeNode::new("kube-bench", &c, bins.clone()).context("needs root, cgroup v2 and BTF")?;
    c.sandbox_pod(NS, "bench-sbx", n.ip(2), "bench");

    // 1,000 routes, each forking its own Service; spare Services for the changes.
    let spares = changes.div_ceil(2);
    let mut vips = Vec::new();
    let t = Instant::now();
    for i in 0..existing + spares {
        vips.push(service(&c, i)?);
    }
    for i in 0..existing {
        route(&c, &format!("r-{i}"), &format!("k-{i}"), i)?;
    }
    eprintln!(
        "created {} services and {existing} routes in {:?}",
        existing + spares,
        t.elapsed()
    );

    let mut args = n.env.agent_args();
    args.extend(n.kube_args("bench-node", &["--kube-debounce", &debounce]));
    let log = n.env.run.path.join("agent.log");
    // KUBE_BENCH_WRAP="heaptrack -o /tmp/agent", say: run the agent under a profiler.
    let wrap: Vec<String> = std::env::var("KUBE_BENCH_WRAP")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut cmd = match wrap.split_first() {
        Some((prog, rest)) => {
            let mut c = Command::new(prog);
            c.args(rest).arg(&bins.agent);
            c
        }
        None => Command::new(&bins.agent),
    };
    cmd.args(&args)
        .env(
            "SHUNT_LOG",
            std::env::var("KUBE_BENCH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let agent: ChildGuard = spawn_in("agent", cmd, Some(n.env.node()), None)?;
    let started = Instant::now();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    while !log_text().contains("kube: initial sync complete") {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "agent did not sync:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let map = PinnedSteered::open(&n.env.run.bpffs())?;
    let last = SocketAddr::from((vips[existing - 1], SERVICE_PORT));
    anyhow::ensure!(
        n.is_steered(last) == map.contains(last),
        "raw lookup disagrees with the map walk"
    );
    // A route that never steers (not ready, say) panics in wait_steered: show why.
    if std::panic::catch_unwind(|| wait_steered(&map, last, true, started)).is_err() {
        let log = log_text();
        let lines: Vec<&str> = log.lines().collect();
        anyhow::bail!(
            "{last} never steered; the agent's log (last 40 lines):\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    eprintln!(
        "agent synced {existing} routes in {:?} (STEERED: {} entries)",
        started.elapsed(),
        n.steered().len()
    );
    // Let the initial status writes settle.
    std::thread::sleep(Duration::from_secs(3));

    let mut adds = Vec::new();
    let mut dels = Vec::new();
    for ch in 0..changes {
        let s = existing + ch / 2;
        let dst = SocketAddr::from((vips[s], SERVICE_PORT));
        let name = format!("change-{}", ch / 2);
        if ch % 2 == 0 {
            let t = Instant::now();
            route(&c, &name, &format!("c-{}", ch / 2), s)?;
            adds.push(wait_steered(&map, dst, true, t));
        } else {
            let t = Instant::now();
            c.api
                .delete("shunt.dev/v1alpha1", "SandboxRoute", Some(NS), &name)?;
            dels.push(wait_steered(&map, dst, false, t));
        }
    }
    println!(
        "propagation, SandboxRoute write → STEERED updated, {existing} existing routes, \
         debounce {debounce}:"
    );
    let all: Vec<Duration> = adds.iter().chain(&dels).copied().collect();
    report("  all changes", all);
    report("  create", adds);
    report("  delete", dels);
    let pid = agent.pid();
    println!(
        "agent at {existing} routes: {} VmHWM {}",
        rss(pid),
        status_field(pid, "VmHWM:")
    );

    // Up to `total` routes: distinct keys over the same Services.
    let t = Instant::now();
    for i in existing..total {
        route(&c, &format!("r-{i}"), &format!("k-{i}"), i % existing)?;
    }
    let last_name = format!("r-{}", total - 1);
    while c.route_reason(&last_name).is_none() {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(300),
            "statuses not written"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{total} routes applied and their status written in {:?}",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_secs(3));
    // Two patterns: a create that follows the last change by more than the debounce (one
    // route change on a quiet agent: applied at once), and one written right after the last
    // change was applied (within the debounce of it: route sync takes it for the start of a
    // burst and waits for a quiet period first).
    let quiet_gap = agent::duration::parse_duration(&debounce)
        .map_err(|e| anyhow::anyhow!("--debounce {debounce}: {e}"))?
        + Duration::from_millis(20);
    let mut isolated = Vec::new();
    let mut back_to_back = Vec::new();
    // Each delete is written as soon as its create was applied: a change right after the last.
    let mut deletes = Vec::new();
    let n_big = num("--big", 20);
    for k in 0..2 * n_big {
        let s = existing + k % spares.max(1);
        let dst = SocketAddr::from((vips[s], SERVICE_PORT));
        let name = format!("big-{k}");
        let quiet = k < n_big;
        if quiet {
            std::thread::sleep(quiet_gap);
        }
        let t = Instant::now();
        route(&c, &name, &format!("b-{k}"), s)?;
        let took = wait_steered(&map, dst, true, t);
        if quiet {
            isolated.push(took);
        } else {
            back_to_back.push(took);
        }
        let t = Instant::now();
        c.api
            .delete("shunt.dev/v1alpha1", "SandboxRoute", Some(NS), &name)?;
        deletes.push(wait_steered(&map, dst, false, t));
    }
    report(
        &format!("propagation (create, {quiet_gap:?} after the last change) at {total} routes"),
        isolated,
    );
    report(
        &format!("propagation (create, right after the last change was applied) at {total} routes"),
        back_to_back,
    );
    report(
        &format!("propagation (delete, right after its create was applied) at {total} routes"),
        deletes,
    );
    println!(
        "agent at {total} routes: {} VmHWM {} (STEERED {} entries)",
        rss(pid),
        status_field(pid, "VmHWM:"),
        n.steered().len()
    );
    // Right after a change the freed heap of its computation is still resident; route sync
    // returns it after 500 ms idle.
    std::thread::sleep(Duration::from_secs(2));
    println!("agent at {total} routes, 2 s idle: {}", rss(pid));
    // With KUBE_BENCH_LOG=info,agent::kube=debug: the agent's own recompute timings.
    let recomputes: Vec<String> = log_text()
        .lines()
        .filter(|l| l.contains("route table applied") || l.contains("cluster state published"))
        .map(str::to_string)
        .collect();
    if !recomputes.is_empty() {
        eprintln!("{} applies and publishes; the last ones:", recomputes.len());
        for l in recomputes.iter().rev().take(12).rev() {
            eprintln!("  {l}");
        }
    }
    let warnings = log_text().lines().filter(|l| l.contains("WARN")).count();
    if warnings > 0 {
        eprintln!("agent logged {warnings} warnings, e.g.:");
        for l in log_text().lines().filter(|l| l.contains("WARN")).take(5) {
            eprintln!("  {l}");
        }
    }
    drop(agent);
    Ok(())
}
