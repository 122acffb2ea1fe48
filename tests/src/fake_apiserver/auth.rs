//! Authentication and RBAC, as far as tests need them. Requests with `Authorization: Bearer T`
//! for a token registered with [`super::FakeApiServer::add_token`] act as that user and are
//! authorized against the RBAC objects in the store (Roles, ClusterRoles and their bindings,
//! evaluated as kube-apiserver's RBAC authorizer does: union of rules, no deny); once a token is
//! registered, an unknown one is a 401. Requests without credentials (and any request while no
//! token is registered) act as the cluster admin (`system:masters`), as every test did before
//! authentication existed.
//!
//! `POST /apis/authorization.k8s.io/v1/subjectaccessreviews` answers from the same RBAC.
use std::collections::HashMap;

use hyper::Response;
use serde_json::{Value, json};

use hyper::Request;
use hyper::body::Incoming;

use super::cluster::Cluster;
use super::error::{ApiError, ApiResult};
use super::http::{Body, Query, Route, json_response};

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// Who requests without credentials are.
    pub(crate) fn admin() -> Self {
        Self {
            name: "system:admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }
}

/// Bearer tokens and their users.
#[derive(Default)]
pub(crate) struct Tokens(pub(crate) HashMap<String, User>);

/// What a request does, in RBAC's terms.
#[derive(Clone, Debug)]
pub(crate) struct Attributes {
    pub(crate) verb: String,
    pub(crate) group: String,
    /// `pods` or `pods/log`.
    pub(crate) resource: String,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
}

impl Attributes {
    /// From a resource URL's pieces and the HTTP method (kube-apiserver's RequestInfo).
    pub(crate) fn of(
        method: &hyper::Method,
        watch: bool,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Self {
        let verb = match (method.as_str(), name.is_some(), watch) {
            ("GET" | "HEAD", _, true) => "watch",
            ("GET" | "HEAD", true, false) => "get",
            ("GET" | "HEAD", false, false) => "list",
            ("POST", ..) => "create",
            ("PUT", ..) => "update",
            ("PATCH", ..) => "patch",
            ("DELETE", true, _) => "delete",
            ("DELETE", false, _) => "deletecollection",
            (other, ..) => other,
        };
        Self {
            verb: verb.to_ascii_lowercase(),
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
        }
    }
}

/// The 403 kube-apiserver answers, naming the permission.
pub(crate) fn forbidden(user: &User, a: &Attributes) -> ApiError {
    let (plural, sub) = match a.resource.split_once('/') {
        Some((p, s)) => (p, Some(s)),
        None => (a.resource.as_str(), None),
    };
    let qualified = if a.group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{}", a.group)
    };
    let subject = match &a.name {
        Some(n) => format!("{qualified} \"{n}\""),
        None => qualified,
    };
    let resource = match sub {
        Some(s) => format!("resource \"{plural}/{s}\""),
        None => format!("resource \"{plural}\""),
    };
    let scope = match &a.namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_string(),
    };
    ApiError {
        code: 403,
        reason: "Forbidden".into(),
        message: format!(
            "{subject} is forbidden: User \"{}\" cannot {} {resource} in API group \"{}\"{scope}",
            user.name, a.verb, a.group
        ),
        details: Some(match &a.name {
            Some(n) => json!({ "group": a.group, "kind": plural, "name": n }),
            None => json!({ "group": a.group, "kind": plural }),
        }),
    }
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let any = |list: Vec<&str>, want: &str| list.iter().any(|x| *x == "*" || *x == want);
    let names = strs(&rule["resourceNames"]);
    any(strs(&rule["apiGroups"]), &a.group)
        && any(strs(&rule["resources"]), &a.resource)
        && any(strs(&rule["verbs"]), &a.verb)
        && (names.is_empty() || a.name.as_deref().is_some_and(|n| names.contains(&n)))
}

fn binds(binding: &Value, user: &User) -> bool {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| match s["kind"].as_str() {
            Some("User") => s["name"] == user.name.as_str(),
            Some("Group") => user.groups.iter().any(|g| s["name"] == g.as_str()),
            Some("ServiceAccount") => {
                user.name
                    == format!(
                        "system:serviceaccount:{}:{}",
                        s["namespace"].as_str().unwrap_or_default(),
                        s["name"].as_str().unwrap_or_default()
                    )
            }
            _ => false,
        })
}

fn objects(cluster: &Cluster, kind: &str, namespace: Option<&str>) -> Vec<Value> {
    let Ok(rt) = cluster.rt_by_kind("rbac.authorization.k8s.io/v1", kind) else {
        return Vec::new();
    };
    cluster
        .list(&rt, namespace, &Default::default())
        .map(|p| p.items.iter().map(|v| (**v).clone()).collect())
        .unwrap_or_default()
}

/// Whether RBAC in `cluster` lets `user` do `a`.
pub(crate) fn allowed(cluster: &Cluster, user: &User, a: &Attributes) -> bool {
    if user.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    let cluster_roles = objects(cluster, "ClusterRole", None);
    let role_rules = |kind: &str, name: &str, ns: Option<&str>| -> Vec<Value> {
        let found = if kind == "ClusterRole" {
            cluster_roles
                .iter()
                .find(|r| r["metadata"]["name"] == name)
                .cloned()
        } else {
            objects(cluster, "Role", ns)
                .into_iter()
                .find(|r| r["metadata"]["name"] == name)
        };
        found
            .and_then(|r| r["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    let granted_by = |b: &Value, ns: Option<&str>| {
        binds(b, user)
            && role_rules(
                b["roleRef"]["kind"].as_str().unwrap_or_default(),
                b["roleRef"]["name"].as_str().unwrap_or_default(),
                ns,
            )
            .iter()
            .any(|r| rule_allows(r, a))
    };
    if objects(cluster, "ClusterRoleBinding", None)
        .iter()
        .any(|b| granted_by(b, None))
    {
        return true;
    }
    match &a.namespace {
        Some(ns) => objects(cluster, "RoleBinding", Some(ns))
            .iter()
            .any(|b| granted_by(b, Some(ns))),
        None => false,
    }
}

/// `POST .../subjectaccessreviews`: the review, with its status filled in from RBAC.
pub(crate) fn subject_access_review(cluster: &Cluster, body: &[u8]) -> ApiResult<Response<Body>> {
    let mut review: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("SubjectAccessReview: {e}")))?;
    let spec = &review["spec"];
    let user = User {
        name: spec["user"].as_str().unwrap_or_default().to_string(),
        groups: strs(&spec["groups"])
            .into_iter()
            .map(str::to_string)
            .collect(),
    };
    let ra = &spec["resourceAttributes"];
    if user.name.is_empty() && user.groups.is_empty() {
        return Err(ApiError::bad_request(
            "SubjectAccessReview: spec.user or spec.groups is required",
        ));
    }
    let resource = match ra["subresource"].as_str() {
        Some(s) if !s.is_empty() => format!("{}/{s}", ra["resource"].as_str().unwrap_or("")),
        _ => ra["resource"].as_str().unwrap_or_default().to_string(),
    };
    let nonempty = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let a = Attributes {
        verb: ra["verb"].as_str().unwrap_or_default().to_string(),
        group: ra["group"].as_str().unwrap_or_default().to_string(),
        resource,
        namespace: nonempty(&ra["namespace"]),
        name: nonempty(&ra["name"]),
    };
    let ok = allowed(cluster, &user, &a);
    review["status"] = if ok {
        json!({ "allowed": true, "reason": "RBAC: allowed" })
    } else {
        json!({ "allowed": false })
    };
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SubjectAccessReview");
    Ok(json_response(201, &review, "application/json"))
}

/// What `route` does in RBAC's terms (`None`: a non-resource URL, open to everyone).
pub(crate) fn attributes(
    route: &Route,
    req: &Request<Incoming>,
    query: &Query,
) -> Option<Attributes> {
    let method = req.method();
    let watch = matches!(query.get("watch"), Some("1" | "true"));
    match route {
        Route::Resource(r) => {
            let resource = match &r.subresource {
                Some(sub) => format!("{}/{sub}", r.rt.plural),
                None => r.rt.plural.clone(),
            };
            let ns = if r.rt.namespaced {
                r.ns.as_deref()
            } else {
                // A namespace's own subresources name it.
                None
            };
            Some(Attributes::of(
                method,
                watch || r.legacy_watch,
                &r.rt.group,
                &resource,
                ns,
                r.name.as_deref(),
            ))
        }
        Route::PodLog { ns, name } => Some(Attributes::of(
            method,
            false,
            "",
            "pods/log",
            Some(ns),
            Some(name),
        )),
        Route::PodProxy { ns, name_port, .. } => Some(Attributes::of(
            method,
            false,
            "",
            "pods/proxy",
            Some(ns),
            name_port.split(':').next(),
        )),
        Route::SubjectAccessReview => Some(Attributes::of(
            method,
            false,
            "authorization.k8s.io",
            "subjectaccessreviews",
            None,
            None,
        )),
        Route::Aggregated { group, rest, .. } => {
            let (ns, tail) = match rest.as_slice() {
                [n, ns, tail @ ..] if n == "namespaces" && !tail.is_empty() => {
                    (Some(ns.as_str()), tail)
                }
                tail => (None, tail),
            };
            let resource = match tail {
                [] => return None,
                [res] | [res, _] => res.clone(),
                [res, _, sub, ..] => format!("{res}/{sub}"),
            };
            Some(Attributes::of(
                method,
                watch,
                group,
                &resource,
                ns,
                tail.get(1).map(String::as_str),
            ))
        }
        _ => None,
    }
}
