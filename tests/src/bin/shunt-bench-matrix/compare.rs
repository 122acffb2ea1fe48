//! Before and after (`--before`): C and D against C′ and D′, the same scenarios run with an
//! earlier build of the agent, interleaved at the same points. A figure after the change counts
//! as a regression only when it falls outside the spread (min–max over repetitions) of the
//! before build, in the bad direction.
use std::fmt::Write as _;

use crate::{Group, Record, Scenario};

/// One figure of one scenario at one point, over its repetitions.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(
        recs: &[Record],
        point: &str,
        s: Scenario,
        f: fn(&Record) -> Option<f64>,
    ) -> Option<Self> {
        let mut v: Vec<f64> = recs
            .iter()
            .filter(|r| r.point == point && r.scenario == s)
            .filter_map(f)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Some(Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// Whether lower or higher is better for a figure.
#[derive(Clone, Copy)]
enum Better {
    Lower,
    Higher,
}

/// The after build's median against the before build's spread.
fn verdict(before: &Spread, after: &Spread, better: Better) -> &'static str {
    let (better_than_all, worse_than_all) = match better {
        Better::Lower => (after.median < before.min, after.median > before.max),
        Better::Higher => (after.median > before.max, after.median < before.min),
    };
    if better_than_all {
        "better"
    } else if worse_than_all {
        "**worse**"
    } else {
        "within"
    }
}

type Figure = (&'static str, fn(&Record) -> Option<f64>, Better, usize);

const FIXED: [Figure; 3] = [
    ("p50 µs", |r| Some(r.load.p50_us), Better::Lower, 0),
    ("p99 µs", |r| Some(r.load.p99_us), Better::Lower, 0),
    (
        "vCPU per 1000 req/s",
        Record::vcpu_per_krps,
        Better::Lower,
        3,
    ),
];

const MAX: [Figure; 2] = [
    ("req/s", |r| Some(r.load.rps), Better::Higher, 0),
    (
        "req/s per proxy core",
        |r| {
            r.proxy_cpu_s
                .filter(|c| *c > 0.0)
                .map(|c| (r.load.ok + r.load.non2xx) as f64 / c)
        },
        Better::Higher,
        0,
    ),
];

/// The before/after section, or `None` when the run had no `--before` build.
pub fn section(recs: &[Record]) -> Option<String> {
    if !recs.iter().any(|r| Scenario::BEFORE.contains(&r.scenario)) {
        return None;
    }
    let mut w = String::new();
    let _ = writeln!(w, "#### Before and after\n");
    let _ = writeln!(
        w,
        "C′ and D′ are C and D run with the `--before` build, at the same points, in the same \
         repetitions (before first in odd repetitions, after first in even ones). Each cell: \
         median (min–max over repetitions). \"within\": the after median lies inside the before \
         build's spread; \"better\"/\"worse\": outside it.\n"
    );
    let _ = writeln!(
        w,
        "| load | scenario | figure | before | after | after vs before |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    let mut points: Vec<(&str, Group)> = Vec::new();
    for r in recs {
        if Scenario::BEFORE.contains(&r.scenario) && !points.iter().any(|(p, _)| *p == r.point) {
            points.push((&r.point, r.group));
        }
    }
    for (point, group) in points {
        let figures: &[Figure] = if group == Group::Max { &MAX } else { &FIXED };
        for after_s in [Scenario::C, Scenario::D] {
            let before_s = after_s.counterpart().expect("C and D have counterparts");
            for (name, f, better, digits) in figures {
                let (Some(b), Some(a)) = (
                    Spread::of(recs, point, before_s, *f),
                    Spread::of(recs, point, after_s, *f),
                ) else {
                    continue;
                };
                let _ = writeln!(
                    w,
                    "| {point} | {} | {name} | {} | {} | {} |",
                    after_s.label(),
                    b.show(*digits),
                    a.show(*digits),
                    verdict(&b, &a, *better),
                );
            }
        }
    }
    let _ = writeln!(w);
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(median: f64, min: f64, max: f64) -> Spread {
        Spread { median, min, max }
    }

    #[test]
    fn after_inside_the_before_spread_is_within() {
        let b = spread(100.0, 90.0, 110.0);
        assert_eq!(
            verdict(&b, &spread(105.0, 0.0, 0.0), Better::Lower),
            "within"
        );
        assert_eq!(
            verdict(&b, &spread(80.0, 0.0, 0.0), Better::Lower),
            "better"
        );
        assert_eq!(
            verdict(&b, &spread(120.0, 0.0, 0.0), Better::Lower),
            "**worse**"
        );
        assert_eq!(
            verdict(&b, &spread(120.0, 0.0, 0.0), Better::Higher),
            "better"
        );
        assert_eq!(
            verdict(&b, &spread(80.0, 0.0, 0.0), Better::Higher),
            "**worse**"
        );
    }
}
