//! Facts about the machine the capture programs need, each checked up front so a missing one is a
//! single line naming the fix instead of a bare `Operation not permitted` from deep inside aya.
use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use super::CaptureError;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

fn env_err(msg: impl Into<String>) -> CaptureError {
    CaptureError::Environment(msg.into())
}

fn statfs_type(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and buf a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    Ok(buf.f_type as i64)
}

/// The first cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf, CaptureError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| env_err(format!("reading /proc/self/mountinfo: {e}")))?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| {
            env_err(
                "no cgroup v2 mount found: mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`) \
                 or boot with systemd.unified_cgroup_hierarchy=1",
            )
        })
}

/// Whether `path` is a directory on a cgroup v2 filesystem.
pub fn is_cgroup2_dir(path: &Path) -> bool {
    matches!(statfs_type(path), Ok(CGROUP2_SUPER_MAGIC))
}

/// Checks that `path` is a directory on a cgroup v2 filesystem.
pub fn check_cgroup2_dir(path: &Path) -> Result<(), CaptureError> {
    match statfs_type(path) {
        Ok(CGROUP2_SUPER_MAGIC) => Ok(()),
        Ok(_) => Err(env_err(format!(
            "--cgroup {}: not a cgroup v2 directory; pass a path under the cgroup2 mount ({})",
            path.display(),
            cgroup2_mount()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "none found".into())
        ))),
        Err(e) => Err(env_err(format!(
            "--cgroup {}: {e}; pass an existing cgroup v2 directory",
            path.display()
        ))),
    }
}

/// The cgroup v2 id (the directory's inode number) of a cgroup directory.
pub fn cgroup_id(path: &Path) -> Result<u64, CaptureError> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| env_err(format!("stat {}: {e}", path.display())))
}

/// Whether the cgroup v2 directory with id `id` is `root` or below it, by walking `root`'s subtree
/// and comparing ids (inode numbers): unlike paths, ids are the same through any mount and from
/// inside a cgroup namespace, where the agent sees its own cgroup as a root. A directory that
/// vanishes during the walk (a pod going away) is skipped.
pub fn cgroup_subtree_contains(root: &Path, id: u64) -> Result<bool, CaptureError> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let meta = match fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) if dir != root && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(env_err(format!("stat {}: {e}", dir.display()))),
        };
        if meta.ino() == id {
            return Ok(true);
        }
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if dir != root && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(env_err(format!("reading {}: {e}", dir.display()))),
        };
        for entry in entries.flatten() {
            // Only real directories: a cgroup's files (and any symlink) are not cgroups.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    Ok(false)
}

/// The level of the cgroup v2 directory `path` in its hierarchy (the root is 0), as
/// `bpf_get_current_ancestor_cgroup_id` counts: the number of cgroup v2 directories above it.
/// This assumes the mount shows the hierarchy's root (the node's, not a cgroup namespace's), as
/// capture itself needs.
pub fn cgroup_level(path: &Path) -> Result<u32, CaptureError> {
    let path = fs::canonicalize(path).map_err(|e| env_err(format!("{}: {e}", path.display())))?;
    if !is_cgroup2_dir(&path) {
        return Err(env_err(format!(
            "{}: not a cgroup v2 directory",
            path.display()
        )));
    }
    Ok(path
        .ancestors()
        .skip(1)
        .take_while(|p| is_cgroup2_dir(p))
        .count() as u32)
}

/// The calling process's own cgroup v2 directory.
///
/// `/proc/self/cgroup` gives the path relative to the process's cgroup namespace root, so it is
/// joined to a cgroup2 mount whose mountinfo root is that namespace root (`/`). In a pod with a
/// private cgroup namespace that is the container's own `/sys/fs/cgroup`, not a hostPath of the
/// node's tree (whose root lies outside the namespace).
pub fn own_cgroup_dir() -> Result<PathBuf, CaptureError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| env_err(format!("reading /proc/self/mountinfo: {e}")))?;
    let mounts: Vec<(String, PathBuf)> = info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2").then_some(())?;
            let mut f = left.split_whitespace();
            let root = f.nth(3)?.to_string();
            Some((root, PathBuf::from(f.next()?)))
        })
        .collect();
    let mount = mounts
        .iter()
        .find(|(root, _)| root == "/")
        .or_else(|| mounts.first())
        .map(|(_, m)| m.clone())
        .ok_or_else(|| env_err("no cgroup v2 mount found (see --cgroup)"))?;
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| env_err(format!("reading /proc/self/cgroup: {e}")))?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| env_err("/proc/self/cgroup has no cgroup v2 (0::) entry"))?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// The kernel must describe itself with BTF for the loader's relocations.
pub fn check_btf() -> Result<(), CaptureError> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok(())
    } else {
        Err(env_err(
            "kernel BTF missing (/sys/kernel/btf/vmlinux): Shunt needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (Linux >= 5.11 on most distributions)",
        ))
    }
}

fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// CAP_BPF (or CAP_SYS_ADMIN, which implies it) + CAP_NET_ADMIN: map creation needs the first,
/// the cgroup sock_addr and sock_ops program types the second. CAP_PERFMON is not needed: without
/// it the verifier only adds Spectre sanitation to the programs (deploy/README.md measures it).
pub fn check_capabilities() -> Result<(), CaptureError> {
    let Some(eff) = effective_caps() else {
        return Ok(());
    };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(env_err(format!(
            "missing capabilities {}: run as root, or grant them (the DaemonSet adds \
             BPF and NET_ADMIN)",
            missing.join(", ")
        )))
    }
}

/// Makes sure `dir` is on a bpffs. In local mode a missing bpffs is mounted at `dir` itself; in a
/// cluster the node's bpffs is mounted in and must already be there.
pub fn ensure_bpffs(dir: &Path, may_mount: bool) -> Result<(), CaptureError> {
    let bpffs_err = |message: String| CaptureError::Bpffs {
        path: dir.to_path_buf(),
        message,
    };
    fs::create_dir_all(dir).map_err(|e| bpffs_err(format!("creating it: {e}")))?;
    if statfs_type(dir).map_err(|e| bpffs_err(format!("statfs: {e}")))? == BPF_FS_MAGIC {
        return Ok(());
    }
    if !may_mount {
        return Err(bpffs_err(
            "not on a bpf filesystem; mount the node's /sys/fs/bpf into the pod (hostPath)".into(),
        ));
    }
    mount_bpffs(dir).map_err(|e| {
        bpffs_err(format!(
            "mounting bpffs failed: {e}; run as root (CAP_SYS_ADMIN) or mount it yourself: \
             `mount -t bpf bpffs {}`",
            dir.display()
        ))
    })
}

/// Mounts a new bpffs at `dir` (which must exist).
pub fn mount_bpffs(dir: &Path) -> std::io::Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
