//! Whether this process may run kernel tests, and the rule for when it may not.
//!
//! Kernel and network tests need root, cgroup v2 and BTF. Where they are missing a test skips with
//! a message, unless `SHUNT_REQUIRE_KERNEL_TESTS=1` (set by `.ci/run`), where that is a failure.

/// Returns true when the kernel tests can run here. Otherwise prints why and returns false, or
/// panics when kernel tests are required.
pub fn available(test: &str) -> bool {
    let missing = missing();
    match missing {
        None => true,
        Some(why) => {
            if std::env::var("SHUNT_REQUIRE_KERNEL_TESTS").as_deref() == Ok("1") {
                panic!(
                    "{test}: kernel tests are required (SHUNT_REQUIRE_KERNEL_TESTS=1) but {why}"
                );
            }
            eprintln!(
                "SKIPPED {test}: {why} (set SHUNT_REQUIRE_KERNEL_TESTS=1 to make this a failure)"
            );
            false
        }
    }
}

fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if agent::capture::cgroup2_mount().is_err() {
        return Some("no cgroup v2 mount".into());
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("no kernel BTF at /sys/kernel/btf/vmlinux".into());
    }
    if which("ip").is_none() || which("nsenter").is_none() {
        return Some("`ip` (iproute2) or `nsenter` (util-linux) not installed".into());
    }
    None
}

pub fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|c| c.is_file())
    })
}

/// A short name unique to this process and call, for namespaces, cgroups and pin directories.
pub fn unique_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n:x}", std::process::id())
}
