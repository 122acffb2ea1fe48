//! SandboxRoutes as the route table reads them, converted once per generation and shared.
//!
//! The SandboxRoute watch feeds every event here beside its reflector cache, so a change
//! converts the one route it is about: each published view shares the others' `Arc`s instead
//! of converting and sorting every route again. A relist builds the next set aside and swaps
//! it in whole at its end (as the reflector cache does), reusing each entry whose version is
//! unchanged.
use std::{collections::BTreeMap, sync::Arc};

use kube::runtime::watcher::Event;

use super::{convert, crd::SandboxRoute};
use crate::routes::SandboxRouteObj;

/// What a conversion depends on besides the name: what the route table reads of the object
/// changes only with these (a status write changes none of them).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    uid: Option<String>,
    generation: Option<i64>,
    deleting: bool,
}

impl Version {
    fn of(r: &SandboxRoute) -> Self {
        Self {
            uid: r.metadata.uid.clone(),
            generation: r.metadata.generation,
            deleting: r.metadata.deletion_timestamp.is_some(),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    version: Version,
    /// `None` while the route is being deleted (see [`convert::route`]).
    route: Option<Arc<SandboxRouteObj>>,
}

/// (namespace, name) → the converted route: iterated in the order the state lists routes.
type ByName = BTreeMap<(String, String), Entry>;

/// The converted SandboxRoutes, kept up to date from the watch's events.
#[derive(Debug, Default)]
pub struct ConvertedRoutes {
    by_name: ByName,
    /// The relist under way (`Init` … `InitDone`).
    relisting: Option<ByName>,
    conversions: u64,
}

fn key(r: &SandboxRoute) -> (String, String) {
    (
        r.metadata.namespace.clone().unwrap_or_default(),
        r.metadata.name.clone().unwrap_or_default(),
    )
}

impl ConvertedRoutes {
    /// Follows one watch event (before the reflector cache does, which keeps no spec).
    pub fn on_event(&mut self, ev: &Event<SandboxRoute>) {
        match ev {
            Event::Apply(r) => {
                let k = key(r);
                let e = converted(&mut self.conversions, self.by_name.get(&k), r);
                self.by_name.insert(k, e);
            }
            Event::Delete(r) => {
                self.by_name.remove(&key(r));
            }
            Event::Init => self.relisting = Some(ByName::new()),
            Event::InitApply(r) => {
                let k = key(r);
                let e = converted(&mut self.conversions, self.by_name.get(&k), r);
                self.relisting.get_or_insert_default().insert(k, e);
            }
            Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    self.by_name = listed;
                }
            }
        }
    }

    /// Every route that applies (not being deleted), sorted by (namespace, name).
    pub fn routes(&self) -> Vec<Arc<SandboxRouteObj>> {
        let mut v = Vec::with_capacity(self.by_name.len());
        v.extend(self.by_name.values().filter_map(|e| e.route.clone()));
        v
    }

    /// How many objects were converted so far (each new version of a route once).
    pub fn conversions(&self) -> u64 {
        self.conversions
    }
}

/// `old` if it is of the same version as `r`, else `r` converted (counted on `conversions`).
fn converted(conversions: &mut u64, old: Option<&Entry>, r: &SandboxRoute) -> Entry {
    let version = Version::of(r);
    match old {
        Some(e) if e.version == version => e.clone(),
        _ => {
            *conversions += 1;
            Entry {
                version,
                route: convert::route(r).map(Arc::new),
            }
        }
    }
}

#[cfg(test)]
#[path = "route_cache_tests.rs"]
mod tests;
