//! What the status writers know of each SandboxRoute, kept from the route watch's events: its
//! uid, generation, resourceVersion, whether it is being deleted, and its status in its
//! [cached](SandboxRouteStatus::cached) form.
//!
//! A reflector cache kept the whole object for this: at 10,000 routes about 1 KB a route, most
//! of it the empty fields of its metadata, beside the converted routes the table reads.
use std::sync::{Arc, PoisonError, RwLock};

use kube::runtime::watcher::Event;
use tokio::sync::watch;

use super::{
    crd::{SandboxRoute, SandboxRouteStatus},
    touched::ByRoute,
};

/// One SandboxRoute as the status writers see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteRecord {
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub resource_version: Option<String>,
    pub deleting: bool,
    /// In its cached form: compare it with [`SandboxRouteStatus::says`].
    pub status: Option<SandboxRouteStatus>,
}

impl RouteRecord {
    pub fn of(r: &SandboxRoute) -> Self {
        Self {
            uid: r.metadata.uid.clone(),
            generation: r.metadata.generation,
            resource_version: r.metadata.resource_version.clone(),
            deleting: r.metadata.deletion_timestamp.is_some(),
            status: r.status.as_ref().map(SandboxRouteStatus::cached),
        }
    }
}

#[derive(Default)]
struct Records {
    by_route: ByRoute<Arc<RouteRecord>>,
    /// The relist under way (`Init` … `InitDone`), swapped in whole at its end as a reflector
    /// does: meanwhile readers see the last complete list.
    relisting: Option<ByRoute<Arc<RouteRecord>>>,
}

/// The records of every SandboxRoute, shared by the route watch (which follows its events
/// into them) and the status writers.
#[derive(Clone)]
pub struct RouteRecords {
    records: Arc<RwLock<Records>>,
    listed: watch::Sender<bool>,
}

impl Default for RouteRecords {
    fn default() -> Self {
        Self {
            records: Arc::default(),
            listed: watch::Sender::new(false),
        }
    }
}

fn key(r: &SandboxRoute) -> (&str, &str) {
    (
        r.metadata.namespace.as_deref().unwrap_or_default(),
        r.metadata.name.as_deref().unwrap_or_default(),
    )
}

impl RouteRecords {
    /// Follows one watch event.
    pub fn on_event(&self, ev: &Event<SandboxRoute>) {
        let mut records = self.records.write().unwrap_or_else(PoisonError::into_inner);
        match ev {
            Event::Apply(r) => {
                let (ns, name) = key(r);
                records
                    .by_route
                    .insert(ns, name, Arc::new(RouteRecord::of(r)));
            }
            Event::Delete(r) => {
                let (ns, name) = key(r);
                records.by_route.remove(ns, name);
            }
            Event::Init => records.relisting = Some(ByRoute::default()),
            Event::InitApply(r) => {
                let (ns, name) = key(r);
                records.relisting.get_or_insert_default().insert(
                    ns,
                    name,
                    Arc::new(RouteRecord::of(r)),
                );
            }
            Event::InitDone => {
                if let Some(listed) = records.relisting.take() {
                    records.by_route = listed;
                }
                drop(records);
                self.listed.send_replace(true);
            }
        }
    }

    /// Route `ns/name`'s record, if the watch has it.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<RouteRecord>> {
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        records.by_route.get(ns, name).cloned()
    }

    /// Calls `f` with every record (under the lock: `f` must not block).
    pub fn for_each(&self, mut f: impl FnMut(&str, &str, &RouteRecord)) {
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        records.by_route.for_each(|ns, name, r| f(ns, name, r));
    }

    /// Returns once the watch has listed every route once.
    pub async fn wait_until_listed(&self) {
        let mut listed = self.listed.subscribe();
        // The sender lives in `self`: this cannot fail while we hold it.
        let _ = listed.wait_for(|l| *l).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{RouteCondition, SandboxRouteSpec};

    fn route(name: &str, rv: &str, message: &str) -> SandboxRoute {
        let mut r = SandboxRoute::new(
            name,
            SandboxRouteSpec {
                routing_key: "pr-1".into(),
                forks: Vec::new(),
                fallback: Default::default(),
                expires_at: None,
                inject_key: false,
            },
        );
        r.metadata.namespace = Some("shop".into());
        r.metadata.resource_version = Some(rv.into());
        r.metadata.generation = Some(1);
        r.status = Some(SandboxRouteStatus {
            conditions: vec![RouteCondition {
                type_: "Ready".into(),
                status: "True".into(),
                message: message.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        r
    }

    #[test]
    fn records_follow_applies_and_deletes_and_a_relist_replaces_them_whole_at_its_end() {
        let records = RouteRecords::default();
        records.on_event(&Event::Apply(route("a", "1", "m")));
        records.on_event(&Event::Apply(route("b", "2", "m")));
        let a = records.get("shop", "a").expect("a");
        assert_eq!(a.resource_version.as_deref(), Some("1"));
        let whole = route("a", "1", "m").status.expect("status");
        assert!(a.status.as_ref().is_some_and(|s| s.says(&whole)));
        assert!(
            a.status
                .as_ref()
                .is_some_and(|s| s.conditions[0].message.is_empty())
        );
        records.on_event(&Event::Delete(route("b", "3", "m")));
        assert_eq!(records.get("shop", "b"), None);

        records.on_event(&Event::Init);
        records.on_event(&Event::InitApply(route("c", "4", "m")));
        assert!(
            records.get("shop", "a").is_some() && records.get("shop", "c").is_none(),
            "the last complete list stands during a relist"
        );
        records.on_event(&Event::InitDone);
        let mut names = Vec::new();
        records.for_each(|ns, name, _| names.push(format!("{ns}/{name}")));
        assert_eq!(names, ["shop/c"]);
    }

    #[tokio::test]
    async fn listed_once_the_first_list_is_done() {
        let records = RouteRecords::default();
        let wait = tokio::spawn({
            let r = records.clone();
            async move { r.wait_until_listed().await }
        });
        records.on_event(&Event::Init);
        tokio::task::yield_now().await;
        assert!(!wait.is_finished());
        records.on_event(&Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .expect("listed")
            .expect("task");
    }
}
