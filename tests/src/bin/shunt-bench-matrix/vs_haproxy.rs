//! Issue 22's rule against HAProxy, per protocol: at every 1 KiB point at 1000 req/s, C's and
//! D's proxy CPU, added p50 and added p99 ≤ 1.05× E's, and ≤ 1.0× on the median of those ratios.
//!
//! The goal rows take the medians over repetitions. So that a claim can be checked against the
//! noise, the same ratios are also taken repetition by repetition: each repetition runs A to F
//! back to back at a point, so C or D and E of one repetition saw the same machine state.
use std::fmt::Write as _;

use crate::{
    Group, Record, Scenario,
    goals::{Goal, added},
    load::{Proto, Tool},
    median,
    report::Agg,
};

/// One figure of a record, given A's record of the same repetition (for the added latencies).
type PerRun = fn(&Record, &Record) -> Option<f64>;
/// The same figure as a median over repetitions.
type Median = fn(&Agg<'_>, &str, Scenario) -> Option<f64>;

struct Metric {
    name: &'static str,
    median: Median,
    per_run: PerRun,
}

const METRICS: [Metric; 3] = [
    Metric {
        name: "proxy CPU per 1000 req/s",
        median: |a, p, s| a.med(p, s, Record::vcpu_per_krps),
        per_run: |r, _| r.vcpu_per_krps(),
    },
    Metric {
        name: "added p50",
        median: |a, p, s| added(a, p, s, |r| r.load.p50_us),
        per_run: |r, a| Some(r.load.p50_us - a.load.p50_us),
    },
    Metric {
        name: "added p99",
        median: |a, p, s| added(a, p, s, |r| r.load.p99_us),
        per_run: |r, a| Some(r.load.p99_us - a.load.p99_us),
    },
];

/// The 1 KiB, 1000 req/s oha points of `proto`, in run order.
fn points(a: &Agg<'_>, proto: Proto) -> Vec<String> {
    a.points(Group::Fixed)
        .into_iter()
        .filter(|r| {
            r.shape.bytes == 1024
                && r.shape.tool == Tool::Oha
                && r.shape.proto == proto
                && r.shape.rate == Some(1000)
        })
        .map(|r| r.point.clone())
        .collect()
}

/// `s`'s figure over E's at `point`, in repetition `rep`; `None` where a record is missing or
/// E's figure is not positive.
fn run_ratio(a: &Agg<'_>, point: &str, s: Scenario, rep: usize, m: &Metric) -> Option<f64> {
    let of = |sc: Scenario| a.of(point, sc).find(|r| r.rep == rep);
    let direct = of(Scenario::A)?;
    let e = (m.per_run)(of(Scenario::E)?, direct).filter(|e| *e > 0.0)?;
    Some((m.per_run)(of(s)?, direct)? / e)
}

fn repetitions(a: &Agg<'_>) -> Vec<usize> {
    let mut reps: Vec<usize> = a.recs.iter().map(|r| r.rep).collect();
    reps.sort_unstable();
    reps.dedup();
    reps
}

fn range(v: &[f64]) -> Option<(f64, f64)> {
    let min = v.iter().copied().min_by(f64::total_cmp)?;
    let max = v.iter().copied().max_by(f64::total_cmp)?;
    Some((min, max))
}

/// One goal row per protocol and metric.
pub fn goals(a: &Agg<'_>) -> Vec<Goal> {
    let reps = repetitions(a);
    let mut g = Vec::new();
    for proto in [Proto::H1, Proto::H2c] {
        let points = points(a, proto);
        for m in &METRICS {
            let mut ratios: Vec<(f64, String)> = Vec::new();
            for p in &points {
                let Some(e) = (m.median)(a, p, Scenario::E).filter(|e| *e > 0.0) else {
                    continue;
                };
                for s in [Scenario::C, Scenario::D] {
                    if let Some(v) = (m.median)(a, p, s) {
                        ratios.push((v / e, format!("{} {}", &s.label()[..1], p)));
                    }
                }
            }
            let worst = ratios.iter().max_by(|x, y| x.0.total_cmp(&y.0)).cloned();
            let med = median(ratios.iter().map(|r| r.0).collect());
            // The same two numbers within each repetition alone: their range is the noise the
            // verdict has to clear.
            let (mut run_worst, mut run_median) = (Vec::new(), Vec::new());
            for &rep in &reps {
                let v: Vec<f64> = points
                    .iter()
                    .flat_map(|p| {
                        [Scenario::C, Scenario::D]
                            .into_iter()
                            .filter_map(move |s| run_ratio(a, p, s, rep, m))
                    })
                    .collect();
                if let Some((_, max)) = range(&v) {
                    run_worst.push(max);
                }
                run_median.extend(median(v));
            }
            let by_run = match (range(&run_worst), range(&run_median)) {
                (Some((wl, wh)), Some((ml, mh))) => {
                    format!("; by repetition, worst {wl:.2}–{wh:.2}×, median {ml:.2}–{mh:.2}×")
                }
                _ => String::new(),
            };
            g.push(Goal {
                goal: format!(
                    "{} {} vs HAProxy (E), C and D at each 1 KiB point at 1000/s",
                    proto.label(),
                    m.name
                ),
                target: "≤ 1.05× at each, ≤ 1.0× on the median".into(),
                measured: match (&worst, med) {
                    (Some((w, at)), Some(md)) => format!(
                        "worst {w:.2}× ({at}); median {md:.2}× of {} ratios{by_run}",
                        ratios.len()
                    ),
                    _ => "—".into(),
                },
                met: worst.zip(med).map(|((w, _), md)| w <= 1.05 && md <= 1.0),
            });
        }
    }
    g
}

/// The ratios to E at every point, median (min–max) over repetitions.
pub fn section(a: &Agg<'_>) -> String {
    let reps = repetitions(a);
    let mut w = String::new();
    let mut rows = String::new();
    for proto in [Proto::H1, Proto::H2c] {
        for p in points(a, proto) {
            for s in [Scenario::C, Scenario::D] {
                let cells: Vec<String> = METRICS
                    .iter()
                    .map(|m| {
                        let v: Vec<f64> = reps
                            .iter()
                            .filter_map(|&rep| run_ratio(a, &p, s, rep, m))
                            .collect();
                        match (median(v.clone()), range(&v)) {
                            (Some(md), Some((lo, hi))) => format!("{md:.2} ({lo:.2}–{hi:.2})"),
                            _ => "—".into(),
                        }
                    })
                    .collect();
                let _ = writeln!(rows, "| {p} | {} | {} |", s.label(), cells.join(" | "));
            }
        }
    }
    if rows.is_empty() {
        return w;
    }
    let _ = writeln!(w, "#### Against HAProxy, repetition by repetition\n");
    let _ = writeln!(
        w,
        "Each figure of C or D divided by E's in the same repetition (added latencies: both minus \
         A's of that repetition); median (min–max) over repetitions. A ratio whose range straddles \
         the target is within the noise of this run.\n"
    );
    let _ = writeln!(
        w,
        "| load | scenario | proxy CPU ÷ E | added p50 ÷ E | added p99 ÷ E |\n|---|---|---|---|---|"
    );
    w.push_str(&rows);
    w.push('\n');
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{LoadResult, Shape};

    /// A record at the h2c 1-connection point: `cpu_s` proxy seconds for 1000 requests, and
    /// `p50` µs.
    fn rec(s: Scenario, rep: usize, cpu_s: f64, p50: f64) -> Record {
        Record {
            scenario: s,
            point: "h2c 1 conns, 1 KiB, 1000/s".into(),
            group: Group::Fixed,
            shape: Shape {
                tool: Tool::Oha,
                proto: Proto::H2c,
                conns: 1,
                rate: Some(1000),
                bytes: 1024,
                keepalive: true,
                secs: 1.0,
            },
            rep,
            load: LoadResult {
                ok: 1000,
                p50_us: p50,
                p99_us: 2.0 * p50,
                ..LoadResult::default()
            },
            proxy_cpu_s: (s != Scenario::A).then_some(cpu_s),
            wall_s: 1.0,
            served_expected: 1000,
            served_wrong: 0,
        }
    }

    #[test]
    fn ratios_to_haproxy_are_also_taken_within_each_repetition() {
        // E's CPU swings from rep to rep and D's swings with it: the medians give 1.10×, and each
        // repetition alone gives 1.0×, 1.1× and 1.2×.
        let mut recs = Vec::new();
        for (rep, e_cpu, d_cpu) in [(0, 0.100, 0.100), (1, 0.200, 0.220), (2, 0.300, 0.360)] {
            recs.push(rec(Scenario::A, rep, 0.0, 100.0));
            recs.push(rec(Scenario::C, rep, d_cpu, 150.0));
            recs.push(rec(Scenario::D, rep, d_cpu, 150.0));
            recs.push(rec(Scenario::E, rep, e_cpu, 150.0));
        }
        let a = Agg { recs: &recs };
        let rows = goals(&a);
        let cpu = rows
            .iter()
            .find(|g| g.goal.starts_with("h2c proxy CPU"))
            .expect("an h2c CPU row");
        assert!(
            cpu.measured
                .starts_with("worst 1.10× (D h2c 1 conns, 1 KiB, 1000/s)"),
            "{}",
            cpu.measured
        );
        assert!(
            cpu.measured
                .ends_with("by repetition, worst 1.00–1.20×, median 1.00–1.20×"),
            "{}",
            cpu.measured
        );
        assert_eq!(cpu.met, Some(false));
        let p50 = rows
            .iter()
            .find(|g| g.goal.starts_with("h2c added p50"))
            .expect("an h2c p50 row");
        assert_eq!(p50.met, Some(true), "{}", p50.measured);

        let table = section(&a);
        assert!(
            table.contains("| D Shunt, key → sandbox | 1.10 (1.00–1.20) | 1.00 (1.00–1.00) |"),
            "{table}"
        );
    }
}
