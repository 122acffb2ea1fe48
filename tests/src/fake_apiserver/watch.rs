//! WATCH: a chunked HTTP response of newline-delimited `{"type":...,"object":...}` events.
//!
//! Semantics follow kube-apiserver's watch cache:
//! * `resourceVersion` unset or `"0"`: synthetic ADDED events for the current state first;
//!   `resourceVersion=N`: every change after N, in order; older than the kept history: HTTP 200
//!   with a single in-stream ERROR event carrying a 410 `Expired` Status, then the end of the
//!   stream (an HTTP-level 410 would make clients retry instead of relisting).
//! * `sendInitialEvents=true` (streaming lists): ADDED events for the current state, then a
//!   BOOKMARK annotated `k8s.io/initial-events-end`.
//! * Selectors apply to transitions: an object that starts matching is ADDED, one that stops
//!   matching is DELETED.
//! * `allowWatchBookmarks=true`: periodic BOOKMARKs carrying the latest resourceVersion.
//! * `timeoutSeconds`: the stream ends when it expires.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::cluster::{parse_rv, versioned};
use super::error::{ApiError, ApiResult};
use super::render::{Output, render_one};
use super::resources::ResourceType;
use super::selectors::Selectors;
use super::state::Shared;
use super::store::{Event, EventType, Store};

/// Parsed watch parameters.
#[derive(Clone, Debug)]
pub(crate) struct WatchParams {
    pub(crate) selectors: Selectors,
    pub(crate) resource_version: Option<String>,
    pub(crate) resource_version_match: Option<String>,
    pub(crate) send_initial_events: Option<bool>,
    pub(crate) allow_bookmarks: bool,
    pub(crate) timeout: Duration,
    pub(crate) output: Output,
}

struct WatchState {
    shared: Arc<Shared>,
    rt: ResourceType,
    ns: Option<String>,
    selectors: Selectors,
    output: Output,
    /// Every event up to this revision has been considered.
    cursor: u64,
    pending: VecDeque<Bytes>,
    finished: bool,
    changes: watch::Receiver<u64>,
    cut: watch::Receiver<u64>,
    deadline: Instant,
    bookmark_every: Option<Duration>,
    next_bookmark: Instant,
}

fn line(event_type: &str, object: Value) -> Bytes {
    let mut v =
        serde_json::to_vec(&json!({ "type": event_type, "object": object })).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn expired_event(requested: u64, oldest: u64) -> Bytes {
    let status = ApiError::expired(format!("too old resource version: {requested} ({oldest})"));
    line("ERROR", status.to_status())
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({ "resourceVersion": rv.to_string(), "creationTimestamp": null });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    line(
        "BOOKMARK",
        json!({ "kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta }),
    )
}

/// Validate watch options like kube-apiserver's `validateWatchOptions` (422 Invalid).
fn validate(p: &WatchParams) -> ApiResult<()> {
    let rv_match = p.resource_version_match.as_deref().unwrap_or("");
    let mut problems = Vec::new();
    if p.send_initial_events.is_some() {
        if rv_match != "NotOlderThan" {
            problems.push("resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".to_string());
        }
        if !p.allow_bookmarks {
            problems.push("allowWatchBookmarks: Forbidden: allowWatchBookmarks must be set to true when sendInitialEvents is provided".to_string());
        }
    }
    if !rv_match.is_empty() {
        if p.send_initial_events.is_none() {
            problems.push("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided".to_string());
        }
        if rv_match != "NotOlderThan" {
            problems.push(format!("resourceVersionMatch: Unsupported value: {rv_match:?}: supported values: \"NotOlderThan\""));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "ListOptions.meta.k8s.io \"\" is invalid: {}",
            problems.join(", ")
        )))
    }
}

impl WatchState {
    fn matches_scope(&self, ev: &Event) -> bool {
        ev.key.storage == self.rt.storage_key()
            && self.ns.as_ref().is_none_or(|ns| ev.key.ns == *ns)
    }

    /// The event type a watcher with these selectors sees for `ev`, if any.
    fn translate(&self, ev: &Event) -> Option<&'static str> {
        if !self.matches_scope(ev) {
            return None;
        }
        let now = self.selectors.matches(&ev.object);
        let before = ev.prev.as_ref().is_some_and(|p| self.selectors.matches(p));
        match ev.kind {
            EventType::Added => now.then_some("ADDED"),
            EventType::Modified => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
            EventType::Deleted => before.then_some("DELETED"),
        }
    }

    fn render(&self, obj: &Value) -> Value {
        render_one(&versioned(&self.rt, obj), &self.output)
    }

    /// Queue the events committed since `cursor` (or the in-stream 410 if they were compacted
    /// away before this watch saw them), then optionally a bookmark.
    fn collect(&mut self, with_bookmark: bool) {
        let shared = self.shared.clone();
        let cluster = shared.lock();
        let store: &Store = &cluster.store;
        if self.cursor < store.compacted() {
            self.pending
                .push_back(expired_event(self.cursor, store.compacted()));
            self.finished = true;
            return;
        }
        for ev in store.events_after(self.cursor) {
            if let Some(t) = self.translate(ev) {
                let obj = self.render(&ev.object);
                self.pending.push_back(line(t, obj));
            }
        }
        self.cursor = self.cursor.max(store.rv());
        if with_bookmark {
            self.pending
                .push_back(bookmark(&self.rt, self.cursor, false));
        }
    }
}

/// Start a watch: validate, compute the initial events under the lock, and return the event
/// stream. Errors before the stream starts are HTTP errors; the 410 for a too-old
/// resourceVersion is in-stream.
pub(crate) fn start(
    shared: Arc<Shared>,
    rt: ResourceType,
    ns: Option<String>,
    p: WatchParams,
) -> ApiResult<impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static> {
    validate(&p)?;
    let rv_param = p.resource_version.clone().unwrap_or_default();
    let requested = if rv_param.is_empty() {
        None
    } else {
        Some(parse_rv(&rv_param)?)
    };
    let now = Instant::now();
    let mut st = WatchState {
        shared: shared.clone(),
        rt,
        ns,
        selectors: p.selectors.clone(),
        output: p.output.clone(),
        cursor: 0,
        pending: VecDeque::new(),
        finished: false,
        changes: watch::channel(0).1,
        cut: shared.faults.cut_signal(),
        deadline: now + p.timeout,
        bookmark_every: p
            .allow_bookmarks
            .then_some(shared.options.bookmark_interval)
            .filter(|d| !d.is_zero()),
        next_bookmark: now + shared.options.bookmark_interval,
    };
    {
        let cluster = shared.lock();
        let store = &cluster.store;
        // Subscribe under the lock: nothing can commit between reading the starting state and
        // subscribing.
        st.changes = store.subscribe();
        let initial = match (p.send_initial_events, requested) {
            (Some(send), _) => send,
            // Legacy semantics: "0" or unset means "start with the current state".
            (None, None | Some(0)) => true,
            (None, Some(_)) => false,
        };
        if initial {
            let storage = st.rt.storage_key();
            let ns = if st.rt.namespaced {
                st.ns.as_deref()
            } else {
                None
            };
            for (_, obj) in store.range(&storage, ns) {
                if st.selectors.matches(obj) {
                    let rendered = st.render(obj);
                    st.pending.push_back(line("ADDED", rendered));
                }
            }
            st.cursor = store.rv();
            if p.send_initial_events == Some(true) {
                st.pending.push_back(bookmark(&st.rt, st.cursor, true));
            }
        } else {
            match requested {
                Some(rv) if rv > 0 && rv < store.compacted() => {
                    st.pending.push_back(expired_event(rv, store.compacted()));
                    st.finished = true;
                }
                Some(rv) if rv > 0 => st.cursor = rv,
                _ => st.cursor = store.rv(),
            }
        }
    }
    // Events committed after the snapshot but before the first poll are picked up by the
    // first `collect`, because `changes` was marked seen at subscription time.
    st.changes.mark_changed();
    Ok(futures::stream::unfold(st, next_frame))
}

async fn next_frame(mut st: WatchState) -> Option<(Result<Frame<Bytes>, Infallible>, WatchState)> {
    loop {
        if let Some(b) = st.pending.pop_front() {
            return Some((Ok(Frame::data(b)), st));
        }
        if st.finished {
            return None;
        }
        let bookmark_at = st.next_bookmark;
        let bookmarks = st.bookmark_every;
        tokio::select! {
            biased;
            _ = st.cut.changed() => st.finished = true,
            _ = tokio::time::sleep_until(st.deadline) => st.finished = true,
            changed = st.changes.changed() => {
                if changed.is_err() {
                    st.finished = true;
                } else {
                    st.collect(false);
                }
            }
            _ = tokio::time::sleep_until(bookmark_at), if bookmarks.is_some() => {
                st.collect(true);
                st.next_bookmark = Instant::now() + bookmarks.unwrap_or(Duration::from_secs(1));
            }
        }
    }
}
