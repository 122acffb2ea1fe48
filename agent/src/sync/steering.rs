//! The one owner of `STEERED`: route sync says what should be steered, the watchdog and shutdown
//! may suspend steering (fail open), and this keeps the kernel map consistent with both.
//!
//! An apply writes only the difference between the new desired set and what this owner last
//! applied: a route change costs one map syscall per changed destination, not a walk of the
//! whole map. A *reconcile* compares against what the kernel map actually holds, so entries
//! left by an earlier agent, or lost behind our back, are put right; it runs at start, after a
//! relist, on [`Steering::resume`] and on the sync room's slow timer.
use std::{collections::BTreeMap, net::SocketAddr, sync::Mutex};

use crate::{
    capture::{MapError, SteeredMap},
    metrics::Metrics,
    routes::{RouteStatus, RouteTable, diff},
};

/// The kernel map behind [`Steering`], as a trait so the diff logic is tested without a kernel
/// (and its syscalls counted). Each method is one map syscall, except [`Self::entries`], which
/// walks the map.
pub trait SteeredStore: Send {
    fn steer(&mut self, dst: SocketAddr, service_id: u32) -> Result<(), MapError>;
    /// Removing an absent entry is not an error.
    fn unsteer(&mut self, dst: SocketAddr) -> Result<(), MapError>;
    fn entries(&self) -> Vec<(SocketAddr, u32)>;
}

impl SteeredStore for SteeredMap {
    fn steer(&mut self, dst: SocketAddr, service_id: u32) -> Result<(), MapError> {
        SteeredMap::steer(self, dst, service_id)
    }
    fn unsteer(&mut self, dst: SocketAddr) -> Result<(), MapError> {
        SteeredMap::unsteer(self, dst)
    }
    fn entries(&self) -> Vec<(SocketAddr, u32)> {
        SteeredMap::entries(self)
    }
}

/// How an apply compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyMode {
    /// Against what this owner last applied: touches only changed entries.
    Incremental,
    /// Against the kernel map's actual contents (reads the whole map).
    Reconcile,
}

/// What an apply changed.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub added: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Inserts the kernel refused (a full map): these destinations stay direct. They are retried
    /// on the next apply.
    pub failed: Vec<(SocketAddr, MapError)>,
}

pub struct Steering {
    inner: Mutex<Inner>,
    /// Suspended and resumed with steering: a wedged proxy must not hold marked sources'
    /// connections either.
    marking: Option<std::sync::Arc<super::marking::Marking>>,
}

struct Inner {
    map: Box<dyn SteeredStore>,
    /// What route sync wants steered.
    desired: BTreeMap<SocketAddr, u32>,
    /// What the kernel map holds as far as this owner knows: every successful write since the
    /// last reconcile.
    applied: BTreeMap<SocketAddr, u32>,
    suspended: bool,
}

impl Steering {
    pub fn new(map: impl SteeredStore + 'static) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: Box::new(map),
                desired: BTreeMap::new(),
                applied: BTreeMap::new(),
                suspended: false,
            }),
            marking: None,
        }
    }

    /// Also suspends and resumes `marking`, the owner of `MARKED`.
    pub fn with_marking(mut self, marking: std::sync::Arc<super::marking::Marking>) -> Self {
        self.marking = Some(marking);
        self
    }

    /// The owner of `MARKED`, when marking is on.
    pub fn marking(&self) -> Option<&std::sync::Arc<super::marking::Marking>> {
        self.marking.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the desired steered set and applies it (unless suspended: then it is applied on
    /// [`Self::resume`]).
    pub fn apply(
        &self,
        desired: BTreeMap<SocketAddr, u32>,
        mode: ApplyMode,
        metrics: &Metrics,
    ) -> Option<SyncReport> {
        let mut inner = self.lock();
        inner.desired = desired;
        if inner.suspended {
            return None;
        }
        let report = inner.write(mode);
        report_failures(&report, metrics);
        Some(report)
    }

    /// Fails open: empties `STEERED` so new connections go direct, until [`Self::resume`].
    pub fn suspend(&self) -> usize {
        if let Some(m) = &self.marking {
            m.suspend();
        }
        let mut inner = self.lock();
        inner.suspended = true;
        inner
            .write_set(&BTreeMap::new(), ApplyMode::Reconcile)
            .removed
    }

    /// Restores the desired set after a suspension (a reconcile: the map was emptied).
    pub fn resume(&self, metrics: &Metrics) {
        let mut inner = self.lock();
        inner.suspended = false;
        let report = inner.write(ApplyMode::Reconcile);
        report_failures(&report, metrics);
        drop(inner);
        if let Some(m) = &self.marking {
            m.resume();
        }
    }

    pub fn is_suspended(&self) -> bool {
        self.lock().suspended
    }

    /// What the kernel map holds now.
    pub fn entries(&self) -> Vec<(SocketAddr, u32)> {
        self.lock().map.entries()
    }
}

impl Inner {
    fn write(&mut self, mode: ApplyMode) -> SyncReport {
        let desired = std::mem::take(&mut self.desired);
        let report = self.write_set(&desired, mode);
        self.desired = desired;
        report
    }

    /// Makes the map equal `desired`. Removes first, so a nearly full map has room for the adds;
    /// a destination that stays steered is only ever overwritten, never briefly missing.
    fn write_set(&mut self, desired: &BTreeMap<SocketAddr, u32>, mode: ApplyMode) -> SyncReport {
        if mode == ApplyMode::Reconcile {
            self.applied = self.map.entries().into_iter().collect();
        }
        let d = diff(&self.applied, desired);
        let mut report = SyncReport {
            unchanged: desired.len() - d.add.len(),
            ..SyncReport::default()
        };
        for dst in d.remove {
            match self.map.unsteer(dst) {
                Ok(()) => {
                    self.applied.remove(&dst);
                    report.removed += 1;
                }
                Err(e) => tracing::warn!(%dst, error = %e, "removing a steered destination failed"),
            }
        }
        for (dst, id) in d.add {
            match self.map.steer(dst, id) {
                Ok(()) => {
                    self.applied.insert(dst, id);
                    report.added += 1;
                }
                Err(e) => {
                    // What the map holds for it is unknown now: the next apply writes it again.
                    self.applied.remove(&dst);
                    report.failed.push((dst, e));
                }
            }
        }
        report
    }
}

/// The reason a node reports for a route some of whose destinations it could not steer.
pub const STEERED_MAP_FULL: &str = "SteeredMapFull";

/// A route this node could not apply (fully), and why: what its agent reports in the route's
/// `status.nodes[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRouteFailure {
    pub namespace: String,
    pub name: String,
    pub reason: &'static str,
    pub message: String,
}

/// The routes hit by the inserts an apply could not make: each route forking a Service that has
/// a destination left unsteered (so its keyed traffic from this node's pods goes direct).
/// `desired` is the steered set that was applied, `table` the table it came from.
pub fn route_failures(
    report: &SyncReport,
    desired: &BTreeMap<SocketAddr, u32>,
    table: &RouteTable,
    statuses: &[RouteStatus],
) -> Vec<NodeRouteFailure> {
    // Per Service (namespace, name): how many destinations failed, and the first error.
    let mut by_service: BTreeMap<(&str, &str), (usize, String)> = BTreeMap::new();
    for (dst, err) in &report.failed {
        let Some(svc) = desired.get(dst).and_then(|id| table.service(*id)) else {
            continue;
        };
        by_service
            .entry((svc.namespace.as_str(), svc.name.as_str()))
            .or_insert_with(|| (0, err.to_string()))
            .0 += 1;
    }
    if by_service.is_empty() {
        return Vec::new();
    }
    statuses
        .iter()
        .filter(|st| st.applied)
        .filter_map(|st| {
            let parts: Vec<String> = st
                .forks
                .iter()
                .filter_map(|f| {
                    let (n, err) = by_service.get(&(st.namespace.as_str(), f.service.as_str()))?;
                    Some(format!(
                        "{n} destination(s) of Service {}/{} not steered ({err}); raise \
                         --steered-max-entries",
                        st.namespace, f.service
                    ))
                })
                .collect();
            (!parts.is_empty()).then(|| NodeRouteFailure {
                namespace: st.namespace.clone(),
                name: st.name.clone(),
                reason: STEERED_MAP_FULL,
                message: parts.join("; "),
            })
        })
        .collect()
}

fn report_failures(report: &SyncReport, metrics: &Metrics) {
    for (dst, err) in &report.failed {
        tracing::error!(%dst, error = %err, "could not steer destination (map full?); it stays direct");
    }
    metrics.steer_insert_failed(report.failed.len() as u64);
}

#[cfg(test)]
#[path = "steering_tests.rs"]
mod tests;
