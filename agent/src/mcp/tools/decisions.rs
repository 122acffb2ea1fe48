//! get_decisions: the routing decisions the agents logged for a key, merged across agents, with
//! a hint per reason.
use std::{collections::BTreeMap, net::SocketAddr};

use crate::mcp::{
    backend::{Backend, Snapshot},
    error::{ToolError, ToolErrorKind, ToolResult},
    types::*,
};

impl Backend {
    /// All decisions since `since` (optionally for one key) from every agent, oldest first,
    /// with owners filled in.
    pub(super) async fn decisions(
        &self,
        key: Option<&str>,
        since: Option<u64>,
        snap: &Snapshot,
    ) -> ToolResult<(Vec<DecisionInfo>, Vec<String>)> {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(k) = key {
                q.append_pair("key", k);
            }
            if let Some(s) = since {
                q.append_pair("since", &s.to_string());
            }
            q.finish()
        };
        let (replies, warnings) = self
            .debug_get(&format!("/decisions?{query}"), snap.namespace.as_deref())
            .await?;
        let table = snap.table();
        let owner = |addr: &str| -> Option<String> {
            let sa: SocketAddr = addr.parse().ok()?;
            let ip = sa.ip().to_canonical();
            snap.pod_names
                .get(&ip)
                .cloned()
                .or_else(|| table.owner_of(ip).map(str::to_string))
        };
        let mut out = Vec::new();
        for r in replies {
            let mut ds: Vec<DecisionInfo> = serde_json::from_str(&r.body).map_err(|e| {
                ToolError::new(
                    ToolErrorKind::AgentError,
                    format!("the agent's /decisions answer did not parse: {e}"),
                    "check that the agent and `shunt mcp` are the same version",
                )
            })?;
            for d in &mut ds {
                d.client_owner = owner(&d.client);
                d.upstream_owner = d.upstream.as_deref().and_then(owner);
                d.agent = r.agent.clone();
            }
            out.extend(ds);
        }
        out.sort_by_key(|d| d.time);
        Ok((out, warnings))
    }

    pub async fn get_decisions(&self, p: DecisionsParams) -> ToolResult<DecisionsResult> {
        let snap = self.snapshot(None).await?;
        let (mut decisions, warnings) =
            self.decisions(Some(&p.key), p.since_unix_ms, &snap).await?;
        let limit = p.limit.unwrap_or(100);
        if decisions.len() > limit {
            decisions.drain(..decisions.len() - limit);
        }
        let mut summary = BTreeMap::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for d in &decisions {
            *summary.entry(d.decision.clone()).or_default() += 1;
            *reasons.entry(d.reason.clone()).or_default() += 1;
        }
        let mut hints: Vec<Hint> = reasons
            .into_iter()
            .map(|(reason, count)| Hint {
                hint: reason_hint(&reason).to_string(),
                reason,
                count,
            })
            .collect();
        if decisions.is_empty() {
            hints.push(Hint {
                reason: "none".into(),
                count: 0,
                hint: format!(
                    "no decision for key {:?}{}: no keyed request reached a steered service. \
                     Send one (send_test_request with key), check that the route exists \
                     (list_sandbox_routes) and that the client runs in a captured pod",
                    p.key,
                    p.since_unix_ms
                        .map(|s| format!(" since {s}"))
                        .unwrap_or_default()
                ),
            });
        }
        Ok(DecisionsResult {
            key: p.key,
            decisions,
            summary,
            hints,
            warnings,
        })
    }
}

/// What a decision reason means and what to do about it.
pub fn reason_hint(reason: &str) -> &'static str {
    match reason {
        "key_matched" => "routed to the sandbox: the key has a fork for this service",
        "no_key" => {
            "the request carried no routing key; it went to the baseline. If an earlier hop had \
             the key, the service in between does not propagate the baggage header"
        }
        "invalid_key" => "the routing key is malformed ([A-Za-z0-9._-]{1,64}); treated as no key",
        "key_not_forked" => {
            "the key has no fork for this service, so it went to the baseline (expected for \
             services you did not change); to fork it, add it with create_sandbox_route"
        }
        "unknown_service" => {
            "the destination is not a known service address; check the address and port with \
             resolve_port"
        }
        "no_ready_sandbox" => {
            "the fork has no ready sandbox pod, so the fallback applied (baseline or 503); check \
             the sandbox pods (list_services → sandbox_pods, forks[].ready_sandbox_endpoints)"
        }
        "sandbox_unreachable" => {
            "the sandbox pod refused the connection; is it listening on the service's \
             targetPort?"
        }
        "opaque_protocol" => {
            "not plain HTTP (TLS or another protocol): copied to the baseline as is; routing by \
             key needs plaintext HTTP/1.1, HTTP/2 or gRPC"
        }
        "no_local_endpoint" => {
            "the service has internalTrafficPolicy: Local and no endpoint on the client's node, so \
             the connection was dropped, as kube-proxy drops it; run a pod of the service on that \
             node, or send from a node that has one"
        }
        "header_read_timeout" => {
            "part of the request arrived but its headers did not finish in time (answered 408)"
        }
        "sandbox_timeout" => {
            "the sandbox did not send its response headers within --response-header-timeout, so \
             the route's fallback applied; is the sandbox stuck or slow? (read its logs)"
        }
        "body_too_large_to_retry" => {
            "the request body was larger than --max-request-buffer, so it could not be kept to \
             send again: the sandbox's failure was answered (504/502) instead of falling back"
        }
        "buffer_budget_exhausted" => {
            "the agent's memory budget for sandbox-bound requests (--max-connection-buffer or \
             --max-buffered-bytes) was spent; the request was refused (503, or REFUSED_STREAM on \
             HTTP/2). Send fewer concurrent requests to a slow sandbox"
        }
        _ => "see the agent documentation",
    }
}

#[cfg(test)]
mod hint_tests {
    use super::reason_hint;
    use crate::routes::DecisionReason as R;

    #[test]
    fn every_decision_reason_has_its_own_hint() {
        for r in [
            R::KeyMatched,
            R::NoKey,
            R::InvalidKey,
            R::KeyNotForked,
            R::UnknownService,
            R::NoReadySandbox,
            R::SandboxUnreachable,
            R::OpaqueProtocol,
            R::HeaderReadTimeout,
            R::NoLocalEndpoint,
            R::SandboxTimeout,
            R::BodyTooLargeToRetry,
            R::BufferBudgetExhausted,
        ] {
            assert_ne!(
                reason_hint(r.as_str()),
                reason_hint("?"),
                "{} has no hint",
                r.as_str()
            );
        }
    }
}
