//! create_sandbox, delete_sandbox and list_sandboxes in cluster mode: the same fork as `shunt
//! sandbox create` ([`crate::sandbox::fork`]), with the route, the clone and its pods labelled
//! with the MCP session. A sandbox is known by its routing key. The session renews the route's
//! expiresAt while it lives (after a SIGKILL the agents delete the expired route, and garbage
//! collection its clone) and deletes what it created without `keep` when it ends.
use std::{collections::BTreeMap, time::Duration};

use kube::{
    Api, ResourceExt as _,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

use crate::{
    kube::crd::{Fallback, SandboxRoute},
    mcp::{
        backend::Backend,
        cluster::Cluster,
        error::{ToolError, ToolErrorKind, ToolResult},
        sandbox_types::*,
        session::{SESSION_LABEL, Session},
    },
    routes::SANDBOX_LABEL,
    sandbox::fork::{self, ForkError},
};

/// How a session remembers a cluster sandbox: `namespace/key`.
fn owned_id(ns: &str, key: &str) -> String {
    format!("{ns}/{key}")
}

fn fork_error(e: ForkError) -> ToolError {
    let kind = match &e {
        ForkError::NotFound(_) => ToolErrorKind::ServiceNotFound,
        ForkError::Exists(_) => ToolErrorKind::KeyExists,
        ForkError::Invalid(_) | ForkError::Clone(_) => ToolErrorKind::InvalidInput,
        ForkError::NotReady(_) => ToolErrorKind::SandboxNotReady,
        ForkError::Api {
            code: Some(403), ..
        } => ToolErrorKind::Forbidden,
        ForkError::Api { .. } => ToolErrorKind::ApiError,
    };
    let fix = match kind {
        ToolErrorKind::ServiceNotFound => {
            "give `deployment` (the Deployment behind `service`), or check `service`"
        }
        ToolErrorKind::KeyExists => "pick another `key`, or delete_sandbox the existing one",
        ToolErrorKind::SandboxNotReady => {
            "get_sandbox name=KEY (termination reason, Events) and get_logs target=KEY; fix the \
             build, delete_sandbox and create again"
        }
        _ => "see the message",
    };
    ToolError::new(kind, e.to_string(), fix)
}

/// The SandboxRoute of `key` in `ns`, if any.
async fn route_of(c: &Cluster, ns: &str, key: &str) -> ToolResult<Option<SandboxRoute>> {
    let routes: Api<SandboxRoute> = Api::namespaced(c.client.clone(), ns);
    Ok(routes
        .list(&ListParams::default())
        .await
        .map_err(ToolError::api)?
        .items
        .into_iter()
        .find(|r| r.spec.routing_key == key))
}

impl Backend {
    pub(crate) async fn cluster_create_sandbox(
        &self,
        c: &Cluster,
        p: CreateSandboxParams,
        session: &Session,
    ) -> ToolResult<CreateSandboxResult> {
        let Some(image) = p.image.clone() else {
            return Err(ToolError::invalid(
                "no `image`: with --kube a sandbox is the service's Deployment forked with the \
                 image of your build",
                "build and push an image, then give image (and deployment when it is not named \
                 like the service)",
            ));
        };
        let (ns, service) = match p.service.split_once('/') {
            Some((ns, s)) => (ns.to_string(), s.to_string()),
            None => (c.namespace.clone(), p.service.clone()),
        };
        let owned = session.snapshot();
        let live: Vec<&String> = owned.sandboxes.keys().collect();
        if live.len() >= session.max_sandboxes {
            return Err(ToolError::new(
                ToolErrorKind::SandboxLimit,
                format!(
                    "this session has {} live sandboxes, its limit (--max-sandboxes-per-session \
                     {}): {}",
                    live.len(),
                    session.max_sandboxes,
                    live.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "delete one you no longer need (delete_sandbox name=KEY) and create again",
            )
            .with_details(json!({ "limit": session.max_sandboxes, "delete_one_of": live })));
        }
        let deployment = p.deployment.clone().unwrap_or(service);
        let env: Vec<(String, String)> = p.env.clone().into_iter().collect();
        let expires_at = match session.expiry(p.keep) {
            None => None,
            Some(_) => Some(
                crate::sandbox::expiry(session.ttl)
                    .map_err(|e| ToolError::invalid(format!("--session-ttl: {e}"), "lower it"))?,
            ),
        };
        let labels = BTreeMap::from([(SESSION_LABEL.to_string(), session.id.clone())]);
        let spec = fork::ForkSpec {
            deployment: &deployment,
            key: &p.key,
            image: &image,
            env: &env,
            container: p.container.as_deref(),
            replicas: 1,
            fallback: Fallback::Baseline,
            expires_at,
            labels: &labels,
        };
        let progress = |msg: &str| tracing::info!("create_sandbox: {msg}");
        let forked = fork::fork(&c.client, &ns, &spec, &progress)
            .await
            .map_err(fork_error)?;
        // Owned from now on: a sandbox that never gets Ready is still the session's to delete.
        session.add_sandbox(&owned_id(&ns, &p.key), p.keep);
        let timeout = Duration::from_secs(p.ready_timeout_seconds.unwrap_or(120).clamp(1, 1800));
        let waited = fork::wait_ready(
            &c.client,
            &ns,
            &forked.plan,
            &p.key,
            &image,
            timeout,
            &progress,
        )
        .await;
        let info = self.cluster_sandbox(c, &p.key, session).await;
        match waited {
            Ok(()) => Ok(CreateSandboxResult {
                sandbox: info?,
                applied: true,
                next_step: format!(
                    "send_test_request with key {:?} to {}: the key's requests for {} go to \
                     deployment/{}",
                    p.key,
                    forked.plan.services.join(", "),
                    forked.plan.services.join(", "),
                    forked.clone_name
                ),
                warnings: Vec::new(),
            }),
            Err(e) => {
                let mut err = fork_error(e);
                if let Ok(info) = info {
                    if let Some(t) = &info.last_termination {
                        err.message = format!("{}; last termination: {t}", err.message);
                    }
                    err = err.with_details(json!({ "sandbox": info }));
                }
                Err(err)
            }
        }
    }

    pub(crate) async fn cluster_delete_sandbox(
        &self,
        c: &Cluster,
        p: SandboxNameParams,
        session: &Session,
    ) -> ToolResult<DeleteSandboxResult> {
        let ns = c.namespace.clone();
        let Some(route) = route_of(c, &ns, &p.name).await? else {
            return Err(ToolError::new(
                ToolErrorKind::SandboxNotFound,
                format!("no sandbox with key {:?} in namespace {ns}", p.name),
                "give the sandbox's routing key (list_sandboxes shows them)",
            ));
        };
        let owner = route.labels().get(SESSION_LABEL).cloned();
        if owner.as_deref() != Some(session.id.as_str()) && !p.force {
            return Err(ToolError::new(
                ToolErrorKind::NotOwned,
                format!(
                    "sandbox {} was created by {}, not this session ({})",
                    p.name,
                    owner
                        .map(|o| format!("session {o}"))
                        .unwrap_or_else(|| "a person (it has no session label)".into()),
                    session.id
                ),
                "leave it to its owner; only if you must, delete_sandbox with force: true",
            ));
        }
        let done = crate::sandbox::remove(&c.client, &ns, &route.name_any(), &p.name).await;
        session.remove_sandbox(&owned_id(&ns, &p.name));
        Ok(DeleteSandboxResult {
            deleted: p.name,
            route_updated: done.iter().any(|d| d.starts_with("sandboxroute")),
            warnings: Vec::new(),
        })
    }

    pub(crate) async fn cluster_list_sandboxes(
        &self,
        c: &Cluster,
        session: &Session,
    ) -> ToolResult<ListSandboxesResult> {
        let routes: Api<SandboxRoute> = Api::namespaced(c.client.clone(), &c.namespace);
        let list = routes
            .list(&ListParams::default().labels(SANDBOX_LABEL))
            .await
            .map_err(ToolError::api)?;
        let mut sandboxes = Vec::new();
        for r in list.items {
            let mut info = self
                .cluster_sandbox(c, &r.spec.routing_key, session)
                .await?;
            if let Some(s) = r.labels().get(SESSION_LABEL) {
                info.owned_by_this_session = *s == session.id;
                info.session = s.clone();
            }
            info.keep = info.owned_by_this_session
                && session
                    .snapshot()
                    .sandboxes
                    .get(&owned_id(&c.namespace, &r.spec.routing_key))
                    .copied()
                    .unwrap_or(false);
            sandboxes.push(info);
        }
        Ok(ListSandboxesResult {
            sandboxes,
            session: session.id.clone(),
            session_limit: session.max_sandboxes,
        })
    }

    /// Deletes the session's sandboxes created without `keep`; returns what was deleted.
    pub(crate) async fn cluster_end_session(&self, c: &Cluster, session: &Session) -> Vec<String> {
        let mut done = Vec::new();
        for (id, keep) in session.snapshot().sandboxes {
            let Some((ns, key)) = id.split_once('/') else {
                continue;
            };
            if keep {
                continue;
            }
            if let Ok(Some(route)) = route_of(c, ns, key).await
                && route.labels().get(SESSION_LABEL) == Some(&session.id)
            {
                let removed = crate::sandbox::remove(&c.client, ns, &route.name_any(), key).await;
                if !removed.is_empty() {
                    done.push(format!("sandbox {id} ({})", removed.join(", ")));
                }
            }
            session.remove_sandbox(&id);
        }
        done
    }

    /// Pushes the expiresAt of the session's sandbox routes (without `keep`) --session-ttl ahead.
    pub(crate) async fn cluster_renew_session(&self, c: &Cluster, session: &Session) {
        let Ok(at) = crate::sandbox::expiry(session.ttl) else {
            return;
        };
        for (id, keep) in session.snapshot().sandboxes {
            let Some((ns, key)) = id.split_once('/') else {
                continue;
            };
            if keep {
                continue;
            }
            let Ok(Some(route)) = route_of(c, ns, key).await else {
                continue;
            };
            let routes: Api<SandboxRoute> = Api::namespaced(c.client.clone(), ns);
            let patch = json!({ "spec": { "expiresAt": at.to_string() } });
            if let Err(e) = routes
                .patch(
                    &route.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                tracing::warn!(sandbox = %id, error = %e, "renewing the sandbox route's expiry");
            }
        }
    }
}
