//! Typed handles on the pinned maps.
use std::net::SocketAddr;

use agent_common::{
    Endpoint,
    flows::{FlowCounters, FlowKey},
    orig::OrigDst,
    stats,
    steered::SteeredService,
};
use aya::maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap};

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

/// `ORIG_DST`: the original destination of a redirected connection, by the client's endpoint.
pub struct OrigDstMap {
    map: HashMap<MapData, Endpoint, OrigDst>,
}

impl OrigDstMap {
    pub(super) fn new(map: HashMap<MapData, Endpoint, OrigDst>) -> Self {
        Self { map }
    }

    /// The original destination and service id for a connection the proxy accepted from `client`
    /// (an IPv4-mapped IPv6 peer from a dual-stack listener is the same key as plain IPv4).
    pub fn get(&self, client: SocketAddr) -> Option<(SocketAddr, u32)> {
        self.map
            .get(&Endpoint::from_socket_addr(client), 0)
            .ok()
            .map(|o| (o.dst.to_socket_addr(), o.service_id))
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
