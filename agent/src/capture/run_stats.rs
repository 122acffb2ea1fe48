//! How long the capture programs run in the kernel, from the kernel's own BPF run-time
//! statistics (`BPF_ENABLE_STATS`): what a hook adds to every `connect()`, measured exactly
//! rather than inferred from throughput. Statistics cost a little themselves (two clock reads per
//! run), so they are on only while a [`RunStatsGuard`] lives.
use std::{os::fd::OwnedFd, time::Duration};

use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};

/// Programs of ours carry this prefix (BPF names are cut at 15 bytes).
const PREFIX: &str = agent_common::programs::PREFIX;

/// Run-time statistics stay on while this lives.
pub struct RunStatsGuard(#[allow(dead_code)] OwnedFd);

/// Turns the kernel's BPF run-time statistics on (kernel ≥ 5.8, CAP_SYS_ADMIN or CAP_BPF).
pub fn enable() -> std::io::Result<RunStatsGuard> {
    enable_stats(Stats::RunTime)
        .map(RunStatsGuard)
        .map_err(|e| std::io::Error::other(format!("BPF_ENABLE_STATS: {e}")))
}

/// One loaded program's totals since it was loaded (counting only while statistics were on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRunStats {
    pub id: u32,
    /// The program's BPF name (`shunt_connect4`, `shunt_sock_ops`, ...; at most 15 bytes).
    pub name: String,
    pub run_time: Duration,
    pub run_count: u64,
}

/// The totals of every loaded Shunt program.
pub fn snapshot() -> Vec<ProgramRunStats> {
    loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            name.starts_with(PREFIX).then(|| ProgramRunStats {
                id: p.id(),
                name,
                run_time: p.run_time(),
                run_count: p.run_count(),
            })
        })
        .collect()
}
