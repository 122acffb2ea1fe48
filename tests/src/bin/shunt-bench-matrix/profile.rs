//! `perf` profiles of the proxy under load: top symbols, share per binary, syscalls and context
//! switches per request.
use super::*;

/// Top symbols of a `perf record -e cpu-clock` profile of one process under load.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Profile {
    pub who: String,
    pub rate: u32,
    /// The point profiled (`Point::key`): Shunt's and HAProxy's profiles pair on it.
    pub at: String,
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
pub(crate) fn h1_keepalive_point(group: Group, rate: u32, secs: f64) -> Point {
    keepalive_point(group, Proto::H1, 16, rate, secs)
}

/// Keep-alive connections of `proto`, 1 KiB, at `rate` requests/s for `secs`.
pub(crate) fn keepalive_point(
    group: Group,
    proto: Proto,
    conns: usize,
    rate: u32,
    secs: f64,
) -> Point {
    Point {
        group,
        shape: Shape {
            tool: Tool::Oha,
            proto,
            conns,
            rate: Some(rate),
            bytes: KIB,
            keepalive: true,
            secs,
        },
    }
}

/// Profiles scenario `s` (D: Shunt, E: HAProxy) at `conns` keep-alive connections of `proto`,
/// 1 KiB, `rate` requests/s.
pub(crate) fn profile(
    b: &mut Bench,
    o: &Opts,
    s: Scenario,
    proto: Proto,
    conns: usize,
    rate: u32,
) -> Profile {
    let secs = if o.quick { 2.0 } else { o.secs.max(5.0) };
    let point = keepalive_point(Group::Fixed, proto, conns, rate, secs);
    let proxy = if s == Scenario::E { "haproxy" } else { "shunt" };
    let proto_name = match proto {
        Proto::H1 => "h1",
        Proto::H2c => "h2c",
    };
    // HTTP/1.1 keeps its old file names (profile-shunt-1000.txt), which the README cites.
    let who = match proto {
        Proto::H1 => format!("{proxy}-{rate}"),
        Proto::H2c => format!("{proxy}-{proto_name}-{rate}"),
    };
    let mut p = Profile {
        who: proxy.into(),
        rate,
        at: point.key(),
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
pub(crate) const SYSCALLS: [&str; 15] = [
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
pub(crate) fn perf_rows(text: &str) -> Vec<(f64, Vec<&str>)> {
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

/// The report's profile sections: kernel against user space beside HAProxy at each profiled
/// point, each profile's top symbols, and syscalls and context switches per request.
pub(crate) fn write_sections(w: &mut String, profiles: &[Profile]) -> std::fmt::Result {
    use std::fmt::Write as _;

    let split = |p: &Profile| -> Option<(f64, f64)> {
        let v = p.vcpu_per_krps?;
        let kernel: f64 = p
            .by_dso
            .iter()
            .filter(|(_, d)| d.contains("kernel"))
            .map(|(pct, _)| pct)
            .sum();
        Some((v * kernel / 100.0, v * (100.0 - kernel) / 100.0))
    };
    let mut lines = Vec::new();
    for s in profiles.iter().filter(|p| p.who == "shunt") {
        let Some(h) = profiles.iter().find(|p| p.who == "haproxy" && p.at == s.at) else {
            continue;
        };
        if let (Some((sk, su)), Some((hk, hu))) = (split(s), split(h)) {
            lines.push(format!(
                "- at {}: kernel {sk:.3} (HAProxy {hk:.3}), user space incl. libc {su:.3} \
                 (HAProxy {hu:.3}) vCPU per 1000 req/s",
                s.at
            ));
        }
    }
    if !lines.is_empty() {
        writeln!(
            w,
            "#### Where the proxy's CPU goes (perf, kernel vs user space)\n\n{}\n",
            lines.join("\n")
        )?;
    }

    for prof in profiles {
        writeln!(w, "#### Profile: {} ({})\n", prof.who, prof.load)?;
        if let Some(e) = &prof.error {
            writeln!(w, "Profile failed: {e}\n")?;
            continue;
        }
        let dsos: Vec<String> = prof
            .by_dso
            .iter()
            .filter(|(pct, _)| *pct >= 1.0)
            .map(|(pct, d)| match prof.vcpu_per_krps {
                Some(v) => format!("{d} {pct:.0} % ({:.3})", v * pct / 100.0),
                None => format!("{d} {pct:.0} %"),
            })
            .collect();
        writeln!(
            w,
            "`perf record -e cpu-clock -g` on the proxy process: {} vCPU per 1000 req/s during \
             the run; samples by binary (vCPU per 1000 req/s): {}. Top symbols by self time (full \
             report `{}`, callers `{}`):\n",
            prof.vcpu_per_krps
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "?".into()),
            dsos.join(", "),
            prof.report_file,
            prof.callers_file
        )?;
        writeln!(w, "| self % | symbol |")?;
        writeln!(w, "|---|---|")?;
        for (pct, sym) in &prof.top {
            writeln!(w, "| {pct:.1} | `{}` |", sym.replace('|', "\\|"))?;
        }
        writeln!(w)?;
    }

    if profiles.iter().any(|p| !p.per_request.is_empty()) {
        writeln!(
            w,
            "#### Per request, during the profiled runs (`perf stat`, syscall tracepoints)\n"
        )?;
        let mut head = String::from("| per request |");
        let mut sep = String::from("|---|");
        for p in profiles {
            // "HTTP/1.1 16 conns, 1 KiB, 1000/s" → "HTTP/1.1 16 conns, 1000/s".
            let at = p.at.replace(", 1 KiB", "");
            let _ = write!(head, " {} at {at} |", p.who);
            sep.push_str("---|");
        }
        writeln!(w, "{head}\n{sep}")?;
        let names: Vec<&String> = profiles
            .iter()
            .flat_map(|p| p.per_request.iter().map(|(n, _)| n))
            .fold(Vec::new(), |mut v, n| {
                if !v.contains(&n) {
                    v.push(n);
                }
                v
            });
        for n in names {
            let vals: Vec<f64> = profiles
                .iter()
                .map(|p| {
                    p.per_request
                        .iter()
                        .find(|(x, _)| x == n)
                        .map(|(_, v)| *v)
                        .unwrap_or(0.0)
                })
                .collect();
            if vals.iter().all(|v| *v < 0.005) {
                continue;
            }
            let mut row = format!("| {n} |");
            for v in vals {
                let _ = write!(row, " {v:.2} |");
            }
            writeln!(w, "{row}")?;
        }
        writeln!(w)?;
    }
    Ok(())
}
