use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
};

use super::*;

/// A fake `MARKED`, shared with the test so it can look inside.
#[derive(Clone, Default)]
struct FakeMap(Arc<Mutex<(BTreeMap<u64, String>, u32)>>);

impl MarkedStore for FakeMap {
    fn mark(&mut self, id: u64, key: &str) -> Result<(), MapError> {
        self.0.lock().unwrap().0.insert(id, key.into());
        Ok(())
    }
    fn unmark(&mut self, id: u64) -> Result<(), MapError> {
        self.0.lock().unwrap().0.remove(&id);
        Ok(())
    }
    fn entries(&self) -> Vec<(u64, String)> {
        self.0.lock().unwrap().0.clone().into_iter().collect()
    }
    fn set_levels(&mut self, levels: u32) -> Result<(), MapError> {
        self.0.lock().unwrap().1 = levels;
        Ok(())
    }
}

/// `/cg/LEVEL/ID` has that id and level; anything else is gone.
struct FakeCgroups;

impl CgroupIds for FakeCgroups {
    fn id_and_level(&self, dir: &Path) -> Result<(u64, u32), String> {
        let parts: Vec<&str> = dir.to_str().unwrap().split('/').collect();
        match parts.as_slice() {
            ["", "cg", level, id] => Ok((id.parse().unwrap(), level.parse().unwrap())),
            _ => Err("no such cgroup".into()),
        }
    }
}

fn source(cgroup: &str, key: &str) -> MarkedSource {
    MarkedSource {
        cgroup: cgroup.into(),
        key: key.into(),
        origin: "file".into(),
    }
}

#[test]
fn sources_are_marked_with_their_levels_and_unmarked_when_gone() {
    let map = FakeMap::default();
    let marking = Marking::new(map.clone(), FakeCgroups);
    let r = marking.apply(
        &[source("/cg/3/7", "pr-42"), source("/cg/2/9", "pr-7")],
        true,
    );
    assert_eq!((r.added, r.removed, r.dropped), (2, 0, 0));
    {
        let m = map.0.lock().unwrap();
        assert_eq!(m.0.get(&7).map(String::as_str), Some("pr-42"));
        assert_eq!(m.1, (1 << 3) | (1 << 2));
    }
    let applied = marking.applied();
    assert_eq!(applied.load().get(7).map(|s| s.key.as_str()), Some("pr-42"));

    let r = marking.apply(&[source("/cg/2/9", "pr-7")], false);
    assert_eq!((r.added, r.removed), (0, 1));
    let m = map.0.lock().unwrap();
    assert!(!m.0.contains_key(&7));
    assert_eq!(m.1, 1 << 2);
    assert!(applied.load().get(7).is_none());
}

#[test]
fn nothing_marked_means_no_levels_so_connect_looks_nothing_up() {
    let map = FakeMap::default();
    let marking = Marking::new(map.clone(), FakeCgroups);
    marking.apply(&[source("/cg/3/7", "pr-42")], true);
    marking.apply(&[], false);
    let m = map.0.lock().unwrap();
    assert!(m.0.is_empty());
    assert_eq!(m.1, 0);
}

#[test]
fn a_vanished_cgroup_or_a_bad_key_is_dropped_and_the_rest_applied() {
    let map = FakeMap::default();
    let marking = Marking::new(map.clone(), FakeCgroups);
    let r = marking.apply(
        &[
            source("/gone", "pr-42"),
            source("/cg/3/7", "bad key"),
            source("/cg/0/1", "pr-1"),
            source("/cg/3/8", "pr-8"),
        ],
        true,
    );
    assert_eq!((r.added, r.dropped), (1, 3));
    assert_eq!(map.entries(), vec![(8, "pr-8".to_string())]);
}

#[test]
fn reconcile_removes_what_an_earlier_agent_left() {
    let map = FakeMap::default();
    map.0.lock().unwrap().0.insert(99, "old".into());
    let marking = Marking::new(map.clone(), FakeCgroups);
    let r = marking.apply(&[source("/cg/3/7", "pr-42")], true);
    assert_eq!((r.added, r.removed), (1, 1));
    assert_eq!(map.entries(), vec![(7, "pr-42".to_string())]);
}

#[test]
fn suspend_clears_the_levels_and_resume_restores_them() {
    let map = FakeMap::default();
    let marking = Marking::new(map.clone(), FakeCgroups);
    marking.apply(&[source("/cg/3/7", "pr-42")], true);
    marking.suspend();
    assert_eq!(map.0.lock().unwrap().1, 0);
    marking.apply(&[source("/cg/4/8", "pr-8")], false);
    assert_eq!(map.0.lock().unwrap().1, 0, "still suspended");
    marking.resume();
    assert_eq!(map.0.lock().unwrap().1, 1 << 4);
}
