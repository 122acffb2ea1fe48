//! The Markdown report (README-ready) and the JSON file of raw numbers.
use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Command, time::Duration};

use serde::Serialize;

use crate::{
    Bench, Group, Knee, Opts, Profile, Record, Scenario,
    goals::{Goal, goals, per_core},
    median,
};

/// Where and how the numbers were taken.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    pub command: String,
    pub mode: &'static str,
    pub reps: usize,
    pub sweep_reps: usize,
    pub secs: f64,
    pub date: String,
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub os: String,
    pub haproxy: String,
    pub nginx: String,
    pub oha: String,
    pub h2load: String,
    pub duration_s: f64,
    pub agent_peak_rss_kib: u64,
    pub agent_threads: Vec<String>,
    pub haproxy_peak_rss_kib: u64,
    pub nginx_peak_rss_kib: u64,
    pub proxy_cpu: String,
    pub hook_cost: Option<crate::hookcost::HookCost>,
    /// The same with `--count-flows false`.
    pub hook_cost_no_flows: Option<crate::hookcost::HookCost>,
    /// The same with the `--before` build.
    pub hook_cost_before: Option<crate::hookcost::HookCost>,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

impl Meta {
    pub fn collect(o: &Opts, b: &Bench, haproxy_hwm: u64, took: Duration) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        Self {
            command: o.command.clone(),
            mode: if o.quick { "quick" } else { "full" },
            reps: o.reps,
            sweep_reps: o.sweep_reps,
            secs: o.secs,
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_else(|| "?".into()),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            kernel: first_line("uname", &["-r"]),
            os,
            haproxy: b.haproxy.version.clone(),
            nginx: b.nginx.version.clone(),
            oha: first_line("oha", &["--version"]),
            h2load: first_line("h2load", &["--version"]),
            duration_s: took.as_secs_f64(),
            agent_peak_rss_kib: b.agent_hwm_kib,
            agent_threads: b.agent_threads.clone(),
            haproxy_peak_rss_kib: haproxy_hwm,
            nginx_peak_rss_kib: crate::procstat::vm_hwm_kib(b.nginx.pid()).unwrap_or(0),
            proxy_cpu: o.proxy_cpu.clone(),
            hook_cost: b.hook_cost.result(),
            hook_cost_no_flows: b.hook_cost_no_flows.result(),
            hook_cost_before: b.hook_cost_before.result(),
        }
    }
}

/// Medians over repetitions.
pub(crate) struct Agg<'a> {
    pub(crate) recs: &'a [Record],
}

impl Agg<'_> {
    pub(crate) fn of(&self, point: &str, s: Scenario) -> impl Iterator<Item = &Record> {
        self.recs
            .iter()
            .filter(move |r| r.point == point && r.scenario == s)
    }

    pub(crate) fn med(
        &self,
        point: &str,
        s: Scenario,
        f: impl Fn(&Record) -> Option<f64>,
    ) -> Option<f64> {
        median(self.of(point, s).filter_map(f).collect())
    }

    fn has(&self, point: &str, s: Scenario) -> bool {
        self.of(point, s).next().is_some()
    }

    /// Points of a group, in the order they were run.
    pub(crate) fn points(&self, g: Group) -> Vec<&Record> {
        let mut seen: Vec<&Record> = Vec::new();
        for r in self.recs.iter().filter(|r| r.group == g) {
            if !seen.iter().any(|x| x.point == r.point) {
                seen.push(r);
            }
        }
        seen
    }

    fn routing(&self, point: &str, s: Scenario) -> String {
        let bad: Vec<&Record> = self.of(point, s).filter(|r| !r.routing_ok()).collect();
        if bad.is_empty() {
            let n: u64 = self.of(point, s).map(|r| r.served_expected).sum();
            format!("ok ({n})")
        } else {
            let wrong: u64 = bad.iter().map(|r| r.served_wrong).sum();
            format!("**WRONG**: {wrong} to the other backend")
        }
    }

    fn failures(&self, point: &str, s: Scenario) -> String {
        let e: u64 = self.of(point, s).map(|r| r.load.errors).sum();
        let n: u64 = self.of(point, s).map(|r| r.load.non2xx).sum();
        format!("{e}/{n}")
    }

    /// Whether the scenario met the target rate (below its knee) at this point.
    fn below_knee(&self, point: &str, s: Scenario) -> bool {
        let Some(rate) = self.of(point, s).next().and_then(|r| r.shape.rate) else {
            return false;
        };
        self.med(point, s, |r| Some(r.load.rps))
            .is_some_and(|rps| rps >= 0.95 * f64::from(rate))
    }
}

fn f0(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "—".into())
}

fn yes(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    }
}

pub fn write(
    out: &Path,
    meta: &Meta,
    recs: &[Record],
    knees: &BTreeMap<Scenario, Knee>,
    profiles: &[Profile],
) -> anyhow::Result<String> {
    let a = Agg { recs };
    let mut goals = goals(&a);
    let hook = meta.hook_cost.as_ref();
    goals.insert(
        2,
        Goal {
            goal: "B added kernel time per connect() (capture hooks incl. flow counting)".into(),
            target: "≤ 0.5 µs".into(),
            measured: hook
                .map(|h| {
                    let mut m = format!(
                        "{:.2} µs (BPF run-time statistics)",
                        h.ns_per_connection / 1000.0
                    );
                    if let Some(n) = meta.hook_cost_no_flows.as_ref() {
                        m.push_str(&format!(
                            "; {:.2} µs with `--count-flows false`",
                            n.ns_per_connection / 1000.0
                        ));
                    }
                    if let Some(b) = meta.hook_cost_before.as_ref() {
                        m.push_str(&format!("; before: {:.2} µs", b.ns_per_connection / 1000.0));
                    }
                    m
                })
                .unwrap_or_else(|| "—".into()),
            met: hook.map(|h| h.ns_per_connection <= 500.0),
        },
    );
    let mut md = String::new();
    let w = &mut md;
    writeln!(
        w,
        "Direct vs Shunt vs HAProxy vs nginx, side by side in one run, between network \
         namespaces on one machine: {} × {} ({} cores), kernel {}, {}. {}; {}; oha {}; {}.",
        meta.cores,
        meta.cpu_model,
        meta.cores,
        meta.kernel,
        meta.os,
        meta.haproxy,
        meta.nginx,
        meta.oha.trim_start_matches("oha "),
        meta.h2load
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "Command: `{}` ({} mode: {} repetitions × {} s per point, sweep {} repetitions; scenarios \
         interleaved A B C D E F at every point; medians over repetitions; {}; took {:.0} s).",
        meta.command, meta.mode, meta.reps, meta.secs, meta.sweep_reps, meta.date, meta.duration_s
    )?;
    if meta.mode == "quick" {
        writeln!(
            w,
            "\n**Quick mode: {} short repetition{} per point; these figures are noisy.**",
            meta.reps,
            if meta.reps == 1 { "" } else { "s" }
        )?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "- **A** direct to the backend, no agent loaded; **B** agent loaded, destination not \
         steered (the connect hook's cost); **C** steered, no key → baseline through Shunt's \
         proxy; **D** steered, `baggage: sd-routing-key=pr-42` → sandbox through Shunt's proxy; \
         **E** HAProxy 2.6 (`nbthread 1`, `acl keyed req.hdr(baggage) -m sub \
         sd-routing-key=pr-42`), keyed → sandbox, the client connecting to HAProxy directly; **F** \
         nginx (one process, `master_process off`; `map $http_baggage` with the same substring \
         match, `proxy_pass` to kept-alive HTTP/1.1 upstreams: nginx has no HTTP/2 to upstreams \
         outside gRPC; h2c on a listener of its own, prior knowledge), keyed → sandbox, the \
         client connecting to nginx directly.\n\
         - Pinning: load generator and both backends (one-thread hyper servers) on CPU 0; the \
         proxy (the agent with `--worker-threads 1`, threads: {}; HAProxy or nginx) on CPU {}.\n\
         - Load: oha, open loop (`-q RATE --latency-correction`, requests evenly spaced), \
         HTTP/1.1 and h2c (`--http2`, prior knowledge, one stream per connection). Cross-check \
         with h2load (nghttp2; `-m 1 --rps R/conns`, percentiles from its per-request log): its \
         connections' timers fire in lockstep, so its latencies include a burst of 16 queued \
         requests, and it does not correct for coordinated omission; it is left out of the goals. \
         Saturation: oha closed loop, 16 connections.\n\
         - Proxy CPU from `/proc/PID/stat` utime+stime over each run (10 ms ticks); routing \
         checked on every request by per-backend counters (the other backend must count 0), plus \
         netpeer samples reading `x-served-by` after every agent start.",
        meta.agent_threads.join(", "),
        meta.proxy_cpu
    )?;
    writeln!(w)?;

    writeln!(w, "#### Goals\n")?;
    writeln!(w, "| goal | target | measured | met |")?;
    writeln!(w, "|---|---|---|---|")?;
    for g in &goals {
        writeln!(
            w,
            "| {} | {} | {} | {} |",
            g.goal,
            g.target,
            g.measured,
            yes(g.met)
        )?;
    }
    writeln!(w)?;

    w.push_str(&crate::vs_haproxy::section(&a));

    writeln!(
        w,
        "#### Latency at a fixed rate (open loop), median of repetitions\n"
    )?;
    writeln!(
        w,
        "Added = scenario − A, shown only where both met the rate (below the knee). errors/non-2xx summed over repetitions.\n"
    )?;
    writeln!(
        w,
        "| load | scenario | req/s | p50 | p90 | p99 | p99.9 µs | added p50/p90/p99/p99.9 µs | proxy vCPU per 1000 req/s | routing (requests) | errors/non-2xx |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in a.points(Group::Fixed) {
        let p = &r.point;
        for s in Scenario::ALL.into_iter().filter(|s| a.has(p, *s)) {
            let m = |f: fn(&Record) -> f64| a.med(p, s, |x| Some(f(x)));
            let added = if s == Scenario::A {
                "—".to_string()
            } else if a.below_knee(p, s) && a.below_knee(p, Scenario::A) {
                let d = |f: fn(&Record) -> f64| {
                    m(f).zip(a.med(p, Scenario::A, |x| Some(f(x))))
                        .map(|(x, y)| format!("{:+.0}", x - y))
                        .unwrap_or_else(|| "—".into())
                };
                format!(
                    "{}/{}/{}/{}",
                    d(|x| x.load.p50_us),
                    d(|x| x.load.p90_us),
                    d(|x| x.load.p99_us),
                    d(|x| x.load.p999_us)
                )
            } else {
                "over the knee".to_string()
            };
            writeln!(
                w,
                "| {p} | {} | {} | {} | {} | {} | {} | {added} | {} | {} | {} |",
                s.label(),
                f0(m(|x| x.load.rps)),
                f0(m(|x| x.load.p50_us)),
                f0(m(|x| x.load.p90_us)),
                f0(m(|x| x.load.p99_us)),
                f0(m(|x| x.load.p999_us)),
                a.med(p, s, Record::vcpu_per_krps)
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_else(|| "—".into()),
                a.routing(p, s),
                a.failures(p, s),
            )?;
        }
    }
    writeln!(w)?;

    if let Some(section) = crate::compare::section(recs) {
        w.push_str(&section);
    }
    writeln!(w, "#### Saturation\n")?;
    writeln!(
        w,
        "Closed loop (HTTP/1.1, 16 connections, 1 KiB). Proxy cores busy = proxy CPU seconds / run \
         seconds; req/s per core = requests / proxy CPU seconds (efficiency; it improves with load, as \
         more requests share a wake-up, so compare it at similar req/s). Knee: the highest open-loop rate \
         met in the sweep (≥ 95 % achieved, p99 not exploded).\n"
    )?;
    writeln!(
        w,
        "| scenario | req/s | vs A | vs E | proxy cores busy | req/s per proxy core | per core vs E | knee (first rate missed) | routing | errors/non-2xx |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|---|---|---|")?;
    if let Some(r) = a.points(Group::Max).first() {
        let p = &r.point;
        let rps = |s| a.med(p, s, |x| Some(x.load.rps));
        for s in Scenario::ALL.into_iter().filter(|s| a.has(p, *s)) {
            let busy = a.med(p, s, |x| x.proxy_cpu_s.map(|c| c / x.shape.secs));
            let pc = per_core(&a, p, s);
            let knee = knees.get(&s);
            writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.label(),
                f0(rps(s)),
                rps(s)
                    .zip(rps(Scenario::A))
                    .map(|(x, y)| format!("{:.2}", x / y))
                    .unwrap_or_else(|| "—".into()),
                rps(s)
                    .zip(rps(Scenario::E))
                    .map(|(x, y)| format!("{:.2}", x / y))
                    .unwrap_or_else(|| "—".into()),
                busy.map(|b| format!("{b:.2}"))
                    .unwrap_or_else(|| "—".into()),
                f0(pc),
                pc.zip(per_core(&a, p, Scenario::E))
                    .map(|(x, y)| format!("{:.2}", x / y))
                    .unwrap_or_else(|| "—".into()),
                match knee {
                    Some(k) => format!(
                        "{} ({})",
                        k.rate
                            .map(|r| format!("{r}/s"))
                            .unwrap_or_else(|| "below the first rate".into()),
                        k.failed_at
                            .as_ref()
                            .map(|(r, why)| format!("{r}/s: {why}"))
                            .unwrap_or_else(|| "none missed".into())
                    ),
                    None => "—".into(),
                },
                a.routing(p, s),
                a.failures(p, s),
            )?;
        }
    }
    writeln!(
        w,
        "\nPeak RSS (VmHWM): Shunt agent {} MiB (largest of its runs), HAProxy {} MiB, nginx {} \
         MiB.\n",
        meta.agent_peak_rss_kib / 1024,
        meta.haproxy_peak_rss_kib / 1024,
        meta.nginx_peak_rss_kib / 1024
    )?;

    let sweep = a.points(Group::Sweep);
    if !sweep.is_empty() {
        writeln!(
            w,
            "#### Rate sweep (open loop, HTTP/1.1, 16 connections, 1 KiB): achieved req/s, p99 µs (added p99 vs A, below both knees)\n"
        )?;
        writeln!(w, "| target | A | B | C | D | E | F |")?;
        writeln!(w, "|---|---|---|---|---|---|---|")?;
        for r in sweep {
            let p = &r.point;
            let mut row = format!("| {} |", r.shape.rate.unwrap_or(0));
            for s in Scenario::ALL {
                if !a.has(p, s) {
                    row.push_str(" — |");
                    continue;
                }
                let rps = a.med(p, s, |x| Some(x.load.rps));
                let p99 = a.med(p, s, |x| Some(x.load.p99_us));
                let mark = if a.below_knee(p, s) { "" } else { " ✗" };
                let added =
                    if s != Scenario::A && a.below_knee(p, s) && a.below_knee(p, Scenario::A) {
                        p99.zip(a.med(p, Scenario::A, |x| Some(x.load.p99_us)))
                            .map(|(x, y)| format!(" ({:+.0})", x - y))
                            .unwrap_or_default()
                    } else {
                        String::new()
                    };
                let _ = write!(row, " {}, {}{added}{mark} |", f0(rps), f0(p99));
            }
            writeln!(w, "{row}")?;
        }
        writeln!(w, "\n✗: rate not met (achieved < 95 %) or p99 exploded.\n")?;
    }

    let newconn = a.points(Group::NewConn);
    if !newconn.is_empty() {
        writeln!(
            w,
            "#### New connections (connect + one request + close, HTTP/1.1, 16 connections)\n"
        )?;
        writeln!(
            w,
            "| load | scenario | conn/s | vs A | p50 µs | p99 µs | errors/non-2xx |"
        )?;
        writeln!(w, "|---|---|---|---|---|---|---|")?;
        for r in newconn {
            let p = &r.point;
            for s in [Scenario::A, Scenario::B] {
                let rps = |s| a.med(p, s, |x| Some(x.load.rps));
                writeln!(
                    w,
                    "| {p} | {} | {} | {} | {} | {} | {} |",
                    s.label(),
                    f0(rps(s)),
                    rps(s)
                        .zip(rps(Scenario::A))
                        .map(|(x, y)| format!("{:.3}", x / y))
                        .unwrap_or_else(|| "—".into()),
                    f0(a.med(p, s, |x| Some(x.load.p50_us))),
                    f0(a.med(p, s, |x| Some(x.load.p99_us))),
                    a.failures(p, s)
                )?;
            }
        }
        writeln!(w)?;
        if let Some(h) = hook {
            writeln!(
                w,
                "What each `connect()` pays in the kernel with the agent loaded and the destination \
                 not steered (B): the capture programs' own run time from the kernel's BPF \
                 run-time statistics, over B's new-connection runs ({} connections in {} runs; \
                 statistics themselves add two clock reads per program run). Beside this build \
                 with its defaults, in the same repetitions: this build with `--count-flows false` \
                 (no topology counting) and, with `--before`, the earlier build:\n",
                h.connections, h.runs
            )?;
            writeln!(
                w,
                "| agent | program | runs per connection | ns per run | ns per connection |"
            )?;
            writeln!(w, "|---|---|---|---|---|")?;
            let variants = [
                ("this build", Some(h)),
                (
                    "this build, `--count-flows false`",
                    meta.hook_cost_no_flows.as_ref(),
                ),
                ("before", meta.hook_cost_before.as_ref()),
            ];
            for (who, cost) in variants {
                let Some(cost) = cost else { continue };
                for p in &cost.programs {
                    writeln!(
                        w,
                        "| {who} | `{}` | {:.2} | {:.0} | {:.0} |",
                        p.program, p.runs_per_connection, p.ns_per_run, p.ns_per_connection
                    )?;
                }
                writeln!(
                    w,
                    "| {who} | **total** | | | **{:.0}** |",
                    cost.ns_per_connection
                )?;
            }
            writeln!(w)?;
        }
    }

    crate::profile::write_sections(w, profiles)?;

    std::fs::write(out.join("results.md"), &md)?;
    let section = format!("## Performance\n\n{md}");
    std::fs::write(out.join("README-section.md"), &section)?;
    let json = serde_json::json!({
        "meta": meta,
        "goals": goals,
        "knees": knees.iter().map(|(s, k)| (format!("{s:?}"), k)).collect::<BTreeMap<_, _>>(),
        "profiles": profiles,
        "records": recs,
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!(
        "wrote {0}/results.md, {0}/results.json and {0}/README-section.md",
        out.display()
    );
    Ok(md)
}
