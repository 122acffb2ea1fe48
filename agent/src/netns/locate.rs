//! Reaching a pod's network namespace from its cgroup: a process of the pod (any process in the
//! pod's cgroup or one of its containers' cgroups, the sandbox's pause process included), then
//! `/proc/PID/ns/net`. Needs the node's PID namespace (`hostPID`): `cgroup.procs` lists PIDs as
//! the reader's PID namespace numbers them, and without `hostPID` the pod's processes have no
//! number there (the kernel writes 0) and no `/proc` entry.
use std::{
    collections::VecDeque,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

/// Opens the network namespace of a process in the cgroup `pod_dir` or below it (breadth
/// first: the pod's own cgroup, then its containers'). A process that exits meanwhile is
/// skipped.
pub fn pod_netns(pod_dir: &Path, proc_root: &Path) -> io::Result<File> {
    let mut dirs = VecDeque::from([pod_dir.to_path_buf()]);
    let mut last_err = None;
    while let Some(dir) = dirs.pop_front() {
        match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(procs) => {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                    if pid == 0 {
                        // Outside our PID namespace: no hostPID.
                        continue;
                    }
                    match File::open(proc_root.join(pid.to_string()).join("ns/net")) {
                        Ok(f) => return Ok(f),
                        Err(e) => last_err = Some(e),
                    }
                }
            }
            Err(e) => last_err = Some(e),
        }
        if let Ok(children) = fs::read_dir(&dir) {
            let mut children: Vec<PathBuf> = children
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            children.sort();
            dirs.extend(children);
        }
    }
    Err(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no process of the pod is visible under {} (is the agent in the node's PID namespace, hostPID?)",
                pod_dir.display()
            ),
        )
    }))
}
