//! Which cgroup capture attaches to. On a node that is the pods' subtree, never the root: the
//! kubelet, the container runtime and every other host process live beside it and must keep their
//! own traffic (baseline untouched). `--cgroup auto` finds that subtree under the node's cgroup
//! mount; nothing is ever captured at the root by default.
use std::{
    collections::VecDeque,
    fmt, fs,
    path::{Path, PathBuf},
    str::FromStr,
};

use super::{CaptureError, env};

/// What `--cgroup` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupSelector {
    /// The node's pods' cgroup (`kubepods` with the cgroupfs driver, `kubepods.slice` with the
    /// systemd driver), found under the cgroup root.
    Auto,
    /// Exactly this cgroup v2 directory.
    Path(PathBuf),
}

impl FromStr for CgroupSelector {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "auto" {
            Self::Auto
        } else {
            Self::Path(PathBuf::from(s))
        })
    }
}

impl fmt::Display for CgroupSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Path(p) => p.display().fmt(f),
        }
    }
}

/// How deep under the cgroup v2 root the pods' cgroup may sit. Kubelet's default is depth 1
/// (`/kubepods.slice`); a node with a `cgroupRoot` (kind's `/kubelet`) puts it at depth 2
/// (`/kubelet.slice/kubelet-kubepods.slice`, `/kubelet/kubepods`). One more level for margin.
const MAX_DEPTH: usize = 3;

/// The directory `--cgroup` selects: a path as given, or the pods' cgroup found under `root`.
pub fn resolve(selector: &CgroupSelector, root: &Path) -> Result<PathBuf, CaptureError> {
    match selector {
        CgroupSelector::Path(p) => Ok(p.clone()),
        CgroupSelector::Auto => {
            let found = find_pods_cgroup(&unified_hierarchy(root)?)?;
            tracing::info!(cgroup = %found.display(), "--cgroup auto: capturing the pods' cgroup");
            Ok(found)
        }
    }
}

/// The cgroup v2 hierarchy of a node's cgroup mount: the mount itself (unified layout), or its
/// `unified/` directory (hybrid layout: cgroup v1 controllers beside a cgroup2 mount).
pub fn unified_hierarchy(root: &Path) -> Result<PathBuf, CaptureError> {
    let unified = root.join("unified");
    for candidate in [root, unified.as_path()] {
        if env::is_cgroup2_dir(candidate) {
            return Ok(candidate.to_path_buf());
        }
    }
    Err(CaptureError::Environment(format!(
        "--cgroup-root {}: no cgroup v2 hierarchy there or at {}; pass the node's cgroup2 mount \
         as --cgroup-root, or name the pods' cgroup with --cgroup PATH",
        root.display(),
        unified.display()
    )))
}

/// Whether a cgroup directory's name is the pods' subtree of one of kubelet's cgroup drivers.
fn is_pods_cgroup(name: &str) -> bool {
    name == "kubepods" || name == "kubepods.slice" || name.ends_with("-kubepods.slice")
}

/// Breadth-first search for the pods' cgroup under `unified`, at most [`MAX_DEPTH`] levels down.
/// The shallowest match wins; two at the same depth are ambiguous and the operator must choose.
pub fn find_pods_cgroup(unified: &Path) -> Result<PathBuf, CaptureError> {
    let mut level: VecDeque<PathBuf> = VecDeque::from([unified.to_path_buf()]);
    for _ in 0..MAX_DEPTH {
        let mut found = Vec::new();
        let mut next = VecDeque::new();
        while let Some(dir) = level.pop_front() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if e.file_name().to_str().is_some_and(is_pods_cgroup) {
                    found.push(e.path());
                } else {
                    next.push_back(e.path());
                }
            }
        }
        match found.len() {
            0 => level = next,
            1 => return Ok(found.remove(0)),
            _ => {
                found.sort();
                let list: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
                return Err(CaptureError::Environment(format!(
                    "--cgroup auto: several pods' cgroups under {}: {}; pass --cgroup PATH with \
                     the one kubelet uses",
                    unified.display(),
                    list.join(", ")
                )));
            }
        }
    }
    Err(CaptureError::Environment(format!(
        "--cgroup auto: no pods' cgroup (kubepods, kubepods.slice or *-kubepods.slice) within \
         {MAX_DEPTH} levels of {}; pass --cgroup PATH naming the pods' cgroup (capture never falls \
         back to the root: that would capture the kubelet and every host process), or set \
         --cgroup-root to the node's cgroup mount",
        unified.display()
    )))
}

#[cfg(test)]
#[path = "pods_cgroup_tests.rs"]
mod tests;
