//! What the soak's request lines say: misroutes (with the exclusions, by cause),
//! failures, latency over time and the agent's RSS slope.
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Who answers each key (unkeyed: the baseline).
const BASELINE: &str = "reviews-v1";
const SANDBOXES: [(&str, &str); 2] = [("pr-42", "reviews-v2"), ("pr-43", "reviews-v3")];
/// A keyed request counts only once its fork has had a ready endpoint this long.
const SETTLE_SECS: f64 = 1.0;
/// Around each fault, [at − BEFORE, at + AFTER] is excluded from the keyed count.
const FAULT_BEFORE: f64 = 0.5;
const FAULT_AFTER: f64 = 3.0;
/// The RSS bound, over minutes 2–10.
const RSS_SLOPE_MAX_MIB_PER_MIN: f64 = 0.5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FaultKind {
    Restart,
    Kill,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Fault {
    pub at: f64,
    pub kind: FaultKind,
}

impl Fault {
    pub fn restart(at: f64) -> Self {
        Self {
            at,
            kind: FaultKind::Restart,
        }
    }
    pub fn kill(at: f64) -> Self {
        Self {
            at,
            kind: FaultKind::Kill,
        }
    }
}

/// When the churning fork (`pr-43`) had a ready endpoint: `(since, ready)` changes.
pub struct ForkReady {
    changes: Vec<(f64, bool)>,
}

impl ForkReady {
    pub fn new(at: f64, ready: bool) -> Self {
        Self {
            changes: vec![(at, ready)],
        }
    }
    pub fn set(&mut self, at: f64, ready: bool) {
        if self.changes.last().is_some_and(|(_, r)| *r != ready) {
            self.changes.push((at, ready));
        }
    }
    /// Whether the fork was ready at `t` and had been for `SETTLE_SECS`.
    fn settled(&self, t: f64) -> bool {
        let last = self.changes.iter().rev().find(|(at, _)| *at <= t);
        last.is_some_and(|(at, ready)| *ready && t - at >= SETTLE_SECS)
    }
}

/// One RSS reading of the running agent.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    pub t: f64,
    pub pid: i32,
    pub kib: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub minutes: f64,
    pub requests: usize,
    pub by_protocol: BTreeMap<String, usize>,
    /// Unkeyed requests answered by a sandbox (no exclusions).
    pub unkeyed_to_sandbox: usize,
    /// Keyed requests counted, and those that missed their sandbox.
    pub keyed_counted: usize,
    pub keyed_missed: usize,
    /// Keyed requests left out, by cause.
    pub excluded: BTreeMap<String, usize>,
    /// Keyed requests that missed while excluded, by cause (for the record).
    pub missed_while_excluded: BTreeMap<String, usize>,
    /// Requests that failed (no answer, or not 2xx), inside and outside fault windows.
    pub failures_in_fault_windows: usize,
    pub failures_elsewhere: usize,
    pub failure_examples: Vec<String>,
    /// p99 latency per 30 s of the run, in ms.
    pub p99_ms_per_30s: Vec<(u64, f64)>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The agent's RSS slope over minutes 2–10 per agent process (≥ 60 s of samples), MiB/min.
    pub rss_slopes_mib_per_min: Vec<f64>,
    pub rss_first_mib: f64,
    pub rss_last_mib: f64,
    pub faults: Vec<Fault>,
    pub passed: bool,
}

pub fn analyse(
    lines: &[Value],
    fork: &ForkReady,
    faults: &[Fault],
    rss: &[Sample],
    minutes: f64,
) -> Report {
    let mut r = Report {
        minutes,
        requests: lines.len(),
        faults: faults.to_vec(),
        ..Report::default()
    };
    let fault_at = |t: f64| {
        faults
            .iter()
            .find(|f| t >= f.at - FAULT_BEFORE && t <= f.at + FAULT_AFTER)
    };
    let in_fault = |t: f64| fault_at(t).is_some();
    let mut lat: Vec<(f64, u64)> = Vec::new();
    for l in lines {
        let t = l["t_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
        let proto = l["proto"].as_str().unwrap_or("?").to_string();
        *r.by_protocol.entry(proto.clone()).or_default() += 1;
        let key = l["key"].as_str();
        let Some(served_by) = l["served_by"].as_str() else {
            if in_fault(t) {
                r.failures_in_fault_windows += 1;
            } else {
                r.failures_elsewhere += 1;
                if r.failure_examples.len() < 10 {
                    r.failure_examples
                        .push(format!("{t:.2} s {proto}: {}", l["error"]));
                }
            }
            continue;
        };
        lat.push((t, l["lat_us"].as_u64().unwrap_or(0)));
        let expected = match key {
            None => BASELINE,
            Some(k) => SANDBOXES
                .iter()
                .find(|(key, _)| *key == k)
                .map_or(BASELINE, |(_, s)| s),
        };
        // "server peer" over HTTP; over gRPC, the expected server's name, or "other".
        let hit = served_by.split(' ').next() == Some(expected);
        if key.is_none() {
            if !hit {
                r.unkeyed_to_sandbox += 1;
            }
            continue;
        }
        // The fork's readiness first: a request its fork could not serve says nothing about
        // the fault it happened near.
        let cause = if key == Some("pr-43") && !fork.settled(t) {
            Some("pr-43 fork not ready for >= 1 s")
        } else if let Some(f) = fault_at(t) {
            Some(match f.kind {
                FaultKind::Restart => "within [restart - 0.5 s, restart + 3 s]",
                FaultKind::Kill => "within [SIGKILL - 0.5 s, SIGKILL + 3 s]",
            })
        } else {
            None
        };
        match cause {
            Some(c) => {
                *r.excluded.entry(c.into()).or_default() += 1;
                if !hit {
                    *r.missed_while_excluded.entry(c.into()).or_default() += 1;
                }
            }
            None => {
                r.keyed_counted += 1;
                if !hit {
                    r.keyed_missed += 1;
                }
            }
        }
    }
    let pct = |v: &mut Vec<u64>, p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
    };
    let mut all: Vec<u64> = lat.iter().map(|(_, l)| *l).collect();
    r.p50_ms = pct(&mut all, 0.50);
    r.p99_ms = pct(&mut all, 0.99);
    let mut buckets: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (t, l) in &lat {
        buckets.entry((*t / 30.0) as u64 * 30).or_default().push(*l);
    }
    r.p99_ms_per_30s = buckets
        .into_iter()
        .map(|(b, mut v)| (b, pct(&mut v, 0.99)))
        .collect();
    r.rss_first_mib = rss.first().map_or(0.0, |s| s.kib as f64 / 1024.0);
    r.rss_last_mib = rss.last().map_or(0.0, |s| s.kib as f64 / 1024.0);
    r.rss_slopes_mib_per_min = rss_slopes(rss, faults);
    let slope_ok = r
        .rss_slopes_mib_per_min
        .iter()
        .all(|s| *s < RSS_SLOPE_MAX_MIB_PER_MIN);
    r.passed = r.unkeyed_to_sandbox == 0 && r.keyed_missed == 0 && slope_ok && r.requests > 0;
    r
}

/// Least-squares slope of RSS over time for each agent process, from minute 2 on and from 30 s
/// after the process started serving (start-up allocations and filling its fixed-size buffers
/// are not growth), over ≥ 60 s.
fn rss_slopes(rss: &[Sample], faults: &[Fault]) -> Vec<f64> {
    let mut by_pid: BTreeMap<i32, Vec<(f64, f64)>> = BTreeMap::new();
    for s in rss {
        let since_fault = faults
            .iter()
            .filter(|f| f.at <= s.t)
            .map(|f| s.t - f.at)
            .fold(f64::INFINITY, f64::min);
        if s.t >= 120.0 && since_fault >= 30.0 {
            by_pid
                .entry(s.pid)
                .or_default()
                .push((s.t / 60.0, s.kib as f64 / 1024.0));
        }
    }
    by_pid
        .values()
        .filter(|pts| pts.len() >= 2 && pts[pts.len() - 1].0 - pts[0].0 >= 0.9)
        .map(|pts| {
            let n = pts.len() as f64;
            let (mx, my) = (
                pts.iter().map(|p| p.0).sum::<f64>() / n,
                pts.iter().map(|p| p.1).sum::<f64>() / n,
            );
            let cov: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
            let var: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
            if var > 0.0 { cov / var } else { 0.0 }
        })
        .collect()
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!(
            "#### Soak: {:.0} min, {} requests ({}), {}",
            self.minutes,
            self.requests,
            self.by_protocol
                .iter()
                .map(|(p, n)| format!("{p} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            if self.passed { "PASSED" } else { "FAILED" }
        ));
        line(String::new());
        line("| | |\n|---|---|".into());
        line(format!(
            "| faults | {} |",
            self.faults
                .iter()
                .map(|f| format!("{:?} at {:.0} s", f.kind, f.at))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        line(format!(
            "| unkeyed requests that reached a sandbox (no exclusions) | **{}** |",
            self.unkeyed_to_sandbox
        ));
        line(format!(
            "| keyed requests that missed their sandbox | **{}** of {} counted |",
            self.keyed_missed, self.keyed_counted
        ));
        for (cause, n) in &self.excluded {
            let missed = self.missed_while_excluded.get(cause).copied().unwrap_or(0);
            line(format!(
                "| keyed excluded: {cause} | {n} ({missed} of them missed) |"
            ));
        }
        line(format!(
            "| failed requests (no answer or not 2xx) | {} in fault windows, {} elsewhere |",
            self.failures_in_fault_windows, self.failures_elsewhere
        ));
        line(format!(
            "| latency p50 / p99 | {:.2} ms / {:.2} ms |",
            self.p50_ms, self.p99_ms
        ));
        line(format!(
            "| p99 per 30 s (ms) | {} |",
            self.p99_ms_per_30s
                .iter()
                .map(|(t, p)| format!("{t}s: {p:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        line(format!(
            "| agent RSS first / last | {:.1} MiB / {:.1} MiB |",
            self.rss_first_mib, self.rss_last_mib
        ));
        line(format!(
            "| RSS slope over minutes 2–10, per agent process | {} |",
            if self.rss_slopes_mib_per_min.is_empty() {
                "n/a (run shorter than 3 minutes, or no process lived a minute past minute 2)"
                    .to_string()
            } else {
                self.rss_slopes_mib_per_min
                    .iter()
                    .map(|s| format!("{s:+.3} MiB/min"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        for e in &self.failure_examples {
            line(format!("- failure: {e}"));
        }
        s
    }
}
