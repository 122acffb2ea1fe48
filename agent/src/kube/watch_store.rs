//! One watch → reflector → store, as a task: what it keeps of each object, and which events
//! count as a change for the route table.
use std::{collections::HashMap, fmt::Debug};

use futures::{StreamExt as _, TryStreamExt as _};
use kube::{
    Api, Resource, ResourceExt as _,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::touched::TouchedRoutes;

/// One watch: what it is called, what it keeps of each object, and what of it matters to the
/// route table (events that leave that unchanged do not trigger a recomputation).
pub(super) struct WatchSpec<K> {
    pub(super) what: &'static str,
    pub(super) api: Api<K>,
    pub(super) cfg: watcher::Config,
    pub(super) strip: fn(&mut K),
    /// Whether the reflector keeps the objects (after `strip`). A watch that only `follow`
    /// reads keeps none, and its store stays empty.
    pub(super) cached: bool,
    pub(super) relevant: fn(&K) -> u64,
    pub(super) touched: Option<watch::Sender<u64>>,
    /// Which objects `touched` was bumped for (the routes' status writer skips the others).
    pub(super) touched_routes: Option<TouchedRoutes>,
    /// Sees every event before the cache does (the routes' conversions).
    pub(super) follow: Option<Follower<K>>,
}

/// Something that follows a watch's events (before its cache does).
pub(super) type Follower<K> = Box<dyn FnMut(&Event<K>) + Send>;

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

/// One watch → reflector → store, as a task (the store stays empty for a watch that is not
/// `cached`: only its follower reads it). Bumps `changes` when an event changes what the table
/// reads of an object (per `relevant`), on deletes and on each completed (re)list, and
/// `relists` on each completed list after the first.
pub(super) fn watch_into_store<K>(
    spec: WatchSpec<K>,
    changes: watch::Sender<u64>,
    relists: watch::Sender<u64>,
    stop: CancellationToken,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let WatchSpec {
        what,
        api,
        cfg,
        strip,
        cached,
        relevant,
        touched,
        touched_routes,
        mut follow,
    } = spec;
    let task = tokio::spawn(async move {
        let events = watcher::watcher(api, cfg)
            .default_backoff()
            .modify(strip)
            .map_ok(move |ev| {
                if let Some(f) = follow.as_mut() {
                    f(&ev);
                }
                ev
            });
        let mut stream = if cached {
            events.reflect(writer).boxed()
        } else {
            drop(writer);
            events.boxed()
        };
        let mut failing = false;
        let mut listed = false;
        // namespace/name → relevance of what the store holds; rebuilt by each relist.
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut relisting: HashMap<String, u64> = HashMap::new();
        let key = |o: &K| {
            format!(
                "{}/{}",
                o.meta().namespace.as_deref().unwrap_or_default(),
                o.meta().name.as_deref().unwrap_or_default()
            )
        };
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = stream.next() => ev,
            };
            let Some(ev) = ev else { return };
            // An event about `o`: for the status writer, which route and that one was touched.
            let touched_by = |o: &K| {
                if let Some(t) = &touched_routes {
                    t.route(
                        o.meta().namespace.as_deref().unwrap_or_default(),
                        &o.name_any(),
                    );
                }
                if let Some(t) = &touched {
                    bump(t);
                }
            };
            match ev {
                Ok(Event::Apply(o)) => {
                    touched_by(&o);
                    let r = relevant(&o);
                    if seen.insert(key(&o), r) != Some(r) {
                        bump(&changes);
                    }
                }
                Ok(Event::Delete(o)) => {
                    touched_by(&o);
                    seen.remove(&key(&o));
                    bump(&changes);
                }
                Ok(Event::Init) => relisting.clear(),
                Ok(Event::InitApply(o)) => {
                    relisting.insert(key(&o), relevant(&o));
                }
                Ok(Event::InitDone) => {
                    seen = std::mem::take(&mut relisting);
                    if std::mem::replace(&mut listed, true) {
                        tracing::debug!(watch = what, "relisted");
                        bump(&relists);
                    }
                    if failing {
                        tracing::info!(watch = what, "watch recovered (relisted)");
                        failing = false;
                    }
                    if let Some(t) = &touched_routes {
                        t.all();
                    }
                    if let Some(t) = &touched {
                        bump(t);
                    }
                    bump(&changes);
                }
                Err(e) => {
                    // The cache keeps its contents; the watcher retries with a backoff.
                    if failing {
                        tracing::debug!(watch = what, error = %e, "watch still failing");
                    } else {
                        tracing::warn!(watch = what, error = %e,
                            "watch failed; keeping the last-good routes and retrying");
                        failing = true;
                    }
                }
            }
        }
    });
    (reader, task)
}
