//! The benchmark matrix behind `cargo xtask bench`: direct vs Shunt vs HAProxy, side by side in
//! one run, between network namespaces on one machine.
//!
//! Topology (the tests' harness): a client pod (pod 0) inside the captured cgroup, a baseline
//! backend pod (pod 1) and a sandbox backend pod (pod 2), all joined to a node namespace where the
//! agent and HAProxy run. The backends are `bench-backend` processes.
//!
//! Scenarios, interleaved A B C D E F at every load point:
//! - A: direct to the baseline backend, no agent loaded;
//! - B: the same, agent loaded, destination not steered (the cost of the connect hook);
//! - C: steered (the Service address), no key: baseline through the proxy;
//! - D: steered, `baggage: sd-routing-key=pr-42`: the sandbox through the proxy;
//! - E: HAProxy 2.6 (`nbthread 1`) doing the same baggage match; the client connects to it;
//! - F: nginx (one process) doing the same baggage match with a `map` on `$http_baggage`; the
//!   client connects to it (HTTP/1.1 and h2c listeners of their own).
//!
//! Pinning: the load generator and both backends on CPU 0, the proxy (the agent with
//! `--worker-threads 1`, HAProxy or nginx) on CPU 1.
//!
//! Run: `cargo build --release -p tests --bins && sudo target/release/shunt-bench-matrix
//! [--quick] [--reps N] [--secs S] [--out DIR] [--rates R,R,...] [--no-profile]
//! [--proxy-cpu LIST]`
//! (or `cargo xtask bench`, which installs oha, h2load, haproxy and nginx first).
mod bench;
mod compare;
mod goals;
mod haproxy;
mod hookcost;
mod load;
mod nginx;
mod opts;
mod peer_proxy;
mod procstat;
mod profile;
mod report;
mod sweep;
mod vs_haproxy;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tests::{
    harness::{AgentProc, Bins, Env, http_get},
    kernel,
    netns::PROXY4,
    process::{ChildGuard, spawn_in},
};

pub use crate::{bench::Bench, opts::Opts, profile::Profile, sweep::Knee};
use crate::{
    load::{LoadResult, Proto, Shape, Target, Tool},
    peer_proxy::PeerProxy,
};
use crate::{
    opts::{parse_opts, points},
    profile::{h1_keepalive_point, profile},
    sweep::sweep,
};

const HAPROXY_PORT: u16 = 18000;
const NGINX_PORT: u16 = 18010;
const NGINX_H2C_PORT: u16 = 18011;
/// The baseline backend's port that no route names: B's destination.
const UNSTEERED_PORT: u16 = 8090;
const POD_PORT: u16 = 8080;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 7);
const SERVICE_PORT: u16 = 9080;
const KEY_HEADER: &str = "baggage: sd-routing-key=pr-42";
const KIB: usize = 1024;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Scenario {
    A,
    B,
    C,
    D,
    E,
    F,
    /// C with the `--before` build of the agent.
    #[serde(rename = "C-before")]
    CBefore,
    /// D with the `--before` build of the agent.
    #[serde(rename = "D-before")]
    DBefore,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [Self::A, Self::B, Self::C, Self::D, Self::E, Self::F];
    /// The scenarios run with `--before`, beside C and D at the same points.
    pub const BEFORE: [Scenario; 2] = [Self::CBefore, Self::DBefore];

    pub fn label(self) -> &'static str {
        match self {
            Self::A => "A direct, no agent",
            Self::B => "B agent loaded, not steered",
            Self::C => "C Shunt, no key → baseline",
            Self::D => "D Shunt, key → sandbox",
            Self::E => "E HAProxy, key → sandbox",
            Self::F => "F nginx, key → sandbox",
            Self::CBefore => "C′ before, no key → baseline",
            Self::DBefore => "D′ before, key → sandbox",
        }
    }

    pub fn keyed(self) -> bool {
        matches!(self, Self::D | Self::E | Self::F | Self::DBefore)
    }

    /// The same scenario run with the other build (C ↔ C′, D ↔ D′).
    pub fn counterpart(self) -> Option<Scenario> {
        match self {
            Self::C => Some(Self::CBefore),
            Self::D => Some(Self::DBefore),
            Self::CBefore => Some(Self::C),
            Self::DBefore => Some(Self::D),
            _ => None,
        }
    }

    fn uses_agent(self) -> bool {
        matches!(self, Self::B | Self::C | Self::D)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// Fixed rate (1000 rps): latency and CPU.
    Fixed,
    /// Closed loop: saturation.
    Max,
    /// Connect + one request + close.
    NewConn,
    /// Open-loop rate sweep, for the knee.
    Sweep,
}

#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub group: Group,
    pub shape: Shape,
}

impl Point {
    pub fn key(&self) -> String {
        let s = &self.shape;
        let size = if s.bytes.is_multiple_of(KIB) {
            format!("{} KiB", s.bytes / KIB)
        } else {
            format!("{} B", s.bytes)
        };
        let rate = s
            .rate
            .map(|r| format!("{r}/s"))
            .unwrap_or_else(|| "max".into());
        let ka = if s.keepalive { "" } else { ", new conn each" };
        let tool = match s.tool {
            Tool::Oha => "",
            Tool::H2load => " (h2load)",
        };
        format!(
            "{} {} conns, {size}, {rate}{ka}{tool}",
            s.proto.label(),
            s.conns
        )
    }
}

/// One scenario at one point in one repetition.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub scenario: Scenario,
    pub point: String,
    pub group: Group,
    pub shape: Shape,
    pub rep: usize,
    pub load: LoadResult,
    /// CPU seconds (user + system) the proxy process used during the run.
    pub proxy_cpu_s: Option<f64>,
    pub wall_s: f64,
    /// Requests the expected backend counted during the run (baseline for A/B/C, sandbox for
    /// D/E), and the other backend (must be 0).
    pub served_expected: u64,
    pub served_wrong: u64,
}

impl Record {
    /// vCPU the proxy spends per 1000 requests/s (= CPU seconds per 1000 requests).
    pub fn vcpu_per_krps(&self) -> Option<f64> {
        let n = self.load.ok + self.load.non2xx;
        self.proxy_cpu_s
            .filter(|_| n > 0)
            .map(|c| c * 1000.0 / n as f64)
    }

    pub fn routing_ok(&self) -> bool {
        self.served_wrong == 0 && self.served_expected >= self.load.ok
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn start_backend(
    env: &Env,
    bin: &Path,
    pod: usize,
    name: &str,
    ports: &[u16],
) -> anyhow::Result<ChildGuard> {
    let addrs: Vec<String> = ports
        .iter()
        .map(|p| env.topo.pods[pod].addr4(*p).to_string())
        .collect();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", load::CLIENT_CPU])
        .arg(bin)
        .arg(name)
        .arg(addrs.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = spawn_in(name, cmd, Some(&env.topo.pods[pod].netns), None)?;
    let stdout = child
        .child
        .as_mut()
        .and_then(|c| c.stdout.take())
        .context("backend stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("bench-backend {name} did not start: {line:?}");
    }
    Ok(child)
}

/// The bench's routes; with `client_netns`, the client pod is a node pod naming its network
/// namespace, so the agent makes its upstream connections there (source identity).
fn routes_yaml(env: &Env, client_netns: bool) -> String {
    let (v1, v2) = (env.topo.pods[1].ip4, env.topo.pods[2].ip4);
    let node_pods = if client_netns {
        tests::source_world::node_pods_yaml(&env.topo, &[(0, "bench", "client")])
    } else {
        String::new()
    };
    format!(
        r#"# generated by shunt-bench-matrix
services:
  - name: reviews
    namespace: shop
    addresses: [{VIP}]
    ports: [{{ name: http, port: {SERVICE_PORT}, targetPort: {POD_PORT} }}]
    endpoints:
      - {{ ip: {v1}, ports: {{ http: {POD_PORT} }} }}
pods:
  - name: reviews-v2
    namespace: shop
    ips: [{v2}]
    ready: true
    labels: {{ app: reviews-v2, shunt.dev/sandbox: pr-42 }}
    ports: {{ http: {POD_PORT} }}
routes:
  - name: pr-42
    namespace: shop
    spec:
      routingKey: pr-42
      forks:
        - service: reviews
          to: {{ selector: {{ app: reviews-v2, shunt.dev/sandbox: pr-42 }} }}
      fallback: Baseline
{node_pods}"#
    )
}

fn run(o: &Opts) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    for tool in ["oha", "h2load", "haproxy", "nginx", "taskset"] {
        if kernel::which(tool).is_none() {
            bail!("`{tool}` not found in PATH (`cargo xtask bench` installs it)");
        }
    }
    std::fs::create_dir_all(&o.out)?;
    // Outputs of an earlier run must not pass for this one's.
    for e in std::fs::read_dir(&o.out)?.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("profile-")
            || name.starts_with("perf-")
            || ["results.md", "results.json", "README-section.md"].contains(&name.as_str())
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let bins = Bins::beside_current_exe()?;
    if let Some(before) = &o.before
        && !before.is_file()
    {
        bail!("--before {}: no such file", before.display());
    }
    let started = Instant::now();
    let env = Env::new("shunt-bench-matrix", 3, bins.clone())
        .context("kernel tests cannot run here (root, cgroup v2 and BTF are needed)")?;
    for ns in [&env.topo.pods[0].netns, env.node()] {
        // New-connection runs open tens of thousands of connections per second.
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    }
    let backend_bin = bins.netpeer.with_file_name("bench-backend");
    let backends = vec![
        start_backend(
            &env,
            &backend_bin,
            1,
            "baseline",
            &[POD_PORT, UNSTEERED_PORT],
        )?,
        start_backend(&env, &backend_bin, 2, "sandbox", &[POD_PORT])?,
    ];
    let routes = env.run.path.join("routes.yaml");
    std::fs::write(&routes, routes_yaml(&env, true))?;
    let routes_before = env.run.path.join("routes-before.yaml");
    std::fs::write(&routes_before, routes_yaml(&env, false))?;
    // `SHUNT_BENCH_MARKED_IN_USE=1`: `MARKED` holds a source (a sibling of the load's cgroup,
    // at its level), so B's hook-time row prices what an unmarked client pays while sources
    // are marked: one ancestor lookup in `MARKED` per connect.
    let client_cgroup = if std::env::var_os("SHUNT_BENCH_MARKED_IN_USE").is_some() {
        let marked = env.cgroup.child("marked")?;
        let mut text = std::fs::read_to_string(&routes)?;
        text.push_str(&format!(
            "sources:\n  - {{ cgroup: {}, key: pr-7 }}\n",
            marked.display()
        ));
        std::fs::write(&routes, text)?;
        env.cgroup.child("client")?
    } else {
        env.cgroup.path().to_path_buf()
    };
    let haproxy = haproxy::start(
        env.node(),
        &env.run.path,
        &o.proxy_cpu,
        SocketAddr::from((PROXY4, HAPROXY_PORT)),
        env.topo.pods[1].addr4(POD_PORT),
        env.topo.pods[2].addr4(POD_PORT),
    )?;
    let nginx = nginx::start(
        env.node(),
        &env.run.path,
        &o.proxy_cpu,
        nginx::Listen {
            h1: SocketAddr::from((PROXY4, NGINX_PORT)),
            h2c: SocketAddr::from((PROXY4, NGINX_H2C_PORT)),
        },
        env.topo.pods[1].addr4(POD_PORT),
        env.topo.pods[2].addr4(POD_PORT),
    )?;
    let mut b = Bench {
        nginx,
        env,
        client_cgroup,
        proxy_cpu: o.proxy_cpu.clone(),
        routes,
        routes_before,
        haproxy,
        _backends: backends,
        records: Vec::new(),
        agent_hwm_kib: 0,
        agent_threads: Vec::new(),
        hook_cost: hookcost::HookCostMeter::default(),
        hook_cost_no_flows: hookcost::HookCostMeter::default(),
        hook_cost_before: hookcost::HookCostMeter::default(),
        before: o.before.clone(),
    };
    b.sample_routing(Scenario::E, true)?;
    b.sample_routing(Scenario::F, true)?;
    b.sample_routing(Scenario::A, false)?;

    let (mut fixed, mut max, mut newconn) = points(o);
    for group in [&mut fixed, &mut max, &mut newconn] {
        group.retain(|p| o.only.contains(&p.group));
    }
    for rep in 0..o.reps {
        for p in &fixed {
            b.run_point(p, rep, o.reps, &Scenario::ALL)?;
        }
        for p in &max {
            b.run_point(p, rep, o.reps, &Scenario::ALL)?;
        }
        for p in &newconn {
            b.run_point(p, rep, o.reps, &[Scenario::A, Scenario::B])?;
        }
    }
    let knees = if o.only.contains(&Group::Sweep) {
        sweep(&mut b, o)?
    } else {
        BTreeMap::new()
    };
    let profiles = if o.profile {
        eprintln!("profiling (perf record -e cpu-clock)");
        let rates: &[u32] = if o.quick { &[1000] } else { &[1000, 5000] };
        // HTTP/1.1 at 16 connections, and h2c at the 1-connection point of issue 22's goals,
        // where the proxy's CPU per request is highest.
        let mut at: Vec<(Proto, usize, u32)> = rates.iter().map(|&r| (Proto::H1, 16, r)).collect();
        at.push((Proto::H2c, 1, 1000));
        let mut v = Vec::new();
        for (proto, conns, rate) in at {
            v.push(profile(&mut b, o, Scenario::D, proto, conns, rate));
            v.push(profile(&mut b, o, Scenario::E, proto, conns, rate));
        }
        v
    } else {
        Vec::new()
    };
    let haproxy_hwm_kib = procstat::vm_hwm_kib(b.haproxy.pid()).unwrap_or(0);
    let meta = report::Meta::collect(o, &b, haproxy_hwm_kib, started.elapsed());
    let md = report::write(&o.out, &meta, &b.records, &knees, &profiles)?;
    println!("{md}");
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("shunt-bench-matrix: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shunt-bench-matrix: {e:#}");
            ExitCode::FAILURE
        }
    }
}
