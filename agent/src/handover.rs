//! Restarts and upgrades with no gap: an agent hands its node over to a ready successor instead
//! of failing open.
//!
//! Failing open on SIGTERM (clearing `STEERED`) is safe but not free: every connection opened
//! while `STEERED` is empty goes direct, and an HTTP/2 or gRPC pool keeps such a connection for as
//! long as it lives, so its keyed requests reach baseline long after the new agent is up. With a
//! successor the old agent need not fail open:
//!
//! - Both agents bind the proxy, health and debug ports with `SO_REUSEPORT`
//!   ([`crate::proxy::listen`]), and both attach their capture programs to the same cgroup with
//!   the same pinned maps, so a connection redirected to the proxy address reaches one of them.
//! - A new agent that is ready marks `<bpffs-dir>/successor` ([`SuccessorMark`]): it holds a shared
//!   `flock` on that directory for as long as it lives. The kernel drops the lock when the process
//!   dies, however it dies, so a crashed successor is never mistaken for a ready one.
//! - On SIGTERM the old agent releases its own mark and asks for the lock exclusively
//!   ([`SuccessorMark::successor_ready`]). If another agent still holds it, that agent is ready:
//!   the old one keeps `STEERED`, closes its listeners (the kernel moves the connections still
//!   queued on them to the successor's, see [`enable_queued_migration`]) and drains its own
//!   connections. If none does, it fails open as before.
//!
//! bpffs holds no regular files, so the mark is a directory; `flock` works on any open file.
use std::{
    fs::{self, File, TryLockError},
    io,
    path::{Path, PathBuf},
};

/// The name of the mark under the bpffs directory.
pub const SUCCESSOR_DIR: &str = "successor";

/// The sysctl that moves the connections queued on a closing `SO_REUSEPORT` listener to another
/// listener of its group, instead of resetting them (Linux 5.14). Per network namespace.
const MIGRATE_REQ_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Why the successor mark could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}", path.display())]
pub struct MarkError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// This agent's mark as a ready agent: a shared lock on `<bpffs-dir>/successor`, held until it is
/// dropped (or the process dies).
#[derive(Debug)]
pub struct SuccessorMark {
    path: PathBuf,
    file: File,
}

impl SuccessorMark {
    /// Marks this agent ready in `bpffs_dir`.
    pub fn mark(bpffs_dir: &Path) -> Result<Self, MarkError> {
        let path = bpffs_dir.join(SUCCESSOR_DIR);
        let err = |action, source| MarkError {
            action,
            path: path.clone(),
            source,
        };
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err("creating", e)),
        }
        let file = File::open(&path).map_err(|e| err("opening", e))?;
        file.lock_shared().map_err(|e| err("locking", e))?;
        Ok(Self { path, file })
    }

    /// Releases this agent's own mark and tells whether another agent holds one: a ready
    /// successor. An error reading the mark counts as no successor (fail open).
    pub fn successor_ready(self) -> bool {
        let Self { path, file } = self;
        drop(file);
        let Ok(file) = File::open(&path) else {
            return false;
        };
        match file.try_lock() {
            Err(TryLockError::WouldBlock) => true,
            Ok(()) => false,
            Err(TryLockError::Error(e)) => {
                tracing::warn!(error = %e, path = %path.display(), "reading the successor mark; failing open");
                false
            }
        }
    }
}

/// Turns on `net.ipv4.tcp_migrate_req` in this network namespace (the node's, under
/// hostNetwork), so connections queued on the old agent's listener when it closes are handed to
/// the successor's rather than reset. Returns whether it had to change it. It changes nothing
/// else: the setting only acts when a listener of a `SO_REUSEPORT` group closes.
pub fn enable_queued_migration() -> io::Result<bool> {
    if fs::read_to_string(MIGRATE_REQ_SYSCTL)?.trim() == "1" {
        return Ok(false);
    }
    fs::write(MIGRATE_REQ_SYSCTL, "1")?;
    Ok(true)
}

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
