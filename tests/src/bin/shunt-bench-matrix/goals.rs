//! The report's goal rows: each target, its measured figure and whether it is met.
use crate::{Group, Record, Scenario, load::Tool, report::Agg};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// Worst (largest) added percentile of `s` over A at the fixed 1 KiB points, with its point.
fn worst_added(a: &Agg<'_>, s: Scenario, pct: fn(&Record) -> f64) -> Option<(f64, String)> {
    a.points(Group::Fixed)
        .into_iter()
        .filter(|r| r.shape.bytes == 1024 && r.shape.tool == Tool::Oha)
        .filter_map(|r| Some((added(a, &r.point, s, pct)?, r.point.clone())))
        .max_by(|x, y| x.0.total_cmp(&y.0))
}

/// The median `pct` of `s` at `point`, minus A's.
pub(crate) fn added(a: &Agg<'_>, point: &str, s: Scenario, pct: fn(&Record) -> f64) -> Option<f64> {
    Some(a.med(point, s, |x| Some(pct(x)))? - a.med(point, Scenario::A, |x| Some(pct(x)))?)
}

/// Requests per second per proxy core at saturation: requests / proxy CPU seconds.
pub(crate) fn per_core(a: &Agg<'_>, point: &str, s: Scenario) -> Option<f64> {
    a.med(point, s, |r| {
        r.proxy_cpu_s
            .filter(|c| *c > 0.0)
            .map(|c| (r.load.ok + r.load.non2xx) as f64 / c)
    })
}

pub(crate) fn goals(a: &Agg<'_>) -> Vec<Goal> {
    let mut g = Vec::new();
    let max = a.points(Group::Max).first().map(|r| r.point.clone());
    let newconn = a
        .points(Group::NewConn)
        .into_iter()
        .find(|r| r.shape.rate.is_none())
        .map(|r| r.point.clone());
    let ratio = |point: &Option<String>, s: Scenario, base: Scenario| {
        let p = point.as_deref()?;
        Some(a.med(p, s, |r| Some(r.load.rps))? / a.med(p, base, |r| Some(r.load.rps))?)
    };
    for (what, point) in [
        ("B throughput vs A (keep-alive, saturation)", &max),
        ("B new-connection rate vs A (saturation)", &newconn),
    ] {
        let r = ratio(point, Scenario::B, Scenario::A);
        g.push(Goal {
            goal: what.into(),
            target: "≥ 0.99".into(),
            measured: r.map(|r| format!("{r:.3}")).unwrap_or_else(|| "—".into()),
            met: r.map(|r| r >= 0.99),
        });
    }
    for s in [Scenario::C, Scenario::D] {
        for (name, pct, limit) in [
            (
                "p90",
                (|r: &Record| r.load.p90_us) as fn(&Record) -> f64,
                60.0,
            ),
            ("p99", |r: &Record| r.load.p99_us, 100.0),
        ] {
            let w = worst_added(a, s, pct);
            g.push(Goal {
                goal: format!(
                    "{} added {name} at 1000 req/s (worst 1 KiB point)",
                    &s.label()[..1]
                ),
                target: format!("≤ {limit:.0} µs"),
                measured: w
                    .as_ref()
                    .map(|(v, p)| format!("{v:+.0} µs ({p})"))
                    .unwrap_or_else(|| "—".into()),
                met: w.map(|(v, _)| v <= limit),
            });
        }
    }
    let cpu = a
        .points(Group::Fixed)
        .into_iter()
        .filter(|r| r.shape.bytes == 1024 && r.shape.tool == Tool::Oha)
        .flat_map(|r| {
            [Scenario::C, Scenario::D].map(|s| {
                a.med(&r.point, s, Record::vcpu_per_krps)
                    .map(|v| (v, format!("{}, {}", &s.label()[..1], r.point)))
            })
        })
        .flatten()
        .max_by(|x, y| x.0.total_cmp(&y.0));
    g.push(Goal {
        goal: "Shunt CPU per 1000 req/s (worst C/D 1 KiB point)".into(),
        target: "≤ 0.05 vCPU".into(),
        measured: cpu
            .as_ref()
            .map(|(v, p)| format!("{v:.3} ({p})"))
            .unwrap_or_else(|| "—".into()),
        met: cpu.map(|(v, _)| v <= 0.05),
    });
    let sat = max.as_deref().and_then(|p| {
        let d = per_core(a, p, Scenario::D)?;
        let e = per_core(a, p, Scenario::E)?;
        Some((d / e, d, e))
    });
    let raw = ratio(&max, Scenario::D, Scenario::E);
    g.push(Goal {
        goal: "Saturation per proxy core, D vs HAProxy (E)".into(),
        target: "≥ 1.2×".into(),
        measured: sat
            .map(|(r, d, e)| {
                format!(
                    "{r:.2}× ({d:.0} vs {e:.0} req/s per core-second; raw req/s ratio {})",
                    raw.map(|x| format!("{x:.2}×"))
                        .unwrap_or_else(|| "—".into())
                )
            })
            .unwrap_or_else(|| "—".into()),
        met: sat.map(|(r, _, _)| r >= 1.2),
    });
    g.extend(crate::vs_haproxy::goals(a));
    g
}
