//! Which pods of this node are marked sources: pods whose outbound HTTP requests get the routing
//! key added by Shunt when they carry none (`ClusterState.sources`, which route sync writes to
//! the `MARKED` map). Pure: the cgroup lookup is passed in.
//!
//! Two kinds of pod are marked, each with one key:
//! - a sandbox's pods: the pods a SandboxRoute's forks select (a selector fork's pods, a
//!   `service:` fork's target Service endpoints), in the route's namespace, with the route's
//!   key, unless the route says `injectKey: false`;
//! - a pod labelled [`INJECT_KEY_LABEL`]`: KEY` (test runners, Jobs), but only when a
//!   SandboxRoute with that key exists in the pod's own namespace: a pod cannot borrow another
//!   namespace's key.
//!
//! Only routes that apply count (not expired, no spec problem). A baseline pod is never marked,
//! whatever its labels: marking it would change what unkeyed requests get. A pod the agent
//! cannot place (two keys claim it, no cgroup directory yet) is left unmarked and reported.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use jiff::Timestamp;

use crate::routes::{ClusterState, MarkedSource, NodePod, SANDBOX_LABEL, SandboxRouteObj};

/// The pod label that marks a pod (a test runner) with a routing key.
pub const INJECT_KEY_LABEL: &str = "shunt.dev/inject-key";

/// This node's marks, and the pods left unmarked with the reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// Sorted by cgroup, one entry per pod.
    pub sources: Vec<MarkedSource>,
    /// Pods that asked to be marked (or that a route selects) but are not, and why.
    pub ignored: Vec<IgnoredMark>,
    /// Pods to mark whose cgroup directory was not found (not created yet): worth a retry.
    pub unresolved: Vec<String>,
}

/// A pod left unmarked on purpose.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IgnoredMark {
    /// `namespace/name`.
    pub pod: String,
    pub key: String,
    pub why: String,
}

/// Whether a route applies now: neither expired nor refused for its spec.
fn applies(r: &SandboxRouteObj, now: Timestamp) -> bool {
    r.spec.expires_at.is_none_or(|at| at > now) && r.spec.problems(&r.namespace).is_empty()
}

/// A fork's target Service name (`name` or `namespace/name`, already checked to be local).
fn target_name(s: &str) -> &str {
    s.split_once('/').map_or(s, |(_, name)| name)
}

/// The marks of `state.node_pods`, except pods in `finished` (`namespace/name`: their cgroups
/// are gone). `pod_dir` finds a pod's cgroup directory from its UID.
pub fn marked_sources(
    state: &ClusterState,
    now: Timestamp,
    finished: &BTreeSet<String>,
    pod_dir: &dyn Fn(&str) -> Option<PathBuf>,
) -> Marks {
    let routes: Vec<&SandboxRouteObj> = state
        .routes
        .iter()
        .map(|r| &**r)
        .filter(|r| applies(r, now))
        .collect();
    let keys: BTreeSet<(&str, &str)> = routes
        .iter()
        .map(|r| (r.namespace.as_str(), r.spec.routing_key.as_str()))
        .collect();
    let targets: BTreeSet<(&str, &str)> = routes
        .iter()
        .flat_map(|r| {
            r.spec
                .forks
                .iter()
                .filter_map(|f| Some((r.namespace.as_str(), target_name(f.to.service.as_deref()?))))
        })
        .collect();
    // Pods behind a Service that is no sandbox's target: baseline, unless they carry the
    // sandbox label (which baseline pods never do).
    let backs_baseline: BTreeSet<(&str, &str)> = state
        .services
        .iter()
        .filter(|s| !targets.contains(&(s.namespace.as_str(), s.name.as_str())))
        .flat_map(|s| &s.endpoints)
        .filter_map(|ep| ep.target_ref.as_ref())
        .filter(|t| t.kind == "Pod")
        .map(|t| (t.namespace.as_str(), t.name.as_str()))
        .collect();
    let is_baseline = |p: &NodePod| {
        !p.labels.contains_key(SANDBOX_LABEL)
            && backs_baseline.contains(&(p.namespace.as_str(), p.name.as_str()))
    };
    let live: Vec<&NodePod> = state
        .node_pods
        .iter()
        .filter(|p| !finished.contains(&format!("{}/{}", p.namespace, p.name)))
        .collect();

    let mut marks = Marks::default();
    // Every (pod, key) claim; a pod may be claimed more than once.
    let mut claims: Vec<(&NodePod, &str)> = Vec::new();
    for r in routes.iter().filter(|r| r.spec.inject_key) {
        let ns = r.namespace.as_str();
        let key = r.spec.routing_key.as_str();
        for fork in &r.spec.forks {
            match (&fork.to.selector, &fork.to.service) {
                (Some(selector), _) => {
                    for p in live
                        .iter()
                        .copied()
                        .filter(|p| p.namespace == ns && selector.matches(&p.labels))
                    {
                        claims.push((p, key));
                    }
                }
                (None, Some(target)) => {
                    let name = target_name(target);
                    let pods: BTreeSet<&str> = state
                        .services
                        .iter()
                        .filter(|s| s.namespace == ns && s.name == name)
                        .flat_map(|s| &s.endpoints)
                        .filter_map(|ep| ep.target_ref.as_ref())
                        .filter(|t| t.kind == "Pod" && t.namespace == ns)
                        .map(|t| t.name.as_str())
                        .collect();
                    for p in live
                        .iter()
                        .copied()
                        .filter(|p| p.namespace == ns && pods.contains(p.name.as_str()))
                    {
                        claims.push((p, key));
                    }
                }
                (None, None) => {}
            }
        }
    }
    for &p in &live {
        let Some(key) = p.labels.get(INJECT_KEY_LABEL) else {
            continue;
        };
        if keys.contains(&(p.namespace.as_str(), key.as_str())) {
            claims.push((p, key));
        } else {
            marks.ignored.push(IgnoredMark {
                pod: format!("{}/{}", p.namespace, p.name),
                key: key.clone(),
                why: format!(
                    "no SandboxRoute with key {key:?} applies in namespace {:?}; a pod may only \
                     use a key of its own namespace",
                    p.namespace
                ),
            });
        }
    }

    // (namespace, name) → the pod and the keys that claim it.
    let mut wanted: BTreeMap<(&str, &str), (&NodePod, BTreeSet<&str>)> = BTreeMap::new();
    for (p, key) in claims {
        wanted
            .entry((p.namespace.as_str(), p.name.as_str()))
            .or_insert_with(|| (p, BTreeSet::new()))
            .1
            .insert(key);
    }
    for ((ns, name), (pod, keys)) in wanted {
        let id = format!("{ns}/{name}");
        let joined = keys.iter().copied().collect::<Vec<_>>().join(", ");
        let ignore = |why: String| IgnoredMark {
            pod: id.clone(),
            key: joined.clone(),
            why,
        };
        if is_baseline(pod) {
            marks.ignored.push(ignore(
                "it backs a baseline Service (and has no shunt.dev/sandbox label): baseline pods \
                 are never marked"
                    .into(),
            ));
            continue;
        }
        if keys.len() > 1 {
            marks.ignored.push(ignore(format!(
                "claimed by several keys ({joined}); a pod is marked with one key only"
            )));
            continue;
        }
        match pod_dir(&pod.uid) {
            Some(cgroup) => marks.sources.push(MarkedSource {
                cgroup,
                key: joined,
                origin: format!("pod {id}"),
            }),
            None => marks.unresolved.push(id),
        }
    }
    marks.sources.sort();
    marks.sources.dedup_by(|a, b| a.cgroup == b.cgroup);
    marks.ignored.sort();
    marks
}

#[cfg(test)]
#[path = "marks_tests.rs"]
mod tests;
