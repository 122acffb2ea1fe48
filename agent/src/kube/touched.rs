//! Which SandboxRoutes the watch saw change since the status writer last looked.
//!
//! The status writer runs after every computation, over every route. Knowing which objects
//! changed lets it skip, without a cache lookup, each route whose computed status is the one it
//! last found right and whose object no event has touched since: at 10,000 routes a pass that
//! looked every route up (and built two keys for it) was a quarter of the agent's CPU under
//! churn.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Routes by (namespace, name), looked up by `&str` without building an owned key.
#[derive(Debug)]
pub struct ByRoute<V> {
    by_ns: HashMap<String, HashMap<String, V>>,
}

impl<V> Default for ByRoute<V> {
    fn default() -> Self {
        Self {
            by_ns: HashMap::new(),
        }
    }
}

impl<V> ByRoute<V> {
    pub fn get(&self, ns: &str, name: &str) -> Option<&V> {
        self.by_ns.get(ns)?.get(name)
    }

    pub fn insert(&mut self, ns: &str, name: &str, v: V) {
        match self.by_ns.get_mut(ns) {
            Some(names) => match names.get_mut(name) {
                Some(have) => *have = v,
                None => {
                    names.insert(name.to_owned(), v);
                }
            },
            None => {
                self.by_ns
                    .entry(ns.to_owned())
                    .or_default()
                    .insert(name.to_owned(), v);
            }
        }
    }

    pub fn remove(&mut self, ns: &str, name: &str) -> Option<V> {
        let names = self.by_ns.get_mut(ns)?;
        let v = names.remove(name);
        if names.is_empty() {
            self.by_ns.remove(ns);
        }
        v
    }

    pub fn for_each(&self, mut f: impl FnMut(&str, &str, &V)) {
        for (ns, names) in &self.by_ns {
            for (name, v) in names {
                f(ns, name, v);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_ns.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ns.values().all(HashMap::is_empty)
    }

    pub fn clear(&mut self) {
        self.by_ns.clear();
    }

    /// Keeps the routes `keep` accepts (and the namespaces that still have one).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.by_ns.retain(|ns, names| {
            names.retain(|name, _| keep(ns, name));
            !names.is_empty()
        });
    }
}

/// The routes touched since the last [`TouchedRoutes::take`].
#[derive(Debug, Default)]
pub struct Touched {
    /// A relist: any route may have changed.
    pub all: bool,
    routes: ByRoute<()>,
}

impl Touched {
    /// Everything: what a reader without a tracker must assume.
    pub fn everything() -> Self {
        Self {
            all: true,
            routes: ByRoute::default(),
        }
    }

    /// Whether route `ns/name` may have changed.
    pub fn contains(&self, ns: &str, name: &str) -> bool {
        self.all || self.routes.get(ns, name).is_some()
    }
}

/// Filled by the SandboxRoute watch, drained by the status writer.
#[derive(Clone, Debug, Default)]
pub struct TouchedRoutes(Arc<Mutex<Touched>>);

impl TouchedRoutes {
    fn locked(&self) -> std::sync::MutexGuard<'_, Touched> {
        // Plain data with no invariant a panic could break: a poisoned lock is taken as is.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An event about route `ns/name`.
    pub fn route(&self, ns: &str, name: &str) {
        let mut t = self.locked();
        if !t.all {
            t.routes.insert(ns, name, ());
        }
    }

    /// A relist: every route.
    pub fn all(&self) {
        let mut t = self.locked();
        t.all = true;
        t.routes.clear();
    }

    /// What was touched since the last call, leaving nothing touched.
    pub fn take(&self) -> Touched {
        std::mem::take(&mut *self.locked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_routes_are_reported_once_and_a_relist_touches_every_route() {
        let t = TouchedRoutes::default();
        t.route("a", "r1");
        t.route("b", "r1");
        let first = t.take();
        assert!(first.contains("a", "r1") && first.contains("b", "r1"));
        assert!(!first.contains("a", "r2") && !first.all);
        assert!(!t.take().contains("a", "r1"), "taken once");
        t.route("a", "r1");
        t.all();
        let relisted = t.take();
        assert!(relisted.all && relisted.contains("z", "anything"));
        assert!(Touched::everything().contains("x", "y"));
    }

    #[test]
    fn routes_are_found_by_namespace_and_name_and_retained_by_both() {
        let mut m: ByRoute<u32> = ByRoute::default();
        m.insert("ns", "a", 1);
        m.insert("ns", "b", 2);
        m.insert("other", "a", 3);
        m.insert("ns", "a", 4);
        assert_eq!(
            (m.get("ns", "a"), m.get("other", "a")),
            (Some(&4), Some(&3))
        );
        assert_eq!(m.get("ns", "c"), None);
        assert_eq!(m.len(), 3);
        assert_eq!(m.remove("other", "a"), Some(3));
        assert_eq!(m.remove("other", "a"), None);
        m.insert("other", "a", 3);
        let mut all = Vec::new();
        m.for_each(|ns, name, v| all.push((ns.to_owned(), name.to_owned(), *v)));
        all.sort();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], ("ns".into(), "a".into(), 4));
        m.retain(|ns, name| ns == "ns" && name == "b");
        assert_eq!(
            (m.len(), m.get("ns", "b"), m.get("other", "a")),
            (1, Some(&2), None)
        );
        m.clear();
        assert!(m.is_empty());
    }
}
