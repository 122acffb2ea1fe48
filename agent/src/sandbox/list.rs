//! `shunt sandbox list`: one row per SandboxRoute, with the Deployments it owns and its status.
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, ResourceExt as _, api::ListParams};

use super::{ListArgs, api_err, connect};
use crate::{
    kube::crd::{self, SandboxRoute},
    routes::SANDBOX_LABEL,
};

pub(super) async fn list(a: ListArgs) -> anyhow::Result<()> {
    let (client, ns) = connect(&a.kube).await?;
    let (routes, deployments): (Api<SandboxRoute>, Api<Deployment>) = if a.all_namespaces {
        (Api::all(client.clone()), Api::all(client.clone()))
    } else {
        (
            Api::namespaced(client.clone(), &ns),
            Api::namespaced(client.clone(), &ns),
        )
    };
    let routes = routes
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err("listing SandboxRoutes", e))?;
    let deps = deployments
        .list(&ListParams::default().labels(SANDBOX_LABEL))
        .await
        .map_err(|e| api_err("listing Deployments", e))?;
    if routes.items.is_empty() {
        println!(
            "no sandboxes{}",
            if a.all_namespaces {
                String::new()
            } else {
                format!(" in namespace {ns}")
            }
        );
        return Ok(());
    }
    let mut rows = vec![[
        "KEY".to_string(),
        "NAMESPACE".into(),
        "FORKS".into(),
        "DEPLOYMENT".into(),
        "READY".into(),
        "REASON".into(),
        "EXPIRES".into(),
    ]];
    for r in &routes.items {
        let uid = r.uid();
        let rns = r.namespace().unwrap_or_default();
        let dep: Vec<String> = deps
            .items
            .iter()
            .filter(|d| {
                d.namespace().as_deref() == Some(rns.as_str())
                    && d.owner_references()
                        .iter()
                        .any(|o| Some(&o.uid) == uid.as_ref())
            })
            .map(|d| d.name_any())
            .collect();
        let cond = r
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == crd::READY));
        rows.push([
            r.spec.routing_key.clone(),
            rns,
            r.spec
                .forks
                .iter()
                .map(|f| f.service.clone())
                .collect::<Vec<_>>()
                .join(","),
            if dep.is_empty() {
                "-".into()
            } else {
                dep.join(",")
            },
            cond.map_or("Unknown".into(), |c| c.status.clone()),
            cond.map_or("-".into(), |c| c.reason.clone()),
            r.spec.expires_at.map_or("-".into(), |t| t.to_string()),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}
