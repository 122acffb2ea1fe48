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
mod compare;
mod haproxy;
mod hookcost;
mod load;
mod nginx;
mod peer_proxy;
mod procstat;
mod report;
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

use crate::{
    load::{LoadResult, Proto, Shape, Target, Tool},
    peer_proxy::PeerProxy,
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

pub struct Opts {
    pub quick: bool,
    pub reps: usize,
    pub sweep_reps: usize,
    pub secs: f64,
    pub out: PathBuf,
    pub profile: bool,
    pub rates: Vec<u32>,
    pub command: String,
    /// `taskset -c` list for the proxy (default 1; the load generator and backends use 0).
    pub proxy_cpu: String,
    /// A `shunt-under-test` built from an earlier revision: C′ and D′ run it beside C and D at
    /// every fixed-rate and saturation point, alternating which build goes first.
    pub before: Option<PathBuf>,
    /// The groups to run (`--only fixed,max,newconn,sweep`; default all).
    pub only: Vec<Group>,
}

fn parse_opts() -> anyhow::Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let known = [
        "--quick",
        "--reps",
        "--sweep-reps",
        "--secs",
        "--out",
        "--rates",
        "--no-profile",
        "--command",
        "--proxy-cpu",
        "--before",
        "--only",
    ];
    let mut i = 0;
    while i < args.len() {
        if !known.contains(&args[i].as_str()) {
            bail!(
                "unknown argument {:?}; usage: shunt-bench-matrix [--quick] [--reps N] \
                 [--sweep-reps N] [--secs S] [--out DIR] [--rates R,R,...] [--no-profile] \
                 [--proxy-cpu LIST] [--before SHUNT_UNDER_TEST] [--only GROUP,...]",
                args[i]
            );
        }
        i += if matches!(args[i].as_str(), "--quick" | "--no-profile") {
            1
        } else {
            2
        };
    }
    let quick = args.iter().any(|a| a == "--quick");
    let reps = value("--reps")
        .map(str::parse)
        .transpose()?
        .unwrap_or(if quick { 1 } else { 5 });
    let rates = match value("--rates") {
        Some(r) => r
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<u32>, _>>()?,
        None if quick => vec![2500, 5000, 10_000, 20_000],
        None => vec![
            1000, 2000, 5000, 10_000, 15_000, 20_000, 30_000, 40_000, 60_000, 80_000,
        ],
    };
    let only = match value("--only") {
        Some(list) => list
            .split(',')
            .map(|g| match g {
                "fixed" => Ok(Group::Fixed),
                "max" => Ok(Group::Max),
                "newconn" => Ok(Group::NewConn),
                "sweep" => Ok(Group::Sweep),
                _ => bail!("--only {g}: groups are fixed, max, newconn, sweep"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => vec![Group::Fixed, Group::Max, Group::NewConn, Group::Sweep],
    };
    Ok(Opts {
        only,
        quick,
        reps,
        sweep_reps: value("--sweep-reps")
            .map(str::parse)
            .transpose()?
            .unwrap_or(reps),
        secs: value("--secs")
            .map(str::parse)
            .transpose()?
            .unwrap_or(if quick { 1.5 } else { 4.0 }),
        out: value("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/bench")),
        profile: !args.iter().any(|a| a == "--no-profile"),
        rates,
        proxy_cpu: value("--proxy-cpu").unwrap_or("1").to_string(),
        before: value("--before").map(PathBuf::from),
        command: value("--command").map(str::to_string).unwrap_or_else(|| {
            std::iter::once("shunt-bench-matrix".to_string())
                .chain(args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" ")
        }),
    })
}

/// The load points of the fixed-rate, saturation and new-connection groups.
fn points(o: &Opts) -> (Vec<Point>, Vec<Point>, Vec<Point>) {
    let shape = |proto, conns, rate, bytes, keepalive| Shape {
        tool: Tool::Oha,
        proto,
        conns,
        rate,
        bytes,
        keepalive,
        secs: o.secs,
    };
    let fixed = |proto, conns, bytes| Point {
        group: Group::Fixed,
        shape: shape(proto, conns, Some(1000), bytes, true),
    };
    let mut h2load = fixed(Proto::H2c, 16, KIB);
    h2load.shape.tool = Tool::H2load;
    let fixed_points = if o.quick {
        vec![
            fixed(Proto::H1, 1, KIB),
            fixed(Proto::H1, 16, KIB),
            fixed(Proto::H2c, 16, KIB),
            h2load,
            fixed(Proto::H1, 4, 64 * KIB),
        ]
    } else {
        let mut v = Vec::new();
        for proto in [Proto::H1, Proto::H2c] {
            for conns in [1, 4, 16] {
                v.push(fixed(proto, conns, KIB));
            }
        }
        v.push(h2load);
        v.push(fixed(Proto::H1, 4, 64 * KIB));
        v.push(fixed(Proto::H2c, 4, 64 * KIB));
        v
    };
    let max = vec![Point {
        group: Group::Max,
        shape: shape(Proto::H1, 16, None, KIB, true),
    }];
    let mut newconn = vec![Point {
        group: Group::NewConn,
        shape: shape(Proto::H1, 16, None, KIB, false),
    }];
    if !o.quick {
        newconn.push(Point {
            group: Group::NewConn,
            shape: shape(Proto::H1, 16, Some(1000), KIB, false),
        });
    }
    (fixed_points, max, newconn)
}

pub struct Bench {
    // Drop order: HAProxy, nginx and the backends, then the world they live in.
    haproxy: PeerProxy,
    nginx: PeerProxy,
    _backends: Vec<ChildGuard>,
    env: Env,
    /// Where the load runs: the captured cgroup, or a child of it (`SHUNT_BENCH_MARKED_IN_USE`).
    client_cgroup: PathBuf,
    /// The CPU list the proxy under test (agent or HAProxy) is pinned to (`taskset -c`).
    proxy_cpu: String,
    routes: PathBuf,
    /// The same routes without `nodePods[].netns`, which the `--before` build may not know.
    routes_before: PathBuf,
    pub records: Vec<Record>,
    /// The largest VmHWM of any agent process, KiB.
    pub agent_hwm_kib: u64,
    /// Thread names of the agent (the run that had the most).
    pub agent_threads: Vec<String>,
    /// The capture hooks' kernel run time over B's new-connection runs.
    pub hook_cost: hookcost::HookCostMeter,
    /// The same with `--count-flows false`.
    pub hook_cost_no_flows: hookcost::HookCostMeter,
    /// The same with the `--before` build.
    pub hook_cost_before: hookcost::HookCostMeter,
    /// The earlier build for C′ and D′ (`--before`).
    before: Option<PathBuf>,
}

impl Bench {
    /// Where the client connects for `s` over `proto` (nginx has one listener per protocol).
    fn addr_for(&self, s: Scenario, proto: Proto) -> SocketAddr {
        match (s, proto) {
            (Scenario::F, Proto::H1) => SocketAddr::from((PROXY4, NGINX_PORT)),
            (Scenario::F, Proto::H2c) => SocketAddr::from((PROXY4, NGINX_H2C_PORT)),
            _ => self.addr(s),
        }
    }

    fn addr(&self, s: Scenario) -> SocketAddr {
        match s {
            Scenario::F => SocketAddr::from((PROXY4, NGINX_PORT)),
            Scenario::A | Scenario::B => self.env.topo.pods[1].addr4(UNSTEERED_PORT),
            Scenario::C | Scenario::D | Scenario::CBefore | Scenario::DBefore => {
                SocketAddr::from((VIP, SERVICE_PORT))
            }
            Scenario::E => SocketAddr::from((PROXY4, HAPROXY_PORT)),
        }
    }

    /// Requests counted so far by the baseline and the sandbox backend.
    fn counts(&self) -> anyhow::Result<[u64; 2]> {
        let mut out = [0; 2];
        for (i, slot) in out.iter_mut().enumerate() {
            let addr = self.env.topo.pods[i + 1].addr4(POD_PORT);
            let (status, body) = self.env.topo.pods[i + 1]
                .netns
                .run(move || http_get(addr, "/stats"))??;
            if status != 200 {
                bail!("backend {addr} /stats: {status}");
            }
            let v: serde_json::Value = serde_json::from_str(&body)?;
            *slot = v["requests"].as_u64().context("requests")?;
        }
        Ok(out)
    }

    fn start_agent(&self) -> AgentProc {
        self.start_agent_with(&[])
    }

    /// The agent under test with `extra` flags after the usual ones.
    fn start_agent_with(&self, extra: &[&str]) -> AgentProc {
        let mut args = self.env.agent_args();
        args.extend([
            "--routes".into(),
            self.routes.display().to_string(),
            "--worker-threads".into(),
            "1".into(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        // `env` and `taskset` exec: the pid is the agent's. Info logging: the harness's debug
        // filter would also turn on hyper's and h2's debug logs.
        let wrapper: Vec<String> = ["env", "SHUNT_LOG=info", "taskset", "-c", &self.proxy_cpu]
            .map(String::from)
            .to_vec();
        self.env.start_agent_wrapped(&wrapper, &args, None)
    }

    /// A few requests for scenario `s` with netpeer (HTTP/1.1 and h2c), checking `x-served-by`
    /// per request: unkeyed → baseline, keyed → sandbox (or baseline only, for `unsteered`).
    fn sample_routing(&self, s: Scenario, keyed_to_sandbox: bool) -> anyhow::Result<()> {
        let reqs = r#"[{"path":"/bytes/16"},{"path":"/bytes/16","headers":{"baggage":"sd-routing-key=pr-42"}},{"path":"/bytes/16"}]"#;
        let want = [
            "baseline",
            if keyed_to_sandbox {
                "sandbox"
            } else {
                "baseline"
            },
            "baseline",
        ];
        for h2 in [false, true] {
            let addr = self.addr_for(s, if h2 { Proto::H2c } else { Proto::H1 });
            let a = addr.to_string();
            let mut args = vec!["http", a.as_str(), reqs];
            if h2 {
                args.push("--h2");
            }
            let lines = self.env.peer(0, &args);
            let got: Vec<&str> = lines
                .iter()
                .map(|l| l["served_by"].as_str().unwrap_or("?"))
                .collect();
            if got != want {
                bail!(
                    "routing sample through {addr} (h2: {h2}): served by {got:?}, want {want:?}: {lines:?}"
                );
            }
        }
        Ok(())
    }

    fn run_one(
        &mut self,
        s: Scenario,
        point: &Point,
        rep: usize,
        proxy_pid: Option<i32>,
    ) -> anyhow::Result<()> {
        if STOP.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let before = self.counts()?;
        let cpu0 = proxy_pid.and_then(procstat::cpu_seconds);
        let started = Instant::now();
        let target = Target {
            netns: &self.env.topo.pods[0].netns,
            cgroup: &self.client_cgroup,
            addr: self.addr_for(s, point.shape.proto),
            header: s.keyed().then_some(KEY_HEADER),
            scratch: &self.env.run.path,
        };
        let load = load::run(&target, &point.shape)
            .with_context(|| format!("{} at {}", s.label(), point.key()))?;
        let wall_s = started.elapsed().as_secs_f64();
        let cpu1 = proxy_pid.and_then(procstat::cpu_seconds);
        let after = self.counts()?;
        let delta = [after[0] - before[0], after[1] - before[1]];
        let (served_expected, served_wrong) = if s.keyed() {
            (delta[1], delta[0])
        } else {
            (delta[0], delta[1])
        };
        let rec = Record {
            scenario: s,
            point: point.key(),
            group: point.group,
            shape: point.shape.clone(),
            rep,
            proxy_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
            wall_s,
            served_expected,
            served_wrong,
            load,
        };
        eprintln!(
            "  {:<30} {:>8.0} req/s  p50 {:>6.0}  p90 {:>6.0}  p99 {:>7.0}  p99.9 {:>7.0} µs{}{}{}",
            s.label(),
            rec.load.rps,
            rec.load.p50_us,
            rec.load.p90_us,
            rec.load.p99_us,
            rec.load.p999_us,
            rec.vcpu_per_krps()
                .map(|v| format!("  {v:.3} vCPU/krps"))
                .unwrap_or_default(),
            if rec.load.errors + rec.load.non2xx > 0 {
                format!(
                    "  errors {} non-2xx {} {:?}",
                    rec.load.errors, rec.load.non2xx, rec.load.error_kinds
                )
            } else {
                String::new()
            },
            if rec.routing_ok() {
                String::new()
            } else {
                format!(
                    "  ROUTING: expected backend served {}, other backend {}",
                    rec.served_expected, rec.served_wrong
                )
            },
        );
        self.records.push(rec);
        Ok(())
    }

    /// Runs `scenarios` (in A B C D E order) at `point`: A with no agent, then the agent started
    /// for B, C and D, stopped again, then E. With `--before`, the earlier build runs C′ and D′
    /// beside C and D: before them in odd repetitions, after them in even ones, so neither build
    /// always runs on a machine the other just warmed.
    fn run_point(
        &mut self,
        point: &Point,
        rep: usize,
        reps: usize,
        scenarios: &[Scenario],
    ) -> anyhow::Result<()> {
        eprintln!("[rep {}/{reps}] {}", rep + 1, point.key());
        if scenarios.contains(&Scenario::A) {
            self.run_one(Scenario::A, point, rep, None)?;
        }
        let with_before =
            self.before.is_some() && scenarios.iter().any(|s| s.counterpart().is_some());
        if with_before && rep % 2 == 1 {
            self.run_before_build(point, rep, scenarios)?;
        }
        if scenarios.iter().any(|s| s.uses_agent()) {
            let mut agent = self.start_agent();
            let pid = agent.child.pid();
            self.sample_routing(Scenario::C, true)?;
            self.sample_routing(Scenario::B, false)?;
            // C and D measure upstream connections made in the client pod's namespace: the
            // agent must have entered it, not fallen back to the node.
            let fallbacks = agent.metric("shunt_source_netns_fallbacks_total");
            if fallbacks != 0.0 {
                bail!(
                    "the agent could not enter the client pod's namespace ({fallbacks} fallbacks):\n{}",
                    agent.log_text()
                );
            }
            for s in [Scenario::B, Scenario::C, Scenario::D] {
                if scenarios.contains(&s) {
                    // B's new connections: the hooks' own kernel run time, per connect().
                    let stats = if s == Scenario::B && point.group == Group::NewConn {
                        match agent::capture::run_stats::enable() {
                            Ok(guard) => Some((guard, hookcost::snapshot(pid))),
                            Err(e) => {
                                eprintln!("  (no BPF run-time statistics: {e})");
                                None
                            }
                        }
                    } else {
                        None
                    };
                    self.run_one(s, point, rep, Some(pid))?;
                    if let Some((_guard, before)) = stats {
                        let after = hookcost::snapshot(pid);
                        self.hook_cost.add(&before, &after);
                    }
                }
            }
            self.note_agent(pid);
            agent.terminate(Duration::from_secs(10));
            if scenarios.contains(&Scenario::B) && point.group == Group::NewConn {
                self.hook_cost_variant(point, rep, hookcost::Variant::NoFlows)?;
                self.hook_cost_variant(point, rep, hookcost::Variant::Before)?;
            }
        }
        if with_before && rep.is_multiple_of(2) {
            self.run_before_build(point, rep, scenarios)?;
        }
        if scenarios.contains(&Scenario::E) {
            let pid = self.haproxy.pid();
            self.run_one(Scenario::E, point, rep, Some(pid))?;
        }
        if scenarios.contains(&Scenario::F) {
            let pid = self.nginx.pid();
            self.run_one(Scenario::F, point, rep, Some(pid))?;
        }
        Ok(())
    }

    /// C′ and D′: the `--before` build, started like the agent under test.
    fn run_before_build(
        &mut self,
        point: &Point,
        rep: usize,
        scenarios: &[Scenario],
    ) -> anyhow::Result<()> {
        let Some(before) = self.before.clone() else {
            return Ok(());
        };
        let current = std::mem::replace(&mut self.env.bins.agent, before);
        let routes = std::mem::replace(&mut self.routes, self.routes_before.clone());
        let mut agent = self.start_agent();
        self.env.bins.agent = current;
        self.routes = routes;
        let pid = agent.child.pid();
        self.sample_routing(Scenario::CBefore, true)?;
        for s in [Scenario::C, Scenario::D] {
            if scenarios.contains(&s) {
                let b = s.counterpart().expect("C and D have a before counterpart");
                self.run_one(b, point, rep, Some(pid))?;
            }
        }
        agent.terminate(Duration::from_secs(10));
        Ok(())
    }

    /// The agent's peak memory and thread names (the run that had the most).
    fn note_agent(&mut self, pid: i32) {
        self.agent_hwm_kib = self
            .agent_hwm_kib
            .max(procstat::vm_hwm_kib(pid).unwrap_or(0));
        let names = procstat::thread_names(pid);
        if names.len() > self.agent_threads.len() {
            self.agent_threads = names;
        }
    }
}

/// The sweep's outcome per scenario.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Knee {
    /// The highest target rate met (achieved ≥ 95 % of it, p99 not exploded).
    pub rate: Option<u32>,
    /// The first rate that was not met, and why.
    pub failed_at: Option<(u32, String)>,
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

fn sweep(b: &mut Bench, o: &Opts) -> anyhow::Result<BTreeMap<Scenario, Knee>> {
    let mut active = Scenario::ALL.to_vec();
    let mut knees: BTreeMap<Scenario, Knee> = Scenario::ALL
        .iter()
        .map(|s| (*s, Knee::default()))
        .collect();
    let mut first_p99: BTreeMap<Scenario, f64> = BTreeMap::new();
    for &rate in &o.rates {
        let point = h1_keepalive_point(Group::Sweep, rate, o.secs);
        for rep in 0..o.sweep_reps {
            b.run_point(&point, rep, o.sweep_reps, &active)?;
        }
        let key = point.key();
        for s in active.clone() {
            let of = |f: &dyn Fn(&Record) -> f64| {
                median(
                    b.records
                        .iter()
                        .filter(|r| r.point == key && r.scenario == s)
                        .map(f)
                        .collect(),
                )
                .unwrap_or(0.0)
            };
            let rps = of(&|r| r.load.rps);
            let p99 = of(&|r| r.load.p99_us);
            let base = *first_p99.entry(s).or_insert(p99);
            // An open-loop queue that grows shows as p99 far above the uncongested one.
            let limit = (base * 10.0).max(5000.0);
            let why = if rps < 0.95 * f64::from(rate) {
                Some(format!("achieved {rps:.0} req/s"))
            } else if p99 > limit {
                Some(format!("p99 {p99:.0} µs"))
            } else {
                None
            };
            let k = knees.get_mut(&s).expect("every scenario");
            match why {
                None => k.rate = Some(rate),
                Some(w) => {
                    k.failed_at = Some((rate, w));
                    active.retain(|x| *x != s);
                }
            }
        }
        if active.is_empty() {
            break;
        }
    }
    Ok(knees)
}

/// Top symbols of a `perf record -e cpu-clock` profile of one process under load.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Profile {
    pub who: String,
    pub rate: u32,
    /// The proxy's CPU during the profiled run.
    pub vcpu_per_krps: Option<f64>,
    pub load: String,
    pub samples_kernel_pct: f64,
    pub top: Vec<(f64, String)>,
    /// Share of samples per binary (the agent, libc, the kernel...).
    pub by_dso: Vec<(f64, String)>,
    pub report_file: String,
    pub callers_file: String,
    /// Requests served during the profiled run.
    pub requests: u64,
    /// Syscalls (all, and by name) and context switches per request.
    pub per_request: Vec<(String, f64)>,
    pub error: Option<String>,
}

/// HTTP/1.1, 16 keep-alive connections, 1 KiB, at `rate` requests/s for `secs`.
fn h1_keepalive_point(group: Group, rate: u32, secs: f64) -> Point {
    Point {
        group,
        shape: Shape {
            tool: Tool::Oha,
            proto: Proto::H1,
            conns: 16,
            rate: Some(rate),
            bytes: KIB,
            keepalive: true,
            secs,
        },
    }
}

fn profile(b: &mut Bench, o: &Opts, s: Scenario, rate: u32) -> Profile {
    let secs = if o.quick { 2.0 } else { o.secs.max(5.0) };
    let point = h1_keepalive_point(Group::Fixed, rate, secs);
    let proxy = if s == Scenario::E { "haproxy" } else { "shunt" };
    let who = format!("{proxy}-{rate}");
    let mut p = Profile {
        who: proxy.into(),
        rate,
        load: format!("{} at {}", s.label(), point.key()),
        ..Default::default()
    };
    let data = o.out.join(format!("perf-{who}.data"));
    let report_file = o.out.join(format!("profile-{who}.txt"));
    let callers_file = o.out.join(format!("profile-{who}-callers.txt"));
    let stat_file = o.out.join(format!("perf-stat-{who}.csv"));
    p.report_file = report_file.display().to_string();
    p.callers_file = callers_file.display().to_string();
    let result = (|| -> anyhow::Result<()> {
        let agent = (s != Scenario::E).then(|| b.start_agent());
        let pid = agent
            .as_ref()
            .map(|a| a.child.pid())
            .unwrap_or_else(|| b.haproxy.pid());
        let mut perf = Command::new("perf");
        perf.args(["record", "-e", "cpu-clock", "-F", "4999", "-g", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let perf = spawn_in("perf", perf, None, None)?;
        // Syscalls and context switches per request (tracepoints: exact counts, cheap).
        let mut events = vec![
            "raw_syscalls:sys_enter".to_string(),
            "context-switches".into(),
        ];
        events.extend(SYSCALLS.iter().map(|c| format!("syscalls:sys_enter_{c}")));
        let mut stat = Command::new("perf");
        stat.args(["stat", "-x", ",", "-e", &events.join(","), "-o"])
            .arg(&stat_file)
            .arg("-p")
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let stat = spawn_in("perf stat", stat, None, None)?;
        std::thread::sleep(Duration::from_millis(300));
        let run = b.run_one(s, &point, 0, Some(pid));
        // A profiled run is not a measurement.
        let rec = b.records.pop();
        p.vcpu_per_krps = rec.as_ref().and_then(Record::vcpu_per_krps);
        let requests = rec.map(|r| r.load.ok + r.load.non2xx);
        perf.signal(libc::SIGINT);
        stat.signal(libc::SIGINT);
        let (status, _, err) = perf.output_timeout(Duration::from_secs(60))?;
        let _ = stat.output_timeout(Duration::from_secs(10));
        drop(agent);
        run?;
        let requests = requests.unwrap_or(0).max(1) as f64;
        p.requests = requests as u64;
        for line in std::fs::read_to_string(&stat_file)
            .unwrap_or_default()
            .lines()
        {
            let f: Vec<&str> = line.split(',').collect();
            if let (Some(v), Some(ev)) = (f.first().and_then(|v| v.parse::<f64>().ok()), f.get(2)) {
                let ev = ev
                    .trim_start_matches("syscalls:sys_enter_")
                    .replace("raw_syscalls:sys_enter", "all syscalls");
                p.per_request.push((ev, v / requests));
            }
        }
        if !status.success() && !data.exists() {
            bail!("perf record failed ({status}): {err}");
        }
        let report = |args: &[&str]| -> anyhow::Result<String> {
            let out = Command::new("perf")
                .args(["report", "--stdio", "--no-children", "-i"])
                .arg(&data)
                .args(args)
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let flat = report(&[
            "--sort",
            "dso,symbol",
            "-g",
            "none",
            "--percent-limit",
            "0.2",
        ])?;
        let dsos = report(&["--sort", "dso", "-g", "none"])?;
        // Who calls the top symbols (kernel stacks are complete; user stacks stop early, the
        // release build keeps no frame pointers).
        let callers = report(&[
            "--sort",
            "symbol",
            "-g",
            "caller,0.5,callee,function,percent",
            "--percent-limit",
            "2",
        ])?;
        std::fs::write(&report_file, format!("{dsos}\n{flat}"))?;
        std::fs::write(&callers_file, &callers)?;
        for (pct, rest) in perf_rows(&dsos) {
            p.by_dso.push((pct, rest.join(" ")));
        }
        for (pct, rest) in perf_rows(&flat) {
            let dso = rest.first().copied().unwrap_or("");
            let kind = rest.get(1).copied().unwrap_or("");
            let sym = rest.get(2..).unwrap_or_default().join(" ");
            if kind == "[k]" {
                p.samples_kernel_pct += pct;
            }
            if p.top.len() < 15 {
                p.top.push((pct, format!("{kind} {sym} ({dso})")));
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        p.error = Some(format!("{e:#}"));
    }
    let _ = std::fs::remove_file(&data);
    p
}

/// Syscalls counted per request in the profile (tracepoints `syscalls:sys_enter_NAME`).
const SYSCALLS: [&str; 15] = [
    "read",
    "write",
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "futex",
    "accept4",
    "connect",
    "close",
];

/// `perf report --stdio` rows: the percentage and the other columns (IPC placeholders dropped).
fn perf_rows(text: &str) -> Vec<(f64, Vec<&str>)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let pct = parts.next()?.strip_suffix('%')?.parse().ok()?;
            let mut rest: Vec<&str> = parts.collect();
            while rest.last() == Some(&"-") {
                rest.pop();
            }
            Some((pct, rest))
        })
        .collect()
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
        let mut v = Vec::new();
        for &rate in rates {
            v.push(profile(&mut b, o, Scenario::D, rate));
            v.push(profile(&mut b, o, Scenario::E, rate));
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
