//! get_logs in cluster mode: `pods/log` of one pod, of a service's baseline pods (its
//! EndpointSlices' pods) or of a sandbox's pods (labelled `shunt.dev/sandbox=KEY`).
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use serde_json::json;

use super::find_service;
use crate::{
    mcp::{
        backend::Backend,
        cluster::Cluster,
        error::{ToolError, ToolErrorKind, ToolResult},
        sandbox_types::*,
    },
    routes::SANDBOX_LABEL,
};

/// Bytes returned per pod.
const LOG_BYTES: i64 = 64 * 1024;

impl Backend {
    pub(crate) async fn cluster_logs(
        &self,
        c: &Cluster,
        p: GetLogsParams,
    ) -> ToolResult<GetLogsResult> {
        let (ns, target) = match p.target.split_once('/') {
            Some((ns, t)) => (ns.to_string(), t.to_string()),
            None => (c.namespace.clone(), p.target.clone()),
        };
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), &ns);
        let mut names: Vec<String> = Vec::new();
        if pods
            .get_opt(&target)
            .await
            .map_err(ToolError::api)?
            .is_some()
        {
            names.push(target.clone());
        } else {
            let snap = self.snapshot(Some(&ns)).await?;
            if let Ok(svc) = find_service(&snap.state, &target, Some(&ns)) {
                names = svc
                    .endpoints
                    .iter()
                    .filter_map(|e| snap.pod_names.get(&e.ip))
                    .map(|n| n.rsplit('/').next().unwrap_or(n).to_string())
                    .collect();
            } else {
                let labelled = pods
                    .list(&ListParams::default().labels(&format!("{SANDBOX_LABEL}={target}")))
                    .await
                    .map_err(ToolError::api)?;
                names = labelled
                    .items
                    .iter()
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
            }
        }
        if names.is_empty() {
            return Err(ToolError::new(
                ToolErrorKind::SandboxNotFound,
                format!(
                    "no pod, service or sandbox key {:?} in namespace {ns}",
                    p.target
                ),
                "give a pod's name, a service's name or a sandbox's routing key (list_services, \
                 list_sandbox_routes)",
            )
            .with_details(json!({ "namespace": ns })));
        }
        let tail = p.tail.unwrap_or(100).clamp(1, 5000);
        let since_seconds = p.since_unix_ms.map(|ms| {
            let now = crate::sandbox::local::now_ms();
            (now.saturating_sub(ms) / 1000 + 1) as i64
        });
        let mut out = Vec::new();
        for name in names {
            let lp = LogParams {
                // With grep, read more and filter here.
                tail_lines: p.grep.is_none().then_some(tail as i64),
                since_seconds,
                limit_bytes: Some(LOG_BYTES * 4),
                ..LogParams::default()
            };
            let text = pods.logs(&name, &lp).await.map_err(ToolError::api)?;
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| p.grep.as_deref().is_none_or(|g| l.contains(g)))
                .collect();
            let skip = lines.len().saturating_sub(tail);
            out.push(PodLogs {
                pod: name,
                lines: lines[skip..].iter().map(|l| l.to_string()).collect(),
                truncated: skip > 0,
            });
        }
        Ok(GetLogsResult {
            target: p.target,
            pods: out,
        })
    }
}
