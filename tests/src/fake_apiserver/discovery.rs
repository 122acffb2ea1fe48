//! Discovery (`/version`, `/api`, `/apis`, resource lists, aggregated discovery v2) and the
//! OpenAPI endpoints kubectl consults before writing.
//!
//! kubectl's default `--validate=strict` asks `/openapi/v3` whether the server supports
//! server-side field validation (a `fieldValidation` query parameter on the PATCH operation of
//! the kind). The per-group-version documents served here declare exactly that, with no
//! schemas, so kubectl leaves validation to the server and computes apply patches from its
//! compiled-in types. `/openapi/v2` answers an empty document for older code paths.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;

use serde_json::{Map, Value, json};

use super::cluster::has_scale;
use super::render::parse_accept;
use super::resources::{Registry, ResourceType};

/// The Kubernetes version the fake claims to be (matches the `k8s-openapi` feature in use).
pub(crate) const MAJOR: &str = "1";
pub(crate) const MINOR: &str = "33";
pub(crate) const GIT_VERSION: &str = "v1.33.0";

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];

pub(crate) fn version() -> Value {
    json!({
        "major": MAJOR,
        "minor": MINOR,
        "emulationMajor": MAJOR,
        "emulationMinor": MINOR,
        "minCompatibilityMajor": MAJOR,
        "minCompatibilityMinor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub(crate) fn api_versions(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string() }],
    })
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({ "groupVersion": format!("{group}/{v}"), "version": v });
    json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv).unwrap_or(Value::Null),
    })
}

/// `/apis`.
pub(crate) fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `/apis/GROUP`.
pub(crate) fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let (g, vs) = reg
        .groups()
        .into_iter()
        .find(|(g, _)| g == group && !g.is_empty())?;
    let mut v = group_json(&g, &vs);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

fn resource_json(t: &ResourceType) -> Value {
    let mut r = json!({
        "name": t.plural,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": VERBS,
    });
    if !t.short_names.is_empty() {
        r["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        r["categories"] = json!(t.categories);
    }
    r
}

/// core/v1 Pods, whose `log` and `proxy` subresources the kubelet serves.
fn is_core_pods(t: &ResourceType) -> bool {
    t.group.is_empty() && t.plural == "pods"
}

/// `/api/v1` or `/apis/GROUP/VERSION`.
pub(crate) fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = reg.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in types {
        resources.push(resource_json(t));
        resources.push(json!({
            "name": format!("{}/status", t.plural),
            "singularName": "",
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": STATUS_VERBS,
        }));
        if is_core_pods(t) {
            // kube-apiserver lists them as Pod (log: text) and PodProxyOptions.
            resources.push(json!({
                "name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod",
                "verbs": ["get"],
            }));
            resources.push(json!({
                "name": "pods/proxy", "singularName": "", "namespaced": true,
                "kind": "PodProxyOptions",
                "verbs": ["create", "delete", "get", "patch", "update"],
            }));
        }
        if has_scale(t) {
            resources.push(json!({
                "name": format!("{}/scale", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": STATUS_VERBS,
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// If the Accept header asks for aggregated discovery, the version asked for first
/// (`v2` or `v2beta1`).
pub(crate) fn wants_aggregated(accept: Option<&str>) -> Option<&'static str> {
    for mr in parse_accept(accept?) {
        if mr.base != "application/json" {
            continue;
        }
        match (mr.param("g"), mr.param("v"), mr.param("as")) {
            (Some("apidiscovery.k8s.io"), Some("v2"), Some("APIGroupDiscoveryList")) => {
                return Some("v2");
            }
            (Some("apidiscovery.k8s.io"), Some("v2beta1"), Some("APIGroupDiscoveryList")) => {
                return Some("v2beta1");
            }
            (_, _, None) => return None,
            _ => continue,
        }
    }
    None
}

/// Aggregated discovery (`APIGroupDiscoveryList`) for `/api` (`core`) or `/apis`.
pub(crate) fn aggregated(reg: &Registry, core: bool, version: &str) -> Value {
    let items: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = reg
                        .in_group_version(group, v)
                        .into_iter()
                        .map(|t| {
                            let kind = json!({ "group": t.group, "version": t.version, "kind": t.kind });
                            let mut r = json!({
                                "resource": t.plural,
                                "responseKind": kind,
                                "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": t.singular,
                                "verbs": VERBS,
                                "subresources": [{
                                    "subresource": "status",
                                    "responseKind": kind,
                                    "verbs": STATUS_VERBS,
                                }],
                            });
                            if !t.short_names.is_empty() {
                                r["shortNames"] = json!(t.short_names);
                            }
                            if !t.categories.is_empty() {
                                r["categories"] = json!(t.categories);
                            }
                            if is_core_pods(t)
                                && let Some(Value::Array(subs)) = r.get_mut("subresources")
                            {
                                subs.push(json!({
                                    "subresource": "log",
                                    "responseKind": kind,
                                    "verbs": ["get"],
                                }));
                                subs.push(json!({
                                    "subresource": "proxy",
                                    "responseKind": { "group": "", "version": "v1", "kind": "PodProxyOptions" },
                                    "verbs": ["create", "delete", "get", "patch", "update"],
                                }));
                            }
                            if has_scale(t)
                                && let Some(Value::Array(subs)) = r.get_mut("subresources")
                            {
                                subs.push(json!({
                                    "subresource": "scale",
                                    "responseKind": { "group": "autoscaling", "version": "v1", "kind": "Scale" },
                                    "verbs": STATUS_VERBS,
                                }));
                            }
                            r
                        })
                        .collect();
                    json!({ "version": v, "resources": resources, "freshness": "Current" })
                })
                .collect();
            json!({ "metadata": { "name": group, "creationTimestamp": null }, "versions": versions })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

/// `api/v1` or `apis/GROUP/VERSION`: the key of a group version in the OpenAPI v3 index.
fn oapi_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Content hash of a group version's resources, so kubectl's cache follows CRD changes.
fn gv_hash(reg: &Registry, group: &str, version: &str) -> String {
    let mut h = DefaultHasher::new();
    for t in reg.in_group_version(group, version) {
        (&t.plural, &t.kind, t.namespaced, &t.short_names).hash(&mut h);
    }
    format!("{:016X}", h.finish())
}

/// `/openapi/v3`: the index of group-version documents.
pub(crate) fn openapi_v3_index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in reg.groups() {
        for v in versions {
            let key = oapi_key(&group, &v);
            let url = format!("/openapi/v3/{key}?hash={}", gv_hash(reg, &group, &v));
            paths.insert(key, json!({ "serverRelativeURL": url }));
        }
    }
    json!({ "paths": paths })
}

fn param(name: &str) -> Value {
    json!({ "name": name, "in": "query", "schema": { "type": "string", "uniqueItems": true } })
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/GROUP/VERSION`: operations without schemas.
pub(crate) fn openapi_v3_gv(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = reg.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    for t in types {
        let gvk = json!({ "group": t.group, "version": t.version, "kind": t.kind });
        let base = if t.namespaced {
            format!("{}/namespaces/{{namespace}}/{}", t.gv_path(), t.plural)
        } else {
            format!("{}/{}", t.gv_path(), t.plural)
        };
        let op = |action: &str, extra: &[&str]| {
            let mut params: Vec<Value> = vec![param("pretty")];
            params.extend(extra.iter().map(|p| param(p)));
            json!({
                "operationId": format!("{action}{}", t.kind),
                "parameters": params,
                "responses": { "200": { "description": "OK" } },
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        let write = ["dryRun", "fieldManager", "fieldValidation"];
        paths.insert(
            base.clone(),
            json!({
                "get": op("list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "resourceVersionMatch", "watch"]),
                "post": op("post", &write),
                "delete": op("deletecollection", &["dryRun", "labelSelector", "fieldSelector"]),
            }),
        );
        let item = json!({
            "get": op("get", &[]),
            "put": op("put", &write),
            "patch": op("patch", &["dryRun", "fieldManager", "fieldValidation", "force"]),
            "delete": op("delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
        });
        paths.insert(format!("{base}/{{name}}"), item.clone());
        paths.insert(format!("{base}/{{name}}/status"), item);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": GIT_VERSION },
        "paths": paths,
        "components": { "schemas": {} },
    }))
}

/// `/openapi/v2` in JSON (an empty Swagger document).
pub(crate) fn openapi_v2_json() -> Value {
    json!({
        "swagger": "2.0",
        "info": { "title": "Kubernetes", "version": GIT_VERSION },
        "paths": {},
        "definitions": {},
    })
}
