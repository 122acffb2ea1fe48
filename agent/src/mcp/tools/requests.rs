//! send_test_request: one HTTP request from inside the cluster (or the client pod), with the key
//! injected, and the hops it caused, followed from agent to agent.
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{decisions::reason_hint, find_port, find_service, now_ms, svc_id};
use crate::{
    mcp::{
        backend::{Backend, Snapshot},
        error::{ToolError, ToolErrorKind, ToolResult},
        request::{ChildRequest, ClientPlacement, run_in_child},
        types::*,
    },
    routes::RoutingKey,
};

impl Backend {
    pub async fn send_test_request(
        &self,
        p: SendRequestParams,
        placement: &ClientPlacement,
    ) -> ToolResult<SendRequestResult> {
        let snap = self.snapshot(None).await?;
        let uri: http::Uri = p.url.parse().map_err(|e| {
            ToolError::invalid(
                format!("{:?} is not a URL: {e}", p.url),
                "use http://HOST:PORT/PATH (HOST: a service address or name from list_services)",
            )
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(ToolError::invalid(
                    "https: TLS traffic is copied opaquely and cannot be routed by key",
                    "call the service over plain http (in-cluster traffic usually is)",
                ));
            }
            _ => {
                return Err(ToolError::invalid(
                    format!("{:?}: expected an http:// URL", p.url),
                    "use http://HOST:PORT/PATH",
                ));
            }
        }
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let port = uri.port_u16().unwrap_or(80);
        let mut warnings = Vec::new();
        let (ip, service) = match host.parse::<IpAddr>() {
            Ok(ip) => (
                ip,
                snap.state
                    .services
                    .iter()
                    .find(|s| s.addresses.contains(&ip)),
            ),
            Err(_) => {
                let svc = find_service(&snap.state, host, None).map_err(|mut e| {
                    e.message = format!("host {host:?}: {}", e.message);
                    e
                })?;
                let Some(ip) = svc.addresses.first() else {
                    return Err(ToolError::invalid(
                        format!("service {} has no address (headless)", svc_id(svc)),
                        "call one of its pods' addresses instead",
                    ));
                };
                (*ip, Some(svc))
            }
        };
        if let Some(svc) = service {
            find_port(svc, &PortValue::Number(port))?;
        } else if !snap
            .state
            .services
            .iter()
            .any(|s| s.endpoints.iter().any(|e| e.ip == ip))
            && !snap.state.pods.iter().any(|pod| pod.ips.contains(&ip))
        {
            warnings.push(format!(
                "{ip} is not a service address the agent knows; the request will not be routed \
                 by key (list_services shows the services)"
            ));
        }
        let method = p.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        if http::Method::from_bytes(method.as_bytes()).is_err() {
            return Err(ToolError::invalid(
                format!("{method:?} is not an HTTP method"),
                "use GET, POST, PUT, DELETE, ...",
            ));
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut baggage: Option<String> = None;
        for (n, v) in p.headers.iter().flatten() {
            if http::HeaderName::from_bytes(n.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                return Err(ToolError::invalid(
                    format!("header {n:?}: {v:?} is not a valid HTTP header"),
                    "use ASCII header names and values",
                ));
            }
            if n.eq_ignore_ascii_case("baggage") {
                baggage = Some(v.clone());
            } else if !n.eq_ignore_ascii_case("host") {
                headers.push((n.clone(), v.clone()));
            }
        }
        if let Some(key) = &p.key {
            if let Err(e) = RoutingKey::parse(key) {
                return Err(ToolError::invalid(
                    format!("{key:?} is not a valid routing key: {e:?}"),
                    format!("use {}", RoutingKey::SYNTAX),
                ));
            }
            baggage = Some(with_key(baggage.as_deref(), key));
        }
        if let Some(b) = baggage {
            headers.push(("baggage".into(), b));
        }
        let timeout_ms = p.timeout_seconds.unwrap_or(10).clamp(1, 120) * 1000;
        let req = ChildRequest {
            method: method.clone(),
            addr: SocketAddr::new(ip, port),
            host: uri
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default(),
            path_and_query: uri
                .path_and_query()
                .map_or("/".to_string(), |pq| pq.as_str().to_string()),
            headers,
            body: p.body.clone(),
            timeout_ms,
        };
        let marks = self.log_marks();
        let started_ms = now_ms();
        let started = Instant::now();
        let (resp, sent_from) = match self {
            Backend::Local(_) => {
                let resp = run_in_child(placement, &req).await.map_err(|e| {
                    ToolError::new(
                        ToolErrorKind::RequestFailed,
                        format!("{e:#}"),
                        "check --client-netns/--client-cgroup of `shunt mcp` (they must name the \
                         client pod's network namespace and the captured cgroup)",
                    )
                })?;
                (
                    resp,
                    "the client pod (--client-netns, --client-cgroup)".to_string(),
                )
            }
            Backend::Cluster(c) => {
                // From the called service's namespace unless told otherwise: where its own
                // clients usually run (and NetworkPolicies allow them).
                let ns = c
                    .request_namespace
                    .clone()
                    .or_else(|| service.map(|s| s.namespace.clone()))
                    .unwrap_or_else(|| c.namespace.clone());
                let (resp, pod) = c.request_from_pod(&ns, &req).await?;
                let from = format!(
                    "pod {}/{}{}{}",
                    pod.namespace,
                    pod.name,
                    pod.pod_ip.map(|ip| format!(" ({ip})")).unwrap_or_default(),
                    pod.node
                        .map(|n| format!(" on node {n}"))
                        .unwrap_or_default()
                );
                (resp, from)
            }
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if let Some(err) = resp.error.as_deref().filter(|_| resp.status.is_none()) {
            return Err(ToolError::new(
                ToolErrorKind::RequestFailed,
                format!("{method} {}: {err}", p.url),
                "check the address and port (list_services, resolve_port); a refused or timed-out \
                 connection to a service address usually means a wrong port or no ready endpoint",
            ));
        }
        let status = resp.status.unwrap_or_default();
        if let Some(err) = &resp.error {
            warnings.push(format!("reading the response: {err}"));
        }
        let (mut hops, mut hints) = match resp.local {
            Some(local) => self.hops(local, started_ms, p.key.as_deref(), &snap).await,
            None => (Vec::new(), Vec::new()),
        };
        if let Some(marks) = &marks {
            self.attach_hop_logs(&mut hops, marks);
        }
        if hops.is_empty() {
            hints.push(if self.is_cluster() {
                "no routing decision was recorded for this request: the destination is not \
                 steered (no fork covers that service and port), or no agent runs on the request \
                 pod's node (see sent_from; the DaemonSet must tolerate that node), or the \
                 connection was opened direct while the agent was failing open (a restart \
                 without a successor, a crash): a connection that never reached the proxy \
                 cannot be steered until the client opens a new one"
                    .into()
            } else {
                "no routing decision was recorded for this request: the destination is not \
                 steered (no fork covers that service and port), or the client is not in the \
                 captured cgroup (--client-cgroup), or the connection was opened direct while \
                 the agent was failing open: a connection that never reached the proxy cannot \
                 be steered until the client opens a new one"
                    .into()
            });
        }
        let body_json = serde_json::from_str(&resp.body).ok();
        Ok(SendRequestResult {
            method,
            url: p.url,
            connected_to: req.addr.to_string(),
            sent_from,
            key: p.key,
            started_unix_ms: started_ms,
            elapsed_ms,
            response: ResponseInfo {
                status,
                headers: resp.headers,
                body: resp.body,
                body_json,
                truncated: resp.truncated,
            },
            hops,
            hints,
            warnings,
        })
    }

    /// The decisions a request caused: the one whose client is the request's own socket, then
    /// recursively the calls made by each hop's upstream while that hop was in flight.
    async fn hops(
        &self,
        local: SocketAddr,
        since: u64,
        key: Option<&str>,
        snap: &Snapshot,
    ) -> (Vec<Hop>, Vec<String>) {
        let mut hints = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        let local_s = local.to_string();
        let decisions = loop {
            match self.decisions(None, Some(since), snap).await {
                Ok((ds, _)) if ds.iter().any(|d| d.client == local_s) => break ds,
                Ok((ds, _)) if Instant::now() > deadline => break ds,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    hints.push(format!("routing decisions unavailable: {}", e.message));
                    return (Vec::new(), hints);
                }
            }
        };
        let (hops, mut tree_hints) = hop_tree(&decisions, &local_s, key);
        hints.append(&mut tree_hints);
        (hops, hints)
    }
}

/// The hops of one request among `decisions`: the decision whose client is the request's own
/// socket (`local`), then, recursively, the calls each hop's upstream made while that hop was in
/// flight. Hops are numbered breadth first; a hop without the key under a keyed parent is
/// flagged `key_lost`.
fn hop_tree(
    decisions: &[DecisionInfo],
    local_s: &str,
    key: Option<&str>,
) -> (Vec<Hop>, Vec<String>) {
    let mut hints = Vec::new();
    // (start, end) in microseconds; the log's time is when the response headers came back.
    let span = |d: &DecisionInfo| {
        let end = d.time * 1000;
        (end.saturating_sub(d.latency_us), end)
    };
    let mut hops: Vec<Hop> = Vec::new();
    let mut used = vec![false; decisions.len()];
    let Some(first) = decisions.iter().position(|d| d.client == local_s) else {
        return (hops, hints);
    };
    used[first] = true;
    let mut queue = vec![(first, None::<usize>, key.map(str::to_string))];
    while let Some((i, parent, parent_key)) = (!queue.is_empty()).then(|| queue.remove(0)) {
        let d = &decisions[i];
        let n = hops.len() + 1;
        let key_lost = parent.is_some() && parent_key.is_some() && d.key.is_none();
        if d.key_injected {
            hints.push(format!(
                "hop {n}: {} sent no routing key; Shunt added {:?} because it is a marked source                  (a pod of the key's sandbox, or a test runner)",
                d.client_owner.as_deref().unwrap_or(&d.client),
                d.key.as_deref().unwrap_or_default()
            ));
        }
        if key_lost {
            hints.push(format!(
                "hop {n}: {} called {} without the routing key: it does not propagate the \
                 `baggage` header from its incoming request to its outgoing calls",
                d.client_owner.as_deref().unwrap_or(&d.client),
                d.service.as_deref().unwrap_or(&d.original_dst)
            ));
        }
        let from = d.client_owner.clone().unwrap_or_else(|| {
            d.client
                .parse::<SocketAddr>()
                .map_or_else(|_| d.client.clone(), |a| a.ip().to_string())
        });
        let summary = format!(
            "{from} → {}{}: {} ({}) → {}",
            d.service.as_deref().unwrap_or(&d.original_dst),
            if d.key_injected {
                " [key added by Shunt]"
            } else {
                ""
            },
            d.decision,
            d.reason,
            d.upstream_owner
                .as_deref()
                .or(d.upstream.as_deref())
                .unwrap_or("-")
        );
        hops.push(Hop {
            hop: n,
            parent,
            key: d.key.clone(),
            key_lost,
            key_injected: d.key_injected,
            from,
            service: d.service.clone(),
            decision: d.decision.clone(),
            reason: d.reason.clone(),
            route: d.route.clone(),
            upstream: d.upstream.clone(),
            upstream_owner: d.upstream_owner.clone(),
            status: d.status,
            latency_us: d.latency_us,
            summary,
            logs: None,
        });
        if d.reason != "key_matched" && d.key.is_some() {
            hints.push(format!("hop {n}: {}", reason_hint(&d.reason)));
        }
        let Some(up) = d
            .upstream
            .as_deref()
            .and_then(|u| u.parse::<SocketAddr>().ok())
        else {
            continue;
        };
        let (start, end) = span(d);
        // Calls made by the upstream while this hop was in flight (1 ms of slack: the log
        // has millisecond times).
        let mut children: Vec<usize> = (0..decisions.len())
            .filter(|&j| !used[j])
            .filter(|&j| {
                let c = &decisions[j];
                let (cs, ce) = span(c);
                c.client
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.ip().to_canonical() == up.ip().to_canonical())
                    && cs + 1000 >= start
                    && ce <= end + 1000
            })
            .collect();
        children.sort_by_key(|&j| span(&decisions[j]).0);
        for j in children {
            used[j] = true;
            queue.push((j, Some(n), d.key.clone()));
        }
    }
    (hops, hints)
}

/// `baggage` with `sd-routing-key=KEY` set (replacing any previous value of that member).
fn with_key(baggage: Option<&str>, key: &str) -> String {
    crate::routes::key::baggage_with_key(baggage, key)
}

#[cfg(test)]
#[path = "requests_tests.rs"]
mod tests;
