//! The search runs on plain directories here; the cgroup2 check is the kernel tests' business.
use std::{fs, path::PathBuf};

use super::*;

struct Tree(PathBuf);

impl Tree {
    fn new(name: &str, dirs: &[&str]) -> Self {
        let root =
            std::env::temp_dir().join(format!("shunt-pods-cgroup-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in dirs {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::create_dir_all(&root).unwrap();
        Self(root)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn systemd_driver_pods_slice_is_found_beside_system_slice() {
    let t = Tree::new(
        "systemd",
        &[
            "system.slice/kubelet.service",
            "system.slice/containerd.service",
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice",
        ],
    );
    assert_eq!(find_pods_cgroup(&t.0).unwrap(), t.0.join("kubepods.slice"));
}

#[test]
fn cgroupfs_driver_kubepods_is_found() {
    let t = Tree::new("cgroupfs", &["kubepods/burstable/pod1", "system.slice"]);
    assert_eq!(find_pods_cgroup(&t.0).unwrap(), t.0.join("kubepods"));
}

#[test]
fn a_kubelet_cgroup_root_nests_the_pods_one_level_down() {
    let t = Tree::new(
        "nested",
        &["kubelet.slice/kubelet-kubepods.slice/x", "init.scope"],
    );
    assert_eq!(
        find_pods_cgroup(&t.0).unwrap(),
        t.0.join("kubelet.slice/kubelet-kubepods.slice")
    );
}

#[test]
fn no_pods_cgroup_is_an_error_naming_the_fix_never_the_root() {
    let t = Tree::new("none", &["system.slice/kubelet.service", "user.slice"]);
    let err = find_pods_cgroup(&t.0).unwrap_err().to_string();
    assert!(err.contains("pass --cgroup PATH"), "{err}");
    assert!(err.contains("never falls back"), "{err}");
}

#[test]
fn two_pods_cgroups_at_one_depth_are_ambiguous() {
    let t = Tree::new("two", &["kubepods", "kubepods.slice"]);
    let err = find_pods_cgroup(&t.0).unwrap_err().to_string();
    assert!(err.contains("several"), "{err}");
    assert!(err.contains("pass --cgroup PATH"), "{err}");
}

#[test]
fn too_deep_is_not_searched() {
    let t = Tree::new("deep", &["a/b/c/kubepods.slice"]);
    assert!(find_pods_cgroup(&t.0).is_err());
}

#[test]
fn selector_parses_auto_and_paths() {
    assert_eq!(
        "auto".parse::<CgroupSelector>().unwrap(),
        CgroupSelector::Auto
    );
    assert_eq!(
        "/sys/fs/cgroup/x".parse::<CgroupSelector>().unwrap(),
        CgroupSelector::Path("/sys/fs/cgroup/x".into())
    );
    assert_eq!(CgroupSelector::Auto.to_string(), "auto");
}

#[test]
fn a_plain_directory_is_no_cgroup_hierarchy() {
    let t = Tree::new("plain", &["unified"]);
    let err = unified_hierarchy(&t.0).unwrap_err().to_string();
    assert!(err.contains("--cgroup-root"), "{err}");
}
