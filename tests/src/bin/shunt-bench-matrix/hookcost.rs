//! What the capture hooks add to every `connect()` of an unsteered destination (scenario B),
//! measured exactly: the kernel's own BPF run-time statistics (`BPF_ENABLE_STATS`) for each of
//! the agent's programs over new-connection runs, divided by the connections made (the connect
//! hooks' run count: one run per `connect()`). This includes `sock_ops`' flow counting for the
//! topology. Statistics add two clock reads per program run, so the figures are a slight upper
//! bound.
use std::{collections::BTreeMap, time::Duration};

use agent::capture::run_stats::{self, ProgramRunStats};
use agent_common::programs;
use serde::Serialize;

use crate::{Bench, Point, Scenario};

/// One program's share per connection.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub runs_per_connection: f64,
    pub ns_per_run: f64,
    pub ns_per_connection: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HookCost {
    /// `connect()` calls seen by the connect hooks over the measured runs.
    pub connections: u64,
    pub programs: Vec<ProgramCost>,
    /// Sum over the programs: what each new connection pays in the kernel.
    pub ns_per_connection: f64,
    /// Repetitions whose deltas were summed.
    pub runs: usize,
}

/// Sums per-program deltas from run-time snapshots taken around measured runs.
#[derive(Default)]
pub struct HookCostMeter {
    /// (runs, nanoseconds) per program name.
    totals: BTreeMap<String, (u64, u128)>,
    reps: usize,
}

impl HookCostMeter {
    /// Statistics must be on ([`run_stats::enable`]) between `before` and `after`.
    pub fn add(&mut self, before: &[ProgramRunStats], after: &[ProgramRunStats]) {
        for a in after {
            let Some(b) = before.iter().find(|b| b.id == a.id) else {
                continue;
            };
            let e = self.totals.entry(a.name.clone()).or_default();
            e.0 += a.run_count.saturating_sub(b.run_count);
            e.1 += a.run_time.saturating_sub(b.run_time).as_nanos();
        }
        self.reps += 1;
    }

    pub fn result(&self) -> Option<HookCost> {
        let connections: u64 = self
            .totals
            .iter()
            // Kernel names are cut at 15 bytes; the connect programs' names are shorter.
            .filter(|(n, _)| [programs::CONNECT4, programs::CONNECT6].contains(&n.as_str()))
            .map(|(_, (runs, _))| runs)
            .sum();
        if connections == 0 {
            return None;
        }
        let programs: Vec<ProgramCost> = self
            .totals
            .iter()
            .filter(|(_, (runs, _))| *runs > 0)
            .map(|(name, (runs, ns))| ProgramCost {
                program: name.clone(),
                runs: *runs,
                runs_per_connection: *runs as f64 / connections as f64,
                ns_per_run: *ns as f64 / *runs as f64,
                ns_per_connection: *ns as f64 / connections as f64,
            })
            .collect();
        Some(HookCost {
            connections,
            ns_per_connection: programs.iter().map(|p| p.ns_per_connection).sum(),
            programs,
            runs: self.reps,
        })
    }
}

/// The capture programs the agent process `pid` holds (by the `prog_id` of its file descriptors):
/// programs that other agents on the machine load meanwhile (tests, other benches) are not ours.
pub fn snapshot(pid: i32) -> Vec<ProgramRunStats> {
    let ids = program_ids(pid);
    run_stats::snapshot()
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .collect()
}

fn program_ids(pid: i32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// Which agent a hook-cost measurement beside B's is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// This build with `--count-flows false`: the cost of topology counting, by difference.
    NoFlows,
    /// The `--before` build (skipped without one).
    Before,
}

impl Bench {
    /// B's new-connection run once more with another agent, only to measure the hooks: the
    /// record is dropped (the tables' B is this build with its defaults).
    pub fn hook_cost_variant(
        &mut self,
        point: &Point,
        rep: usize,
        variant: Variant,
    ) -> anyhow::Result<()> {
        let mut agent = match variant {
            Variant::NoFlows => self.start_agent_with(&["--count-flows", "false"]),
            Variant::Before => {
                let Some(before) = self.before.clone() else {
                    return Ok(());
                };
                // The before build reads the routes file it knew (no `netns:` of issue 18).
                let current = std::mem::replace(&mut self.env.bins.agent, before);
                let routes = std::mem::replace(&mut self.routes, self.routes_before.clone());
                let agent = self.start_agent();
                self.env.bins.agent = current;
                self.routes = routes;
                agent
            }
        };
        let pid = agent.child.pid();
        self.sample_routing(Scenario::B, false)?;
        let guard = match run_stats::enable() {
            Ok(g) => g,
            Err(e) => {
                eprintln!("  (no BPF run-time statistics: {e})");
                return Ok(());
            }
        };
        let before = snapshot(pid);
        let run = self.run_one(Scenario::B, point, rep, Some(pid));
        let after = snapshot(pid);
        drop(guard);
        run?;
        let rec = self.records.pop();
        if let Some(r) = rec {
            eprintln!(
                "    (hooks only: {} agent, {:.0} connections/s)",
                match variant {
                    Variant::NoFlows => "--count-flows false",
                    Variant::Before => "before",
                },
                r.load.rps
            );
        }
        let meter = match variant {
            Variant::NoFlows => &mut self.hook_cost_no_flows,
            Variant::Before => &mut self.hook_cost_before,
        };
        meter.add(&before, &after);
        agent.terminate(Duration::from_secs(10));
        Ok(())
    }
}
