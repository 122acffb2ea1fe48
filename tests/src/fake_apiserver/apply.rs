//! Server-side apply, a simplified model: fields the same field manager applied before and no
//! longer applies are removed, then the configuration is merged in. Lists merge as the real
//! server merges them: built-ins by their merge key (the table in [`super::patch`]), custom
//! resources as their CRD schema declares (`x-kubernetes-list-type: map` by its
//! `x-kubernetes-list-map-keys`, `set` by value, anything else atomically). So two managers
//! applying their own entries of a list-map keep each other's. There is no `managedFields`
//! bookkeeping and no conflict detection between managers (every apply behaves as
//! `force=true`); a manager's "fields" are what it last applied.
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::patch::{ListStrategy, list_strategy};

/// The merging lists a custom resource's schema declares, by path (field names from the root,
/// list items left out): the list-map keys, or an empty vector for a set.
pub(crate) type ListTypes = HashMap<Vec<String>, Vec<String>>;

/// The lists of `schema` (an `openAPIV3Schema`) that are not atomic.
pub(crate) fn list_types_of_schema(schema: &Value) -> ListTypes {
    fn walk(schema: &Value, path: &mut Vec<String>, out: &mut ListTypes) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                path.push(name.clone());
                walk(sub, path, out);
                path.pop();
            }
        }
        if let Some(items) = schema.get("items") {
            match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("map") => {
                    let keys = schema
                        .get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|ks| {
                            ks.iter()
                                .filter_map(|k| k.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    out.insert(path.clone(), keys);
                }
                Some("set") => {
                    out.insert(path.clone(), Vec::new());
                }
                _ => {}
            }
            walk(items, path, out);
        }
    }
    let mut out = ListTypes::new();
    walk(schema, &mut Vec::new(), &mut out);
    out
}

/// How the list at a path merges.
enum ListMerge<'a> {
    Atomic,
    Set,
    Map(Vec<&'a str>),
}

/// Where the lists of an object merge: a built-in kind, or a custom resource's list types.
pub(crate) struct Lists<'a> {
    pub kind: &'a str,
    pub builtin: bool,
    pub custom: &'a ListTypes,
}

impl Lists<'_> {
    fn at(&self, path: &[String]) -> ListMerge<'_> {
        if self.builtin {
            return match list_strategy(self.kind, path) {
                ListStrategy::MergeByKey(k) => ListMerge::Map(vec![k]),
                ListStrategy::MergePrimitive => ListMerge::Set,
                ListStrategy::Replace => ListMerge::Atomic,
            };
        }
        match self.custom.get(path) {
            Some(keys) if keys.is_empty() => ListMerge::Set,
            Some(keys) => ListMerge::Map(keys.iter().map(String::as_str).collect()),
            None => ListMerge::Atomic,
        }
    }
}

/// Whether two list-map items are the same item (every key present and equal).
fn same_item(a: &Value, b: &Value, keys: &[&str]) -> bool {
    keys.iter()
        .all(|k| a.get(*k).is_some() && a.get(*k) == b.get(*k))
}

/// Applies `config` to `target`; `last` is what this field manager applied previously.
pub(crate) fn server_side_apply(
    lists: &Lists<'_>,
    target: &mut Value,
    last: Option<&Value>,
    config: &Value,
) {
    let mut path = Vec::new();
    if let Some(last) = last {
        remove_dropped(lists, &mut path, target, last, config);
    }
    apply_merge(lists, &mut path, target, config);
}

/// Remove from `target` what `last` set and `config` no longer sets.
fn remove_dropped(
    lists: &Lists<'_>,
    path: &mut Vec<String>,
    target: &mut Value,
    last: &Value,
    config: &Value,
) {
    let (Value::Object(t), Value::Object(l)) = (target, last) else {
        return;
    };
    for (k, lv) in l {
        let cv = config.get(k);
        path.push(k.clone());
        match cv {
            None => {
                t.remove(k);
            }
            Some(cv) => match (t.get_mut(k), lv, cv) {
                (Some(tv @ Value::Object(_)), Value::Object(_), Value::Object(_)) => {
                    remove_dropped(lists, path, tv, lv, cv);
                }
                (Some(Value::Array(ta)), Value::Array(la), Value::Array(ca)) => {
                    match lists.at(path) {
                        ListMerge::Map(keys) => {
                            for le in la {
                                match ca.iter().find(|c| same_item(c, le, &keys)) {
                                    None => ta.retain(|e| !same_item(e, le, &keys)),
                                    Some(ce) => {
                                        if let Some(te) =
                                            ta.iter_mut().find(|e| same_item(e, le, &keys))
                                        {
                                            remove_dropped(lists, path, te, le, ce);
                                        }
                                    }
                                }
                            }
                        }
                        ListMerge::Set => ta.retain(|e| !la.contains(e) || ca.contains(e)),
                        ListMerge::Atomic => {}
                    }
                }
                _ => {}
            },
        }
        path.pop();
    }
}

fn apply_merge(lists: &Lists<'_>, path: &mut Vec<String>, target: &mut Value, config: &Value) {
    let Value::Object(c) = config else {
        *target = config.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, cv) in c {
        path.push(k.clone());
        match (t.get_mut(k), cv) {
            (Some(tv @ Value::Object(_)), Value::Object(_)) => apply_merge(lists, path, tv, cv),
            (Some(Value::Array(ta)), Value::Array(ca)) => match lists.at(path) {
                ListMerge::Map(keys) => {
                    for ce in ca {
                        match ta.iter_mut().find(|e| same_item(e, ce, &keys)) {
                            Some(te) => apply_merge(lists, path, te, ce),
                            None => ta.push(ce.clone()),
                        }
                    }
                }
                ListMerge::Set => {
                    for ce in ca {
                        if !ta.contains(ce) {
                            ta.push(ce.clone());
                        }
                    }
                }
                ListMerge::Atomic => *ta = ca.clone(),
            },
            _ => {
                t.insert(k.clone(), cv.clone());
            }
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_lists() -> ListTypes {
        ListTypes::new()
    }

    #[test]
    fn apply_removes_fields_the_manager_dropped() {
        let mut t =
            json!({"metadata": {"labels": {"a": "1", "b": "2", "other": "x"}}, "spec": {"x": 1}});
        let last = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1}});
        let config = json!({"metadata": {"labels": {"a": "3"}}, "spec": {"x": 1}});
        let custom = no_lists();
        let lists = Lists {
            kind: "Foo",
            builtin: false,
            custom: &custom,
        };
        server_side_apply(&lists, &mut t, Some(&last), &config);
        assert_eq!(t["metadata"]["labels"], json!({"a": "3", "other": "x"}));
    }

    #[test]
    fn custom_list_maps_merge_per_manager_and_other_lists_are_atomic() {
        let schema = json!({"type": "object", "properties": {"status": {"type": "object",
        "properties": {
            "nodes": {"type": "array", "x-kubernetes-list-type": "map",
                      "x-kubernetes-list-map-keys": ["name"],
                      "items": {"type": "object"}},
            "forks": {"type": "array", "items": {"type": "object"}},
        }}}});
        let custom = list_types_of_schema(&schema);
        assert_eq!(
            custom.get(&vec!["status".to_string(), "nodes".to_string()]),
            Some(&vec!["name".to_string()])
        );
        let lists = Lists {
            kind: "SandboxRoute",
            builtin: false,
            custom: &custom,
        };
        let mut t = json!({"status": {"forks": [{"service": "a"}]}});
        let a = json!({"status": {"nodes": [{"name": "a", "reason": "Full"}]}});
        let b = json!({"status": {"nodes": [{"name": "b", "reason": "Full"}]}});
        server_side_apply(&lists, &mut t, None, &a);
        server_side_apply(&lists, &mut t, None, &b);
        assert_eq!(
            t["status"]["nodes"],
            json!([{"name": "a", "reason": "Full"}, {"name": "b", "reason": "Full"}])
        );
        // Manager a applies no entry: its own goes, b's stays.
        let none = json!({"status": {"nodes": []}});
        server_side_apply(&lists, &mut t, Some(&a), &none);
        assert_eq!(
            t["status"]["nodes"],
            json!([{"name": "b", "reason": "Full"}])
        );
        // An atomic list is replaced whole.
        let forks = json!({"status": {"forks": [{"service": "b"}]}});
        server_side_apply(&lists, &mut t, None, &forks);
        assert_eq!(t["status"]["forks"], json!([{"service": "b"}]));
    }
}
