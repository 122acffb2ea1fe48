//! The one owner of `MARKED` (and of `PROXY_CFG.marked_levels`): route sync hands it the marked
//! sources of each [`ClusterState`](crate::routes::ClusterState), and it writes the difference.
//!
//! Each source's cgroup directory is resolved to its id and level when applied; a directory that
//! is gone (a pod that went away before the source caught up) is dropped with a log line. The
//! levels mask tells connect4/6 which ancestors of the caller to look up: only those holding a
//! marked source, and none at all while nothing is marked.
//!
//! Like [`Steering`](super::Steering), it fails open: [`Marking::suspend`] clears the levels
//! mask (so connect looks nothing up and marked sources go direct) and [`Marking::resume`]
//! restores it.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use agent_common::marked::MAX_LEVEL;
use arc_swap::ArcSwap;

use crate::{
    capture::{MapError, MarkedMap},
    routes::{AppliedSource, AppliedSources, MarkedSource, RoutingKey},
};

/// The kernel side behind [`Marking`], as a trait so the logic is tested without a kernel.
pub trait MarkedStore: Send {
    fn mark(&mut self, cgroup_id: u64, key: &str) -> Result<(), MapError>;
    /// Removing an absent entry is not an error.
    fn unmark(&mut self, cgroup_id: u64) -> Result<(), MapError>;
    fn entries(&self) -> Vec<(u64, String)>;
    fn set_levels(&mut self, levels: u32) -> Result<(), MapError>;
}

impl MarkedStore for MarkedMap {
    fn mark(&mut self, cgroup_id: u64, key: &str) -> Result<(), MapError> {
        MarkedMap::mark(self, cgroup_id, key)
    }
    fn unmark(&mut self, cgroup_id: u64) -> Result<(), MapError> {
        MarkedMap::unmark(self, cgroup_id)
    }
    fn entries(&self) -> Vec<(u64, String)> {
        MarkedMap::entries(self)
    }
    fn set_levels(&mut self, levels: u32) -> Result<(), MapError> {
        MarkedMap::set_levels(self, levels)
    }
}

/// A cgroup directory's id and level (see [`crate::capture::cgroup_level`]).
pub trait CgroupIds: Send + Sync {
    fn id_and_level(&self, dir: &Path) -> Result<(u64, u32), String>;
}

/// The real cgroup v2 filesystem.
pub struct Cgroupfs;

impl CgroupIds for Cgroupfs {
    fn id_and_level(&self, dir: &Path) -> Result<(u64, u32), String> {
        let id = crate::capture::cgroup_id(dir).map_err(|e| e.to_string())?;
        let level = crate::capture::cgroup_level(dir).map_err(|e| e.to_string())?;
        Ok((id, level))
    }
}

/// What one apply changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MarkReport {
    pub added: usize,
    pub removed: usize,
    /// Sources left out: their cgroup is gone, their key is invalid, or the kernel refused them.
    pub dropped: usize,
}

pub struct Marking {
    inner: Mutex<Inner>,
    applied: Arc<ArcSwap<AppliedSources>>,
}

struct Inner {
    store: Box<dyn MarkedStore>,
    cgroups: Box<dyn CgroupIds>,
    /// What the kernel holds, as far as this owner knows: id → key.
    written: BTreeMap<u64, String>,
    /// The levels mask of what is marked.
    levels: u32,
    suspended: bool,
}

impl Marking {
    pub fn new(store: impl MarkedStore + 'static, cgroups: impl CgroupIds + 'static) -> Self {
        Self {
            inner: Mutex::new(Inner {
                store: Box::new(store),
                cgroups: Box::new(cgroups),
                written: BTreeMap::new(),
                levels: 0,
                suspended: false,
            }),
            applied: Arc::default(),
        }
    }

    /// The sources applied, for the proxy and the debug API (replaced after each apply).
    pub fn applied(&self) -> Arc<ArcSwap<AppliedSources>> {
        self.applied.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `MARKED` hold exactly `sources`. `reconcile`: compare against what the kernel map
    /// holds rather than what this owner last wrote (at start, after a relist).
    pub fn apply(&self, sources: &[MarkedSource], reconcile: bool) -> MarkReport {
        let mut inner = self.lock();
        let mut report = MarkReport::default();
        let mut desired: BTreeMap<u64, (u32, AppliedSource)> = BTreeMap::new();
        for s in sources {
            match resolve(&*inner.cgroups, s) {
                Ok((level, applied)) => {
                    if let Some((_, first)) = desired.get(&applied.cgroup_id) {
                        tracing::warn!(cgroup = %s.cgroup.display(), origin = %s.origin,
                            kept = %first.origin, "marked source listed twice; the first is kept");
                        report.dropped += 1;
                        continue;
                    }
                    desired.insert(applied.cgroup_id, (level, applied));
                }
                Err(why) => {
                    tracing::info!(cgroup = %s.cgroup.display(), origin = %s.origin, %why,
                        "marked source dropped");
                    report.dropped += 1;
                }
            }
        }
        if reconcile {
            inner.written = inner.store.entries().into_iter().collect();
        }
        let stale: Vec<u64> = inner
            .written
            .keys()
            .filter(|id| !desired.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            match inner.store.unmark(id) {
                Ok(()) => {
                    inner.written.remove(&id);
                    report.removed += 1;
                }
                Err(e) => tracing::warn!(cgroup_id = id, error = %e, "unmarking a source failed"),
            }
        }
        let mut levels = 0u32;
        let mut applied = Vec::new();
        for (id, (level, source)) in desired {
            let key = source.key.as_str();
            if inner.written.get(&id).map(String::as_str) != Some(key) {
                if let Err(e) = inner.store.mark(id, key) {
                    tracing::error!(cgroup = %source.cgroup.display(), error = %e,
                        "could not mark source (map full?); its connections stay direct");
                    inner.written.remove(&id);
                    report.dropped += 1;
                    continue;
                }
                inner.written.insert(id, key.to_string());
                report.added += 1;
            }
            levels |= 1 << level;
            applied.push(source);
        }
        inner.levels = levels;
        // The proxy learns the sources before connect starts sending their connections.
        self.applied.store(Arc::new(AppliedSources::new(applied)));
        if !inner.suspended
            && let Err(e) = inner.store.set_levels(levels)
        {
            tracing::error!(error = %e, "writing the marked levels failed; marked sources stay direct");
            self.applied.store(Arc::default());
        }
        report
    }

    /// Fails open: connect stops looking marked sources up (their connections go direct).
    pub fn suspend(&self) {
        let mut inner = self.lock();
        inner.suspended = true;
        if let Err(e) = inner.store.set_levels(0) {
            tracing::error!(error = %e, "clearing the marked levels failed");
        }
    }

    pub fn resume(&self) {
        let mut inner = self.lock();
        inner.suspended = false;
        let levels = inner.levels;
        if let Err(e) = inner.store.set_levels(levels) {
            tracing::error!(error = %e, "restoring the marked levels failed");
        }
    }
}

/// The source's level and what is applied for it, or why it cannot be.
fn resolve(cgroups: &dyn CgroupIds, s: &MarkedSource) -> Result<(u32, AppliedSource), String> {
    let key = RoutingKey::parse(&s.key).map_err(|e| e.to_string())?;
    let (cgroup_id, level) = cgroups.id_and_level(&s.cgroup)?;
    if level == 0 || level > MAX_LEVEL {
        return Err(format!(
            "cgroup level {level}: only levels 1 to {MAX_LEVEL} can be marked"
        ));
    }
    Ok((
        level,
        AppliedSource {
            cgroup: PathBuf::from(&s.cgroup),
            cgroup_id,
            key,
            origin: s.origin.clone(),
        },
    ))
}

#[cfg(test)]
#[path = "marking_tests.rs"]
mod tests;
