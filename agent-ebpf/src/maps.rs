//! The maps, pinned by name under the agent's `--bpffs-dir`. Sizes here are defaults; the agent
//! overrides them from its flags before loading.
use agent_common::{
    Endpoint,
    config::ProxyMapConfig,
    flows::{FlowCounters, FlowKey},
    marked::MarkedKey,
    orig::OrigDst,
    stats,
    steered::SteeredService,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
};

#[map(name = "STEERED_V1")]
pub static STEERED: HashMap<Endpoint, SteeredService> =
    HashMap::pinned(agent_common::steered::DEFAULT_MAX_ENTRIES, 0);

#[map(name = "PROXY_CFG_V2")]
pub static PROXY_CFG: Array<ProxyMapConfig> = Array::pinned(1, 0);

#[map(name = "ORIG_COOKIE_V2")]
pub static ORIG_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::pinned(agent_common::orig::DEFAULT_MAX_ENTRIES, 0);

#[map(name = "ORIG_DST_V2")]
pub static ORIG_DST: LruHashMap<Endpoint, OrigDst> =
    LruHashMap::pinned(agent_common::orig::DEFAULT_MAX_ENTRIES, 0);

#[map(name = "FLOWS_V1")]
pub static FLOWS: LruPerCpuHashMap<FlowKey, FlowCounters> =
    LruPerCpuHashMap::pinned(agent_common::flows::DEFAULT_MAX_ENTRIES, 0);

#[map(name = "MARKED_V1")]
pub static MARKED: HashMap<u64, MarkedKey> =
    HashMap::pinned(agent_common::marked::DEFAULT_MAX_ENTRIES, 0);

#[map(name = "STATS_V2")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::COUNT, 0);

#[inline(always)]
pub fn count(counter: u32) {
    if let Some(slot) = STATS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot, and BPF programs are not preempted on their CPU mid-update.
        unsafe { *slot += 1 };
    }
}
