//! Raw storage, modelled on etcd: one global, monotonic revision counter (the resourceVersion),
//! a key/value map, and a bounded history of changes that watches replay from and that
//! "compaction" truncates.
//!
//! Nothing here knows API semantics (validation, finalizers, ...): that is `cluster.rs`. Keeping
//! this layer dumb makes the resourceVersion rules easy to check: every committed change bumps
//! the revision by one, is stamped into the object's `metadata.resourceVersion`, and is
//! appended to the history in revision order.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;

use super::meta::meta_mut;

/// Where an object lives: `storage` is `group/plural` (shared by all versions of a resource),
/// `ns` is `""` for cluster-scoped objects. The derived order is the list order, the same as
/// etcd's key order (namespace, then name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub(crate) storage: String,
    pub(crate) ns: String,
    pub(crate) name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed change. `prev` is the state before it (None for a creation); watches with
/// selectors need both sides to turn "stopped matching" into DELETED.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) key: Key,
    pub(crate) kind: EventType,
    pub(crate) object: Arc<Value>,
    pub(crate) prev: Option<Arc<Value>>,
}

pub(crate) struct Store {
    objects: BTreeMap<Key, Arc<Value>>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// Every event with `rv > compacted` is in `history`; older ones are gone.
    compacted: u64,
    max_history: usize,
    notify: watch::Sender<u64>,
}

impl Store {
    pub(crate) fn new(max_history: usize) -> Self {
        let (notify, _) = watch::channel(0);
        Self {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            compacted: 0,
            max_history: max_history.max(1),
            notify,
        }
    }

    /// The latest revision (the resourceVersion of the last write).
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest revision a watch or an exact read can still start from.
    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    /// A receiver that wakes on every commit. Subscribe while holding the cluster lock, after
    /// reading the state to start from, so that no commit can fall between the two.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    pub(crate) fn get(&self, key: &Key) -> Option<&Arc<Value>> {
        self.objects.get(key)
    }

    /// Current objects under `storage`, in key order, optionally in one namespace.
    pub(crate) fn range<'a>(
        &'a self,
        storage: &'a str,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Key, &'a Arc<Value>)> + 'a {
        let start = Key {
            storage: storage.to_string(),
            ns: ns.unwrap_or("").to_string(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.storage == storage && ns.is_none_or(|ns| k.ns == ns))
    }

    /// Objects under `storage` as they were at revision `rv`, rebuilt from the current state by
    /// undoing the newer history. `None` if `rv` is older than the kept history.
    pub(crate) fn snapshot_at(
        &self,
        storage: &str,
        ns: Option<&str>,
        rv: u64,
    ) -> Option<Vec<(Key, Arc<Value>)>> {
        if rv < self.compacted {
            return None;
        }
        let mut state: BTreeMap<Key, Arc<Value>> = self
            .range(storage, ns)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut undone: HashSet<&Key> = HashSet::new();
        for ev in self.events_after(rv) {
            if ev.key.storage != storage || ns.is_some_and(|ns| ev.key.ns != ns) {
                continue;
            }
            // The first change after `rv` tells what the key held at `rv`.
            if undone.insert(&ev.key) {
                match &ev.prev {
                    Some(prev) => state.insert(ev.key.clone(), prev.clone()),
                    None => state.remove(&ev.key),
                };
            }
        }
        Some(state.into_iter().collect())
    }

    /// Events with a revision greater than `rv`, oldest first.
    pub(crate) fn events_after(&self, rv: u64) -> impl Iterator<Item = &Arc<Event>> {
        let start = self.history.partition_point(|e| e.rv <= rv);
        self.history.range(start..)
    }

    /// Commit a change: `Some(object)` stores it (ADDED if new, else MODIFIED), `None` deletes the
    /// key, emitting DELETED with `last` (the final state of the object). Returns the stored
    /// object, stamped with its new resourceVersion.
    pub(crate) fn commit(
        &mut self,
        key: Key,
        new: Option<Value>,
        last: Option<Value>,
    ) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        let prev = self.objects.get(&key).cloned();
        let (kind, object) = match new {
            Some(mut obj) => {
                meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
                let obj = Arc::new(obj);
                self.objects.insert(key.clone(), obj.clone());
                let kind = if prev.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                (kind, obj)
            }
            None => {
                self.objects.remove(&key);
                let mut obj = last
                    .or_else(|| prev.as_deref().cloned())
                    .unwrap_or(Value::Null);
                if obj.is_object() {
                    meta_mut(&mut obj)
                        .insert("resourceVersion".into(), Value::String(rv.to_string()));
                }
                (EventType::Deleted, Arc::new(obj))
            }
        };
        self.history.push_back(Arc::new(Event {
            rv,
            key,
            kind,
            object: object.clone(),
            prev,
        }));
        while self.history.len() > self.max_history {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        self.notify.send_replace(rv);
        object
    }

    /// Drop all history up to the current revision, like an etcd compaction: any older
    /// resourceVersion is now "too old" (410 Expired).
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
        // Wake watches so that any that had not caught up notice they lost events.
        self.notify.send_replace(self.rv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> Key {
        Key {
            storage: "/pods".into(),
            ns: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn snapshots_undo_newer_history() {
        let mut s = Store::new(100);
        s.commit(
            key("a"),
            Some(json!({"metadata": {"name": "a"}, "v": 1})),
            None,
        );
        let rv1 = s.rv();
        s.commit(
            key("a"),
            Some(json!({"metadata": {"name": "a"}, "v": 2})),
            None,
        );
        s.commit(key("b"), Some(json!({"metadata": {"name": "b"}})), None);
        s.commit(key("a"), None, None);
        let snap = s.snapshot_at("/pods", None, rv1).expect("kept");
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].1["v"], 1);
        assert_eq!(s.events_after(rv1).count(), 3);
        s.compact();
        assert!(s.snapshot_at("/pods", None, rv1).is_none());
        assert_eq!(s.range("/pods", Some("default")).count(), 1);
    }
}
