//! The open-loop rate sweep: the highest rate each scenario meets (its knee).
use super::*;

/// The sweep's outcome per scenario.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Knee {
    /// The highest target rate met (achieved ≥ 95 % of it, p99 not exploded).
    pub rate: Option<u32>,
    /// The first rate that was not met, and why.
    pub failed_at: Option<(u32, String)>,
}

pub(crate) fn sweep(b: &mut Bench, o: &Opts) -> anyhow::Result<BTreeMap<Scenario, Knee>> {
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
