//! Fault injection: what a real control plane does to clients on a bad day.
//!
//! * [`Faults::compact_history`]: an etcd compaction; older resourceVersions now get
//!   410 Expired (in-stream for watches, so that watchers relist).
//! * [`Faults::cut_watches`]: every open watch stream ends, as on an apiserver rollout or a
//!   load-balancer idle timeout.
//! * [`Faults::fail_next`]: the next N requests fail with 429 (API Priority and Fairness
//!   throttling, with `Retry-After`) or 500.
//! * [`Faults::set_latency`]: every request is delayed.
//! * [`Faults::stop`] / [`Faults::restart`]: an outage; the port refuses connections, open
//!   connections drop, and the server comes back on the same port with its data intact.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::state::Shared;

/// Fault state read by the request path.
pub(crate) struct FaultState {
    fail: Mutex<(u32, u16)>,
    latency: Mutex<Duration>,
    cut: watch::Sender<u64>,
}

impl FaultState {
    pub(crate) fn new() -> Self {
        Self {
            fail: Mutex::new((0, 500)),
            latency: Mutex::new(Duration::ZERO),
            cut: watch::channel(0).0,
        }
    }

    /// If a failure is armed, consume one and return its status code.
    pub(crate) fn take_failure(&self) -> Option<u16> {
        let mut f = self.fail.lock().unwrap_or_else(|e| e.into_inner());
        if f.0 == 0 {
            return None;
        }
        f.0 -= 1;
        Some(f.1)
    }

    pub(crate) fn latency(&self) -> Duration {
        *self.latency.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that changes when watches are cut.
    pub(crate) fn cut_signal(&self) -> watch::Receiver<u64> {
        self.cut.subscribe()
    }
}

/// Fault controls of one [`FakeApiServer`](super::FakeApiServer); cheap to clone.
#[derive(Clone)]
pub struct Faults {
    pub(crate) shared: Arc<Shared>,
}

impl Faults {
    /// Compact the history to the current resourceVersion, like an etcd compaction: LISTs at an
    /// exact older version, continue tokens from before and watches from an older
    /// resourceVersion get 410 Expired, and an open watch that has not yet delivered every
    /// event gets an in-stream 410 and ends. Up-to-date open watches carry on (as with etcd).
    pub fn compact_history(&self) {
        self.shared.lock().store.compact();
    }

    /// End every open watch stream (cleanly, as when an apiserver shuts a watch down); clients
    /// re-watch from their last resourceVersion.
    pub fn cut_watches(&self) {
        self.shared.faults.cut.send_modify(|g| *g += 1);
    }

    /// Fail the next `n` requests (of any kind) with `code`: 429 (TooManyRequests, with a
    /// `Retry-After` header) or 500 (InternalError); other codes are sent as given with reason
    /// `InternalError`. Replaces any failures still armed.
    pub fn fail_next(&self, n: u32, code: u16) {
        *self
            .shared
            .faults
            .fail
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = (n, code);
    }

    /// Delay every request by `latency` before it is handled (zero to turn off).
    pub fn set_latency(&self, latency: Duration) {
        *self
            .shared
            .faults
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = latency;
    }

    /// Stop serving: close the listener and drop every open connection (watches included).
    /// Data is kept; mutate it through the handle while the server is down if you like.
    pub async fn stop(&self) {
        let handle = self
            .shared
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// Listen again on the same address after [`stop`](Self::stop). A no-op if running.
    /// Fails if the port was taken by someone else meanwhile.
    pub async fn restart(&self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let listener = super::http::bind_retrying(self.shared.addr).await?;
        let handle = super::http::spawn_server(self.shared.clone(), listener);
        *self
            .shared
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Whether the listener is up.
    pub fn is_running(&self) -> bool {
        self.shared
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }
}
