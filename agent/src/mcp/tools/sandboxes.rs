//! create/get/list/delete_sandbox in no-cluster mode: a command started as a new pod of the
//! mini-cluster ([`crate::sandbox::local`]), listed in the routes file as a sandbox pod (labelled
//! with its key and session) and forked to by the key's route.
use std::{net::SocketAddr, time::Duration};

use serde_json::json;

use super::{find_service, svc_id};
use crate::{
    mcp::{
        backend::{Backend, Local},
        error::{ToolError, ToolErrorKind, ToolResult},
        sandbox_types::*,
        session::{SESSION_LABEL, Session},
    },
    routes::{
        Fallback, ForkSpec, ForkTarget, Pod, RoutingKey, SANDBOX_LABEL, SandboxRouteObj,
        SandboxRouteSpec, TargetPort,
    },
    sandbox::local::{MiniCluster, PodRecord, StartSpec, read_lines},
};

pub(super) fn ts(ms: Option<u64>) -> Option<jiff::Timestamp> {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms as i64).ok())
}

fn unsupported() -> ToolError {
    ToolError::new(
        ToolErrorKind::Unsupported,
        "sandboxes need the mini-cluster's run directory in no-cluster mode",
        "start `shunt mcp` with --cluster-dir DIR (`cargo xtask demo --keep` prints the command)",
    )
}

fn not_found(name: &str, mini: &MiniCluster) -> ToolError {
    let names: Vec<String> = PodRecord::all(&mini.dir)
        .into_iter()
        .filter(|p| p.sandbox.is_some())
        .map(|p| p.name)
        .collect();
    ToolError::new(
        ToolErrorKind::SandboxNotFound,
        format!("no sandbox {name:?}"),
        "use one of the names list_sandboxes shows",
    )
    .with_details(json!({ "sandboxes": names }))
}

fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// The selector of the fork to sandbox `name`.
fn selector(name: &str, key: &str) -> std::collections::BTreeMap<String, String> {
    [
        ("app".to_string(), name.to_string()),
        (SANDBOX_LABEL.to_string(), key.to_string()),
    ]
    .into()
}

impl Backend {
    pub(crate) fn mini(&self) -> ToolResult<(&Local, &MiniCluster)> {
        match self {
            Backend::Local(l) => l.mini.as_ref().map(|m| (l, m)).ok_or_else(unsupported),
            Backend::Cluster(_) => Err(ToolError::new(
                ToolErrorKind::Unsupported,
                "no-cluster sandboxes (a command of the mini-cluster) are not used with --kube",
                "with --kube, create_sandbox forks the Deployment with `image`",
            )),
        }
    }

    pub async fn create_sandbox(
        &self,
        p: CreateSandboxParams,
        session: &Session,
    ) -> ToolResult<CreateSandboxResult> {
        if let Backend::Cluster(c) = self {
            return self.cluster_create_sandbox(c, p, session).await;
        }
        let (local, mini) = self.mini()?;
        if !valid_name(&p.name) {
            return Err(ToolError::invalid(
                format!("{:?} is not a valid sandbox name", p.name),
                "use [a-z0-9-]{1,40}, e.g. reviews-fix",
            ));
        }
        if let Err(e) = RoutingKey::parse(&p.key) {
            return Err(ToolError::invalid(
                format!("{:?} is not a valid routing key: {e:?}", p.key),
                format!("use {}", RoutingKey::SYNTAX),
            ));
        }
        let Some(command) = p.command.clone() else {
            return Err(ToolError::invalid(
                "no `command`: a no-cluster sandbox runs your build of the service",
                "give command (the executable's path), args and env",
            ));
        };
        let owned = session.snapshot();
        let live: Vec<String> = owned
            .sandboxes
            .keys()
            .filter(|n| PodRecord::find(&mini.dir, n).is_some())
            .cloned()
            .collect();
        if live.len() >= session.max_sandboxes {
            return Err(ToolError::new(
                ToolErrorKind::SandboxLimit,
                format!(
                    "this session has {} live sandboxes, its limit (--max-sandboxes-per-session \
                     {}): {}",
                    live.len(),
                    session.max_sandboxes,
                    live.join(", ")
                ),
                "delete one you no longer need (delete_sandbox name=...) and create again",
            )
            .with_details(json!({ "limit": session.max_sandboxes, "delete_one_of": live })));
        }
        if PodRecord::find(&mini.dir, &p.name).is_some() {
            return Err(ToolError::new(
                ToolErrorKind::SandboxExists,
                format!("a pod named {:?} exists already", p.name),
                "choose another name, or delete_sandbox it first",
            ));
        }
        let snap = local.snapshot()?;
        let svc = find_service(&snap.state, &p.service, None)?.clone();
        let ns = svc.namespace.clone();
        let sp = svc.ports.first().ok_or_else(|| {
            ToolError::invalid(
                format!("{} has no port", svc_id(&svc)),
                "fork another service",
            )
        })?;
        let port_name = match &sp.target_port {
            TargetPort::Name(n) => n.clone(),
            TargetPort::Number(_) => sp.name.clone().unwrap_or_else(|| "port".into()),
        };
        let default_port = match &sp.target_port {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(_) => svc
                .endpoints
                .iter()
                .find_map(|e| e.ports.get(sp.slice_key()).copied()),
        };
        let Some(port) = p.port.or(default_port) else {
            return Err(ToolError::invalid(
                format!("cannot tell which port {} listens on", svc_id(&svc)),
                "give `port`",
            ));
        };
        // The key's route: this session's (a fork is added), someone else's (refused), or new.
        let existing = snap
            .state
            .routes
            .iter()
            .find(|r| r.namespace == ns && r.spec.routing_key == p.key)
            .cloned();
        if let Some(r) = &existing {
            if !session.owns_route(&r.id()) {
                return Err(ToolError::new(
                    ToolErrorKind::KeyExists,
                    format!(
                        "routing key {:?} is used by route {} that this session did not create",
                        p.key,
                        r.id()
                    ),
                    "choose another key",
                ));
            }
            if let Some(f) = r.spec.forks.iter().find(|f| f.service == svc.name) {
                return Err(ToolError::new(
                    ToolErrorKind::KeyExists,
                    format!(
                        "key {:?} already forks {} (to {:?})",
                        p.key,
                        svc.name,
                        f.to.selector.as_ref().and_then(|s| s.get("app"))
                    ),
                    "delete that sandbox first (delete_sandbox), or use another key",
                ));
            }
        }
        let route_id = existing
            .as_ref()
            .map_or_else(|| format!("{ns}/{}", p.key), |r| r.id());
        let expires = session.expiry(p.keep);
        let spec = StartSpec {
            name: p.name.clone(),
            namespace: ns.clone(),
            service: svc.name.clone(),
            key: p.key.clone(),
            session: session.id.clone(),
            keep: p.keep,
            expires_unix_ms: expires,
            command,
            args: p.args.clone(),
            env: p.env.clone(),
            port,
            route: route_id.clone(),
        };
        let timeout = Duration::from_secs(p.ready_timeout_seconds.unwrap_or(30).clamp(1, 600));
        let m = mini.clone();
        let started = tokio::task::spawn_blocking(move || {
            let rec = m.start(spec)?;
            let ready = m.wait_ready(&rec, timeout);
            Ok::<_, crate::sandbox::local::LocalError>((rec, ready))
        })
        .await
        .map_err(|e| ToolError::new(ToolErrorKind::RequestFailed, e.to_string(), "retry"))?;
        let (rec, ready) = started.map_err(|e| {
            ToolError::new(
                ToolErrorKind::SandboxNotReady,
                format!("starting sandbox {}: {e}", p.name),
                "check `command` (an absolute path to an executable) and that the mini-cluster \
                 is up (cargo xtask demo --keep)",
            )
        })?;
        if !ready {
            let state = mini.state(&rec);
            let (logs, _) = read_lines(
                &PodRecord::log_path(&mini.dir, &rec.name),
                0,
                None,
                None,
                20,
                8192,
            );
            let m = mini.clone();
            let r = rec.clone();
            let _ = tokio::task::spawn_blocking(move || m.stop(&r)).await;
            return Err(ToolError::new(
                ToolErrorKind::SandboxNotReady,
                format!(
                    "sandbox {} did not accept connections on {}:{port} within {timeout:?}: {}",
                    p.name,
                    rec.ips[0],
                    if state.running {
                        "still running".to_string()
                    } else {
                        state.termination.clone().unwrap_or_default()
                    }
                ),
                "read `details.logs`; make it listen on $(POD_IP):$(PORT) (or 0.0.0.0:PORT)",
            )
            .with_details(json!({ "termination": state.termination, "logs": logs })));
        }
        let pod = Pod {
            namespace: ns.clone(),
            name: rec.name.clone(),
            ips: rec.ips.clone(),
            labels: {
                let mut l = selector(&rec.name, &p.key);
                l.insert(SESSION_LABEL.into(), session.id.clone());
                l
            },
            ready: true,
            container_ports: [(port_name, port)].into(),
        };
        let fork = ForkSpec {
            service: svc.name.clone(),
            to: ForkTarget {
                selector: Some(selector(&rec.name, &p.key).into()),
                service: None,
            },
            ports: None,
        };
        let (key, rid, ns2) = (p.key.clone(), route_id.clone(), ns.clone());
        let edited = local
            .edit(move |pods, routes| {
                pods.push(pod);
                match routes.iter_mut().find(|r| r.id() == rid) {
                    Some(r) => r.spec.forks.push(fork),
                    None => routes.push(SandboxRouteObj {
                        namespace: ns2,
                        name: key.clone(),
                        creation_timestamp: jiff::Timestamp::now(),
                        generation: 1,
                        spec: SandboxRouteSpec {
                            routing_key: key,
                            forks: vec![fork],
                            fallback: Fallback::Baseline,
                            expires_at: ts(expires),
                            inject_key: true,
                        },
                    }),
                }
                Ok(())
            })
            .await;
        let state = match edited {
            Ok(s) => s,
            Err(e) => {
                let m = mini.clone();
                let r = rec.clone();
                let _ = tokio::task::spawn_blocking(move || m.stop(&r)).await;
                return Err(e);
            }
        };
        session.add_sandbox(&rec.name, p.keep);
        if existing.is_none() {
            session.add_route(&route_id, p.keep);
        }
        let route = state.routes.iter().find(|r| r.id() == route_id).cloned();
        let (applied, warnings) = match &route {
            Some(r) => local.applied(r, true).await,
            None => (
                false,
                vec!["the route is missing from the routes file".into()],
            ),
        };
        let url = super::url_for(&svc, sp.port, false).unwrap_or_default();
        Ok(CreateSandboxResult {
            sandbox: self.sandbox_info(mini, &rec, session).await,
            applied,
            next_step: format!(
                "send_test_request(url={url:?}, key={:?}) (or any service upstream of {}), then \
                 read each hop's status and logs; get_logs(target={:?}) shows its whole log",
                p.key, svc.name, p.name
            ),
            warnings,
        })
    }

    pub(crate) async fn sandbox_info(
        &self,
        mini: &MiniCluster,
        rec: &PodRecord,
        session: &Session,
    ) -> SandboxInfo {
        let sb = rec.sandbox.clone().expect("a sandbox record");
        let state = mini.state(rec);
        let addr = rec.ips.first().map(|ip| SocketAddr::new(*ip, sb.port));
        let ready = match addr {
            Some(a) if state.running => {
                let m = mini.clone();
                tokio::task::spawn_blocking(move || m.is_ready(a))
                    .await
                    .unwrap_or(false)
            }
            _ => false,
        };
        let (recent_logs, _) = read_lines(
            &PodRecord::log_path(&mini.dir, &rec.name),
            0,
            None,
            None,
            10,
            4096,
        );
        SandboxInfo {
            name: rec.name.clone(),
            namespace: rec.namespace.clone(),
            service: rec.service.clone().unwrap_or_default(),
            key: sb.key.clone(),
            ready,
            phase: if state.running { "Running" } else { "Exited" }.into(),
            restarts: 0,
            last_termination: state.termination,
            ip: rec.ips.first().map(|ip| ip.to_string()),
            port: sb.port,
            route: sb.route.clone(),
            owned_by_this_session: sb.session == session.id,
            session: sb.session,
            keep: sb.keep,
            expires_unix_ms: sb.expires_unix_ms,
            recent_logs,
            waiting: None,
            events: Vec::new(),
        }
    }

    pub async fn get_sandbox(
        &self,
        p: SandboxNameParams,
        session: &Session,
    ) -> ToolResult<SandboxInfo> {
        if let Backend::Cluster(c) = self {
            return self.cluster_sandbox(c, &p.name, session).await;
        }
        let (_, mini) = self.mini()?;
        match PodRecord::find(&mini.dir, &p.name).filter(|r| r.sandbox.is_some()) {
            Some(rec) => Ok(self.sandbox_info(mini, &rec, session).await),
            None => Err(not_found(&p.name, mini)),
        }
    }

    pub async fn list_sandboxes(&self, session: &Session) -> ToolResult<ListSandboxesResult> {
        if let Backend::Cluster(c) = self {
            return self.cluster_list_sandboxes(c, session).await;
        }
        let (_, mini) = self.mini()?;
        let mut sandboxes = Vec::new();
        for rec in PodRecord::all(&mini.dir) {
            if rec.sandbox.is_some() {
                sandboxes.push(self.sandbox_info(mini, &rec, session).await);
            }
        }
        Ok(ListSandboxesResult {
            sandboxes,
            session: session.id.clone(),
            session_limit: session.max_sandboxes,
        })
    }

    pub async fn delete_sandbox(
        &self,
        p: SandboxNameParams,
        session: &Session,
    ) -> ToolResult<DeleteSandboxResult> {
        if let Backend::Cluster(c) = self {
            return self.cluster_delete_sandbox(c, p, session).await;
        }
        let (_, mini) = self.mini()?;
        let Some(rec) = PodRecord::find(&mini.dir, &p.name).filter(|r| r.sandbox.is_some()) else {
            return Err(not_found(&p.name, mini));
        };
        let owner = rec
            .sandbox
            .as_ref()
            .map(|s| s.session.clone())
            .unwrap_or_default();
        if owner != session.id && !p.force {
            return Err(ToolError::new(
                ToolErrorKind::NotOwned,
                format!(
                    "sandbox {} was created by session {owner}, not this one ({})",
                    p.name, session.id
                ),
                "leave it to its owner; only if you must, delete_sandbox with force: true",
            ));
        }
        let (route_updated, warnings) = self.remove_sandbox(&rec, session, true).await?;
        Ok(DeleteSandboxResult {
            deleted: rec.name,
            route_updated,
            warnings,
        })
    }

    /// Removes a sandbox everywhere: its fork (and its route when that was the last fork) and
    /// its pod from the routes file, then its process, cgroup, namespace and record. With
    /// `wait`, waits until the agent has dropped a deleted route.
    pub(crate) async fn remove_sandbox(
        &self,
        rec: &PodRecord,
        session: &Session,
        wait: bool,
    ) -> ToolResult<(bool, Vec<String>)> {
        let (local, mini) = self.mini()?;
        let sb = rec.sandbox.clone().expect("a sandbox record");
        let (name, rid) = (rec.name.clone(), sb.route.clone());
        let mut route_gone = false;
        let before = local.snapshot()?;
        let state = local
            .edit(move |pods, routes| {
                pods.retain(|p| p.name != name);
                for r in routes.iter_mut().filter(|r| r.id() == rid) {
                    r.spec.forks.retain(|f| {
                        f.to.selector.as_ref().and_then(|s| s.get("app")) != Some(&name)
                    });
                }
                routes.retain(|r| r.id() != rid || !r.spec.forks.is_empty());
                Ok(())
            })
            .await?;
        let had = before.state.routes.iter().find(|r| r.id() == sb.route);
        if had.is_some() && !state.routes.iter().any(|r| r.id() == sb.route) {
            route_gone = true;
            session.remove_route(&sb.route);
        }
        let m = mini.clone();
        let r = rec.clone();
        let _ = tokio::task::spawn_blocking(move || m.stop(&r)).await;
        session.remove_sandbox(&rec.name);
        let warnings = match had {
            Some(r) if route_gone && wait => local.applied(r, false).await.1,
            _ => Vec::new(),
        };
        Ok((had.is_some(), warnings))
    }
}
