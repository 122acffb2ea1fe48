use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shunt-handover-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_lone_agent_sees_no_successor() {
    let d = dir("lone");
    let mark = SuccessorMark::mark(&d).unwrap();
    assert!(!mark.successor_ready());
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn a_ready_agent_beside_us_is_a_successor_until_it_goes() {
    let d = dir("pair");
    let old = SuccessorMark::mark(&d).unwrap();
    let new = SuccessorMark::mark(&d).unwrap();
    assert!(old.successor_ready(), "the new agent's mark is seen");
    // The successor, terminated in turn with no one after it, fails open.
    assert!(!new.successor_ready());
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn a_dead_successor_leaves_no_mark() {
    let d = dir("dead");
    let old = SuccessorMark::mark(&d).unwrap();
    // A successor that died: its lock went with its open file.
    drop(SuccessorMark::mark(&d).unwrap());
    assert!(!old.successor_ready());
    let _ = fs::remove_dir_all(&d);
}
