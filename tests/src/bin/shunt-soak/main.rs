//! The soak behind `cargo xtask soak [--minutes N]`: the real agent between network namespaces,
//! under steady mixed load, with route churn and restarts, for N minutes.
//!
//! Topology (the tests' harness): a client pod (pod 0) in the captured cgroup; `reviews` with its
//! baseline endpoint on pod 1; sandbox pods `reviews-v2` (pod 2, key `pr-42`, always forked) and
//! `reviews-v3` (pod 3, key `pr-43`, churning). Each backend pod serves HTTP/1.1 and h2c on 8080
//! and gRPC on 8085. The agent runs on a routes file in the node namespace.
//!
//! - Load: `netpeer mixed`, 500 requests/s over HTTP/1.1, h2c and gRPC, every second request
//!   keyed (`pr-42` and `pr-43` in turn), a new connection every 100 requests.
//! - Churn, a change every second on a six-second cycle: the `pr-43` route added, its sandbox
//!   `reviews-v3` unready, ready again, a `pr-44` route (no sandbox pod) added, removed, `pr-43`
//!   removed.
//! - Faults: a rolling restart (a new agent beside the old one, then SIGTERM to the old) every
//!   2 minutes, and one SIGKILL (a new agent started at once, as kubelet would); with
//!   `--minutes 1`, the restart at 20 s and the SIGKILL at 40 s.
//!
//! Pass: no unkeyed request reached a sandbox; no keyed request missed its sandbox, counting only
//! requests sent ≥ 1 s after their fork had a ready endpoint and outside [fault − 0.5 s,
//! fault + 3 s]; the agent's RSS grows by less than 0.5 MiB/min over minutes 2–10. Writes
//! `summary.json`, `summary.md` and every request (`requests.jsonl`) to `--out` (default
//! `target/soak`).
//!
//! Run as root: `target/debug/shunt-soak [--minutes N] [--out DIR]`.
mod analysis;
mod world;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tests::{harness::Bins, kernel, process::spawn_in};

use crate::{
    analysis::{Fault, ForkReady, Sample},
    world::{Churn, SoakWorld, port_addr},
};

/// Requests per second, all protocols together.
const RPS: u32 = 500;

struct Args {
    minutes: f64,
    out: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        minutes: 10.0,
        out: PathBuf::from("target/soak"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag}: a value"));
        match flag.as_str() {
            "--minutes" => a.minutes = value()?.parse()?,
            "--out" => a.out = value()?.into(),
            other => anyhow::bail!("unknown flag {other} (--minutes N, --out DIR)"),
        }
    }
    Ok(a)
}

/// When the faults happen, in seconds from the start of the load.
fn fault_plan(secs: f64) -> Vec<Fault> {
    if secs <= 90.0 {
        return vec![Fault::restart(20.0), Fault::kill(40.0)];
    }
    let mut faults: Vec<Fault> = (1..)
        .map(|i| 120.0 * f64::from(i))
        .take_while(|t| *t < secs - 10.0)
        .map(Fault::restart)
        .collect();
    faults.push(Fault::kill((secs / 2.0).floor() + 30.0));
    faults.sort_by(|a, b| a.at.total_cmp(&b.at));
    faults
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("shunt-soak: FAILED (see the summary)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("shunt-soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args = args()?;
    if !kernel::available("shunt-soak") {
        anyhow::bail!("needs root, cgroup v2 and BTF (see tests/src/kernel.rs)");
    }
    let secs = args.minutes * 60.0;
    let bins = Bins::beside_current_exe()?;
    let world = SoakWorld::new(bins.clone())?;
    let mut agent = world.start_agent();
    let faults = fault_plan(secs);
    eprintln!(
        "soak: {:.1} min, {RPS} req/s, faults at {:?} s",
        args.minutes,
        faults.iter().map(|f| f.at).collect::<Vec<_>>()
    );

    // The load, in the client pod and the captured cgroup; its lines are read as they come.
    let mut cmd = Command::new(&bins.netpeer);
    cmd.args([
        "mixed",
        &port_addr(&world.env, 1, world::HTTP_PORT).to_string(),
        &port_addr(&world.env, 1, world::GRPC_PORT).to_string(),
        &secs.to_string(),
        &RPS.to_string(),
        "pr-42,pr-43",
        "reviews-v1,reviews-v2,reviews-v3",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut load = spawn_in(
        "netpeer",
        cmd,
        Some(&world.env.topo.pods[0].netns),
        Some(world.env.cgroup.path()),
    )?;
    let t0 = Instant::now();
    let stdout = load
        .child
        .as_mut()
        .and_then(|c| c.stdout.take())
        .context("netpeer stdout")?;
    let lines = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&l) {
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                }
            }
        })
    };

    // Churn, faults and RSS samples, on one clock (seconds since the load started).
    let mut churn = Churn::default();
    let mut fork = ForkReady::new(0.0, churn.pr43_ready());
    let mut rss = Vec::<Sample>::new();
    let mut next_fault = faults.iter().peekable();
    let mut tick = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        let t = t0.elapsed().as_secs_f64();
        if let Some(f) = next_fault.next_if(|f| f.at <= t) {
            let log = agent.log.clone();
            agent = world.fault(agent, f.kind)?;
            keep_log(&log, &args.out);
            eprintln!("soak: {:?} at {t:.1} s", f.kind);
        }
        churn.step(tick);
        world.write_routes(churn)?;
        fork.set(t0.elapsed().as_secs_f64(), churn.pr43_ready());
        if let Some(kib) = world::rss_kib(&agent) {
            rss.push(Sample {
                t: t0.elapsed().as_secs_f64(),
                pid: world::pid(&agent),
                kib,
            });
        }
        tick += 1;
        let next = Duration::from_secs(tick);
        std::thread::sleep(next.saturating_sub(t0.elapsed()));
    }
    let _ = load.wait_timeout(Duration::from_secs(30));
    let _ = reader.join();
    let lines = std::mem::take(&mut *lines.lock().unwrap_or_else(|p| p.into_inner()));
    let report = analysis::analyse(&lines, &fork, &faults, &rss, args.minutes);
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let jsonl: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(args.out.join("requests.jsonl"), jsonl)?;
    let md = report.markdown();
    std::fs::write(args.out.join("summary.md"), &md)?;
    println!("{md}");
    agent.terminate(Duration::from_secs(15));
    keep_log(&agent.log, &args.out);
    Ok(report.passed)
}

/// Copies an agent's log next to the summary (the run directory goes with the world).
fn keep_log(log: &std::path::Path, out: &std::path::Path) {
    if let Some(name) = log.file_name() {
        let _ = std::fs::create_dir_all(out);
        let _ = std::fs::copy(log, out.join(name));
    }
}
