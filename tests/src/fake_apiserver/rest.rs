//! Resource verbs: decode a routed request (query, headers, body), run it against the cluster
//! and encode the answer with kube-apiserver's status codes.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::cluster::{
    DeleteOpts, Deleted, ListOpts, Sub, WriteOpts, has_scale, parse_body, versioned,
};
use super::error::{ApiError, ApiResult};
use super::http::{Body, Query, ResourceRequest, json_response, read_body};
use super::patch::PatchType;
use super::render::{IncludeObject, negotiate, negotiate_plain, render_list, render_one};
use super::resources::ResourceType;
use super::selectors::{FieldSelector, LabelSelector, Selectors};
use super::state::Shared;
use super::watch::{self, WatchParams};

fn selectors(rt: &ResourceType, q: &Query) -> ApiResult<Selectors> {
    Ok(Selectors {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), &rt.field_labels)?,
    })
}

fn dry_run(q: &Query) -> ApiResult<bool> {
    match q.get("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: {other:?}: supported values: \"All\""
        ))),
    }
}

fn write_opts(q: &Query) -> ApiResult<WriteOpts> {
    match q.get("fieldValidation") {
        None | Some("" | "Strict" | "Warn" | "Ignore") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            )));
        }
    }
    Ok(WriteOpts {
        dry_run: dry_run(q)?,
        field_manager: q.get("fieldManager").map(str::to_string),
    })
}

fn parse_u64(q: &Query, key: &str) -> ApiResult<Option<u64>> {
    q.get(key)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("{key}: invalid value {s:?}")))
        })
        .transpose()
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    r: ResourceRequest,
    q: Query,
    accept: Option<String>,
) -> ApiResult<Response<Body>> {
    if r.subresource.as_deref() == Some("scale") && has_scale(&r.rt) && r.name.is_some() {
        return scale(shared, req, r, q, accept.as_deref()).await;
    }
    let sub = match r.subresource.as_deref() {
        None => Sub::Main,
        Some("status") => Sub::Status,
        Some(_) => return Err(ApiError::no_route()),
    };
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let accept = accept.as_deref();
    let rt = r.rt.clone();
    let ns = r.ns.as_deref();
    let watching = r.legacy_watch || q.flag("watch")?.unwrap_or(false);
    let created = |v: &Value| json_response(201, v, "application/json");
    let ok = |v: &Value| json_response(200, v, "application/json");

    match (r.name.as_deref(), method) {
        (None, Method::GET) if watching => start_watch(shared, rt, r.ns, None, &q, accept),
        (None, Method::GET) => list(&shared, &rt, ns, &q, accept),
        (None, Method::POST) => {
            if rt.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed());
            }
            negotiate_plain(accept)?;
            let opts = write_opts(&q)?;
            let body = parse_body(&content_type, &read_body(req.into_body()).await?)?;
            let obj = shared.lock().create(&rt, ns, body, &opts)?;
            Ok(created(&obj))
        }
        (None, Method::DELETE) => {
            let opts = delete_opts(&q, &read_body(req.into_body()).await?)?;
            let sel = selectors(&rt, &q)?;
            let mut cluster = shared.lock();
            let items = cluster.delete_collection(&rt, ns, &sel, &opts)?;
            let rv = cluster.store.rv();
            drop(cluster);
            let list = render_list(&rt, &items, rv, None, None, &super::render::Output::Json);
            Ok(ok(&list))
        }
        (Some(name), Method::GET) if watching => {
            start_watch(shared, rt, r.ns, Some(name.to_string()), &q, accept)
        }
        (Some(name), Method::GET) => {
            let output = negotiate(accept, IncludeObject::parse(q.get("includeObject"))?)?;
            let obj = shared.lock().get(&rt, ns, name)?;
            Ok(json_response(
                200,
                &render_one(&obj, &output),
                &output.content_type(),
            ))
        }
        (Some(name), Method::PUT) => {
            negotiate_plain(accept)?;
            let opts = write_opts(&q)?;
            let body = parse_body(&content_type, &read_body(req.into_body()).await?)?;
            let obj = shared.lock().update(&rt, ns, name, body, sub, &opts)?;
            Ok(ok(&obj))
        }
        (Some(name), Method::PATCH) => {
            negotiate_plain(accept)?;
            let ptype = PatchType::from_content_type(&content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(&content_type))?;
            let opts = write_opts(&q)?;
            let body = read_body(req.into_body()).await?;
            let (obj, was_created) = shared
                .lock()
                .patch(&rt, ns, name, ptype, &body, sub, &opts)?;
            Ok(if was_created { created(&obj) } else { ok(&obj) })
        }
        (Some(name), Method::DELETE) if sub == Sub::Main => {
            let opts = delete_opts(&q, &read_body(req.into_body()).await?)?;
            let outcome = shared.lock().delete(&rt, ns, name, &opts)?;
            Ok(ok(&delete_response(&rt, outcome)))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// The `/scale` subresource of Deployments, ReplicaSets and StatefulSets.
async fn scale(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    r: ResourceRequest,
    q: Query,
    accept: Option<&str>,
) -> ApiResult<Response<Body>> {
    let name = r.name.as_deref().unwrap_or_default();
    let ns = r.ns.as_deref();
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    negotiate_plain(accept)?;
    let obj = match req.method().clone() {
        Method::GET => shared.lock().get_scale(&r.rt, ns, name)?,
        Method::PUT => {
            let opts = write_opts(&q)?;
            let body = parse_body(&content_type, &read_body(req.into_body()).await?)?;
            shared.lock().update_scale(&r.rt, ns, name, &body, &opts)?
        }
        Method::PATCH => {
            let ptype = PatchType::from_content_type(&content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(&content_type))?;
            let opts = write_opts(&q)?;
            let body = read_body(req.into_body()).await?;
            shared
                .lock()
                .patch_scale(&r.rt, ns, name, ptype, &body, &opts)?
        }
        _ => return Err(ApiError::method_not_allowed()),
    };
    Ok(json_response(200, &obj, "application/json"))
}

fn list(
    shared: &Shared,
    rt: &ResourceType,
    ns: Option<&str>,
    q: &Query,
    accept: Option<&str>,
) -> ApiResult<Response<Body>> {
    let output = negotiate(accept, IncludeObject::parse(q.get("includeObject"))?)?;
    if q.get("sendInitialEvents").is_some() {
        return Err(ApiError::unprocessable(
            "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
        ));
    }
    let opts = ListOpts {
        selectors: selectors(rt, q)?,
        limit: parse_u64(q, "limit")?,
        continue_token: q
            .get("continue")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        resource_version: q.get("resourceVersion").map(str::to_string),
        resource_version_match: q
            .get("resourceVersionMatch")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    };
    let page = shared.lock().list(rt, ns, &opts)?;
    let items: Vec<Value> = page.items.iter().map(|o| versioned(rt, o)).collect();
    let body = render_list(
        rt,
        &items,
        page.resource_version,
        page.continue_token.as_deref(),
        page.remaining,
        &output,
    );
    Ok(json_response(200, &body, &output.content_type()))
}

fn start_watch(
    shared: Arc<Shared>,
    rt: ResourceType,
    ns: Option<String>,
    name: Option<String>,
    q: &Query,
    accept: Option<&str>,
) -> ApiResult<Response<Body>> {
    let output = negotiate(accept, IncludeObject::parse(q.get("includeObject"))?)?;
    let mut sel = selectors(&rt, q)?;
    if let Some(name) = name {
        // Watching one object is a watch of the collection filtered to its name.
        let combined = match q.get("fieldSelector").filter(|s| !s.is_empty()) {
            Some(fs) => format!("{fs},metadata.name={name}"),
            None => format!("metadata.name={name}"),
        };
        sel.fields = FieldSelector::parse(&combined, &rt.field_labels)?;
    }
    let timeout = match parse_u64(q, "timeoutSeconds")? {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        _ => shared.options.default_watch_timeout,
    };
    let params = WatchParams {
        selectors: sel,
        resource_version: q.get("resourceVersion").map(str::to_string),
        resource_version_match: q
            .get("resourceVersionMatch")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        send_initial_events: q.flag("sendInitialEvents")?,
        allow_bookmarks: q.flag("allowWatchBookmarks")?.unwrap_or(false),
        timeout,
        output: output.clone(),
    };
    let stream = watch::start(shared, rt, ns, params)?;
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    if let Ok(ct) = output.content_type().parse() {
        resp.headers_mut().insert(CONTENT_TYPE, ct);
    }
    Ok(resp)
}

/// DeleteOptions from the body (JSON, optional) and the query.
fn delete_opts(q: &Query, body: &[u8]) -> ApiResult<DeleteOpts> {
    let mut opts = DeleteOpts {
        dry_run: dry_run(q)?,
        ..Default::default()
    };
    let mut policy = q.get("propagationPolicy").map(str::to_string);
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("decoding DeleteOptions: {e}")))?;
        if let Some(dr) = v.get("dryRun").and_then(Value::as_array) {
            for d in dr {
                match d.as_str() {
                    Some("All") => opts.dry_run = true,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "dryRun: Unsupported value: {other:?}: supported values: \"All\""
                        )));
                    }
                }
            }
        }
        let pre = v.get("preconditions");
        opts.uid = pre
            .and_then(|p| p.get("uid"))
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.resource_version = pre
            .and_then(|p| p.get("resourceVersion"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            policy = Some(p.to_string());
        }
    }
    // Accepted but without effect: there is no garbage collector, so dependents are neither
    // deleted nor orphaned by the fake.
    match policy.as_deref() {
        None | Some("Orphan" | "Background" | "Foreground") => Ok(opts),
        Some(other) => Err(ApiError::bad_request(format!(
            "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        ))),
    }
}

/// What DELETE answers: an object still waiting for finalizers is returned; a removed one is
/// returned for Pods and custom resources (ReturnDeletedObject in kube-apiserver) and
/// summarised by a Success Status for the rest.
fn delete_response(rt: &ResourceType, outcome: Deleted) -> Value {
    match outcome {
        Deleted::Pending(obj) => obj,
        Deleted::Gone(obj) if !rt.builtin || (rt.group.is_empty() && rt.kind == "Pod") => obj,
        Deleted::Gone(obj) => {
            let mut details = json!({
                "name": obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
                "kind": rt.plural,
                "uid": obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
            });
            if !rt.group.is_empty() {
                details["group"] = json!(rt.group);
            }
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            })
        }
    }
}
