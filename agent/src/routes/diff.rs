//! The change between two steered sets, as BPF map updates.
use std::{collections::BTreeMap, net::SocketAddr};

/// Updates that turn the old `STEERED` contents into the new ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SteeredDiff {
    /// New entries, and entries whose service id changed (an insert overwrites).
    pub add: Vec<(SocketAddr, u32)>,
    /// Entries no longer steered.
    pub remove: Vec<SocketAddr>,
}

impl SteeredDiff {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// What to write to `STEERED` to go from `old` to `new`. Both lists come out sorted by address.
///
/// A destination that stays steered is only in `add` when its service id changed (an insert
/// overwrites it in place), so it is never briefly missing whatever the order; removing first
/// leaves room in a nearly full map.
pub fn diff(old: &BTreeMap<SocketAddr, u32>, new: &BTreeMap<SocketAddr, u32>) -> SteeredDiff {
    SteeredDiff {
        add: new
            .iter()
            .filter(|(addr, id)| old.get(*addr) != Some(*id))
            .map(|(addr, id)| (*addr, *id))
            .collect(),
        remove: old
            .keys()
            .filter(|addr| !new.contains_key(*addr))
            .copied()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, u32)]) -> BTreeMap<SocketAddr, u32> {
        entries
            .iter()
            .map(|(a, id)| (a.parse().expect("addr"), *id))
            .collect()
    }

    #[test]
    fn identical_sets_give_an_empty_diff() {
        let m = map(&[("10.0.0.1:80", 7), ("[fd00::1]:80", 7)]);
        assert!(diff(&m, &m).is_empty());
    }

    #[test]
    fn additions_removals_and_id_changes() {
        let old = map(&[("10.0.0.1:80", 7), ("10.0.0.2:80", 7), ("10.0.0.3:80", 9)]);
        let new = map(&[("10.0.0.1:80", 7), ("10.0.0.3:80", 8), ("10.0.0.4:80", 8)]);
        let d = diff(&old, &new);
        assert_eq!(
            d.add,
            [
                ("10.0.0.3:80".parse().expect("addr"), 8),
                ("10.0.0.4:80".parse().expect("addr"), 8)
            ]
        );
        assert_eq!(
            d.remove,
            ["10.0.0.2:80".parse::<SocketAddr>().expect("addr")]
        );
    }

    #[test]
    fn from_and_to_empty() {
        let m = map(&[("10.0.0.1:80", 7)]);
        assert_eq!(diff(&BTreeMap::new(), &m).add.len(), 1);
        assert_eq!(diff(&m, &BTreeMap::new()).remove.len(), 1);
    }
}
