//! `shunt sandbox create`: the flags, then [`fork`](super::fork) (the implementation MCP
//! `create_sandbox` shares) and its wait, then what to curl.
use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};

use super::{CreateArgs, clone, connect, fork, progress};
use crate::kube::crd;

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
    let expires_at = match a.ttl {
        None => None,
        Some(ttl) => Some(expiry(ttl).context("--ttl is too long")?),
    };
    let forked = fork::fork(
        &client,
        &ns,
        &fork::ForkSpec {
            deployment: &name,
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
            labels: &BTreeMap::new(),
        },
        &progress,
    )
    .await?;
    let (plan, clone_name) = (&forked.plan, &forked.clone_name);

    let curl = curl_line(&client, &ns, &plan.services, &key).await;
    if a.no_wait {
        println!("sandbox {key} created (not waiting for Ready: see `shunt sandbox list -n {ns}`)");
    } else {
        fork::wait_ready(&client, &ns, plan, &key, &a.image, a.timeout, &progress).await?;
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

/// Now plus `ttl`, in whole seconds (a route's expiresAt).
pub fn expiry(ttl: Duration) -> anyhow::Result<jiff::Timestamp> {
    Ok(jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .checked_add(jiff::SignedDuration::try_from(ttl)?)?)
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
