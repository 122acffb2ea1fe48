//! What the peer proxies (E HAProxy, F nginx) share: the process, started pinned in the node
//! namespace and waited for until every listener accepts, and its version line.
use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;
use tests::{
    netns::Netns,
    process::{ChildGuard, spawn_in},
};

pub struct PeerProxy {
    pub child: ChildGuard,
    pub version: String,
}

impl PeerProxy {
    /// Spawns `cmd` (already `taskset` and the proxy's arguments, its output to `log`) in
    /// `node`, then waits up to 10 s until each of `listens` accepts. Fails with the log if the
    /// process exits first.
    pub fn start(
        name: &str,
        node: &Netns,
        cmd: Command,
        log: &Path,
        listens: &[SocketAddr],
        version: String,
    ) -> anyhow::Result<Self> {
        let mut child = spawn_in(name, cmd, Some(node), None)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        for &addr in listens {
            loop {
                if node
                    .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)))?
                    .is_ok()
                {
                    break;
                }
                if let Some(Ok(Some(st))) = child.child.as_mut().map(|c| c.try_wait()) {
                    let log = std::fs::read_to_string(log).unwrap_or_default();
                    bail!("{name} exited ({st}):\n{log}");
                }
                if Instant::now() > deadline {
                    bail!("{name} not listening on {addr} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(Self { child, version })
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }
}

/// The first line `program -v` prints (on stderr when `on_stderr`), without `prefix`.
pub fn version_line(program: &str, on_stderr: bool, prefix: &str) -> String {
    Command::new(program)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            let out = if on_stderr { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .map(|l| l.trim_start_matches(prefix).to_string())
        })
        .unwrap_or_else(|| format!("{program} not found"))
}
