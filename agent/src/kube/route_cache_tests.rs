use std::sync::Arc;

use kube::runtime::watcher::Event;
use serde_json::json;

use super::*;

/// A route of namespace `ns` at `generation` (a spec change bumps it; a status write does not,
/// but changes the resourceVersion).
fn route(ns: &str, name: &str, key: &str, generation: i64, rv: &str) -> SandboxRoute {
    serde_json::from_value(json!({
        "apiVersion": "shunt.dev/v1alpha1", "kind": "SandboxRoute",
        "metadata": { "name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                      "generation": generation, "resourceVersion": rv,
                      "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": { "routingKey": key, "forks": [{ "service": "reviews",
            "to": { "selector": { "shunt.dev/sandbox": key } } }] },
    }))
    .expect("a SandboxRoute")
}

fn listed(cache: &mut ConvertedRoutes, routes: &[SandboxRoute]) {
    cache.on_event(&Event::Init);
    for r in routes {
        cache.on_event(&Event::InitApply(r.clone()));
    }
    cache.on_event(&Event::InitDone);
}

fn names(routes: &[Arc<SandboxRouteObj>]) -> Vec<String> {
    routes.iter().map(|r| r.id()).collect()
}

#[test]
fn a_change_to_one_route_converts_only_that_route_and_shares_the_others() {
    let mut cache = ConvertedRoutes::default();
    let (a, b, c) = (
        route("shop", "b", "kb", 1, "10"),
        route("shop", "a", "ka", 1, "11"),
        route("bank", "z", "kz", 1, "12"),
    );
    listed(&mut cache, &[a.clone(), b.clone(), c.clone()]);
    assert_eq!(cache.conversions(), 3);
    let before = cache.routes();
    // The same routes, in the same order, as converting the whole list gives.
    let whole = convert::cluster_state([], [], [], [&a, &b, &c]).routes;
    assert_eq!(before, whole);
    assert_eq!(names(&before), ["bank/z", "shop/a", "shop/b"]);

    // One route's spec changes: one conversion, the other two are the same objects.
    cache.on_event(&Event::Apply(route("shop", "a", "ka2", 2, "13")));
    assert_eq!(
        cache.conversions(),
        4,
        "only the changed route was converted"
    );
    let after = cache.routes();
    assert_eq!(after[1].spec.routing_key, "ka2");
    assert!(Arc::ptr_eq(&before[0], &after[0]) && Arc::ptr_eq(&before[2], &after[2]));

    // A status write (new resourceVersion, same generation) converts nothing.
    cache.on_event(&Event::Apply(route("shop", "b", "kb", 1, "14")));
    assert_eq!(cache.conversions(), 4);
    assert!(Arc::ptr_eq(&cache.routes()[2], &before[2]));
}

#[test]
fn deletes_and_relists_leave_exactly_what_the_api_lists() {
    let mut cache = ConvertedRoutes::default();
    let (a, b) = (
        route("shop", "a", "ka", 1, "10"),
        route("shop", "b", "kb", 1, "11"),
    );
    listed(&mut cache, &[a.clone(), b.clone()]);
    cache.on_event(&Event::Delete(a.clone()));
    assert_eq!(names(&cache.routes()), ["shop/b"]);

    // Being deleted: it stops applying at once.
    let mut deleting = b.clone();
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    cache.on_event(&Event::Apply(deleting));
    assert!(cache.routes().is_empty());

    // A relist (a missed Delete, say): until it is done the last-good set stands; then the
    // listed set replaces it whole, reusing what did not change.
    listed(&mut cache, &[a.clone(), b.clone()]);
    let n = cache.conversions();
    cache.on_event(&Event::Init);
    cache.on_event(&Event::InitApply(b.clone()));
    assert_eq!(
        names(&cache.routes()),
        ["shop/a", "shop/b"],
        "last-good while listing"
    );
    cache.on_event(&Event::InitDone);
    assert_eq!(
        names(&cache.routes()),
        ["shop/b"],
        "a is gone: it was not listed"
    );
    assert_eq!(
        cache.conversions(),
        n,
        "b was unchanged: not converted again"
    );
}
