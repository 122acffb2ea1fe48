//! A fork's pod selector, as the route computation keeps it.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Label → value, sorted by label, each label once; written as the map it is.
///
/// A `BTreeMap` of one or two labels costs a whole B-tree node (about 540 bytes of mostly empty
/// slots) plus its strings: at 10,000 routes the converted routes' selectors alone held 5.7 MB.
/// A fork's selector is written once and only read, so a sorted slice serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector(Box<[(Box<str>, Box<str>)]>);

impl Selector {
    /// The value of `label`, if the selector has it.
    pub fn get(&self, label: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(l, _)| (**l).cmp(label))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// (label, value) pairs, sorted by label.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(l, v)| (&**l, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` (a pod's) has every label of the selector with its value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.iter()
            .all(|(l, v)| labels.get(l).is_some_and(|have| have == v))
    }

    /// The selector as a map, for types that keep one (the CRD, the MCP tools).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(l, v)| (l.to_owned(), v.to_owned()))
            .collect()
    }
}

impl<L: AsRef<str>, V: AsRef<str>> FromIterator<(L, V)> for Selector {
    /// Sorted by label; of a label given twice, the last value counts (as a map's insert).
    fn from_iter<I: IntoIterator<Item = (L, V)>>(pairs: I) -> Self {
        let mut v: Vec<(Box<str>, Box<str>)> = Vec::new();
        for (l, val) in pairs {
            let (l, val) = (l.as_ref(), val.as_ref());
            match v.binary_search_by(|(have, _)| (**have).cmp(l)) {
                Ok(i) => v[i].1 = val.into(),
                Err(i) => v.insert(i, (l.into(), val.into())),
            }
        }
        Self(v.into_boxed_slice())
    }
}

impl From<BTreeMap<String, String>> for Selector {
    fn from(map: BTreeMap<String, String>) -> Self {
        map.into_iter().collect()
    }
}

impl<const N: usize> From<[(String, String); N]> for Selector {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl From<&BTreeMap<String, String>> for Selector {
    fn from(map: &BTreeMap<String, String>) -> Self {
        map.iter().collect()
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<String, String>::deserialize(d)?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_is_sorted_by_label_and_reads_like_the_map_it_came_from() {
        let map: BTreeMap<String, String> = [("z", "1"), ("app", "reviews"), ("m", "2")]
            .into_iter()
            .map(|(l, v)| (l.to_owned(), v.to_owned()))
            .collect();
        let sel = Selector::from(&map);
        assert_eq!(
            sel.iter().collect::<Vec<_>>(),
            [("app", "reviews"), ("m", "2"), ("z", "1")]
        );
        assert_eq!(sel.get("m"), Some("2"));
        assert_eq!(sel.get("nope"), None);
        assert_eq!(sel.to_map(), map);
        assert_eq!(
            serde_json::to_string(&sel).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        let back: Selector = serde_json::from_str(r#"{"b":"2","a":"1"}"#).unwrap();
        assert_eq!(back, Selector::from_iter([("a", "1"), ("b", "2")]));
    }

    #[test]
    fn a_label_given_twice_keeps_its_last_value_and_matching_needs_every_label() {
        let sel = Selector::from_iter([("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(sel.len(), 2);
        assert_eq!(sel.get("a"), Some("3"));
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(l, v)| ((*l).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(sel.matches(&labels(&[("a", "3"), ("b", "2"), ("c", "x")])));
        assert!(!sel.matches(&labels(&[("a", "3")])));
        assert!(!sel.matches(&labels(&[("a", "1"), ("b", "2")])));
        assert!(Selector::default().matches(&labels(&[])));
    }
}
