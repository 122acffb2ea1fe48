//! `shunt sandbox delete`: a sandbox's Deployments, then its route.
use anyhow::bail;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, ListParams},
};

use super::{DeleteArgs, api_err, clone, connect};
use crate::{kube::crd::SandboxRoute, routes::SANDBOX_LABEL};

pub(super) async fn delete(a: DeleteArgs) -> anyhow::Result<()> {
    let (client, ns) = connect(&a.kube).await?;
    let routes: Api<SandboxRoute> = Api::namespaced(client.clone(), &ns);
    let list = routes
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err("listing SandboxRoutes", e))?;
    let Some(route) = list.items.iter().find(|r| r.spec.routing_key == a.key) else {
        let keys: Vec<String> = list
            .items
            .iter()
            .map(|r| r.spec.routing_key.clone())
            .collect();
        bail!(
            "no sandbox with key {} in namespace {ns} (keys there: {}); fix: check `shunt sandbox list -A`",
            a.key,
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            }
        );
    };
    let done = remove(&client, &ns, &route.name_any(), &a.key).await;
    if done.is_empty() {
        bail!("could not delete sandbox {}: nothing was removed", a.key);
    }
    println!("deleted sandbox {}: {}", a.key, done.join(", "));
    Ok(())
}

/// Deletes a sandbox: the Deployments it owns (garbage collection would, but explicitly is
/// immediate and works where there is none), then its route. Best effort.
pub async fn remove(client: &Client, ns: &str, route_name: &str, key: &str) -> Vec<String> {
    let mut done = Vec::new();
    let routes: Api<SandboxRoute> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let uid = routes
        .get_opt(route_name)
        .await
        .ok()
        .flatten()
        .and_then(|r| r.uid());
    if let Ok(list) = deployments
        .list(&ListParams::default().labels(&format!("{SANDBOX_LABEL}={key}")))
        .await
    {
        for d in list.items {
            let owned = d
                .owner_references()
                .iter()
                .any(|o| o.kind == "SandboxRoute" && Some(&o.uid) == uid.as_ref())
                || d.annotations().contains_key(clone::FORKED_FROM);
            if owned
                && deployments
                    .delete(&d.name_any(), &DeleteParams::background())
                    .await
                    .is_ok()
            {
                done.push(format!("deployment {ns}/{}", d.name_any()));
            }
        }
    }
    if routes
        .delete(route_name, &DeleteParams::background())
        .await
        .is_ok()
    {
        done.push(format!("sandboxroute {ns}/{route_name}"));
    }
    done
}
