//! The load generators: oha (HTTP/1.1 and h2c, open loop with latency correction, `--output-format
//! json`) and h2load (h2c, `--rps` per client, text output plus its per-request log for the
//! percentiles). Both run pinned to CPU 0 inside the client pod namespace and the captured cgroup.
//!
//! h2load starts every client's `--rps` timer together, so its N connections send in lockstep: a
//! burst of N requests every 1/rate s. Its latencies therefore include the queueing of N
//! simultaneous requests; oha spaces requests evenly. The fixed-rate goals use oha; h2load is a
//! cross-check with an independent HTTP/2 implementation (nghttp2; oha, the proxy and the
//! backend all use hyper).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::Value;
use tests::{netns::Netns, process::spawn_in};

/// The CPU the load generator and the backends share.
pub const CLIENT_CPU: &str = "0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    H1,
    H2c,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2c => "h2c",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    Oha,
    H2load,
}

/// One load shape.
#[derive(Clone, Debug, Serialize)]
pub struct Shape {
    pub tool: Tool,
    pub proto: Proto,
    pub conns: usize,
    /// Target requests/s (open loop); None: closed loop, as fast as it goes.
    pub rate: Option<u32>,
    pub bytes: usize,
    /// false: one request per connection (connect, request, close).
    pub keepalive: bool,
    pub secs: f64,
}

/// What one load run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadResult {
    /// Completed requests per second (any status).
    pub rps: f64,
    /// 2xx responses.
    pub ok: u64,
    pub non2xx: u64,
    /// Requests that got no response (connection errors, timeouts).
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// Requests in flight when the run ended, cancelled by the load generator (not errors).
    pub aborted_at_deadline: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// Where the load goes and from where.
pub struct Target<'a> {
    pub netns: &'a Netns,
    pub cgroup: &'a Path,
    pub addr: SocketAddr,
    /// `name: value`
    pub header: Option<&'a str>,
    /// For h2load's per-request log.
    pub scratch: &'a Path,
}

pub fn run(t: &Target<'_>, shape: &Shape) -> anyhow::Result<LoadResult> {
    match shape.tool {
        Tool::Oha => oha(t, shape),
        Tool::H2load => h2load(t, shape),
    }
}

fn run_pinned(t: &Target<'_>, name: &str, args: &[String], secs: f64) -> anyhow::Result<String> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", CLIENT_CPU, name])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn_in(name, cmd, Some(t.netns), Some(t.cgroup))?;
    let (status, out, err) = child
        .output_timeout(Duration::from_secs_f64(secs + 60.0))
        .with_context(|| format!("{name} {}", args.join(" ")))?;
    if !status.success() {
        bail!("{name} {} failed ({status}): {err}", args.join(" "));
    }
    Ok(out)
}

fn oha(t: &Target<'_>, s: &Shape) -> anyhow::Result<LoadResult> {
    let mut args: Vec<String> = vec![
        "--no-tui".into(),
        "--output-format".into(),
        "json".into(),
        "-z".into(),
        format!("{}ms", (s.secs * 1000.0).round() as u64),
        "-c".into(),
        s.conns.to_string(),
        // Requests in flight at the deadline are waited for, not counted as errors.
        "-w".into(),
    ];
    if let Some(rate) = s.rate {
        args.extend(["-q".into(), rate.to_string(), "--latency-correction".into()]);
    }
    if !s.keepalive {
        args.push("--disable-keepalive".into());
    }
    if s.proto == Proto::H2c {
        // Prior knowledge, one stream at a time per connection (-p 1), as h2load -m 1.
        args.push("--http2".into());
    }
    if let Some(h) = t.header {
        args.extend(["-H".into(), h.to_string()]);
    }
    args.push(format!("http://{}/bytes/{}", t.addr, s.bytes));
    let out = run_pinned(t, "oha", &args, s.secs)?;
    parse_oha(&out, s.secs)
}

/// Parses `oha --output-format json`: times in seconds.
pub fn parse_oha(out: &str, secs: f64) -> anyhow::Result<LoadResult> {
    let v: Value = serde_json::from_str(out).with_context(|| format!("oha output {out:?}"))?;
    let mut r = LoadResult::default();
    let codes = v["statusCodeDistribution"]
        .as_object()
        .context("oha: no statusCodeDistribution")?;
    for (code, n) in codes {
        let n = n.as_u64().unwrap_or(0);
        if code.starts_with('2') {
            r.ok += n;
        } else {
            r.non2xx += n;
        }
    }
    if let Some(errs) = v["errorDistribution"].as_object() {
        for (kind, n) in errs {
            let n = n.as_u64().unwrap_or(0);
            // With --http2, `-w` does not stop oha from cancelling the requests in flight at the
            // deadline: those are not failures.
            if kind.contains("aborted due to deadline") {
                r.aborted_at_deadline += n;
            } else {
                r.errors += n;
                r.error_kinds.insert(kind.clone(), n);
            }
        }
    }
    // requestsPerSec counts errors too; use completed responses over the run time instead.
    let total = v["summary"]["total"].as_f64().unwrap_or(secs);
    r.rps = (r.ok + r.non2xx) as f64 / if total > 0.0 { total } else { secs };
    let pct = &v["latencyPercentiles"];
    let us = |k: &str| pct[k].as_f64().map(|s| s * 1e6).unwrap_or(f64::NAN);
    r.p50_us = us("p50");
    r.p90_us = us("p90");
    r.p99_us = us("p99");
    r.p999_us = us("p99.9");
    Ok(r)
}

fn h2load(t: &Target<'_>, s: &Shape) -> anyhow::Result<LoadResult> {
    let log = t.scratch.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let mut args: Vec<String> = vec![
        "-c".into(),
        s.conns.to_string(),
        "-m".into(),
        "1".into(),
        "-t".into(),
        "1".into(),
        "-D".into(),
        format!("{}", s.secs.max(1.0).round() as u64),
        "--log-file".into(),
        log.display().to_string(),
    ];
    if let Some(rate) = s.rate {
        // --rps is per client (connection).
        args.extend([
            "--rps".into(),
            format!("{:.3}", f64::from(rate) / s.conns as f64),
        ]);
    }
    if let Some(h) = t.header {
        args.extend(["-H".into(), h.to_string()]);
    }
    args.push(format!("http://{}/bytes/{}", t.addr, s.bytes));
    let out = run_pinned(t, "h2load", &args, s.secs)?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    parse_h2load(&out, &text)
}

/// Parses h2load's summary (requests/s, succeeded/failed, status codes) and its per-request log
/// (`start_us \t status \t duration_us`) for the percentiles.
pub fn parse_h2load(out: &str, log: &str) -> anyhow::Result<LoadResult> {
    let mut r = LoadResult::default();
    let num = |line: &str, after: &str| -> Option<f64> {
        let i = line.find(after)?;
        line[..i]
            .rsplit([' ', ','])
            .find(|w| !w.is_empty())?
            .parse()
            .ok()
    };
    let mut seen = false;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            r.rps = rest
                .split(", ")
                .nth(1)
                .and_then(|x| x.strip_suffix(" req/s"))
                .and_then(|x| x.parse().ok())
                .context("h2load: req/s")?;
            seen = true;
        } else if line.starts_with("requests: ") {
            let failed = num(line, " failed").unwrap_or(0.0) as u64;
            let timeout = num(line, " timeout").unwrap_or(0.0) as u64;
            // "failed" counts errored and timed out requests and non-2xx... see status codes.
            r.errors = failed;
            if timeout > 0 {
                r.error_kinds.insert("timeout".into(), timeout);
            }
        } else if line.starts_with("status codes: ") {
            let two = num(line, " 2xx").unwrap_or(0.0) as u64;
            let other: u64 = [" 3xx", " 4xx", " 5xx"]
                .iter()
                .map(|k| num(line, k).unwrap_or(0.0) as u64)
                .sum();
            r.ok = two;
            r.non2xx = other;
        }
    }
    if !seen {
        bail!("h2load output without a summary: {out}");
    }
    // h2load's "failed" includes non-2xx responses; keep only requests without a response.
    r.errors = r.errors.saturating_sub(r.non2xx);
    if r.errors > 0 {
        r.error_kinds.insert("failed".into(), r.errors);
    }
    let mut lat: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    lat.sort_by(f64::total_cmp);
    r.p50_us = percentile(&lat, 0.50);
    r.p90_us = percentile(&lat, 0.90);
    r.p99_us = percentile(&lat, 0.99);
    r.p999_us = percentile(&lat, 0.999);
    Ok(r)
}

/// Nearest-rank percentile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn oha_json() {
        let out = r#"{"summary": {"total": 2.0, "requestsPerSec": 1001.0},
            "latencyPercentiles": {"p50": 0.0001, "p90": 0.0002, "p99": 0.0005, "p99.9": 0.001},
            "statusCodeDistribution": {"200": 1990, "503": 8},
            "errorDistribution": {"aborted due to deadline": 3, "connection refused": 2}}"#;
        let r = parse_oha(out, 2.0).expect("parse");
        assert_eq!(
            (r.ok, r.non2xx, r.errors, r.aborted_at_deadline),
            (1990, 8, 2, 3)
        );
        assert!((r.rps - 999.0).abs() < 1e-9);
        assert!((r.p50_us - 100.0).abs() < 1e-6 && (r.p999_us - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn h2load_summary_and_log() {
        let out = "finished in 2.00s, 999.50 req/s, 1.07MB/s\n\
                   requests: 2000 total, 2000 started, 2000 done, 1999 succeeded, 1 failed, 0 errored, 0 timeout\n\
                   status codes: 1999 2xx, 0 3xx, 0 4xx, 1 5xx\n";
        let log = "1\t200\t100\n2\t200\t300\n3\t503\t200\n";
        let r = parse_h2load(out, log).expect("parse");
        assert_eq!((r.ok, r.non2xx, r.errors), (1999, 1, 0));
        assert!((r.rps - 999.5).abs() < 1e-9);
        assert_eq!((r.p50_us, r.p99_us), (200.0, 300.0));
    }
}
