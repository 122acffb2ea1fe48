use std::{fs, os::unix::fs::MetadataExt as _};

use super::cgroup_subtree_contains;

fn ino(p: &std::path::Path) -> u64 {
    fs::metadata(p).unwrap().ino()
}

#[test]
fn a_subtree_contains_itself_and_its_descendants_only() {
    let base = std::env::temp_dir().join(format!("shunt-subtree-{}", std::process::id()));
    let deep = base.join("captured/pod/container");
    let sibling = base.join("agent");
    fs::create_dir_all(&deep).unwrap();
    fs::create_dir_all(&sibling).unwrap();
    fs::write(base.join("captured/cgroup.procs"), "").unwrap();
    let captured = base.join("captured");

    assert!(cgroup_subtree_contains(&captured, ino(&captured)).unwrap());
    assert!(cgroup_subtree_contains(&captured, ino(&deep)).unwrap());
    assert!(!cgroup_subtree_contains(&captured, ino(&sibling)).unwrap());
    assert!(
        !cgroup_subtree_contains(&captured, ino(&base)).unwrap(),
        "an ancestor is not below"
    );
    assert!(
        cgroup_subtree_contains(&base.join("gone"), 1).is_err(),
        "a missing root is an error, not a no"
    );
    fs::remove_dir_all(&base).unwrap();
}
