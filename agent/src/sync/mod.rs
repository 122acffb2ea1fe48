//! Route sync, end to end: the one room a route change travels through.
//!
//! ```text
//!  routes file ─┐                                  ┌─► proxy's RouteTable (swapped)
//!               ├─ watch<Arc<ClusterState>> ─► sync ┼─► Steering ─► STEERED (diff only)
//!  kube ────────┘   (+ relists, kube only)          └─► statuses ─► kube status writer
//! ```
//!
//! Both sources publish the same thing, a `watch::Receiver<Arc<ClusterState>>`: every version
//! the receiver has not seen is a complete view of the cluster. They know nothing of what
//! follows. [`RouteSync::run`] does the rest, in one loop:
//! - a debounce that is a quiet period (capped, so steady churn still applies), except for a
//!   lone change after a quiet period, applied at once (leading edge);
//! - the recompute ([`RouteTable::compute_with`], which reuses what the last one found for
//!   each unchanged route) on the blocking pool, since a large table takes
//!   milliseconds and the proxy may share the runtime's only thread;
//! - the swap of the proxy's table, before capture sends it new traffic;
//! - the steered set handed to [`Steering`] as a diff against what it last applied; a full
//!   reconcile against the kernel map happens only at the first apply, after a relist, in
//!   [`Steering::resume`] and on a slow timer;
//! - one wake-up at the table's next expiry;
//! - the routes' statuses published on a channel the kube status writer subscribes to.
//!
//! The watchdog and shutdown never come here: they suspend and resume [`Steering`].
pub mod file_source;
pub mod marking;
pub mod steering;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    routes::{ClusterState, ResolveMemo, RouteStatus, RouteTable},
};
pub use marking::{Cgroupfs, Marking};
pub use steering::{ApplyMode, NodeRouteFailure, Steering, SyncReport};

/// How often the steered set is reconciled against the kernel map when nothing else asks.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(300);

/// What one route source hands the sync room.
pub struct SourceFeed {
    /// Names the source in logs ("kube", "routes file").
    pub name: &'static str,
    /// Each version not yet seen is a complete view of the cluster. A source with a view at
    /// start marks it unseen; one that must list first (kube) sends when it has.
    pub states: watch::Receiver<Arc<ClusterState>>,
    /// Bumped after each relist (kube): the next apply reconciles against the kernel map.
    pub relists: Option<watch::Receiver<u64>>,
}

/// The parts route sync writes to, and how it paces itself.
pub struct RouteSyncConfig {
    /// The proxy's route table: swapped whole on every apply.
    pub table: Arc<ArcSwap<RouteTable>>,
    pub steering: Arc<Steering>,
    pub metrics: Arc<Metrics>,
    /// Steered whatever the routes say (`--steer`), with service id 0.
    pub always_steered: Vec<SocketAddr>,
    /// Quiet time after a change before recomputing, so bursts cost one computation.
    pub debounce: Duration,
    pub reconcile_interval: Duration,
}

/// The route sync loop and what it publishes.
pub struct RouteSync {
    cfg: RouteSyncConfig,
    /// What each computation found per route, for the next one (applies run one at a time;
    /// the lock only moves it to the blocking pool and back).
    memo: Arc<std::sync::Mutex<ResolveMemo>>,
    statuses: watch::Sender<Arc<Vec<RouteStatus>>>,
    node_failures: watch::Sender<Arc<Vec<NodeRouteFailure>>>,
    applied: watch::Sender<u64>,
}

/// What [`RouteSync`] publishes, for whoever subscribes.
pub struct RouteSyncOutputs {
    /// Every route's status after each apply (the kube status writer's input).
    pub statuses: watch::Receiver<Arc<Vec<RouteStatus>>>,
    /// The routes this node could not apply after each apply (each agent reports its own in
    /// the routes' `status.nodes[]`).
    pub node_failures: watch::Receiver<Arc<Vec<NodeRouteFailure>>>,
    /// How many route tables have been applied (0 until the first).
    pub applied: watch::Receiver<u64>,
}

/// Why the loop woke up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    First,
    Changed,
    Relisted,
    Expiry,
    ReconcileTimer,
    /// Quiet since the last apply for [`TRIM_AFTER`]: freed memory goes back to the system.
    Trim,
}

/// How long route sync must be idle after an apply before it returns the freed heap to the
/// system. Trimming after every apply made each next computation fault its pages back in
/// (tens of milliseconds at 10,000 routes), on the path of every route change.
const TRIM_AFTER: Duration = Duration::from_millis(500);

impl RouteSync {
    pub fn new(cfg: RouteSyncConfig) -> (Self, RouteSyncOutputs) {
        let (statuses, statuses_rx) = watch::channel(Arc::new(Vec::new()));
        let (node_failures, node_failures_rx) = watch::channel(Arc::new(Vec::new()));
        let (applied, applied_rx) = watch::channel(0);
        (
            Self {
                cfg,
                memo: Arc::default(),
                statuses,
                node_failures,
                applied,
            },
            RouteSyncOutputs {
                statuses: statuses_rx,
                node_failures: node_failures_rx,
                applied: applied_rx,
            },
        )
    }

    /// Applies each new view from `feed` until `stop` fires or the source goes away.
    pub async fn run(self, mut feed: SourceFeed, stop: CancellationToken) {
        let every = self.cfg.reconcile_interval;
        let mut reconcile = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let Some(r) = feed.relists.as_mut() {
            r.borrow_and_update();
        }
        // Nothing is applied before the source has a complete view: until then pinned entries
        // from an earlier agent stay, and the proxy sends what it gets to the original
        // destinations.
        tokio::select! {
            _ = stop.cancelled() => return,
            r = feed.states.changed() => if r.is_err() { return },
        }
        let mut wake = Wake::First;
        // When the source last changed: a change after a quiet period is applied at once.
        let mut last_change = tokio::time::Instant::now();
        let mut expiry_at = None;
        let mut trim_at: Option<tokio::time::Instant>;
        loop {
            if wake == Wake::Trim {
                crate::allocator::release_free_memory();
                trim_at = None;
            } else {
                let state = feed.states.borrow_and_update().clone();
                let mode = match wake {
                    Wake::First | Wake::Relisted | Wake::ReconcileTimer => ApplyMode::Reconcile,
                    Wake::Changed | Wake::Expiry | Wake::Trim => ApplyMode::Incremental,
                };
                let Some(next_expiry) = self.apply(state, mode, feed.name, wake).await else {
                    return;
                };
                expiry_at = next_expiry.map(|t| {
                    let left = Duration::try_from(t.duration_since(jiff::Timestamp::now()))
                        .unwrap_or(Duration::ZERO);
                    // A little after, so the computation's own clock reading is past it too.
                    tokio::time::Instant::now() + left + Duration::from_millis(5)
                });
                trim_at = Some(tokio::time::Instant::now() + TRIM_AFTER);
            }
            wake = tokio::select! {
                _ = stop.cancelled() => return,
                r = feed.states.changed() => {
                    if r.is_err() { return }
                    Wake::Changed
                }
                Some(r) = changed_opt(feed.relists.as_mut()) => {
                    if r.is_err() { return }
                    Wake::Relisted
                }
                _ = sleep_until_opt(expiry_at) => Wake::Expiry,
                _ = reconcile.tick() => Wake::ReconcileTimer,
                _ = sleep_until_opt(trim_at) => Wake::Trim,
            };
            if matches!(wake, Wake::Changed | Wake::Relisted) {
                let now = tokio::time::Instant::now();
                // Leading edge: a lone change after a quiet period is applied at once, so the
                // debounce costs nothing to the usual edit. The changes that follow it within
                // the debounce time are a burst: they wait for the quiet period and cost one
                // more apply between them. A relist comes with the new view it listed: it
                // always waits, and a relist meanwhile makes the apply a reconcile.
                let lone = wake == Wake::Changed && now - last_change >= self.cfg.debounce;
                last_change = now;
                if !lone
                    && !self
                        .quiet_period(&mut feed, &stop, &mut wake, &mut last_change)
                        .await
                {
                    return;
                }
            }
        }
    }

    /// Waits until `feed` has been quiet for the debounce time (at most ten of them in all, so
    /// a source that never stops changing is still applied), noting each change in
    /// `last_change`. `false`: stop.
    async fn quiet_period(
        &self,
        feed: &mut SourceFeed,
        stop: &CancellationToken,
        wake: &mut Wake,
        last_change: &mut tokio::time::Instant,
    ) -> bool {
        let debounce = self.cfg.debounce;
        let deadline = tokio::time::Instant::now() + debounce * 10;
        loop {
            let quiet_until = (tokio::time::Instant::now() + debounce).min(deadline);
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep_until(quiet_until) => return true,
                r = feed.states.changed() => {
                    if r.is_err() { return false }
                    *last_change = tokio::time::Instant::now();
                }
                Some(r) = changed_opt(feed.relists.as_mut()) => {
                    if r.is_err() { return false }
                    *wake = Wake::Relisted;
                    *last_change = tokio::time::Instant::now();
                }
            }
        }
    }

    /// One apply: recompute, swap the table, steer the difference, publish the statuses.
    /// Returns the new table's next expiry, or `None` if the recompute panicked.
    async fn apply(
        &self,
        state: Arc<ClusterState>,
        mode: ApplyMode,
        source: &'static str,
        wake: Wake,
    ) -> Option<Option<jiff::Timestamp>> {
        let (table, steering, metrics) = (
            self.cfg.table.clone(),
            self.cfg.steering.clone(),
            self.cfg.metrics.clone(),
        );
        let always = self.cfg.always_steered.clone();
        let memo = self.memo.clone();
        let started = std::time::Instant::now();
        let computed = tokio::task::spawn_blocking(move || {
            let (new, statuses) = {
                let mut memo = memo
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                RouteTable::compute_with(&state, jiff::Timestamp::now(), &mut memo)
            };
            let mut desired: BTreeMap<SocketAddr, u32> = new.steered().clone();
            desired.extend(always.iter().map(|d| (*d, 0)));
            let next_expiry = new.next_expiry();
            // The proxy learns the routes before capture sends it the traffic.
            let new = Arc::new(new);
            // The previous table is dropped only once the map is updated: freeing a large
            // table takes as long as a good part of computing it.
            let previous = table.swap(new.clone());
            let report = steering.apply(desired, mode, &metrics);
            if let Some(marking) = steering.marking() {
                let m = marking.apply(&state.sources, mode == ApplyMode::Reconcile);
                if m != Default::default() {
                    tracing::info!(
                        added = m.added,
                        removed = m.removed,
                        dropped = m.dropped,
                        "marked sources applied"
                    );
                }
            }
            // Suspended (fail open): nothing was tried, so what was last reported stands.
            let failures = report
                .as_ref()
                .map(|r| steering::route_failures(r, new.steered(), &new, &statuses));
            if let Some(f) = &failures {
                metrics.set_routes_not_applied(f.len());
            }
            metrics.table_reloaded();
            // Freeing a large table takes a good part of the time of computing it: in a task
            // of its own, so the next apply need not wait for it.
            tokio::task::spawn_blocking(move || drop(previous));
            (statuses, report, failures, next_expiry, state)
        })
        .await;
        let (statuses, report, failures, next_expiry, state) = match computed {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "route table recompute panicked; route sync stopped");
                return None;
            }
        };
        for s in statuses.iter().filter(|s| !s.ready) {
            tracing::warn!(route = %format!("{}/{}", s.namespace, s.name),
                reason = s.reason.as_str(), message = %s.message, "route not ready");
        }
        if let Some(r) = &report {
            tracing::info!(
                added = r.added,
                removed = r.removed,
                unchanged = r.unchanged,
                failed = r.failed.len(),
                ?mode,
                ?wake,
                elapsed_us = started.elapsed().as_micros() as u64,
                "route table applied"
            );
        }
        if wake == Wake::First {
            tracing::info!(
                routes = state.routes.len(),
                services = state.services.len(),
                sandbox_pods = state.pods.len(),
                "{source}: initial sync complete, route table applied"
            );
        }
        if let Some(failures) = failures {
            for f in &failures {
                tracing::warn!(route = %format!("{}/{}", f.namespace, f.name), reason = f.reason,
                    message = %f.message, "route not applied on this node");
            }
            self.node_failures.send_if_modified(|old| {
                let changed = **old != failures;
                if changed {
                    *old = Arc::new(failures);
                }
                changed
            });
        }
        let _ = self.statuses.send(statuses);
        self.applied.send_modify(|n| *n += 1);
        // The previous view, table and statuses are gone by now (or soon, with their last
        // reader): their pages go back once route sync has been idle for a while (`Wake::Trim`).
        drop(state);
        Some(next_expiry)
    }
}

/// `changed()` of an optional receiver; never resolves without one.
async fn changed_opt(
    rx: Option<&mut watch::Receiver<u64>>,
) -> Option<Result<(), watch::error::RecvError>> {
    match rx {
        Some(rx) => Some(rx.changed().await),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
