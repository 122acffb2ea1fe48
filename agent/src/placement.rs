//! Starting a child process inside a network namespace and a cgroup.
//!
//! The child joins both between fork and exec, so the caller itself never moves: cgroup v2
//! moves whole processes, and `setns` would move the calling thread.
//!
//! Network namespaces exist only on Linux: elsewhere (the client on a laptop, which reaches a
//! cluster with `--kube`) [`enter_netns`] answers `Unsupported`.
use std::{
    fs::OpenOptions,
    io::Write as _,
    os::fd::AsFd,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
};

/// Moves the calling thread into the network namespace open at `ns`. Async-signal-safe (no
/// allocation), so a child may call it between fork and exec.
#[cfg(target_os = "linux")]
pub fn enter_netns(ns: impl AsFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid namespace fd; setns affects only the calling thread.
    if unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// No network namespaces outside Linux.
#[cfg(not(target_os = "linux"))]
pub fn enter_netns(_ns: impl AsFd) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// A namespace or cgroup that cannot be joined (found before the fork, so it names the path).
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("opening the network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening {}", path.display())]
    Cgroup {
        /// The cgroup's `cgroup.procs`.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Arranges for `cmd`'s child to join the network namespace at `netns` (e.g. `/run/netns/x`)
/// and the cgroup v2 directory `cgroup` before it execs. The files are opened now, so errors
/// name the path; only async-signal-safe calls run in the child.
pub fn join_before_exec(
    cmd: &mut std::process::Command,
    netns: Option<&Path>,
    cgroup: Option<&Path>,
) -> Result<(), PlacementError> {
    let ns = netns
        .map(|p| {
            std::fs::File::open(p).map_err(|source| PlacementError::Netns {
                path: p.to_path_buf(),
                source,
            })
        })
        .transpose()?;
    let procs = cgroup
        .map(|c| {
            let path = c.join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| PlacementError::Cgroup { path, source })
        })
        .transpose()?;
    // SAFETY: between fork and exec only async-signal-safe calls (write, setns) on fds opened
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = procs.as_ref() {
                // "0" moves the writing process: the child, not the caller.
                (&*p).write_all(b"0")?;
            }
            if let Some(ns) = ns.as_ref() {
                enter_netns(ns)?;
            }
            Ok(())
        });
    }
    Ok(())
}
