//! Finding and removing the mini-cluster by name, and the state file that says whose it is.
//!
//! A run claims `/run/shunt-demo/` (creating a directory is atomic) and writes `state.json` with
//! its pid. A second run finds it and refuses while the owner is alive or the cluster was kept;
//! what a killed run left behind (owner gone) is removed and the run goes ahead.
use std::{
    ffi::CString,
    fs,
    io::ErrorKind,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::progress;

/// Prefix of every name the demo creates.
pub const PREFIX: &str = "shunt-demo";
/// State, routes file, logs, and the agent's bpffs at `bpf/`.
pub const RUN_DIR: &str = "/run/shunt-demo";

pub fn state_file() -> PathBuf {
    Path::new(RUN_DIR).join("state.json")
}

pub fn bpffs() -> PathBuf {
    Path::new(RUN_DIR).join("bpf")
}

/// `<cgroup2 mount>/shunt-demo`.
pub fn cgroup_root() -> Option<PathBuf> {
    agent::capture::cgroup2_mount().ok().map(|m| m.join(PREFIX))
}

#[derive(Serialize, Deserialize)]
struct State {
    pid: u32,
    kept: bool,
    started_unix: u64,
}

fn read_state() -> Option<State> {
    serde_json::from_slice(&fs::read(state_file()).ok()?).ok()
}

fn write_state(state: &State) -> anyhow::Result<()> {
    let tmp = Path::new(RUN_DIR).join("state.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    fs::rename(&tmp, state_file())?;
    Ok(())
}

/// Whether `pid` is a live shunt-demo (not a reused pid).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "shunt-demo")
}

/// Claims the names for this run, or says why not.
pub fn claim() -> anyhow::Result<()> {
    for _ in 0..3 {
        match crate::gate::step(|| fs::create_dir(RUN_DIR)) {
            Ok(()) => {
                // Nothing is running (the directory was free); anything else named ours is left
                // over from a run killed during its teardown.
                if leftovers() {
                    progress("removing what an interrupted demo left behind");
                    crate::gate::step(|| {
                        kill_cgroups();
                        delete_netns();
                    });
                }
                let started_unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let state = State {
                    pid: std::process::id(),
                    kept: false,
                    started_unix,
                };
                return crate::gate::step(|| write_state(&state));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => match read_state() {
                Some(s) if s.kept => bail!(
                    "a demo mini-cluster is already up (kept with --keep): use it, or remove it \
                     with `cargo xtask demo --down`"
                ),
                Some(s) if alive(s.pid) && s.pid != std::process::id() => bail!(
                    "another demo is running (pid {}): wait for it to finish, or stop it with \
                     Ctrl-C (`kill {}`)",
                    s.pid,
                    s.pid
                ),
                // Just created by a run that has not written its state yet.
                None if just_created() => {
                    bail!("another demo is starting: wait for it to finish")
                }
                _ => {
                    progress("removing what an interrupted demo left behind");
                    let summary = crate::gate::step(down);
                    eprintln!("{summary}");
                }
            },
            Err(e) => return Err(e).with_context(|| format!("creating {RUN_DIR}")),
        }
    }
    bail!("could not claim {RUN_DIR}: another demo keeps creating it")
}

/// Marks the cluster as kept (`--down` removes it; a new run refuses to touch it).
pub fn mark_kept() -> anyhow::Result<()> {
    let mut state = read_state().context("the state file disappeared")?;
    state.kept = true;
    write_state(&state)
}

fn just_created() -> bool {
    fs::metadata(RUN_DIR)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(5))
}

fn leftovers() -> bool {
    !demo_netns().is_empty() || cgroup_root().is_some_and(|c| c.exists())
}

/// What is up, in a few words, or None.
pub fn find() -> Option<String> {
    let mut what = Vec::new();
    match read_state() {
        Some(s) if s.kept => what.push("kept with --keep".to_string()),
        Some(s) if alive(s.pid) => what.push(format!("run by pid {}", s.pid)),
        Some(_) => what.push("left by an interrupted run".to_string()),
        None if Path::new(RUN_DIR).exists() => what.push(RUN_DIR.to_string()),
        None => {}
    }
    let ns = demo_netns().len();
    if ns > 0 {
        what.push(format!("{ns} namespaces"));
    }
    if cgroup_root().is_some_and(|c| c.exists()) {
        what.push("a cgroup".into());
    }
    (!what.is_empty()).then(|| what.join(", "))
}

/// Removes everything named ours, in order: the agent (SIGTERM, so it detaches its programs),
/// every process in the demo cgroup, the cgroup, the namespaces, the bpffs mount and the run
/// directory. Idempotent. Returns a one-line summary.
pub fn down() -> String {
    let cgroup = cgroup_root().filter(|c| c.exists());
    let procs = kill_cgroups();
    reap_children();
    let ns = delete_netns();
    let bpffs = unmount_bpffs();
    let dir = fs::remove_dir_all(RUN_DIR).is_ok();
    let mut parts = Vec::new();
    if procs > 0 {
        parts.push(format!("stopped {procs} processes"));
    }
    if let Some(c) = cgroup {
        parts.push(format!("removed cgroup {}", c.display()));
    }
    if ns > 0 {
        parts.push(format!("deleted {ns} network namespaces"));
    }
    if bpffs {
        parts.push(format!("unmounted {}", bpffs_display()));
    }
    if dir {
        parts.push(format!("removed {RUN_DIR}"));
    }
    if parts.is_empty() {
        parts.push("nothing to remove".into());
    }
    let left = remaining();
    if left.is_empty() {
        format!("{}; nothing left behind", parts.join(", "))
    } else {
        format!(
            "{}; STILL PRESENT: {} (rerun `cargo xtask demo --down`)",
            parts.join(", "),
            left.join(", ")
        )
    }
}

fn bpffs_display() -> String {
    bpffs().display().to_string()
}

/// What is still there after a teardown.
pub fn remaining() -> Vec<String> {
    let mut left: Vec<String> = demo_netns()
        .into_iter()
        .map(|n| format!("netns {n}"))
        .collect();
    if let Some(c) = cgroup_root().filter(|c| c.exists()) {
        left.push(c.display().to_string());
    }
    if Path::new(RUN_DIR).exists() {
        left.push(RUN_DIR.into());
    }
    left
}

fn pids_in(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn wait_empty(cgroup: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids_in(cgroup).is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops every process in the demo cgroup (the agent first, gracefully) and removes the cgroup.
/// Returns how many processes were stopped.
fn kill_cgroups() -> usize {
    let Some(root) = cgroup_root().filter(|r| r.exists()) else {
        return 0;
    };
    let mut stopped = 0;
    let agent = root.join("agent");
    let agent_pids = pids_in(&agent);
    for pid in &agent_pids {
        // SAFETY: kill(2) on a pid read from our own cgroup.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    if !agent_pids.is_empty() {
        stopped += agent_pids.len();
        wait_empty(&agent, Duration::from_secs(4));
    }
    stopped += kill_tree(&root);
    stopped
}

fn kill_tree(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += kill_tree(&e.path());
            }
        }
    }
    let pids = pids_in(dir);
    n += pids.len();
    // cgroup.kill (Linux >= 5.14) also catches processes forked meanwhile; SIGKILL each pid
    // as well for older kernels.
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    for pid in pids {
        // SAFETY: kill(2) on a pid read from our own cgroup.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for pid in pids_in(dir) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    n
}

/// Collects our exited children, so none is left a zombie (not every init reaps orphans).
fn reap_children() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer; WNOHANG never blocks.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}

/// Network namespaces named `shunt-demo-*`.
pub fn demo_netns() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
        .map(str::to_string)
        .collect()
}

fn delete_netns() -> usize {
    let names = demo_netns();
    let mut n = 0;
    // Pods first, then the node: each pod's veth peer goes with it.
    let (node, pods): (Vec<_>, Vec<_>) = names.iter().partition(|n| n.ends_with("-node"));
    for name in pods.into_iter().chain(node) {
        let ok = Command::new("ip")
            .args(["netns", "del", name])
            .output()
            .is_ok_and(|o| o.status.success());
        n += usize::from(ok);
    }
    n
}

/// Unmounts the agent's bpffs (its pinned maps go with it). True when something was unmounted.
fn unmount_bpffs() -> bool {
    let path = bpffs();
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut any = false;
    // The agent mounts it once; loop in case a restarted agent stacked another.
    for _ in 0..4 {
        // SAFETY: a valid NUL-terminated path; MNT_DETACH cannot leave a dangling pointer.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            break;
        }
        any = true;
    }
    any
}
