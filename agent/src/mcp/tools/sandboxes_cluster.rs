//! get_sandbox in cluster mode: the pods of a sandbox (labelled `shunt.dev/sandbox=KEY`) with
//! readiness, restarts, the last termination reason and recent Events, so a crash-looping build
//! is diagnosable without kubectl.
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, LogParams};

use crate::{
    mcp::{
        backend::Backend,
        cluster::Cluster,
        error::{ToolError, ToolErrorKind, ToolResult},
        sandbox_types::*,
        session::{SESSION_LABEL, Session},
    },
    routes::SANDBOX_LABEL,
};

/// How a container last ended (`Error, exit code 1`) or why it waits (`CrashLoopBackOff: ...`).
fn termination(pod: &Pod) -> (u32, Option<String>, Option<String>) {
    let mut restarts = 0;
    let mut last = None;
    let mut waiting = None;
    for cs in pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
    {
        restarts += u32::try_from(cs.restart_count).unwrap_or(0);
        let t = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| cs.state.as_ref().and_then(|s| s.terminated.as_ref()));
        if let Some(t) = t {
            last = Some(format!(
                "container {}: {} (exit code {}){}",
                cs.name,
                t.reason.as_deref().unwrap_or("terminated"),
                t.exit_code,
                t.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            waiting = Some(format!(
                "{}{}",
                w.reason.as_deref().unwrap_or("Waiting"),
                w.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
    }
    (restarts, last, waiting)
}

impl Backend {
    pub(crate) async fn cluster_sandbox(
        &self,
        c: &Cluster,
        key: &str,
        session: &Session,
    ) -> ToolResult<SandboxInfo> {
        let ns = c.namespace.clone();
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), &ns);
        let list = pods
            .list(&ListParams::default().labels(&format!("{SANDBOX_LABEL}={key}")))
            .await
            .map_err(ToolError::api)?;
        let snap = self.snapshot(Some(&ns)).await?;
        let route = snap
            .state
            .routes
            .iter()
            .find(|r| r.namespace == ns && r.spec.routing_key == key);
        if list.items.is_empty() && route.is_none() {
            return Err(ToolError::new(
                ToolErrorKind::SandboxNotFound,
                format!("no sandbox with key {key:?} in namespace {ns} (no route, no pod)"),
                "give the sandbox's routing key (list_sandbox_routes shows them)",
            ));
        }
        let events: Vec<Event> = Api::<Event>::namespaced(c.client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(ToolError::api)?
            .items;
        let mut info = SandboxInfo {
            name: key.to_string(),
            namespace: ns.clone(),
            service: route
                .map(|r| {
                    r.spec
                        .forks
                        .iter()
                        .map(|f| f.service.clone())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
            key: key.to_string(),
            ready: false,
            phase: "Pending".into(),
            restarts: 0,
            last_termination: None,
            ip: None,
            port: 0,
            route: route.map(|r| r.id()).unwrap_or_default(),
            session: String::new(),
            owned_by_this_session: false,
            keep: false,
            expires_unix_ms: route
                .and_then(|r| r.spec.expires_at)
                .map(|t| t.as_millisecond() as u64),
            recent_logs: Vec::new(),
            waiting: None,
            events: Vec::new(),
        };
        for pod in &list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.as_ref();
            info.ready |= status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            info.phase = status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into());
            info.ip = info.ip.clone().or(status.and_then(|s| s.pod_ip.clone()));
            if let Some(s) = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SESSION_LABEL))
            {
                info.owned_by_this_session = *s == session.id;
                info.session = s.clone();
            }
            let (restarts, last, waiting) = termination(pod);
            info.restarts += restarts;
            info.last_termination = last
                .map(|l| format!("{name}: {l}"))
                .or(info.last_termination);
            info.waiting = waiting.map(|w| format!("{name}: {w}")).or(info.waiting);
            info.events.extend(
                events
                    .iter()
                    .filter(|e| e.involved_object.name.as_deref() == Some(name.as_str()))
                    .map(|e| {
                        format!(
                            "{name}: {} {}: {}",
                            e.type_.as_deref().unwrap_or("Normal"),
                            e.reason.as_deref().unwrap_or(""),
                            e.message.as_deref().unwrap_or("")
                        )
                    }),
            );
            let lp = LogParams {
                tail_lines: Some(10),
                ..LogParams::default()
            };
            if let Ok(text) = pods.logs(&name, &lp).await {
                info.recent_logs
                    .extend(text.lines().map(|l| format!("{name}: {l}")));
            }
        }
        Ok(info)
    }
}
