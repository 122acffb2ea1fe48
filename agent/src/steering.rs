//! The one owner of `STEERED`: route sync says what should be steered, the watchdog and shutdown
//! may suspend steering (fail open), and this keeps the kernel map consistent with both.
use std::{collections::BTreeMap, net::SocketAddr, sync::Mutex};

use crate::{
    capture::{SteeredMap, SyncReport},
    metrics::Metrics,
};

pub struct Steering {
    inner: Mutex<Inner>,
}

struct Inner {
    map: SteeredMap,
    desired: BTreeMap<SocketAddr, u32>,
    suspended: bool,
}

impl Steering {
    pub fn new(map: SteeredMap) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map,
                desired: BTreeMap::new(),
                suspended: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the desired steered set and applies the difference (unless suspended).
    pub fn apply(
        &self,
        desired: BTreeMap<SocketAddr, u32>,
        metrics: &Metrics,
    ) -> Option<SyncReport> {
        let mut inner = self.lock();
        inner.desired = desired;
        if inner.suspended {
            return None;
        }
        let desired = inner.desired.clone();
        let report = inner.map.sync(&desired);
        report_failures(&report, metrics);
        Some(report)
    }

    /// Fails open: empties `STEERED` so new connections go direct, until [`Self::resume`].
    pub fn suspend(&self) -> usize {
        let mut inner = self.lock();
        inner.suspended = true;
        inner.map.clear()
    }

    /// Restores the desired set after a suspension.
    pub fn resume(&self, metrics: &Metrics) {
        let mut inner = self.lock();
        inner.suspended = false;
        let desired = inner.desired.clone();
        let report = inner.map.sync(&desired);
        report_failures(&report, metrics);
    }

    pub fn is_suspended(&self) -> bool {
        self.lock().suspended
    }

    /// What the kernel map holds now.
    pub fn entries(&self) -> Vec<(SocketAddr, u32)> {
        self.lock().map.entries()
    }
}

fn report_failures(report: &SyncReport, metrics: &Metrics) {
    for (dst, err) in &report.failed {
        tracing::error!(%dst, error = %err, "could not steer destination (map full?); it stays direct");
    }
    metrics.steer_insert_failed(report.failed.len() as u64);
}
