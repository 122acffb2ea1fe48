//! Fails open when the proxy stops accepting.
//!
//! A plain OS thread (not a tokio task, which a wedged runtime would never run) watches each
//! proxy listener: if connections wait in its accept queue and the accept loop has not taken one
//! for a whole interval, the proxy is wedged (stuck runtime, or its connection cap reached) and
//! `STEERED` is emptied so new connections go direct.
//!
//! Steering comes back once the proxy serves again: a self-probe sent through the listener
//! ([`SelfProbe`]) is accepted, forwarded and answered. Not "once it accepts, or its queue is
//! empty": clients that gave up while queued stay in the queue until accepted, and a proxy at
//! its connection cap accepts nothing, so neither signal says whether a new connection would be
//! served. The probe waits in the queue behind them, as a new connection would.
use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::Duration,
};

use crate::{metrics::Metrics, proxy::self_probe::SelfProbe, sync::Steering};

pub struct Watchdog {
    pub listeners: Vec<OwnedFd>,
    pub heartbeat: Arc<AtomicU64>,
    pub interval: Duration,
    pub steering: Arc<Steering>,
    pub metrics: Arc<Metrics>,
    /// Sent through the listeners while tripped: its answer restores steering.
    pub probe: Arc<SelfProbe>,
    /// Dropping (or sending on) the other end stops the watchdog at once, mid-interval.
    pub stop: Receiver<()>,
}

/// Connections waiting in a listening socket's accept queue (TCP_INFO's `tcpi_unacked` holds the
/// accept backlog for a listener).
fn accept_queue_len(fd: &OwnedFd) -> Option<u32> {
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, and info/len describe a writable buffer of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_unacked)
}

impl Watchdog {
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("shunt-watchdog".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let mut last = self.heartbeat.load(Ordering::Relaxed);
        let mut tripped = false;
        while let Err(RecvTimeoutError::Timeout) = self.stop.recv_timeout(self.interval) {
            if tripped {
                // The probe may wait up to an interval in the queue: the proxy serves again
                // when it gets through.
                match self
                    .probe
                    .probe(self.interval.max(Duration::from_millis(200)))
                {
                    Ok(()) => {
                        tripped = false;
                        last = self.heartbeat.load(Ordering::Relaxed);
                        self.steering.resume(&self.metrics);
                        tracing::warn!("proxy serving again: steering restored");
                    }
                    Err(e) => tracing::debug!(error = %e, "proxy still not serving"),
                }
                continue;
            }
            let now = self.heartbeat.load(Ordering::Relaxed);
            let queued = self
                .listeners
                .iter()
                .filter_map(accept_queue_len)
                .max()
                .unwrap_or(0);
            let wedged = queued > 0 && now == last;
            last = now;
            if wedged {
                tripped = true;
                let cleared = self.steering.suspend();
                self.metrics.watchdog_tripped();
                tracing::error!(
                    queued,
                    cleared,
                    "proxy is not accepting: cleared STEERED, new connections go direct"
                );
            }
        }
    }
}
