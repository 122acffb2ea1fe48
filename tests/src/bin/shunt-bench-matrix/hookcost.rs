//! What the capture hooks add to every `connect()` of an unsteered destination (scenario B),
//! measured exactly: the kernel's own BPF run-time statistics (`BPF_ENABLE_STATS`) for each of
//! the agent's programs over new-connection runs, divided by the connections made (the connect
//! hooks' run count: one run per `connect()`). This includes `sock_ops`' flow counting for the
//! topology. Statistics add two clock reads per program run, so the figures are a slight upper
//! bound.
use std::collections::BTreeMap;

use agent::capture::run_stats::{self, ProgramRunStats};
use agent_common::programs;
use serde::Serialize;

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

/// Snapshot of the agent's programs (ids loaded after `exclude` was taken).
pub fn snapshot(exclude: &[ProgramRunStats]) -> Vec<ProgramRunStats> {
    run_stats::snapshot()
        .into_iter()
        .filter(|p| !exclude.iter().any(|e| e.id == p.id))
        .collect()
}
