//! What the mini-cluster knows about its pods: one JSON record per pod under `DIR/pods/`, and
//! each pod's log at `DIR/NAME.log`. The demo (and the tests) write the baseline pods' records;
//! `shunt mcp` writes a sandbox's when it starts one, with what it takes to remove it again
//! (its process, network namespace, cgroup, owner session and expiry), so a later session, or
//! `cargo xtask demo --down`, can remove it after its owner was killed.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// One pod of the mini-cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
    /// The Service whose baseline (or fork, for a sandbox) this pod serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Set on sandboxes that `shunt mcp` started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxRecord>,
}

/// How a sandbox pod was started, who owns it, and what to remove with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub key: String,
    /// The MCP session that created it (also its pod label `shunt.dev/session`).
    pub session: String,
    /// Outlives its session.
    pub keep: bool,
    /// Removed by any later session (or `--down`) once past this; renewed by its live session.
    pub expires_unix_ms: Option<u64>,
    pub started_unix_ms: u64,
    pub pid: u32,
    /// `/run/netns/NAME`.
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    /// The third octet of its 198.18.N.0/24.
    pub subnet: u8,
    pub port: u16,
    pub command: String,
    pub args: Vec<String>,
    /// `namespace/name` of the SandboxRoute that forks `service` to it.
    pub route: String,
}

impl PodRecord {
    /// `DIR/pods/NAME.json`.
    pub fn path(dir: &Path, name: &str) -> PathBuf {
        dir.join("pods").join(format!("{name}.json"))
    }

    /// `DIR/NAME.log`: its stdout and stderr.
    pub fn log_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.log"))
    }

    /// Writes the record (through a rename, so a reader never sees half of it).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let path = Self::path(dir, &self.name);
        std::fs::create_dir_all(dir.join("pods"))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }

    pub fn remove(dir: &Path, name: &str) {
        let _ = std::fs::remove_file(Self::path(dir, name));
        let _ = std::fs::remove_file(exit_path(dir, name));
    }

    /// Every readable record, sorted by name.
    pub fn all(dir: &Path) -> Vec<PodRecord> {
        let mut out: Vec<PodRecord> = std::fs::read_dir(dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn find(dir: &Path, name: &str) -> Option<PodRecord> {
        std::fs::read(Self::path(dir, name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }
}

/// `DIR/pods/NAME.exit`: how the sandbox's process ended, written by the session that waits
/// for it.
pub fn exit_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("pods").join(format!("{name}.exit"))
}
