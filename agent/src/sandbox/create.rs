//! `shunt sandbox create`: the clone and its route, created in the order that leaves nothing
//! behind on failure, then the wait until the agents report the route Ready.
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};

use super::{CreateArgs, api_err, clone, connect, delete::remove, progress};
use crate::{
    kube::{
        crd::{self, SandboxRoute},
        pods::{IMAGE_ERRORS, START_ERRORS, waiting_containers},
    },
    routes::SANDBOX_LABEL,
};

/// A fresh key: a name, not a secret, so std's randomly seeded hasher (portable, no unsafe) is
/// random enough.
fn random_key() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("sbx-{:06x}", h.finish() & 0xff_ffff)
}

pub(super) async fn create(a: CreateArgs) -> anyhow::Result<()> {
    let name = match a.fork.split_once('/') {
        Some(("deployment" | "deployments" | "deploy" | "deployments.apps", n))
            if !n.is_empty() =>
        {
            n.to_string()
        }
        _ => bail!(
            "--fork {:?}: expected deployment/NAME; fix: e.g. --fork deployment/reviews",
            a.fork
        ),
    };
    let key = a.key.clone().unwrap_or_else(random_key);
    clone::check_key(&key)?;
    let mut env = Vec::new();
    for kv in &a.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => bail!("--env {kv:?}: expected NAME=VALUE; fix: e.g. --env LOG_LEVEL=debug"),
        }
    }
    let (client, ns) = connect(&a.kube).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let routes: Api<SandboxRoute> = Api::namespaced(client.clone(), &ns);

    let Some(baseline) = deployments
        .get_opt(&name)
        .await
        .map_err(|e| api_err(&format!("reading deployment/{name}"), e))?
    else {
        let names: Vec<String> = deployments
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().map(|d| d.name_any()).collect())
            .unwrap_or_default();
        bail!(
            "deployment/{name} not found in namespace {ns} (deployments there: {}); fix: check the name with `kubectl get deployments -n {ns}` or pass --namespace",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    if baseline.labels().contains_key(SANDBOX_LABEL) {
        bail!(
            "deployment/{name} is itself a sandbox; fix: fork the baseline Deployment ({})",
            baseline
                .annotations()
                .get(clone::FORKED_FROM)
                .cloned()
                .unwrap_or_else(|| "the original".into())
        );
    }
    let existing = routes
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err("listing SandboxRoutes", e))?;
    if let Some(r) = existing.items.iter().find(|r| r.spec.routing_key == key) {
        bail!(
            "key {key} is already used by SandboxRoute {ns}/{}; fix: pick another --key, or remove that sandbox with `shunt sandbox delete {key} -n {ns}`",
            r.name_any()
        );
    }
    let clone_name = clone::clone_name(&name, &key);
    if deployments
        .get_opt(&clone_name)
        .await
        .map_err(|e| api_err("reading deployments", e))?
        .is_some()
    {
        bail!(
            "deployment/{clone_name} already exists; fix: `shunt sandbox delete {key} -n {ns}` first, or pick another --key"
        );
    }
    let services = Api::<Service>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err("listing Services", e))?;
    let expires_at = match a.ttl {
        None => None,
        Some(ttl) => Some(
            jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or_else(|_| jiff::Timestamp::now())
                .checked_add(jiff::SignedDuration::try_from(ttl)?)
                .context("--ttl is too long")?,
        ),
    };
    let mut plan = clone::plan(
        &baseline,
        &services.items,
        &clone::CloneOptions {
            key: &key,
            image: &a.image,
            env: &env,
            container: a.container.as_deref(),
            replicas: a.replicas,
            fallback: if a.reject_when_unready {
                crd::Fallback::Reject
            } else {
                crd::Fallback::Baseline
            },
            expires_at,
        },
    )?;

    progress(&format!(
        "creating SandboxRoute {ns}/{} (key {key}, forks {})",
        plan.route_name,
        plan.services.join(", ")
    ));
    let route = SandboxRoute {
        metadata: ObjectMeta {
            name: Some(plan.route_name.clone()),
            namespace: Some(ns.clone()),
            labels: Some([(SANDBOX_LABEL.to_string(), key.clone())].into()),
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
        Err(kube::Error::Api(s)) if s.code == 409 => bail!(
            "SandboxRoute {ns}/{} already exists; fix: `shunt sandbox delete {key} -n {ns}` or pick another --key",
            plan.route_name
        ),
        Err(e) => return Err(api_err("creating the SandboxRoute", e)),
    };
    let uid = route
        .uid()
        .context("the API server gave the route no uid")?;
    clone::set_owner(&mut plan.deployment, &plan.route_name, &uid);
    progress(&format!(
        "creating deployment/{clone_name} (image {} in container {}, pods labelled {})",
        a.image,
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
        return Err(api_err(
            &format!("creating deployment/{clone_name} (the route was removed again)"),
            e,
        ));
    }

    let curl = curl_line(&client, &ns, &plan.services, &key).await;
    if a.no_wait {
        println!("sandbox {key} created (not waiting for Ready: see `shunt sandbox list -n {ns}`)");
    } else {
        wait_ready(&client, &ns, &plan, &key, &a.image, a.timeout).await?;
        println!(
            "sandbox {key} is ready: deployment/{clone_name} serves requests keyed {key} for service {}",
            plan.services.join(", ")
        );
    }
    println!("key: {key}");
    if let Some(at) = expires_at {
        println!("expires: {at}");
    }
    println!("{curl}");
    Ok(())
}

async fn curl_line(client: &Client, ns: &str, services: &[String], key: &str) -> String {
    let svc = services.first().cloned().unwrap_or_default();
    let port = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(&svc)
        .await
        .ok()
        .flatten()
        .and_then(|s| s.spec?.ports?.first().map(|p| p.port))
        .unwrap_or(80);
    format!(
        "curl -H 'baggage: sd-routing-key={key}' http://{svc}.{ns}.svc.cluster.local:{port}/   # from any pod in the cluster"
    )
}

async fn wait_ready(
    client: &Client,
    ns: &str,
    plan: &clone::ClonePlan,
    key: &str,
    image: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let routes: Api<SandboxRoute> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = clone::fmt_labels(&plan.match_labels);
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let route = routes
            .get(&plan.route_name)
            .await
            .map_err(|e| api_err("reading the SandboxRoute", e))?;
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
            .map_err(|e| api_err("listing the sandbox pods", e))?;
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
            for (reason, detail) in waiting_containers(status) {
                if IMAGE_ERRORS.contains(&reason.as_str()) {
                    remove(client, ns, &plan.route_name, key).await;
                    bail!(
                        "image {image} cannot be pulled ({detail}); removed the sandbox; fix: check the image name and tag (and the cluster's access to its registry), then run `shunt sandbox create` again"
                    );
                }
                if START_ERRORS.contains(&reason.as_str()) {
                    bail!(
                        "the sandbox pod {} does not start ({detail}); fix: check `kubectl logs -n {ns} {}` and your image/env, then `shunt sandbox delete {key} -n {ns}` and create again",
                        p.name_any(),
                        p.name_any()
                    );
                }
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
            bail!(
                "sandbox {key} not ready after {timeout:?} ({}); it is left in place; fix: check `kubectl get pods -n {ns} -l {selector}`, or remove it with `shunt sandbox delete {key} -n {ns}`",
                last.trim_start_matches("waiting for sandbox ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
