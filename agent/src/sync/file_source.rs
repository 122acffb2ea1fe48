//! The routes-file source: polls a routes file and publishes each new valid version as a
//! [`ClusterState`] on a watch channel. It knows nothing of what follows; [`super`] does the rest.
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle};

use crate::{
    metrics::Metrics,
    routes::{
        ClusterState,
        file::{Diagnostic, RoutesFileError, parse_routes},
    },
};

/// Counters and last error of a [`RoutesFileWatcher`], for metrics and readiness.
#[derive(Debug, Default)]
pub struct ReloadStats {
    reloads: AtomicU64,
    rejected: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ReloadStats {
    /// Accepted versions of the file since start (the initial load included).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Rejected versions of the file, and failures to read it (each counts once, however long it
    /// stays).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Why the current version of the file is not in use, if it is not.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e;
        }
    }
}

/// Polls a routes file and publishes each new valid version.
///
/// Polling (mtime, size and inode, then a content hash) rather than inotify: it sees edits made
/// in place, by rename, and through the symlink swaps of a Kubernetes ConfigMap volume alike,
/// and costs one `stat` per interval.
#[derive(Clone)]
pub struct RoutesFileWatcher {
    path: PathBuf,
    interval: Duration,
    /// Counts rejected versions in `shunt_route_table_reload_errors` as they happen.
    metrics: Option<Arc<Metrics>>,
}

/// What [`RoutesFileWatcher::spawn`] returns.
#[derive(Debug)]
pub struct RoutesFileWatch {
    /// The latest valid state; changes only when the file's meaning does. Its current value
    /// (the file as loaded at spawn) counts as seen.
    pub states: watch::Receiver<Arc<ClusterState>>,
    pub stats: Arc<ReloadStats>,
    /// The polling task; it ends when every receiver is dropped, or abort it.
    pub task: JoinHandle<()>,
}

impl RoutesFileWatcher {
    pub fn new(path: impl Into<PathBuf>, interval: Duration) -> Self {
        Self {
            path: path.into(),
            interval,
            metrics: None,
        }
    }

    /// Also counts rejected versions of the file in the agent's metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Loads the file, then polls it on the current tokio runtime. The initial load must
    /// succeed: there is no last-good version to fall back to yet.
    pub fn spawn(self) -> Result<RoutesFileWatch, RoutesFileError> {
        let mut poller = Poller::new(self.path.clone());
        let initial = match poller.poll() {
            Poll::Changed(state) => state,
            Poll::Rejected(e) | Poll::Unreadable(e) => return Err(e),
            // First poll always reads the file; kept total anyway.
            Poll::Unchanged | Poll::Restored => ClusterState::default(),
        };
        let stats = Arc::new(ReloadStats::default());
        stats.reloads.fetch_add(1, Ordering::Relaxed);
        let (tx, states) = watch::channel(Arc::new(initial));
        let task = tokio::spawn(run(poller, self.interval, tx, stats.clone(), self.metrics));
        Ok(RoutesFileWatch {
            states,
            stats,
            task,
        })
    }
}

async fn run(
    mut poller: Poller,
    interval: Duration,
    tx: watch::Sender<Arc<ClusterState>>,
    stats: Arc<ReloadStats>,
    metrics: Option<Arc<Metrics>>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tick.tick() => {}
        }
        // File IO and YAML parsing are blocking work; keep them off the async workers.
        let joined = tokio::task::spawn_blocking(move || {
            let outcome = poller.poll();
            (poller, outcome)
        })
        .await;
        let outcome;
        (poller, outcome) = match joined {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "routes file poller failed; no more reloads");
                return;
            }
        };
        match outcome {
            Poll::Unchanged => {}
            Poll::Restored => {
                stats.set_error(None);
                tracing::info!(file = %poller.path.display(), "routes file readable again, unchanged");
            }
            Poll::Changed(state) => {
                stats.reloads.fetch_add(1, Ordering::Relaxed);
                stats.set_error(None);
                let changed = tx.send_if_modified(|cur| {
                    if **cur == state {
                        return false;
                    }
                    *cur = Arc::new(state);
                    true
                });
                tracing::info!(file = %poller.path.display(), changed, "routes file reloaded");
            }
            Poll::Rejected(e) | Poll::Unreadable(e) => {
                // `{:#}`: the whole chain, so a read error shows its cause after the path.
                let msg = format!("{:#}", anyhow::Error::from(e));
                // Logged before it is counted: whoever sees the count can find the reason.
                tracing::warn!(error = %msg, "routes file rejected; keeping the last good routes");
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &metrics {
                    m.table_reload_error();
                }
                stats.set_error(Some(msg));
            }
        }
    }
}

/// The outcome of one poll.
#[derive(Debug)]
enum Poll {
    Unchanged,
    /// Readable again after an error, with the content in use: nothing to publish.
    Restored,
    Changed(ClusterState),
    /// A new version of the file that does not validate.
    Rejected(RoutesFileError),
    /// The file could not be read (reported once per distinct error).
    Unreadable(RoutesFileError),
}

/// Change detection, separate from the task so it can be tested without time.
#[derive(Debug)]
struct Poller {
    path: PathBuf,
    /// (mtime, size, inode) at the last read.
    last_meta: Option<(SystemTime, u64, u64)>,
    /// Hash of the last content that was parsed, valid or not.
    last_hash: Option<u64>,
    last_good_hash: Option<u64>,
    /// The read error last reported, so a missing file is logged once, not every poll.
    last_read_error: Option<String>,
}

/// Writes within this long of a read may share its mtime (coarse timestamps on some
/// filesystems), so the file is re-read until its mtime is older than this.
const MTIME_GRANULARITY: Duration = Duration::from_secs(2);

impl Poller {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            last_meta: None,
            last_hash: None,
            last_good_hash: None,
            last_read_error: None,
        }
    }

    fn read_error(&mut self, source: std::io::Error) -> Poll {
        // The path never changes, so the cause alone tells one read error from another.
        let msg = source.to_string();
        let e = RoutesFileError::Read {
            path: self.path.clone(),
            source,
        };
        if self.last_read_error.as_ref() == Some(&msg) {
            return Poll::Unchanged;
        }
        self.last_read_error = Some(msg);
        // Whatever comes back must be parsed again, even if it is the last content.
        self.last_meta = None;
        self.last_hash = None;
        Poll::Unreadable(e)
    }

    fn poll(&mut self) -> Poll {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => return self.read_error(e),
        };
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let sig = (mtime, meta.len(), meta.ino());
        let recent = SystemTime::now()
            .duration_since(mtime)
            .map_or(true, |age| age < MTIME_GRANULARITY);
        if self.last_meta == Some(sig) && !recent {
            return Poll::Unchanged;
        }
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) => return self.read_error(e),
        };
        let readable_again = self.last_read_error.take().is_some();
        self.last_meta = Some(sig);
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        let hash = h.finish();
        if self.last_hash == Some(hash) {
            return Poll::Unchanged;
        }
        self.last_hash = Some(hash);
        if readable_again && self.last_good_hash == Some(hash) {
            // Back to the version in use (e.g. a file briefly missing during a rename).
            return Poll::Restored;
        }
        let file_name = self.path.display().to_string();
        let parsed = match std::str::from_utf8(&text) {
            Ok(text) => parse_routes(text, &file_name),
            Err(e) => Err(RoutesFileError::Invalid {
                file: file_name,
                diagnostics: vec![Diagnostic {
                    line: 0,
                    column: 0,
                    path: String::new(),
                    message: format!("not UTF-8: {e}"),
                }],
            }),
        };
        match parsed {
            Ok(state) => {
                self.last_good_hash = Some(hash);
                Poll::Changed(state)
            }
            Err(e) => Poll::Rejected(e),
        }
    }
}

#[cfg(test)]
#[path = "file_source_tests.rs"]
mod tests;
