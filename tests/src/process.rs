//! Child processes inside a pod namespace and, optionally, a cgroup. The child joins the cgroup
//! and the namespace between fork and exec, so the test runner itself never moves.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::netns::Netns;

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    pub child: Option<Child>,
    pub name: String,
}

impl ChildGuard {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for exit with a deadline; returns the status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("already reaped")?;
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                anyhow::bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for exit with a deadline and returns stdout (stdout must have been piped).
    pub fn output_timeout(
        mut self,
        timeout: Duration,
    ) -> anyhow::Result<(std::process::ExitStatus, String, String)> {
        use std::io::Read as _;
        let mut child = self.child.take().context("already reaped")?;
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_string(&mut s);
            }
            s
        });
        let ereader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        self.child = Some(child);
        let status = self.wait_timeout(timeout)?;
        let stdout = reader.join().unwrap_or_default();
        let stderr = ereader.join().unwrap_or_default();
        Ok((status, stdout, stderr))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns `cmd` inside `netns` and, if given, inside the cgroup directory `cgroup`.
pub fn spawn_in(
    name: &str,
    mut cmd: Command,
    netns: Option<&Netns>,
    cgroup: Option<&Path>,
) -> anyhow::Result<ChildGuard> {
    let ns_path = netns.map(|n| std::path::PathBuf::from(n.path()));
    agent::placement::join_before_exec(&mut cmd, ns_path.as_deref(), cgroup)?;
    cmd.stdin(Stdio::null());
    let child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
    Ok(ChildGuard {
        child: Some(child),
        name: name.to_string(),
    })
}

/// Makes `close()` send a RST instead of a FIN (SO_LINGER 0), as a peer that dies would.
pub fn set_linger_zero(sock: &impl std::os::fd::AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
