//! Forking a Deployment into a sandbox, the one implementation behind `shunt sandbox create` and
//! MCP `create_sandbox` in cluster mode: the clone and its route, created in the order that
//! leaves nothing behind on failure, then the wait until the agents report the route Ready.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};

use super::{clone, delete::remove};
use crate::{
    kube::{
        crd::{self, SandboxRoute},
        pods::{Waiting, waiting_verdict},
    },
    routes::SANDBOX_LABEL,
};

/// What to fork, and how.
pub struct ForkSpec<'a> {
    /// The baseline Deployment's name.
    pub deployment: &'a str,
    pub key: &'a str,
    pub image: &'a str,
    pub env: &'a [(String, String)],
    pub container: Option<&'a str>,
    pub replicas: i32,
    pub fallback: crd::Fallback,
    pub expires_at: Option<jiff::Timestamp>,
    /// More labels for the route, the clone and its pods (an MCP session's).
    pub labels: &'a BTreeMap<String, String>,
}

/// A created sandbox.
pub struct Forked {
    pub plan: clone::ClonePlan,
    pub clone_name: String,
}

/// Why a sandbox was not made, or is not Ready. Each message says the fix.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// The Deployment to fork does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The key, the route or the clone exists already.
    #[error("{0}")]
    Exists(String),
    /// The request cannot be done as asked (a sandbox of a sandbox, a bad key, a TTL...).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Clone(#[from] clone::CloneError),
    /// Its pods do not start, or the wait timed out.
    #[error("{0}")]
    NotReady(String),
    /// The API server refused or failed a call (the message names what was being done).
    #[error("{message}")]
    Api {
        message: String,
        /// HTTP status, when the API server answered.
        code: Option<u16>,
    },
}

impl ForkError {
    pub(super) fn api(what: &str, e: kube::Error) -> Self {
        let code = match &e {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        };
        ForkError::Api {
            message: super::api_err(what, e).to_string(),
            code,
        }
    }
}

/// Creates the route, then the clone owned by it (deleting the route again if the clone fails).
/// `progress` hears what is being created.
pub async fn fork(
    client: &Client,
    ns: &str,
    s: &ForkSpec<'_>,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Forked, ForkError> {
    let (name, key) = (s.deployment, s.key);
    clone::check_key(key)?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let routes: Api<SandboxRoute> = Api::namespaced(client.clone(), ns);

    let Some(baseline) = deployments
        .get_opt(name)
        .await
        .map_err(|e| ForkError::api(&format!("reading deployment/{name}"), e))?
    else {
        let names: Vec<String> = deployments
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().map(|d| d.name_any()).collect())
            .unwrap_or_default();
        return Err(ForkError::NotFound(format!(
            "deployment/{name} not found in namespace {ns} (deployments there: {}); fix: check the name with `kubectl get deployments -n {ns}` or pass --namespace",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    if baseline.labels().contains_key(SANDBOX_LABEL) {
        return Err(ForkError::Invalid(format!(
            "deployment/{name} is itself a sandbox; fix: fork the baseline Deployment ({})",
            baseline
                .annotations()
                .get(clone::FORKED_FROM)
                .cloned()
                .unwrap_or_else(|| "the original".into())
        )));
    }
    let existing = routes
        .list(&ListParams::default())
        .await
        .map_err(|e| ForkError::api("listing SandboxRoutes", e))?;
    if let Some(r) = existing.items.iter().find(|r| r.spec.routing_key == key) {
        return Err(ForkError::Exists(format!(
            "key {key} is already used by SandboxRoute {ns}/{}; fix: pick another --key, or remove that sandbox with `shunt sandbox delete {key} -n {ns}`",
            r.name_any()
        )));
    }
    let clone_name = clone::clone_name(name, key);
    if deployments
        .get_opt(&clone_name)
        .await
        .map_err(|e| ForkError::api("reading deployments", e))?
        .is_some()
    {
        return Err(ForkError::Exists(format!(
            "deployment/{clone_name} already exists; fix: `shunt sandbox delete {key} -n {ns}` first, or pick another --key"
        )));
    }
    let services = Api::<Service>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| ForkError::api("listing Services", e))?;
    let mut plan = clone::plan(
        &baseline,
        &services.items,
        &clone::CloneOptions {
            key,
            image: s.image,
            env: s.env,
            container: s.container,
            replicas: s.replicas,
            fallback: s.fallback,
            expires_at: s.expires_at,
        },
    )?;
    add_labels(&mut plan.deployment, s.labels);

    progress(&format!(
        "creating SandboxRoute {ns}/{} (key {key}, forks {})",
        plan.route_name,
        plan.services.join(", ")
    ));
    let mut labels = s.labels.clone();
    labels.insert(SANDBOX_LABEL.to_string(), key.to_string());
    let route = SandboxRoute {
        metadata: ObjectMeta {
            name: Some(plan.route_name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            annotations: Some(
                [(clone::FORKED_FROM.to_string(), format!("deployment/{name}"))].into(),
            ),
            ..ObjectMeta::default()
        },
        spec: plan.route_spec.clone(),
        status: None,
    };
    let route = match routes.create(&PostParams::default(), &route).await {
        Ok(r) => r,
        Err(kube::Error::Api(st)) if st.code == 409 => {
            return Err(ForkError::Exists(format!(
                "SandboxRoute {ns}/{} already exists; fix: `shunt sandbox delete {key} -n {ns}` or pick another --key",
                plan.route_name
            )));
        }
        Err(e) => return Err(ForkError::api("creating the SandboxRoute", e)),
    };
    let uid = route.uid().ok_or_else(|| ForkError::Api {
        message: "creating the SandboxRoute: the API server gave the route no uid".into(),
        code: None,
    })?;
    clone::set_owner(&mut plan.deployment, &plan.route_name, &uid);
    progress(&format!(
        "creating deployment/{clone_name} (image {} in container {}, pods labelled {})",
        s.image,
        plan.container,
        clone::fmt_labels(&plan.pod_labels)
    ));
    if let Err(e) = deployments
        .create(&PostParams::default(), &plan.deployment)
        .await
    {
        let _ = routes
            .delete(&plan.route_name, &DeleteParams::default())
            .await;
        return Err(ForkError::api(
            &format!("creating deployment/{clone_name} (the route was removed again)"),
            e,
        ));
    }
    Ok(Forked { plan, clone_name })
}

/// `labels` on the clone and its pod template (the selector is left alone).
fn add_labels(d: &mut Deployment, labels: &BTreeMap<String, String>) {
    if labels.is_empty() {
        return;
    }
    d.metadata
        .labels
        .get_or_insert_with(Default::default)
        .extend(labels.clone());
    if let Some(spec) = d.spec.as_mut() {
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .extend(labels.clone());
    }
}

/// Waits until the agents report the route Ready. An image that cannot be pulled removes the
/// sandbox; pods that do not start (CrashLoopBackOff...) leave it in place, to be inspected.
pub async fn wait_ready(
    client: &Client,
    ns: &str,
    plan: &clone::ClonePlan,
    key: &str,
    image: &str,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), ForkError> {
    let routes: Api<SandboxRoute> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = clone::fmt_labels(&plan.match_labels);
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let route = routes
            .get(&plan.route_name)
            .await
            .map_err(|e| ForkError::api("reading the SandboxRoute", e))?;
        let cond = route
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == crd::READY).cloned());
        if cond.as_ref().is_some_and(|c| c.status == "True") {
            return Ok(());
        }
        let pod_list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| ForkError::api("listing the sandbox pods", e))?;
        let mut ready = 0;
        for p in &pod_list.items {
            let Some(status) = &p.status else { continue };
            if status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                ready += 1;
            }
            match waiting_verdict(status) {
                Some(Waiting::ImageUnpullable(detail)) => {
                    remove(client, ns, &plan.route_name, key).await;
                    return Err(ForkError::NotReady(format!(
                        "image {image} cannot be pulled ({detail}); removed the sandbox; fix: check the image name and tag (and the cluster's access to its registry), then create it again"
                    )));
                }
                Some(Waiting::WontStart(detail)) => {
                    return Err(ForkError::NotReady(format!(
                        "the sandbox pod {} does not start ({detail}); fix: check `kubectl logs -n {ns} {}` and your image/env, then `shunt sandbox delete {key} -n {ns}` and create again",
                        p.name_any(),
                        p.name_any()
                    )));
                }
                Some(Waiting::Starting(_)) | None => {}
            }
        }
        let state = format!(
            "waiting for sandbox {key}: {}/{} pod(s) ready, route {}",
            ready,
            plan.deployment
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1),
            match &cond {
                Some(c) => format!("{} ({})", c.reason, c.message),
                None => "has no status yet (the agents write it)".into(),
            }
        );
        if state != last {
            progress(&state);
            last = state;
        }
        if Instant::now() > deadline {
            return Err(ForkError::NotReady(format!(
                "sandbox {key} not ready after {timeout:?} ({}); it is left in place; fix: check `kubectl get pods -n {ns} -l {selector}`, or remove it with `shunt sandbox delete {key} -n {ns}`",
                last.trim_start_matches("waiting for sandbox ")
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
