//! What each tool does, on top of a [`Backend`](super::backend::Backend), one file per tool
//! family:
//!
//! - [`services`]: list_services, get_dependencies, resolve_port.
//! - [`routes`]: list_sandbox_routes, create_sandbox_route, delete_sandbox_route.
//! - [`requests`]: send_test_request and the hops it caused.
//! - [`decisions`]: get_decisions and what each decision reason means.
//! - [`sandboxes`]: create/get/list/delete_sandbox; [`session_end`]: the session's end and
//!   renewal.
//! - [`logs`]: get_logs, and each hop's log lines.
//! - [`compare`] (with [`diff`]): compare_with_baseline.
//!
//! This file holds what several families use: finding a service and a port (with errors that
//! name the right one) and describing them. Mode-independent except for where
//! send_test_request's client runs: a process placed in the client pod (no cluster) or a
//! short-lived Pod (cluster, see `request_pod`).
pub mod compare;
pub mod decisions;
pub mod diff;
pub mod logs;
pub mod logs_cluster;
pub mod requests;
pub mod routes;
pub mod sandboxes;
pub mod sandboxes_cluster;
pub mod sandboxes_fork;
pub mod services;
pub mod session_end;

use std::{
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::json;

use super::{
    error::{ToolError, ToolErrorKind, ToolResult},
    types::*,
};
use crate::routes::{ClusterState, PortRef, Service, ServicePort, TargetPort};

pub use decisions::reason_hint;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn port_infos(svc: &Service) -> Vec<ServicePortInfo> {
    svc.ports
        .iter()
        .map(|p| ServicePortInfo {
            name: p.name.clone(),
            port: p.port,
            target_port: PortValue::from(&p.target_port),
        })
        .collect()
}

fn port_list(svc: &Service) -> String {
    svc.ports
        .iter()
        .map(|p| {
            let target = match &p.target_port {
                TargetPort::Number(n) => n.to_string(),
                TargetPort::Name(n) => n.clone(),
            };
            match &p.name {
                Some(n) => format!("{} ({n}, targetPort {target})", p.port),
                None => format!("{} (targetPort {target})", p.port),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn svc_id(svc: &Service) -> String {
    format!("{}/{}", svc.namespace, svc.name)
}

fn host_of(svc: &Service, cluster_dns: bool) -> Option<String> {
    if cluster_dns {
        return Some(format!("{}.{}.svc.cluster.local", svc.name, svc.namespace));
    }
    svc.addresses.first().map(|ip| match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    })
}

fn url_for(svc: &Service, port: u16, cluster_dns: bool) -> Option<String> {
    host_of(svc, cluster_dns).map(|h| format!("http://{h}:{port}/"))
}

/// Finds a service by `name`, `namespace/name`, or a DNS name (`name.namespace[.svc[...]]`).
pub fn find_service<'a>(
    state: &'a ClusterState,
    service: &str,
    namespace: Option<&str>,
) -> ToolResult<&'a Service> {
    let (ns, name) = match service.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => match service.split_once('.') {
            Some((name, rest)) => (rest.split('.').next().or(namespace), name),
            None => (namespace, service),
        },
    };
    let found: Vec<&Service> = state
        .services
        .iter()
        .filter(|s| s.name == name && ns.is_none_or(|ns| s.namespace == ns))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => {
            let all: Vec<String> = state.services.iter().map(svc_id).collect();
            Err(ToolError::new(
                ToolErrorKind::ServiceNotFound,
                format!(
                    "no service {service:?}{}",
                    ns.map(|n| format!(" in namespace {n}")).unwrap_or_default()
                ),
                "use one of the services list_services shows (name or namespace/name)",
            )
            .with_details(json!({ "services": all })))
        }
        many => Err(ToolError::new(
            ToolErrorKind::AmbiguousService,
            format!(
                "{service:?} exists in several namespaces: {}",
                many.iter()
                    .map(|s| svc_id(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "say which one: namespace/name, or pass `namespace`",
        )),
    }
}

/// A port of `svc` by number or name; a wrong one is an error listing the right ones (a request
/// on the wrong port silently goes to the baseline, or nowhere).
pub fn find_port<'a>(svc: &'a Service, port: &PortValue) -> ToolResult<&'a ServicePort> {
    let want: PortRef = port.into();
    let found = svc.ports.iter().find(|p| match &want {
        PortRef::Number(n) => p.port == *n,
        PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
    });
    if let Some(p) = found {
        return Ok(p);
    }
    // Common mistake: the pod's (target) port instead of the service port.
    let as_target = svc.ports.iter().find(|p| match (&want, &p.target_port) {
        (PortRef::Number(n), TargetPort::Number(t)) => t == n,
        (PortRef::Name(n), TargetPort::Name(t)) => t == n,
        (PortRef::Number(n), TargetPort::Name(_)) => svc
            .endpoints
            .iter()
            .any(|e| e.ports.get(p.slice_key()) == Some(n)),
        _ => false,
    });
    let id = svc_id(svc);
    let valid = json!({ "valid_ports": port_infos(svc) });
    match as_target {
        Some(p) => Err(ToolError::new(
            ToolErrorKind::WrongPort,
            format!(
                "{port} is the target (pod) port behind service port {}{} of {id}, not a service \
                 port; requests to a pod's port bypass the service and are never routed by key",
                p.port,
                p.name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
            format!("connect to the service port {}", p.port),
        )
        .with_details(json!({ "suggested_port": p.port, "valid_ports": port_infos(svc) }))),
        None => Err(ToolError::new(
            ToolErrorKind::WrongPort,
            format!(
                "{id} has no port {port}; its ports: {}",
                if svc.ports.is_empty() {
                    "none".to_string()
                } else {
                    port_list(svc)
                }
            ),
            "use one of valid_ports (the service port, not the pod's port)",
        )
        .with_details(valid)),
    }
}

/// The Service a fork names (`name` or `namespace/name`), if it is in `ns`.
fn fork_service_name<'a>(ns: &str, service: &'a str) -> Option<&'a str> {
    match service.split_once('/') {
        None => Some(service),
        Some((n, name)) if n == ns => Some(name),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests;
