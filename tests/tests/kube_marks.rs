//! Which pods of its node the agent marks as sources (issue 21), as its Kubernetes source
//! publishes them: the real kube-rs watches of `shunt run --kube` against the fake API server,
//! with the pod → cgroup lookup behind `capture::PodCgroups` (no kubelet here). What route sync
//! does with `sources` (the `MARKED` map) is tested on its own side.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use agent::{
    capture::PodCgroups,
    kube::{crd, marks::INJECT_KEY_LABEL, source},
    routes::{ClusterState, SANDBOX_LABEL},
};
use serde_json::{Value, json};
use tests::fake_apiserver::FakeApiServer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NODE: &str = "node-a";
const DEADLINE: Duration = Duration::from_secs(15);

/// Kubelet's layout, faked: a pod's cgroup is `/fake/pod<uid>` once the test placed it.
#[derive(Default)]
struct FakeCgroups(Mutex<HashMap<String, PathBuf>>);

impl FakeCgroups {
    fn place(&self, uid: &str) -> PathBuf {
        let dir = PathBuf::from(format!("/fake/kubepods/pod{uid}"));
        self.0.lock().unwrap().insert(uid.to_string(), dir.clone());
        dir
    }
}

impl PodCgroups for FakeCgroups {
    fn pod_dir(&self, uid: &str) -> Option<PathBuf> {
        self.0.lock().unwrap().get(uid).cloned()
    }
}

fn pod(ns: &str, name: &str, node: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "i" }] },
        "status": { "phase": "Running", "podIP": "10.1.0.9" },
    })
}

fn route(ns: &str, name: &str, key: &str) -> Value {
    json!({
        "apiVersion": "shunt.dev/v1alpha1", "kind": "SandboxRoute",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "routingKey": key,
            "forks": [{ "service": "reviews",
                        "to": { "selector": { SANDBOX_LABEL: key } } }],
        },
    })
}

fn uid(created: &Value) -> String {
    created["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string()
}

/// Waits for a published state that satisfies `ok`; the last one seen on timeout.
async fn published(
    states: &mut watch::Receiver<Arc<ClusterState>>,
    what: &str,
    ok: impl Fn(&ClusterState) -> bool,
) -> Arc<ClusterState> {
    let found = match tokio::time::timeout(DEADLINE, states.wait_for(|s| ok(s))).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| {
        panic!(
            "no published state {what}; last sources: {:?}",
            states.borrow().sources
        )
    })
}

fn marked(s: &ClusterState) -> Vec<(String, String, PathBuf)> {
    s.sources
        .iter()
        .map(|m| (m.origin.clone(), m.key.clone(), m.cgroup.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_label_without_a_route_in_the_namespace_is_ignored() {
    let api = FakeApiServer::start().await.expect("fake API server");
    api.create(serde_json::to_value(crd::crd()).unwrap())
        .expect("CRD");
    for ns in ["shop", "other"] {
        api.create(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }))
            .expect("namespace");
    }
    let cgroups = Arc::new(FakeCgroups::default());
    // The route of key pr-42 lives in `shop` only.
    api.create(route("shop", "pr-42", "pr-42")).expect("route");
    let runner = api
        .create(pod(
            "shop",
            "runner",
            NODE,
            json!({ INJECT_KEY_LABEL: "pr-42" }),
        ))
        .expect("pod");
    let thief = api
        .create(pod(
            "other",
            "thief",
            NODE,
            json!({ INJECT_KEY_LABEL: "pr-42" }),
        ))
        .expect("pod");
    // Same label, another node: not this agent's to mark.
    let elsewhere = api
        .create(pod(
            "shop",
            "elsewhere",
            "node-b",
            json!({ INJECT_KEY_LABEL: "pr-42" }),
        ))
        .expect("pod");
    let runner_dir = cgroups.place(&uid(&runner));
    let thief_dir = cgroups.place(&uid(&thief));
    cgroups.place(&uid(&elsewhere));

    let stop = CancellationToken::new();
    let watches = source::Watches::start(&api.client(), &stop, NODE, cgroups.clone());
    let (tx, mut states) = watch::channel(Arc::new(ClusterState::default()));
    let publisher = tokio::spawn(source::publish_loop(watches, tx, stop.clone()));

    let s = published(&mut states, "after the initial list", |s| {
        s.node.is_some() && !s.node_pods.is_empty()
    })
    .await;
    assert_eq!(
        marked(&s),
        [("pod shop/runner".into(), "pr-42".into(), runner_dir.clone())],
        "only the pod whose namespace has a route with its key is marked"
    );

    // `other` gets a route of its own with that key: now its labelled pod may use it.
    api.create(route("other", "pr-42", "pr-42")).expect("route");
    let s = published(&mut states, "with the thief's pod marked", |s| {
        s.sources.len() == 2
    })
    .await;
    let mut want = vec![
        ("pod other/thief".into(), "pr-42".into(), thief_dir),
        ("pod shop/runner".into(), "pr-42".into(), runner_dir),
    ];
    want.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(marked(&s), want, "sorted by cgroup");

    stop.cancel();
    let _ = publisher.await;
}
