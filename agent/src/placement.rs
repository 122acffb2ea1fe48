//! Starting a child process inside a network namespace and a cgroup.
//!
//! The child joins both between fork and exec, so the caller itself never moves: cgroup v2
//! moves whole processes, and `setns` would move the calling thread.
use std::{
    fs::OpenOptions, io::Write as _, os::fd::AsRawFd as _, os::unix::process::CommandExt as _,
    path::Path,
};

use anyhow::Context as _;

/// Arranges for `cmd`'s child to join the network namespace at `netns` (e.g. `/run/netns/x`)
/// and the cgroup v2 directory `cgroup` before it execs. The files are opened now, so errors
/// name the path; only async-signal-safe calls run in the child.
pub fn join_before_exec(
    cmd: &mut std::process::Command,
    netns: Option<&Path>,
    cgroup: Option<&Path>,
) -> anyhow::Result<()> {
    let ns = netns
        .map(|p| {
            std::fs::File::open(p)
                .with_context(|| format!("opening the network namespace {}", p.display()))
        })
        .transpose()?;
    let procs = cgroup
        .map(|c| {
            OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
                .with_context(|| format!("opening {}/cgroup.procs", c.display()))
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
            if let Some(ns) = ns.as_ref()
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
