//! Typed handles on the pinned maps.
use std::{net::SocketAddr, sync::Mutex};

use agent_common::{
    Endpoint,
    config::ProxyMapConfig,
    flows::{FlowCounters, FlowKey},
    marked::MarkedKey,
    orig::OrigDst,
    stats,
    steered::SteeredService,
};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap};

/// `STEERED`: which destinations are redirected. One writer: `sync::steering::Steering`.
pub struct SteeredMap {
    map: HashMap<MapData, Endpoint, SteeredService>,
}

impl SteeredMap {
    pub(super) fn new(map: HashMap<MapData, Endpoint, SteeredService>) -> Self {
        Self { map }
    }

    pub fn steer(&mut self, dst: SocketAddr, service_id: u32) -> Result<(), MapError> {
        self.map.insert(
            &Endpoint::from_socket_addr(dst),
            &SteeredService { service_id },
            0,
        )
    }

    pub fn unsteer(&mut self, dst: SocketAddr) -> Result<(), MapError> {
        match self.map.remove(&Endpoint::from_socket_addr(dst)) {
            Err(MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every steered destination and its service id, as the kernel holds them now.
    pub fn entries(&self) -> Vec<(SocketAddr, u32)> {
        self.map
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k.to_socket_addr(), v.service_id))
            .collect()
    }
}

/// `MARKED` and the `marked_levels` of `PROXY_CFG`: which cgroups are marked sources, and at
/// which cgroup levels connect must look for them. One writer: `sync::marking::Marking`.
pub struct MarkedMap {
    map: HashMap<MapData, u64, MarkedKey>,
    cfg: Array<MapData, ProxyMapConfig>,
}

impl MarkedMap {
    pub(super) fn new(
        map: HashMap<MapData, u64, MarkedKey>,
        cfg: Array<MapData, ProxyMapConfig>,
    ) -> Self {
        Self { map, cfg }
    }

    /// Marks the cgroup `cgroup_id` (see [`super::cgroup_id`]) with `key`. A key longer than the
    /// map holds is refused (routing keys are validated long before this).
    pub fn mark(&mut self, cgroup_id: u64, key: &str) -> Result<(), MapError> {
        let value = MarkedKey::new(key.as_bytes()).ok_or(MapError::InvalidValueSize {
            size: key.len(),
            expected: agent_common::marked::KEY_MAX,
        })?;
        self.map.insert(&cgroup_id, &value, 0)
    }

    /// Removing an absent entry is not an error.
    pub fn unmark(&mut self, cgroup_id: u64) -> Result<(), MapError> {
        match self.map.remove(&cgroup_id) {
            Err(MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every marked cgroup id and its key, as the kernel holds them now.
    pub fn entries(&self) -> Vec<(u64, String)> {
        self.map
            .iter()
            .filter_map(Result::ok)
            .map(|(id, k)| (id, String::from_utf8_lossy(k.as_bytes()).into_owned()))
            .collect()
    }

    /// The cgroup levels connect looks at (bit n: level n); 0 skips the lookup.
    pub fn levels(&self) -> Result<u32, MapError> {
        Ok(self.cfg.get(&0, 0)?.marked_levels)
    }

    /// Sets the levels connect looks at. The rest of the proxy config is written back as read:
    /// the agent wrote it at attach and nothing else changes it.
    pub fn set_levels(&mut self, levels: u32) -> Result<(), MapError> {
        let mut cfg = self.cfg.get(&0, 0)?;
        if cfg.marked_levels == levels {
            return Ok(());
        }
        cfg.marked_levels = levels;
        self.cfg.set(0, &cfg, 0)
    }
}

/// `ORIG_DST`: the original destination of a redirected connection, by the client's endpoint.
pub struct OrigDstMap {
    // Deleting needs `&mut`; the proxy takes one entry per accepted connection, two syscalls
    // under the lock.
    map: Mutex<HashMap<MapData, Endpoint, OrigDst>>,
}

impl OrigDstMap {
    pub(super) fn new(map: HashMap<MapData, Endpoint, OrigDst>) -> Self {
        Self {
            map: Mutex::new(map),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MapData, Endpoint, OrigDst>> {
        // The map handle holds no invariant a panicking holder could break.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The original destination and service id recorded for `client` (an IPv4-mapped IPv6 peer
    /// from a dual-stack listener is the same key as plain IPv4), left in the map: for
    /// inspecting the pins.
    pub fn get(&self, client: SocketAddr) -> Option<(SocketAddr, u32)> {
        self.lock()
            .get(&Endpoint::from_socket_addr(client), 0)
            .ok()
            .map(|o| (o.dst.to_socket_addr(), o.service_id))
    }

    /// As [`Self::get`], and deletes the entry: what the proxy does for each connection it
    /// accepts. An entry is read once, so a later connection from the same (address, port) that
    /// was not recorded anew (one that reached the proxy without being redirected) finds
    /// nothing instead of an earlier connection's destination.
    pub fn take(&self, client: SocketAddr) -> Option<(SocketAddr, u32)> {
        self.take_with_source(client).map(|(dst, id, _)| (dst, id))
    }

    /// As [`Self::take`], with the marked source's cgroup id (0: none).
    pub fn take_with_source(&self, client: SocketAddr) -> Option<(SocketAddr, u32, u64)> {
        let key = Endpoint::from_socket_addr(client);
        let mut map = self.lock();
        let orig = map.get(&key, 0).ok()?;
        match map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            // The destination is known; a leftover entry is overwritten by the next connection
            // recorded from this endpoint, and the LRU ages it out otherwise.
            Err(e) => tracing::debug!(error = %e, %client, "ORIG_DST delete failed"),
        }
        Some((
            orig.dst.to_socket_addr(),
            orig.service_id,
            orig.source_cgroup_id,
        ))
    }
}

/// Per-CPU counters written by the programs.
pub struct CaptureStats {
    map: PerCpuArray<MapData, u64>,
}

impl CaptureStats {
    pub(super) fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self { map }
    }

    /// (name, total over CPUs) for each counter.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        stats::NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let total = self
                    .map
                    .get(&(i as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*name, total)
            })
            .collect()
    }
}

/// One flow from `FLOWS`: connections opened from `src` to `dst` (the dialled destination).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: std::net::IpAddr,
    pub dst: SocketAddr,
    pub connections: u64,
    /// CLOCK_MONOTONIC nanoseconds of the latest connection.
    pub last_seen_ns: u64,
}

/// `FLOWS`: per-CPU connection counters for the service graph.
pub struct FlowsMap {
    map: PerCpuHashMap<MapData, FlowKey, FlowCounters>,
}

impl FlowsMap {
    pub(super) fn new(map: PerCpuHashMap<MapData, FlowKey, FlowCounters>) -> Self {
        Self { map }
    }

    /// Every flow, summed over CPUs.
    pub fn flows(&self) -> Vec<Flow> {
        self.map
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| Flow {
                src: k.src.to_ip(),
                dst: Endpoint::new(k.dst, k.dst_port_be).to_socket_addr(),
                connections: per_cpu.iter().map(|c| c.connections).sum(),
                last_seen_ns: per_cpu.iter().map(|c| c.last_seen_ns).max().unwrap_or(0),
            })
            .collect()
    }
}
