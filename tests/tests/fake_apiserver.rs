//! The fake Kubernetes API server against unmodified clients: kube-rs (`Api`, `watcher`,
//! `reflector`, discovery) and the preinstalled `kubectl`.
//!
//! Every test starts its own server on its own port, so they run in parallel; every network
//! wait is bounded by a timeout. The kubectl tests skip (with a message) when kubectl is not
//! installed, unless `CI` or `SHUNT_REQUIRE_KERNEL_TESTS=1` is set, where that is a failure.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use http_body_util::BodyExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Client, CustomResource, CustomResourceExt as _, Discovery, ResourceExt as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tests::fake_apiserver::{Deletion, FakeApiServer};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Bound for single steps (a request, a convergence after a plain change).
const STEP: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .with_context(|| format!("timed out after {limit:?}: {what}"))
}

async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    within(what, limit, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

fn cm(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), value.to_string())])),
        ..Default::default()
    }
}

fn cm_json(ns: &str, name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": ns },
        "data": { "k": value },
    })
}

fn create_namespace(api: &FakeApiServer, name: &str) -> Result<()> {
    api.create(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } }))?;
    Ok(())
}

/// name -> data.k of ConfigMaps.
fn contents<'a>(cms: impl IntoIterator<Item = &'a ConfigMap>) -> BTreeMap<String, String> {
    cms.into_iter()
        .map(|c| {
            let v = c
                .data
                .as_ref()
                .and_then(|d| d.get("k"))
                .cloned()
                .unwrap_or_default();
            (c.name_any(), v)
        })
        .collect()
}

/// The server's ConfigMaps in `ns`, read directly from its store.
fn server_contents(api: &FakeApiServer, ns: &str) -> BTreeMap<String, String> {
    api.list("v1", "ConfigMap", Some(ns))
        .iter()
        .map(|v| {
            (
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["data"]["k"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A reflector over the ConfigMaps of one namespace, with kube's defaults.
struct Reflected {
    store: reflector::Store<ConfigMap>,
    task: tokio::task::JoinHandle<()>,
}

impl Reflected {
    fn start(client: Client, ns: &str, config: watcher::Config) -> Self {
        let api: Api<ConfigMap> = Api::namespaced(client, ns);
        let (store, writer) = reflector::store();
        let stream = reflector(writer, watcher(api, config).default_backoff());
        // Errors are part of the show (410s, refused connections): the watcher recovers from
        // them by itself, so they are only drained here.
        let task = tokio::spawn(stream.for_each(|_| futures::future::ready(())));
        Self { store, task }
    }

    fn contents(&self) -> BTreeMap<String, String> {
        contents(self.store.state().iter().map(|c| c.as_ref()))
    }

    /// Wait until the reflector's store equals the server's.
    async fn converge(&self, api: &FakeApiServer, ns: &str, limit: Duration) -> Result<()> {
        let res = eventually(
            "reflector store converges on the server state",
            limit,
            || self.contents() == server_contents(api, ns),
        )
        .await;
        res.with_context(|| {
            format!(
                "store {:?} vs server {:?}",
                self.contents(),
                server_contents(api, ns)
            )
        })
    }
}

impl Drop for Reflected {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Count LIST (not WATCH) requests for ConfigMaps in `ns`.
fn configmap_lists(api: &FakeApiServer, ns: &str) -> usize {
    let prefix = format!("GET /api/v1/namespaces/{ns}/configmaps?");
    api.requests()
        .iter()
        .filter(|r| r.starts_with(&prefix) && !r.contains("watch=true"))
        .count()
}

/// A raw request through kube's client (no status-code mapping): `(status, JSON or text)`.
async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Value)> {
    let mut b = hyper::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(kube::client::Body::from(body.to_vec()))?;
    let resp = within(path, STEP, client.send(req)).await??;
    let status = resp.status().as_u16();
    let bytes = within(path, STEP, resp.into_body().collect())
        .await??
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, body))
}

fn api_error(err: kube::Error) -> Result<(u16, String)> {
    match err {
        kube::Error::Api(s) => Ok((s.code, s.reason)),
        other => bail!("expected an API error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// LIST
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_yield_every_item_exactly_once_from_a_consistent_snapshot() -> Result<()> {
    let api = FakeApiServer::start().await?;
    create_namespace(&api, "paging")?;
    for i in 0..23 {
        api.create(cm_json("paging", &format!("cm-{i:02}"), "v"))?;
    }
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "paging");
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    let mut list_rv = None;
    loop {
        let mut lp = ListParams::default().limit(5);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = within("list page", STEP, cms.list(&lp)).await??;
        pages += 1;
        let rv = page.metadata.resource_version.clone();
        ensure!(
            rv.as_deref().is_some_and(|r| !r.is_empty()),
            "list has a resourceVersion"
        );
        // Every page of one paginated list is served from the same snapshot.
        ensure!(
            list_rv.is_none() || list_rv == rv,
            "pages share one resourceVersion"
        );
        list_rv = rv;
        if pages == 1 {
            ensure!(
                page.metadata.remaining_item_count == Some(18),
                "{:?}",
                page.metadata
            );
            // A change after the first page is not part of this list.
            api.create(cm_json("paging", "cm-zz-late", "v"))?;
        }
        for item in &page.items {
            ensure!(
                item.resource_version().is_some(),
                "item has a resourceVersion"
            );
            seen.push(item.name_any());
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    ensure!(pages == 5, "23 items in pages of 5 is 5 pages, got {pages}");
    let expected: Vec<String> = (0..23).map(|i| format!("cm-{i:02}")).collect();
    ensure!(
        seen == expected,
        "every item exactly once, in order: {seen:?}"
    );

    // A continue token older than the compacted history is 410 Expired.
    let first = cms.list(&ListParams::default().limit(5)).await?;
    let stale = first.metadata.continue_.context("continue token")?;
    api.create(cm_json("paging", "cm-zz-later", "v"))?;
    api.faults().compact_history();
    let err = cms
        .list(&ListParams::default().limit(5).continue_token(&stale))
        .await
        .expect_err("continue token from before compaction");
    ensure!(api_error(err)? == (410, "Expired".into()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_resource_version_semantics_match_the_apiserver() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    cms.create(&PostParams::default(), &cm("a", "1")).await?;
    let rv_a: u64 = api.resource_version();
    cms.create(&PostParams::default(), &cm("b", "1")).await?;

    // resourceVersion=0 (any) and NotOlderThan serve the latest state.
    let any = cms.list(&ListParams::default().match_any()).await?;
    ensure!(contents(&any.items).len() == 2);
    let newer = cms
        .list(
            &ListParams::default()
                .at(&rv_a.to_string())
                .matching(kube::api::VersionMatch::NotOlderThan),
        )
        .await?;
    ensure!(newer.items.len() == 2);
    // Exact reads see the past.
    let exact = cms
        .list(
            &ListParams::default()
                .at(&rv_a.to_string())
                .matching(kube::api::VersionMatch::Exact),
        )
        .await?;
    ensure!(exact.items.iter().map(|c| c.name_any()).collect::<Vec<_>>() == ["a"]);
    ensure!(exact.metadata.resource_version == Some(rv_a.to_string()));
    // ... until compacted.
    api.faults().compact_history();
    let err = cms
        .list(
            &ListParams::default()
                .at(&rv_a.to_string())
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .expect_err("exact read of a compacted version");
    ensure!(api_error(err)? == (410, "Expired".into()));
    // A version from the future is a 504 (kube-apiserver's "Too large resource version"), which
    // kube retries by default (with Retry-After): look at it without retries.
    let mut config = api.kube_config();
    config.default_retry = false;
    let cms: Api<ConfigMap> = Api::default_namespaced(Client::try_from(config)?);
    let err = cms
        .list(
            &ListParams::default()
                .at("999999")
                .matching(kube::api::VersionMatch::NotOlderThan),
        )
        .await
        .expect_err("future version");
    ensure!(api_error(err)?.0 == 504);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_field_selectors_filter_lists() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    for (name, labels) in [
        ("web-1", json!({ "app": "web", "tier": "1" })),
        ("web-2", json!({ "app": "web", "tier": "2" })),
        ("db", json!({ "app": "db" })),
        ("bare", json!({})),
    ] {
        api.create(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": "default", "labels": labels },
        }))?;
    }
    let names = |sel: &'static str| {
        let cms = cms.clone();
        async move {
            let l = cms.list(&ListParams::default().labels(sel)).await?;
            anyhow::Ok(l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>())
        }
    };
    ensure!(names("app=web").await? == ["web-1", "web-2"]);
    ensure!(names("app==web,tier=2").await? == ["web-2"]);
    ensure!(names("app!=web").await? == ["bare", "db"]);
    ensure!(names("app in (db, web)").await? == ["db", "web-1", "web-2"]);
    ensure!(names("app notin (web)").await? == ["bare", "db"]);
    ensure!(names("tier").await? == ["web-1", "web-2"]);
    ensure!(names("!app").await? == ["bare"]);

    let by_field = cms
        .list(&ListParams::default().fields("metadata.name=db"))
        .await?;
    ensure!(by_field.items.len() == 1);
    let not_ns = Api::<ConfigMap>::all(api.client())
        .list(&ListParams::default().fields("metadata.namespace!=default"))
        .await?;
    ensure!(not_ns.items.is_empty());
    // All-namespaces list.
    let all = Api::<ConfigMap>::all(api.client())
        .list(&ListParams::default())
        .await?;
    ensure!(all.items.len() == 4);

    // Unsupported field labels and malformed selectors are 400s.
    let err = cms
        .list(&ListParams::default().fields("data.k=v"))
        .await
        .expect_err("unsupported field");
    ensure!(api_error(err)?.0 == 400);
    let err = cms
        .list(&ListParams::default().labels("app in web"))
        .await
        .expect_err("malformed selector");
    ensure!(api_error(err)?.0 == 400);

    // Per-resource field labels: Pods by phase.
    let pods: Api<Pod> = Api::default_namespaced(api.client());
    api.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "p", "namespace": "default" },
        "spec": { "containers": [{ "name": "c", "image": "busybox:1.36" }] },
    }))?;
    let pending = pods
        .list(&ListParams::default().fields("status.phase=Pending"))
        .await?;
    ensure!(pending.items.len() == 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// WATCH
// ---------------------------------------------------------------------------------------

async fn next_event<K>(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> Result<WatchEvent<K>> {
    within("next watch event", STEP, stream.next())
        .await?
        .context("watch stream ended")?
        .context("watch stream error")
}

async fn next_non_bookmark<K>(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> Result<WatchEvent<K>> {
    loop {
        match next_event(stream).await? {
            WatchEvent::Bookmark(_) => continue,
            other => return Ok(other),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_every_change_after_the_resource_version_in_order() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    cms.create(&PostParams::default(), &cm("before", "0"))
        .await?;
    let list = cms.list(&ListParams::default()).await?;
    let rv = list.metadata.resource_version.context("list rv")?;
    // Changes made before the watch starts but after `rv` are replayed from history.
    cms.create(&PostParams::default(), &cm("a", "1")).await?;
    let mut stream = cms.watch(&WatchParams::default(), &rv).await?.boxed();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "k": "2" } })),
    )
    .await?;
    cms.delete("a", &DeleteParams::default()).await?;

    let mut last_rv = rv.parse::<u64>()?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = next_non_bookmark(&mut stream).await?;
        let (kind, obj) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            other => bail!("unexpected {other:?}"),
        };
        let obj_rv: u64 = obj.resource_version().context("event rv")?.parse()?;
        ensure!(
            obj_rv > last_rv,
            "resourceVersions increase: {obj_rv} after {last_rv}"
        );
        last_rv = obj_rv;
        seen.push((kind, obj.name_any(), contents([&obj])["a"].clone()));
    }
    ensure!(
        seen == [
            ("ADDED", "a".to_string(), "1".to_string()),
            ("MODIFIED", "a".into(), "2".into()),
            ("DELETED", "a".into(), "2".into()),
        ],
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_zero_starts_with_synthetic_added_events() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    for n in ["x", "y"] {
        cms.create(&PostParams::default(), &cm(n, "1")).await?;
    }
    let mut stream = cms.watch(&WatchParams::default(), "0").await?.boxed();
    let mut added = Vec::new();
    for _ in 0..2 {
        match next_non_bookmark(&mut stream).await? {
            WatchEvent::Added(o) => added.push(o.name_any()),
            other => bail!("expected ADDED, got {other:?}"),
        }
    }
    ensure!(added == ["x", "y"]);
    cms.create(&PostParams::default(), &cm("z", "1")).await?;
    match next_non_bookmark(&mut stream).await? {
        WatchEvent::Added(o) => ensure!(o.name_any() == "z"),
        other => bail!("expected ADDED z, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_resource_version_gets_one_in_stream_410() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let client = api.client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    cms.create(&PostParams::default(), &cm("a", "1")).await?;
    let old = api.resource_version() - 1;
    cms.create(&PostParams::default(), &cm("b", "1")).await?;
    api.faults().compact_history();

    // On the wire: HTTP 200, a single ERROR event carrying a 410 Expired Status, then EOF.
    let path = format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old}");
    let (status, body) = raw(&client, "GET", &path, &[], b"").await?;
    ensure!(status == 200, "status {status}");
    let text = body.to_string();
    let event: Value = if let Value::String(s) = &body {
        let lines: Vec<&str> = s.lines().collect();
        ensure!(lines.len() == 1, "exactly one event: {s}");
        serde_json::from_str(lines[0])?
    } else {
        body.clone()
    };
    ensure!(event["type"] == "ERROR", "{text}");
    ensure!(event["object"]["kind"] == "Status", "{text}");
    ensure!(event["object"]["code"] == 410, "{text}");
    ensure!(event["object"]["reason"] == "Expired", "{text}");
    ensure!(event["object"]["status"] == "Failure", "{text}");

    // Through kube: a WatchEvent::Error with code 410.
    let mut stream = cms
        .watch(&WatchParams::default(), &old.to_string())
        .await?
        .boxed();
    match next_event(&mut stream).await? {
        WatchEvent::Error(e) => ensure!(e.code == 410 && e.reason == "Expired", "{e:?}"),
        other => bail!("expected ERROR, got {other:?}"),
    }
    ensure!(within("stream end", STEP, stream.next()).await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_bookmarks_only_when_allowed_and_honours_timeout_seconds() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    let rv = api.resource_version().to_string();

    let mut with = cms
        .watch(&WatchParams::default().timeout(3), &rv)
        .await?
        .boxed();
    match next_event(&mut with).await? {
        WatchEvent::Bookmark(b) => {
            ensure!(b.metadata.resource_version.parse::<u64>()? >= rv.parse::<u64>()?);
        }
        other => bail!("expected BOOKMARK, got {other:?}"),
    }

    // timeoutSeconds=2 without bookmarks: no events at all, then the stream ends.
    let started = Instant::now();
    let mut without = cms
        .watch(&WatchParams::default().disable_bookmarks().timeout(2), &rv)
        .await?
        .boxed();
    let next = within("watch timeout", Duration::from_secs(10), without.next()).await?;
    ensure!(next.is_none(), "no events expected, got {next:?}");
    let took = started.elapsed();
    ensure!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "ended after {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_selectors_turn_objects_that_stop_matching_into_deleted() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    let rv = api.resource_version().to_string();
    let mut stream = cms
        .watch(&WatchParams::default().labels("app=web"), &rv)
        .await?
        .boxed();
    let label = |v: Option<&str>| Patch::Merge(json!({ "metadata": { "labels": { "app": v } } }));
    cms.create(&PostParams::default(), &cm("w", "1")).await?; // not matching: nothing
    cms.patch("w", &PatchParams::default(), &label(Some("web")))
        .await?; // starts matching
    cms.patch("w", &PatchParams::default(), &label(Some("db")))
        .await?; // stops matching
    cms.patch("w", &PatchParams::default(), &label(Some("web")))
        .await?;
    cms.delete("w", &DeleteParams::default()).await?;
    let mut kinds = Vec::new();
    for _ in 0..4 {
        kinds.push(match next_non_bookmark(&mut stream).await? {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            other => bail!("unexpected {other:?}"),
        });
    }
    ensure!(
        kinds == ["ADDED", "DELETED", "ADDED", "DELETED"],
        "{kinds:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// watcher + reflector
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_converges_after_creates_updates_and_deletes() -> Result<()> {
    let api = FakeApiServer::start().await?;
    create_namespace(&api, "refl")?;
    // More than kube's page size (500): the initial list takes two pages.
    for i in 0..520 {
        api.create(cm_json("refl", &format!("bulk-{i:03}"), "0"))?;
    }
    let r = Reflected::start(api.client(), "refl", watcher::Config::default());
    r.converge(&api, "refl", STEP).await?;
    ensure!(r.contents().len() == 520);
    ensure!(
        api.requests()
            .iter()
            .any(|l| l.starts_with("GET /api/v1/namespaces/refl/configmaps?")
                && l.contains("continue=")),
        "the initial list was paginated"
    );

    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "refl");
    cms.create(&PostParams::default(), &cm("a", "1")).await?;
    cms.create(&PostParams::default(), &cm("b", "1")).await?;
    let mut a = cms.get("a").await?;
    a.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    cms.replace("a", &PostParams::default(), &a).await?;
    cms.delete("b", &DeleteParams::default()).await?;
    for i in 0..10 {
        cms.delete(&format!("bulk-{i:03}"), &DeleteParams::default())
            .await?;
    }
    r.converge(&api, "refl", STEP).await?;
    ensure!(r.contents().get("a").map(String::as_str) == Some("2"));
    ensure!(!r.contents().contains_key("b"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_relists_after_compaction_without_losing_updates() -> Result<()> {
    let api = FakeApiServer::start().await?;
    create_namespace(&api, "compact")?;
    for n in ["a", "b", "c"] {
        api.create(cm_json("compact", n, "1"))?;
    }
    let r = Reflected::start(api.client(), "compact", watcher::Config::default());
    r.converge(&api, "compact", STEP).await?;
    ensure!(configmap_lists(&api, "compact") == 1);

    // Hold the re-watch at the door (latency), cut the watch, change things while nobody
    // watches, then compact: the re-watch's resourceVersion is gone, so the watcher gets an
    // in-stream 410 and must relist to see the changes.
    let faults = api.faults();
    faults.set_latency(Duration::from_millis(400));
    faults.cut_watches();
    api.merge_patch(
        "v1",
        "ConfigMap",
        Some("compact"),
        "a",
        json!({ "data": { "k": "2" } }),
    )?;
    api.delete("v1", "ConfigMap", Some("compact"), "b")?;
    api.create(cm_json("compact", "d", "1"))?;
    faults.compact_history();
    r.converge(&api, "compact", Duration::from_secs(30)).await?;
    faults.set_latency(Duration::ZERO);
    ensure!(
        r.contents()
            == BTreeMap::from([
                ("a".to_string(), "2".to_string()),
                ("c".into(), "1".into()),
                ("d".into(), "1".into()),
            ]),
        "{:?}",
        r.contents()
    );
    ensure!(
        configmap_lists(&api, "compact") >= 2,
        "the watcher relisted after the 410"
    );

    // And it keeps watching afterwards.
    api.create(cm_json("compact", "e", "1"))?;
    r.converge(&api, "compact", STEP).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_resumes_from_its_resource_version_after_watch_cuts() -> Result<()> {
    let api = FakeApiServer::start().await?;
    create_namespace(&api, "cuts")?;
    api.create(cm_json("cuts", "a", "0"))?;
    let r = Reflected::start(api.client(), "cuts", watcher::Config::default());
    r.converge(&api, "cuts", STEP).await?;
    for round in 1..=5 {
        api.faults().cut_watches();
        api.merge_patch(
            "v1",
            "ConfigMap",
            Some("cuts"),
            "a",
            json!({ "data": { "k": round.to_string() } }),
        )?;
        api.create(cm_json("cuts", &format!("n{round}"), "1"))?;
        r.converge(&api, "cuts", STEP).await?;
    }
    ensure!(r.contents().len() == 6);
    // Cuts are resumed with a watch from the last resourceVersion, never a relist.
    ensure!(configmap_lists(&api, "cuts") == 1, "{:?}", api.requests());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_converges_after_a_ten_second_outage() -> Result<()> {
    let api = FakeApiServer::start().await?;
    create_namespace(&api, "outage")?;
    for n in ["a", "b"] {
        api.create(cm_json("outage", n, "1"))?;
    }
    let r = Reflected::start(api.client(), "outage", watcher::Config::default());
    r.converge(&api, "outage", STEP).await?;
    let port = api.addr().port();

    let faults = api.faults();
    faults.stop().await;
    ensure!(!faults.is_running());
    ensure!(
        tokio::net::TcpStream::connect(api.addr()).await.is_err(),
        "the port refuses connections during the outage"
    );
    api.merge_patch(
        "v1",
        "ConfigMap",
        Some("outage"),
        "a",
        json!({ "data": { "k": "2" } }),
    )?;
    api.delete("v1", "ConfigMap", Some("outage"), "b")?;
    api.create(cm_json("outage", "c", "1"))?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    ensure!(
        r.contents().get("a").map(String::as_str) == Some("1"),
        "no data during the outage"
    );
    faults.restart().await?;
    ensure!(api.addr().port() == port);
    // kube's default backoff grows to several seconds during the outage.
    r.converge(&api, "outage", Duration::from_secs(60)).await?;
    api.create(cm_json("outage", "d", "1"))?;
    r.converge(&api, "outage", STEP).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watcher_converges() -> Result<()> {
    let api = FakeApiServer::start().await?;
    create_namespace(&api, "stream")?;
    for n in ["a", "b"] {
        api.create(cm_json("stream", n, "1"))?;
    }
    let r = Reflected::start(
        api.client(),
        "stream",
        watcher::Config::default().streaming_lists(),
    );
    r.converge(&api, "stream", STEP).await?;
    api.create(cm_json("stream", "c", "1"))?;
    api.delete("v1", "ConfigMap", Some("stream"), "a")?;
    r.converge(&api, "stream", STEP).await?;
    ensure!(
        api.requests()
            .iter()
            .any(|l| l.contains("sendInitialEvents=true")),
        "used a streaming list"
    );
    ensure!(configmap_lists(&api, "stream") == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_watcher_and_list_metadata_get_partial_objects() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    cms.create(&PostParams::default(), &cm("meta", "1")).await?;
    let list = cms.list_metadata(&ListParams::default()).await?;
    ensure!(list.items.len() == 1 && list.items[0].name_any() == "meta");
    let one = cms.get_metadata("meta").await?;
    ensure!(one.metadata.uid.is_some());

    // kube 5: an Api over PartialObjectMeta<K> makes metadata-only requests.
    let meta_api: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::default_namespaced(api.client());
    let mut stream = watcher(meta_api, watcher::Config::default())
        .applied_objects()
        .boxed();
    let first = within("metadata watcher", STEP, stream.try_next()).await??;
    ensure!(first.map(|m| m.name_any()) == Some("meta".into()));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sets_server_fields_and_rejects_duplicates_and_invalid_objects() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    let created = cms.create(&PostParams::default(), &cm("a", "1")).await?;
    let m = &created.metadata;
    ensure!(m.uid.as_ref().is_some_and(|u| u.len() == 36), "{m:?}");
    ensure!(m.creation_timestamp.is_some() && m.resource_version.is_some());
    // ConfigMaps have no generation in kube-apiserver (Deployments, CRs, ... do).
    ensure!(m.generation.is_none(), "{m:?}");

    let dup = cms
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .expect_err("dup");
    ensure!(api_error(dup)? == (409, "AlreadyExists".into()));
    let bad = cms
        .create(&PostParams::default(), &cm("Not_Valid", "1"))
        .await
        .expect_err("name");
    ensure!(api_error(bad)? == (422, "Invalid".into()));
    let mut labelled = cm("labelled", "1");
    labelled.metadata.labels = Some(BTreeMap::from([("app".into(), "a/b".into())]));
    let bad = cms
        .create(&PostParams::default(), &labelled)
        .await
        .expect_err("label");
    ensure!(api_error(bad)? == (422, "Invalid".into()));
    // Creating with a resourceVersion is refused like kube-apiserver does.
    let mut with_rv = cm("with-rv", "1");
    with_rv.metadata.resource_version = Some("5".into());
    let bad = cms
        .create(&PostParams::default(), &with_rv)
        .await
        .expect_err("rv");
    ensure!(api_error(bad)?.0 == 500);
    // Namespaces must exist.
    let missing: Api<ConfigMap> = Api::namespaced(api.client(), "nope");
    let err = missing
        .create(&PostParams::default(), &cm("x", "1"))
        .await
        .expect_err("ns");
    ensure!(api_error(err)? == (404, "NotFound".into()));
    // generateName.
    let mut generated = cm("", "1");
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let g = cms.create(&PostParams::default(), &generated).await?;
    ensure!(g.name_any().starts_with("gen-") && g.name_any().len() == 9);
    // Dry run changes nothing.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    cms.create(&dry, &cm("dry", "1")).await?;
    ensure!(cms.get_opt("dry").await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_put_is_a_409_conflict() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    cms.create(&PostParams::default(), &cm("c", "1")).await?;
    let mut first = cms.get("c").await?;
    let mut second = first.clone();
    first.data = Some(BTreeMap::from([("k".into(), "first".into())]));
    let updated = cms.replace("c", &PostParams::default(), &first).await?;
    ensure!(updated.resource_version() != second.resource_version());
    second.data = Some(BTreeMap::from([("k".into(), "second".into())]));
    let err = cms
        .replace("c", &PostParams::default(), &second)
        .await
        .expect_err("stale resourceVersion");
    ensure!(api_error(err)? == (409, "Conflict".into()));
    ensure!(contents([&cms.get("c").await?])["c"] == "first");

    // A write that changes nothing is a no-op: same resourceVersion.
    let same = cms.replace("c", &PostParams::default(), &updated).await?;
    ensure!(same.resource_version() == updated.resource_version());
    // Missing objects are 404 on update.
    let mut ghost = cm("ghost", "1");
    ghost.metadata.resource_version = Some("1".into());
    let err = cms
        .replace("ghost", &PostParams::default(), &ghost)
        .await
        .expect_err("404");
    ensure!(api_error(err)? == (404, "NotFound".into()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch_test_failure_is_422_and_changes_nothing() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    cms.create(&PostParams::default(), &cm("j", "1")).await?;
    let rv = cms.get("j").await?.resource_version();
    let failing: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": "/data/k", "value": "not-1" },
        { "op": "replace", "path": "/data/k", "value": "2" },
    ]))?;
    let err = cms
        .patch("j", &PatchParams::default(), &Patch::Json::<()>(failing))
        .await
        .expect_err("test op fails");
    ensure!(api_error(err)? == (422, "Invalid".into()));
    let after = cms.get("j").await?;
    ensure!(after.resource_version() == rv && contents([&after])["j"] == "1");

    let passing: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": "/data/k", "value": "1" },
        { "op": "replace", "path": "/data/k", "value": "2" },
    ]))?;
    let after = cms
        .patch("j", &PatchParams::default(), &Patch::Json::<()>(passing))
        .await?;
    ensure!(contents([&after])["j"] == "2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_strategic_and_server_side_apply_patches() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let deploys: Api<Deployment> = Api::default_namespaced(api.client());
    let deploy: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "labels": { "app": "web" } },
        "spec": {
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [
                    { "name": "app", "image": "app:1", "ports": [{ "containerPort": 80 }] },
                    { "name": "sidecar", "image": "side:1" },
                ] },
            },
        },
    }))?;
    deploys.create(&PostParams::default(), &deploy).await?;

    // Strategic merge: containers merge by name; the other container and fields survive.
    let smp = json!({ "spec": { "template": { "spec": { "containers": [{ "name": "app", "image": "app:2" }] } } } });
    let d = deploys
        .patch("web", &PatchParams::default(), &Patch::Strategic(smp))
        .await?;
    let containers = d
        .spec
        .as_ref()
        .map(|s| s.template.spec.clone().unwrap_or_default().containers)
        .unwrap_or_default();
    ensure!(containers.len() == 2);
    ensure!(containers[0].image.as_deref() == Some("app:2"));
    ensure!(
        containers[0]
            .ports
            .as_ref()
            .is_some_and(|p| p[0].container_port == 80)
    );
    ensure!(d.metadata.generation == Some(2));

    // Merge patch replaces lists wholesale (RFC 7386).
    let d = deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "extra": "yes" } } })),
        )
        .await?;
    ensure!(d.labels().get("extra").map(String::as_str) == Some("yes"));
    ensure!(
        d.metadata.generation == Some(2),
        "metadata changes don't bump generation"
    );

    // Server-side apply creates, then re-applies; fields the manager dropped are removed.
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    let ssa = PatchParams::apply("shunt-test");
    let applied = cms
        .patch(
            "ssa",
            &ssa,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "ssa", "labels": { "a": "1", "b": "2" } },
                "data": { "k": "1" },
            })),
        )
        .await?;
    ensure!(applied.labels().len() == 2);
    let applied = cms
        .patch(
            "ssa",
            &ssa,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "ssa", "labels": { "a": "1" } },
                "data": { "k": "2" },
            })),
        )
        .await?;
    ensure!(applied.labels().len() == 1, "{:?}", applied.labels());
    ensure!(contents([&applied])["ssa"] == "2");
    // Apply without a field manager is refused.
    let err = cms
        .patch(
            "ssa",
            &PatchParams::default(),
            &Patch::Apply(
                json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "ssa" } }),
            ),
        )
        .await
        .expect_err("fieldManager required");
    ensure!(api_error(err)?.0 == 422);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_is_separate_and_generation_tracks_spec_only() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let deploys: Api<Deployment> = Api::default_namespaced(api.client());
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "s" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "s" } },
            "template": { "metadata": { "labels": { "app": "s" } },
                          "spec": { "containers": [{ "name": "c", "image": "i:1" }] } },
        },
        "status": { "replicas": 42 },
    }))?;
    let d = deploys.create(&PostParams::default(), &deploy).await?;
    ensure!(
        d.status.as_ref().and_then(|s| s.replicas).is_none(),
        "status is ignored on create"
    );
    ensure!(d.metadata.generation == Some(1));

    let d = deploys
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "replicas": 3 }, "spec": { "replicas": 9 } })),
        )
        .await?;
    ensure!(d.status.as_ref().and_then(|s| s.replicas) == Some(3));
    ensure!(
        d.spec.as_ref().and_then(|s| s.replicas) == Some(1),
        "status writes ignore spec"
    );
    ensure!(d.metadata.generation == Some(1));

    let d = deploys
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 2 }, "status": { "replicas": 0 } })),
        )
        .await?;
    ensure!(d.spec.as_ref().and_then(|s| s.replicas) == Some(2));
    ensure!(
        d.status.as_ref().and_then(|s| s.replicas) == Some(3),
        "main writes ignore status"
    );
    ensure!(d.metadata.generation == Some(2));

    // The /scale subresource changes spec.replicas only.
    let scale = deploys
        .patch_scale(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 4 } })),
        )
        .await?;
    ensure!(scale.spec.and_then(|s| s.replicas) == Some(4));
    ensure!(
        scale
            .status
            .is_some_and(|s| s.selector.as_deref() == Some("app=s"))
    );
    let d = deploys.get("s").await?;
    ensure!(d.spec.as_ref().and_then(|s| s.replicas) == Some(4));
    ensure!(d.metadata.generation == Some(3));

    let mut full = deploys.get_status("s").await?;
    full.status
        .get_or_insert_with(Default::default)
        .ready_replicas = Some(2);
    let d = deploys
        .replace_status("s", &PostParams::default(), &full)
        .await?;
    ensure!(d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2));
    ensure!(d.metadata.generation == Some(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_waits_for_finalizers_and_emits_modified_then_deleted() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    let mut held = cm("held", "1");
    held.metadata.finalizers = Some(vec!["shunt.example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await?;
    let rv = api.resource_version().to_string();
    let mut stream = cms.watch(&WatchParams::default(), &rv).await?.boxed();

    let res = cms.delete("held", &DeleteParams::default()).await?;
    let pending = res
        .left()
        .context("an object with finalizers is returned, not a Status")?;
    ensure!(pending.metadata.deletion_timestamp.is_some());
    match next_non_bookmark(&mut stream).await? {
        WatchEvent::Modified(o) => ensure!(o.metadata.deletion_timestamp.is_some()),
        other => bail!("expected MODIFIED, got {other:?}"),
    }
    ensure!(cms.get_opt("held").await?.is_some(), "still there");
    // New finalizers can't be added while deleting.
    let err = cms
        .patch("held", &PatchParams::default(), &Patch::Merge(json!({ "metadata": { "finalizers": ["shunt.example.com/hold", "x.example.com/more"] } })))
        .await
        .expect_err("no new finalizers");
    ensure!(api_error(err)?.0 == 422);

    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await?;
    match next_non_bookmark(&mut stream).await? {
        WatchEvent::Deleted(o) => ensure!(o.name_any() == "held"),
        other => bail!("expected DELETED, got {other:?}"),
    }
    ensure!(cms.get_opt("held").await?.is_none());

    // Without finalizers: gone at once, answered with a Success Status.
    cms.create(&PostParams::default(), &cm("plain", "1"))
        .await?;
    let res = cms.delete("plain", &DeleteParams::default()).await?;
    ensure!(res.right().is_some_and(|s| s.is_success()));
    // Preconditions.
    let c = cms.create(&PostParams::default(), &cm("pre", "1")).await?;
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("00000000-0000-0000-0000-000000000000".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let err = cms.delete("pre", &dp).await.expect_err("uid precondition");
    ensure!(api_error(err)? == (409, "Conflict".into()));
    ensure!(c.uid().is_some());

    // The test handle deletes the same way.
    api.create(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "h2", "namespace": "default", "finalizers": ["shunt.example.com/hold"] },
    }))?;
    ensure!(matches!(
        api.delete("v1", "ConfigMap", None, "h2")?,
        Deletion::Pending(_)
    ));
    api.merge_patch(
        "v1",
        "ConfigMap",
        None,
        "h2",
        json!({ "metadata": { "finalizers": [] } }),
    )?;
    ensure!(api.get("v1", "ConfigMap", None, "h2").is_none());
    ensure!(matches!(
        api.delete("v1", "ConfigMap", None, "pre")?,
        Deletion::Deleted(_)
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_its_contents_then_itself() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let client = api.client();
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": "doomed" } }))?;
    let created = nss.create(&PostParams::default(), &ns).await?;
    ensure!(
        created
            .labels()
            .get("kubernetes.io/metadata.name")
            .map(String::as_str)
            == Some("doomed")
    );
    ensure!(created.status.and_then(|s| s.phase).as_deref() == Some("Active"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    cms.create(&PostParams::default(), &cm("plain", "1"))
        .await?;
    let mut held = cm("held", "1");
    held.metadata.finalizers = Some(vec!["shunt.example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await?;

    nss.delete("doomed", &DeleteParams::default()).await?;
    let ns = nss.get("doomed").await?;
    ensure!(ns.status.and_then(|s| s.phase).as_deref() == Some("Terminating"));
    ensure!(cms.get_opt("plain").await?.is_none());
    ensure!(cms.get("held").await?.metadata.deletion_timestamp.is_some());
    let err = cms
        .create(&PostParams::default(), &cm("new", "1"))
        .await
        .expect_err("terminating");
    ensure!(api_error(err)? == (403, "Forbidden".into()));

    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await?;
    ensure!(
        nss.get_opt("doomed").await?.is_none(),
        "namespace finalized once empty"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_cluster_ips_and_port_defaults_like_a_real_cluster() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let svcs: Api<Service> = Api::default_namespaced(api.client());
    let k8s = svcs.get("kubernetes").await?;
    ensure!(k8s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("10.96.0.1"));

    let svc: Service = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80 }] },
    }))?;
    let created = svcs.create(&PostParams::default(), &svc).await?;
    let spec = created.spec.clone().context("spec")?;
    ensure!(spec.cluster_ip.as_deref() == Some("10.96.0.11"), "{spec:?}");
    ensure!(spec.cluster_ips == Some(vec!["10.96.0.11".into()]));
    ensure!(spec.type_.as_deref() == Some("ClusterIP"));
    let port = &spec.ports.as_ref().context("ports")?[0];
    ensure!(port.protocol.as_deref() == Some("TCP"));
    ensure!(
        port.target_port
            == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80))
    );

    // An update that omits the ClusterIP keeps it; changing it is refused.
    let mut replace = svc.clone();
    replace.metadata.resource_version = created.metadata.resource_version.clone();
    replace
        .spec
        .as_mut()
        .context("spec")?
        .ports
        .as_mut()
        .context("ports")?[0]
        .port = 8080;
    let updated = svcs
        .replace("web", &PostParams::default(), &replace)
        .await?;
    ensure!(updated.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("10.96.0.11"));
    let err = svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "spec": { "clusterIP": "10.96.0.99", "clusterIPs": ["10.96.0.99"] } }),
            ),
        )
        .await
        .expect_err("clusterIP is immutable");
    ensure!(api_error(err)? == (422, "Invalid".into()));
    // Taken or out-of-range addresses are refused.
    let taken: Service = serde_json::from_value(json!({
        "metadata": { "name": "taken" },
        "spec": { "clusterIP": "10.96.0.11", "ports": [{ "port": 80 }] },
    }))?;
    let err = svcs
        .create(&PostParams::default(), &taken)
        .await
        .expect_err("taken");
    ensure!(api_error(err)?.0 == 422);
    // Service names are DNS-1035 labels.
    let bad: Service = serde_json::from_value(json!({
        "metadata": { "name": "1web" }, "spec": { "ports": [{ "port": 80 }] },
    }))?;
    let err = svcs
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("name");
    ensure!(api_error(err)?.0 == 422);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_429s_are_retried_by_kube_and_500s_surface() -> Result<()> {
    let api = FakeApiServer::start().await?;
    api.create(cm_json("default", "f", "1"))?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client());
    let before = api.requests().len();
    api.faults().fail_next(2, 429);
    within("get through 429s", STEP, cms.get("f")).await??;
    ensure!(api.requests().len() - before == 3, "two 429s, then success");

    let mut config = api.kube_config();
    config.default_retry = false;
    let no_retry: Api<ConfigMap> = Api::default_namespaced(Client::try_from(config)?);
    api.faults().fail_next(1, 429);
    let err = no_retry.get("f").await.expect_err("429");
    ensure!(api_error(err)? == (429, "TooManyRequests".into()));

    api.faults().fail_next(1, 500);
    let err = cms.get("f").await.expect_err("500");
    ensure!(api_error(err)? == (500, "InternalError".into()));
    within("healthy again", STEP, cms.get("f")).await??;

    // Latency.
    api.faults().set_latency(Duration::from_millis(300));
    let t = Instant::now();
    cms.get("f").await?;
    ensure!(t.elapsed() >= Duration::from_millis(300));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_status_objects_with_the_right_codes_and_reasons() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let client = api.client();
    let json_ct = [("content-type", "application/json")];
    let base = "/api/v1/namespaces/default/configmaps";
    let expect = |(status, body): (u16, Value), code: u16, reason: &str| -> Result<()> {
        ensure!(status == code, "status {status}, body {body}");
        ensure!(
            body["kind"] == "Status" && body["apiVersion"] == "v1",
            "{body}"
        );
        ensure!(
            body["status"] == "Failure" && body["code"] == code,
            "{body}"
        );
        ensure!(body["reason"] == reason, "{body}");
        Ok(())
    };
    expect(
        raw(&client, "POST", base, &json_ct, b"{not json").await?,
        400,
        "BadRequest",
    )?;
    expect(
        raw(&client, "GET", &format!("{base}/missing"), &[], b"").await?,
        404,
        "NotFound",
    )?;
    expect(
        raw(&client, "GET", "/api/v1/nothings", &[], b"").await?,
        404,
        "NotFound",
    )?;
    let obj = serde_json::to_vec(&cm_json("default", "e", "1"))?;
    ensure!(raw(&client, "POST", base, &json_ct, &obj).await?.0 == 201);
    expect(
        raw(&client, "POST", base, &json_ct, &obj).await?,
        409,
        "AlreadyExists",
    )?;
    expect(
        raw(&client, "POST", &format!("{base}/e"), &json_ct, &obj).await?,
        405,
        "MethodNotAllowed",
    )?;
    expect(
        raw(
            &client,
            "PATCH",
            &format!("{base}/e"),
            &[("content-type", "text/plain")],
            b"{}",
        )
        .await?,
        415,
        "UnsupportedMediaType",
    )?;
    expect(
        raw(
            &client,
            "PATCH",
            &format!("{base}/e"),
            &[("content-type", "application/merge-patch+json")],
            b"[oops",
        )
        .await?,
        400,
        "BadRequest",
    )?;
    expect(
        raw(&client, "POST", base, &json_ct, b"[1,2]").await?,
        400,
        "BadRequest",
    )?;
    expect(
        raw(&client, "POST", base, &json_ct, br#"{"metadata":{}}"#).await?,
        422,
        "Invalid",
    )?;
    expect(
        raw(
            &client,
            "GET",
            &format!("{base}?resourceVersion=abc&resourceVersionMatch=Exact"),
            &[],
            b"",
        )
        .await?,
        400,
        "BadRequest",
    )?;
    // Stale PUT through the raw protocol too.
    let mut stale = cm_json("default", "e", "2");
    stale["metadata"]["resourceVersion"] = json!("1");
    expect(
        raw(
            &client,
            "PUT",
            &format!("{base}/e"),
            &json_ct,
            &serde_json::to_vec(&stale)?,
        )
        .await?,
        409,
        "Conflict",
    )?;
    // kubectl's Accept header gets a Table.
    let (status, table) = raw(
        &client,
        "GET",
        base,
        &[(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )],
        b"",
    )
    .await?;
    ensure!(status == 200 && table["kind"] == "Table", "{table}");
    ensure!(table["rows"][0]["cells"][0] == "e", "{table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_event_recorder_publishes_events_k8s_io_events() -> Result<()> {
    use kube::Resource as _;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let api = FakeApiServer::start().await?;
    let client = api.client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let target = cms
        .create(&PostParams::default(), &cm("subject", "1"))
        .await?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "shunt".into(),
            instance: Some("shunt-0".into()),
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Steered".into(),
        note: Some("traffic steered".into()),
        action: "Steer".into(),
        secondary: None,
    };
    let reference = target.object_ref(&());
    within("publish", STEP, recorder.publish(&ev, &reference)).await??;
    // The same event again becomes a series on the same object (a PATCH).
    within("publish again", STEP, recorder.publish(&ev, &reference)).await??;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::default_namespaced(client);
    let list = events.list(&ListParams::default()).await?;
    ensure!(list.items.len() == 1, "{:?}", list.items);
    let e = &list.items[0];
    ensure!(e.reason.as_deref() == Some("Steered"));
    ensure!(e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("subject"));
    ensure!(e.series.as_ref().is_some_and(|s| s.count == 2), "{e:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// CRDs and discovery
// ---------------------------------------------------------------------------------------

/// A custom resource as Shunt would define one.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[kube(
    group = "shunt.example.com",
    version = "v1",
    kind = "Route",
    namespaced,
    status = "RouteStatus",
    shortname = "rt"
)]
pub struct RouteSpec {
    pub target: String,
    pub weight: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
pub struct RouteStatus {
    pub ready: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_created_through_the_api_serves_its_custom_resource() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let client = api.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Route::crd()).await?;
    within(
        "CRD established",
        STEP,
        await_condition(
            crds.clone(),
            "routes.shunt.example.com",
            conditions::is_crd_established(),
        ),
    )
    .await??;

    let routes: Api<Route> = Api::default_namespaced(client.clone());
    let mut r = Route::new(
        "r1",
        RouteSpec {
            target: "10.0.0.1:80".into(),
            weight: 1,
        },
    );
    r.status = Some(RouteStatus { ready: true });
    let created = routes.create(&PostParams::default(), &r).await?;
    ensure!(created.status.is_none(), "status is ignored on create");
    let with_status = routes
        .patch_status(
            "r1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "ready": true } })),
        )
        .await?;
    ensure!(with_status.status == Some(RouteStatus { ready: true }));
    ensure!(with_status.metadata.generation == Some(1));
    let bumped = routes
        .patch(
            "r1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "weight": 5 } })),
        )
        .await?;
    ensure!(bumped.metadata.generation == Some(2) && bumped.spec.weight == 5);
    // Custom resources: no strategic merge patch, and PUT needs a resourceVersion.
    let err = routes
        .patch(
            "r1",
            &PatchParams::default(),
            &Patch::Strategic(json!({ "spec": { "weight": 6 } })),
        )
        .await
        .expect_err("SMP on a CR");
    ensure!(api_error(err)?.0 == 415);
    let mut unconditional = bumped.clone();
    unconditional.metadata.resource_version = None;
    let err = routes
        .replace("r1", &PostParams::default(), &unconditional)
        .await
        .expect_err("PUT without resourceVersion");
    ensure!(api_error(err)?.0 == 422);
    let list = routes.list(&ListParams::default()).await?;
    ensure!(list.items.len() == 1);

    // Discovery, plain and aggregated, knows the new resource.
    let discovery = within("discovery", STEP, Discovery::new(client.clone()).run()).await??;
    ensure!(discovery.has_group("shunt.example.com"));
    ensure!(discovery.has_group("apps") && discovery.has_group("discovery.k8s.io"));
    let aggregated = within(
        "aggregated discovery",
        STEP,
        Discovery::new(client.clone()).run_aggregated(),
    )
    .await??;
    let group = aggregated
        .get("shunt.example.com")
        .context("group in aggregated discovery")?;
    ensure!(group.recommended_kind("Route").is_some());
    ensure!(
        aggregated
            .get("")
            .is_some_and(|core| core.recommended_kind("Service").is_some())
    );

    // Deleting the CRD deletes its instances and stops serving it.
    crds.delete("routes.shunt.example.com", &DeleteParams::default())
        .await?;
    let err = routes.list(&ListParams::default()).await.expect_err("gone");
    ensure!(api_error(err)?.0 == 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_cluster_scoped_crd_works_with_dynamic_objects_and_watchers() -> Result<()> {
    let api = FakeApiServer::start().await?;
    api.register_crd("net.example.com", "v1alpha1", "pools", "Pool", false)?;
    let ar = kube::api::ApiResource {
        group: "net.example.com".into(),
        version: "v1alpha1".into(),
        api_version: "net.example.com/v1alpha1".into(),
        kind: "Pool".into(),
        plural: "pools".into(),
    };
    let pools: Api<kube::api::DynamicObject> = Api::all_with(api.client(), &ar);
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "net.example.com/v1alpha1", "kind": "Pool",
        "metadata": { "name": "p1" }, "spec": { "cidr": "10.1.0.0/16" },
    }))?;
    pools.create(&PostParams::default(), &obj).await?;
    let got = pools.get("p1").await?;
    ensure!(got.data["spec"]["cidr"] == "10.1.0.0/16");
    ensure!(got.metadata.namespace.is_none(), "cluster-scoped");

    let writer = reflector::store::Writer::new(ar.clone());
    let store = writer.as_reader();
    let stream = reflector(
        writer,
        watcher(pools.clone(), watcher::Config::default()).default_backoff(),
    );
    let task = tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    api.create(json!({ "apiVersion": "net.example.com/v1alpha1", "kind": "Pool", "metadata": { "name": "p2" } }))?;
    let res = eventually("dynamic reflector sees both pools", STEP, || {
        store.state().len() == 2
    })
    .await;
    task.abort();
    res
}

// ---------------------------------------------------------------------------------------
// kubectl
// ---------------------------------------------------------------------------------------

/// The preinstalled kubectl, with a kubeconfig and cache dir for one server.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
    dir: tempfile::TempDir,
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

impl Kubectl {
    /// `None` (after saying so) when kubectl is absent and not required.
    fn for_server(api: &FakeApiServer) -> Result<Option<Self>> {
        let Some(bin) = find_on_path("kubectl") else {
            let required = std::env::var("SHUNT_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1")
                || std::env::var_os("CI").is_some();
            if required {
                bail!(
                    "kubectl is not installed, and CI / SHUNT_REQUIRE_KERNEL_TESTS=1 requires the kubectl tests to run"
                );
            }
            eprintln!(
                "SKIPPED: kubectl not found on PATH; install it to run the kubectl tests against the fake API server"
            );
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        let cache = dir.path().join("cache");
        Ok(Some(Self {
            bin,
            kubeconfig,
            cache,
            dir,
        }))
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Run to completion: `(success, stdout, stderr)`.
    async fn run(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = within(
            &format!("kubectl {args:?}"),
            Duration::from_secs(60),
            self.command(args).output(),
        )
        .await??;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Run and require success; returns stdout.
    async fn ok(&self, args: &[&str]) -> Result<String> {
        let (ok, out, err) = self.run(args).await?;
        ensure!(ok, "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}");
        Ok(out)
    }

    fn file(&self, name: &str, text: &str) -> Result<String> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p.to_string_lossy().into_owned())
    }
}

/// Read lines from a child's stdout until one satisfies `want`.
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(STEP, async {
        while let Some(line) = lines.next_line().await? {
            let done = want(&line);
            seen.push(line);
            if done {
                return Ok(());
            }
        }
        bail!("output ended")
    })
    .await;
    match read {
        Ok(Ok(())) => Ok(seen),
        Ok(Err(e)) => Err(e.context(format!("{what}; saw {seen:?}"))),
        Err(_) => bail!("timed out after {STEP:?}: {what}; saw {seen:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gets_applies_a_deployment_and_watches_changes() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let Some(k) = Kubectl::for_server(&api)? else {
        return Ok(());
    };
    let out = k.ok(&["get", "namespaces"]).await?;
    ensure!(
        out.contains("NAME") && out.contains("default") && out.contains("kube-system"),
        "{out}"
    );
    let out = k
        .ok(&[
            "get",
            "svc",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .await?;
    ensure!(out == "10.96.0.1", "{out}");

    let manifest = |image: &str, replicas: u32| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {{app: web}}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: app\n        image: {image}\n        ports:\n        - containerPort: 8080\n      - name: sidecar\n        image: side:1\n"
        )
    };
    let f = k.file("deploy.yaml", &manifest("app:1", 1))?;
    let out = k.ok(&["apply", "-f", &f]).await?;
    ensure!(out.contains("deployment.apps/web created"), "{out}");
    let d = api
        .get("apps/v1", "Deployment", Some("default"), "web")
        .context("created")?;
    ensure!(
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string(),
        "{d}"
    );
    // Re-apply with changes: kubectl computes a strategic merge patch from the last-applied
    // annotation.
    let f = k.file("deploy.yaml", &manifest("app:2", 3))?;
    let out = k.ok(&["apply", "-f", &f]).await?;
    ensure!(out.contains("deployment.apps/web configured"), "{out}");
    let d = api
        .get("apps/v1", "Deployment", Some("default"), "web")
        .context("exists")?;
    ensure!(d["spec"]["replicas"] == 3, "{d}");
    let containers = &d["spec"]["template"]["spec"]["containers"];
    ensure!(
        containers[0]["image"] == "app:2" && containers[1]["name"] == "sidecar",
        "{d}"
    );
    ensure!(containers[0]["ports"][0]["containerPort"] == 8080, "{d}");
    ensure!(d["metadata"]["generation"] == 2, "{d}");
    let out = k.ok(&["apply", "-f", &f]).await?;
    ensure!(out.contains("deployment.apps/web unchanged"), "{out}");
    let out = k
        .ok(&["scale", "deployment", "web", "--replicas=5"])
        .await?;
    ensure!(out.contains("deployment.apps/web scaled"), "{out}");
    let out = k
        .ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
        .await?;
    ensure!(out == "5", "{out}");

    let out = k.ok(&["label", "deployment", "web", "tier=front"]).await?;
    ensure!(out.contains("deployment.apps/web labeled"), "{out}");
    let out = k
        .ok(&[
            "patch",
            "deployment",
            "web",
            "--type=merge",
            "-p",
            r#"{"metadata":{"annotations":{"a":"b"}}}"#,
        ])
        .await?;
    ensure!(out.contains("deployment.apps/web patched"), "{out}");
    let d = api
        .get("apps/v1", "Deployment", None, "web")
        .context("exists")?;
    ensure!(
        d["metadata"]["labels"]["tier"] == "front" && d["metadata"]["annotations"]["a"] == "b",
        "{d}"
    );
    // Typed generators send protobuf, which the fake does not decode: a clear 415.
    let (ok, _, err) = k
        .run(&["create", "configmap", "typed", "--from-literal=k=v"])
        .await?;
    ensure!(!ok && err.contains("protobuf"), "{err}");

    // `kubectl get -w` (server-side printing: Table watch events) sees a later change.
    api.create(cm_json("default", "watched", "1"))?;
    let mut child = k.command(&["get", "configmaps", "-w"]).spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    read_until(&mut lines, "initial listing", |l| l.starts_with("watched")).await?;
    api.create(cm_json("default", "later", "1"))?;
    read_until(&mut lines, "watch event for the new ConfigMap", |l| {
        l.starts_with("later")
    })
    .await?;
    child.kill().await?;

    // And with a jsonpath printer (plain JSON watch events), a data change.
    let mut child = k
        .command(&[
            "get",
            "configmap",
            "watched",
            "-w",
            "-o",
            "jsonpath={.data.k}{\"\\n\"}",
        ])
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    read_until(&mut lines, "current value", |l| l == "1").await?;
    // kubectl drops the first event of a single-object watch (the synthetic ADDED it asks
    // for with resourceVersion=0), so change the object only once that watch is open.
    eventually("kubectl opened its watch", STEP, || {
        api.requests().iter().any(|r| {
            r.contains("watch=true") && r.contains("fieldSelector=metadata.name%3Dwatched")
        })
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "watched",
        json!({ "data": { "k": "2" } }),
    )?;
    read_until(&mut lines, "changed value", |l| l == "2").await?;
    child.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_a_crd_then_an_instance_of_it() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let Some(k) = Kubectl::for_server(&api)? else {
        return Ok(());
    };
    let crd = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: backends.shunt.example.com
spec:
  group: shunt.example.com
  scope: Namespaced
  names:
    plural: backends
    singular: backend
    kind: Backend
    shortNames: [be]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
";
    let f = k.file("crd.yaml", crd)?;
    let out = k.ok(&["apply", "-f", &f]).await?;
    ensure!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/backends.shunt.example.com created"
        ),
        "{out}"
    );
    let instance = |addr: &str| {
        format!(
            "apiVersion: shunt.example.com/v1\nkind: Backend\nmetadata:\n  name: b1\nspec:\n  address: {addr}\n  tags: [a, b]\n"
        )
    };
    let f = k.file("backend.yaml", &instance("10.0.0.1"))?;
    let out = k.ok(&["apply", "-f", &f]).await?;
    ensure!(
        out.contains("backend.shunt.example.com/b1 created"),
        "{out}"
    );
    let f = k.file("backend.yaml", &instance("10.0.0.2"))?;
    let out = k.ok(&["apply", "-f", &f]).await?;
    ensure!(
        out.contains("backend.shunt.example.com/b1 configured"),
        "{out}"
    );
    let b = api
        .get("shunt.example.com/v1", "Backend", Some("default"), "b1")
        .context("instance")?;
    ensure!(
        b["spec"]["address"] == "10.0.0.2" && b["spec"]["tags"] == json!(["a", "b"]),
        "{b}"
    );
    let out = k.ok(&["get", "be"]).await?;
    ensure!(out.contains("b1"), "{out}");
    let out = k
        .ok(&["get", "backends", "b1", "-o", "jsonpath={.spec.address}"])
        .await?;
    ensure!(out == "10.0.0.2", "{out}");
    let out = k.ok(&["get", "crd"]).await?;
    ensure!(out.contains("backends.shunt.example.com"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_of_an_object_with_a_finalizer_waits_until_it_is_removed() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let Some(k) = Kubectl::for_server(&api)? else {
        return Ok(());
    };
    api.create(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "held", "namespace": "default", "finalizers": ["shunt.example.com/hold"] },
        "data": { "k": "1" },
    }))?;
    // kubectl delete waits (watching) until the object is really gone.
    let mut child = k.command(&["delete", "configmap", "held"]).spawn()?;
    eventually("deletionTimestamp set", STEP, || {
        api.get("v1", "ConfigMap", Some("default"), "held")
            .is_some_and(|o| o["metadata"]["deletionTimestamp"].is_string())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        child.try_wait()?.is_none(),
        "kubectl still waiting while the finalizer is there"
    );
    let out = k
        .ok(&[
            "get",
            "configmap",
            "held",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .await?;
    ensure!(!out.is_empty(), "still visible with a deletionTimestamp");

    api.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "held",
        json!({ "metadata": { "finalizers": null } }),
    )?;
    let out = within("kubectl delete finishes", STEP, child.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(stdout.contains("configmap \"held\" deleted"), "{stdout}");
    let (ok, _, err) = k.run(&["get", "configmap", "held"]).await?;
    ensure!(!ok && err.contains("NotFound"), "{err}");
    ensure!(matches!(
        api.delete("v1", "ConfigMap", Some("default"), "held"),
        Err(e) if e.code == 404
    ));
    Ok(())
}

/// Not a test: `FAKE_APISERVER_SERVE_SECS=600 cargo test -p tests --test fake_apiserver --
/// --ignored serve --nocapture` runs a server to poke at by hand (it prints a kubeconfig path).
#[tokio::test]
#[ignore = "manual: serves a fake API server for interactive use"]
async fn serve_for_manual_use() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let path = Path::new("/tmp/fake-apiserver.kubeconfig");
    api.write_kubeconfig(path)?;
    println!(
        "fake API server at {} (kubeconfig {})",
        api.url(),
        path.display()
    );
    let secs = std::env::var("FAKE_APISERVER_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Pod subresources the kubelet serves: log and proxy
// ---------------------------------------------------------------------------------------

/// A one-connection-at-a-time HTTP server on loopback that answers with the request line and
/// one header it saw (as a real pod's server would), for `pods/proxy`.
async fn echo_pod() -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let seen = json!({
                            "method": req.method().as_str(),
                            "target": req.uri().to_string(),
                            "x_test": req.headers().get("x-test").and_then(|v| v.to_str().ok()),
                            "authorization": req.headers().get("authorization").is_some(),
                        });
                        let mut resp = hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(seen.to_string()),
                        ));
                        *resp.status_mut() = hyper::StatusCode::IM_A_TEAPOT;
                        resp.headers_mut()
                            .insert("x-pod", hyper::header::HeaderValue::from_static("echo"));
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_log_and_proxy_answer_like_the_kubelet() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let client = api.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "web" },
        "spec": { "containers": [{ "name": "app", "image": "web:1",
                                   "ports": [{ "name": "http", "containerPort": 8080 }] }] },
    }))?;
    within("create", STEP, pods.create(&PostParams::default(), &pod)).await??;

    // log: 400 while the container has not started, the text once the kubelet has it.
    let lp = kube::api::LogParams::default();
    let e = within("log", STEP, pods.logs("web", &lp)).await?;
    let (code, reason) = api_error(e.expect_err("pending pod has no log"))?;
    ensure!(code == 400 && reason == "BadRequest", "{code} {reason}");
    api.set_pod_log("default", "web", "one\ntwo\nthree\n");
    let text = within("log", STEP, pods.logs("web", &lp)).await??;
    ensure!(text == "one\ntwo\nthree\n", "{text:?}");
    let tail = kube::api::LogParams {
        tail_lines: Some(1),
        ..Default::default()
    };
    ensure!(within("log", STEP, pods.logs("web", &tail)).await?? == "three\n");
    let e = within("log", STEP, pods.logs("nope", &lp)).await?;
    ensure!(api_error(e.expect_err("no such pod"))?.0 == 404);

    // proxy: 503 without a pod IP; then the pod's own answer, status, headers and body, with
    // the API server's credentials not passed on.
    // (kube's client retries 503s, as it should: read this one over a plain connection.)
    let addr = api.addr();
    let (code, body) = tokio::task::spawn_blocking(move || {
        tests::harness::http_get(addr, "/api/v1/namespaces/default/pods/web:8080/proxy/")
    })
    .await??;
    ensure!(
        code == 503 && body.contains("ServiceUnavailable") && body.contains("no IP"),
        "{code} {body}"
    );
    let echo = echo_pod().await?;
    let mut p = api
        .get("v1", "Pod", Some("default"), "web")
        .context("pod")?;
    p["status"] = json!({ "phase": "Running", "podIP": "127.0.0.1" });
    api.replace_status(p)?;
    let port = echo.port();
    api.set_pod_dialer(std::sync::Arc::new(
        move |t: &tests::fake_apiserver::PodTarget| {
            ensure_io(t.name == "web" && t.port == 8080)?;
            std::net::TcpStream::connect(("127.0.0.1", port))
        },
    ));
    let (code, body) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/pods/web:http/proxy/a/b?x=1",
        &[("x-test", "yes"), ("authorization", "Bearer secret")],
        b"",
    )
    .await?;
    ensure!(code == 418, "{code} {body}");
    ensure!(
        body == json!({ "method": "GET", "target": "/a/b?x=1", "x_test": "yes", "authorization": false }),
        "{body}"
    );
    let (code, body) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/pods/web:nope/proxy/",
        &[],
        b"",
    )
    .await?;
    ensure!(code == 400, "{code} {body}");

    // kubectl reads the same log.
    if let Some(k) = Kubectl::for_server(&api)? {
        let out = k.ok(&["logs", "web", "--tail", "2"]).await?;
        ensure!(out == "two\nthree\n", "{out:?}");
    }
    Ok(())
}

/// `Ok(())` when `cond` holds, else an io error (for dialers).
fn ensure_io(cond: bool) -> std::io::Result<()> {
    if cond {
        Ok(())
    } else {
        Err(std::io::Error::other("unexpected pod target"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_get_rbac_and_subject_access_reviews_agree() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let client = api.client();
    api.add_token("t-alice", "alice", &["devs"]);
    // A Role in `default` letting group `devs` list pods; nothing elsewhere.
    api.create(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": { "name": "pod-reader", "namespace": "default" },
        "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["list"] }],
    }))?;
    api.create(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": "devs-read-pods", "namespace": "default" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader" },
        "subjects": [{ "kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io" }],
    }))?;
    let alice = [("authorization", "Bearer t-alice")];
    let (code, body) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/pods",
        &alice,
        b"",
    )
    .await?;
    ensure!(code == 200, "{code} {body}");
    let (code, body) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/kube-system/pods",
        &alice,
        b"",
    )
    .await?;
    ensure!(code == 403, "{code} {body}");
    ensure!(
        body["message"]
            == "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" \
                in the namespace \"kube-system\"",
        "{body}"
    );
    let (code, body) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/pods/x",
        &alice,
        b"",
    )
    .await?;
    ensure!(code == 403, "get is not list: {code} {body}");
    let (code, _) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/pods",
        &[("authorization", "Bearer nobody")],
        b"",
    )
    .await?;
    ensure!(code == 401, "an unknown token: {code}");
    // Without credentials: the unrestricted admin, as before.
    let (code, _) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/kube-system/pods",
        &[],
        b"",
    )
    .await?;
    ensure!(code == 200);

    // A SubjectAccessReview answers from the same RBAC.
    let review = |ns: &str| {
        json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": { "user": "alice", "groups": ["devs"],
                      "resourceAttributes": { "verb": "list", "resource": "pods", "namespace": ns } },
        })
        .to_string()
    };
    for (ns, allowed) in [("default", true), ("kube-system", false)] {
        let (code, body) = raw(
            &client,
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &[("content-type", "application/json")],
            review(ns).as_bytes(),
        )
        .await?;
        ensure!(code == 201, "{code} {body}");
        ensure!(body["status"]["allowed"] == allowed, "{ns}: {body}");
    }
    // alice may not create reviews herself.
    let (code, _) = raw(
        &client,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        &[
            ("authorization", "Bearer t-alice"),
            ("content-type", "application/json"),
        ],
        review("default").as_bytes(),
    )
    .await?;
    ensure!(code == 403, "{code}");
    Ok(())
}
