//! The four PATCH flavours kube-apiserver accepts, applied to schemaless JSON.
//!
//! * JSON merge patch (RFC 7386): exact.
//! * JSON patch (RFC 6902): exact, via the `json-patch` crate; a failed `test` op is a 422.
//! * Strategic merge patch: built-in types only (custom resources get 415, as in a real
//!   cluster). Without Go struct tags we use a table of the well-known list merge keys
//!   (containers by `name`, Service ports by `port`, finalizers as a set, ...) and support the
//!   directives kubectl emits (`$patch`, `$retainKeys`, `$setElementOrder/...`,
//!   `$deleteFromPrimitiveList/...`). That is what `kubectl apply` (client-side) needs.
//! * Server-side apply: see [`super::apply`].

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// Patch type, from the request's Content-Type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub(crate) fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902 JSON patch. Undecodable patches are 400; failing operations (including `test`) 422,
/// as kube-apiserver answers.
pub(crate) fn json_patch(target: &mut Value, body: &[u8]) -> ApiResult<()> {
    let patch: json_patch::Patch = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    json_patch::patch(target, &patch).map_err(|e| ApiError::unprocessable(e.to_string()))
}

/// How a list field merges in a strategic merge patch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ListStrategy {
    Replace,
    /// A set of scalars (e.g. `metadata.finalizers`).
    MergePrimitive,
    /// A list of objects identified by this field.
    MergeByKey(&'static str),
}

/// The patch strategy of a list at `path` (field names from the root, list indices left out)
/// in an object of `kind`, following the `patchStrategy`/`patchMergeKey` tags of the built-in
/// Go types.
pub(crate) fn list_strategy(kind: &str, path: &[String]) -> ListStrategy {
    let Some(last) = path.last().map(String::as_str) else {
        return ListStrategy::Replace;
    };
    let parent = path.len().checked_sub(2).map(|i| path[i].as_str());
    match last {
        "finalizers" if path.len() == 2 && path[0] == "metadata" => ListStrategy::MergePrimitive,
        "ownerReferences" if parent == Some("metadata") => ListStrategy::MergeByKey("uid"),
        "containers" | "initContainers" | "ephemeralContainers" => ListStrategy::MergeByKey("name"),
        "ports" if kind == "Service" && path.len() == 2 => ListStrategy::MergeByKey("port"),
        "ports"
            if matches!(
                parent,
                Some("containers" | "initContainers" | "ephemeralContainers")
            ) =>
        {
            ListStrategy::MergeByKey("containerPort")
        }
        "env" | "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates" => {
            ListStrategy::MergeByKey("name")
        }
        "volumeMounts" => ListStrategy::MergeByKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeByKey("devicePath"),
        "hostAliases" => ListStrategy::MergeByKey("ip"),
        "podIPs" | "hostIPs" => ListStrategy::MergeByKey("ip"),
        "conditions" => ListStrategy::MergeByKey("type"),
        "topologySpreadConstraints" => ListStrategy::MergeByKey("topologyKey"),
        _ => ListStrategy::Replace,
    }
}

fn directive(v: &Value) -> Option<&str> {
    v.get("$patch").and_then(Value::as_str)
}

/// A patch fragment without SMP directives, for inserting as a new value.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| directive(e).is_none())
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Strategic merge patch of a built-in object of `kind`.
pub(crate) fn strategic_merge(kind: &str, target: &mut Value, patch: &Value) -> ApiResult<()> {
    let Value::Object(p) = patch else {
        return Err(ApiError::bad_request(
            "strategic merge patch must be a JSON object",
        ));
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    smp_map(kind, &mut Vec::new(), t, p)
}

fn smp_map(
    kind: &str,
    path: &mut Vec<String>,
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
) -> ApiResult<()> {
    match patch.get("$patch").map(|v| v.as_str()) {
        None | Some(Some("merge")) => {}
        Some(Some("replace")) => {
            if let Value::Object(m) = strip_directives(&Value::Object(patch.clone())) {
                *target = m;
            }
            return Ok(());
        }
        Some(Some("delete")) => {
            target.clear();
            return Ok(());
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Unknown patch type: {other:?}"
            )));
        }
    }
    // Deletions from primitive lists apply to the original list, before additions merge in.
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|e| !remove.contains(e));
            }
        }
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        path.push(k.clone());
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(pm) => {
                if directive(v) == Some("delete") {
                    target.remove(k);
                } else if let Some(Value::Object(tm)) = target.get_mut(k) {
                    smp_map(kind, path, tm, pm)?;
                } else {
                    target.insert(k.clone(), strip_directives(v));
                }
            }
            Value::Array(pa) => {
                let merged = smp_list(kind, path, target.get(k), pa)?;
                target.insert(k.clone(), merged);
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
        path.pop();
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            path.push(field.to_string());
            let strategy = list_strategy(kind, path);
            path.pop();
            if let (Some(Value::Array(list)), Some(order)) = (target.get_mut(field), v.as_array()) {
                reorder(list, order, strategy);
            }
        }
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        target.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
    }
    Ok(())
}

fn item_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key)
}

fn smp_list(
    kind: &str,
    path: &mut Vec<String>,
    target: Option<&Value>,
    patch: &[Value],
) -> ApiResult<Value> {
    let replace_all = patch.iter().any(|e| directive(e) == Some("replace"));
    let original = target.and_then(Value::as_array).cloned();
    match list_strategy(kind, path) {
        _ if replace_all || original.is_none() => {
            Ok(strip_directives(&Value::Array(patch.to_vec())))
        }
        ListStrategy::Replace => Ok(strip_directives(&Value::Array(patch.to_vec()))),
        ListStrategy::MergePrimitive => {
            let mut out = original.unwrap_or_default();
            for e in patch {
                if !out.contains(e) {
                    out.push(e.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListStrategy::MergeByKey(key) => {
            let mut out = original.unwrap_or_default();
            for pe in patch {
                let Some(Value::Object(pm)) = Some(pe) else {
                    out.push(pe.clone());
                    continue;
                };
                let Some(kv) = item_key(pe, key) else {
                    return Err(ApiError::bad_request(format!(
                        "map: {pe} does not contain declared merge key: {key}"
                    )));
                };
                let pos = out.iter().position(|e| item_key(e, key) == Some(kv));
                match (directive(pe), pos) {
                    (Some("delete"), Some(i)) => {
                        out.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        if let Value::Object(tm) = &mut out[i] {
                            smp_map(kind, path, tm, pm)?;
                        }
                    }
                    (_, None) => out.push(strip_directives(pe)),
                }
            }
            Ok(Value::Array(out))
        }
    }
}

/// `$setElementOrder`: listed elements first, in the given order; unlisted ones keep their
/// relative order after them.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let ident = |v: &Value| -> Value {
        match strategy {
            ListStrategy::MergeByKey(k) => v.get(k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(&ident).collect();
    let mut sorted: Vec<Value> = Vec::with_capacity(list.len());
    for w in &wanted {
        if let Some(i) = list.iter().position(|e| ident(e) == *w) {
            sorted.push(list.remove(i));
        }
    }
    sorted.append(list);
    *list = sorted;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut t, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(t, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn strategic_merges_containers_by_name_and_honours_directives() {
        let mut t = json!({
            "metadata": {"finalizers": ["a"]},
            "spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "v1", "ports": [{"containerPort": 80}]},
                {"name": "side", "image": "s1"}
            ]}}}
        });
        let p = json!({
            "metadata": {"finalizers": ["b"]},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
                "containers": [{"name": "app", "image": "v2"}]
            }}}
        });
        strategic_merge("Deployment", &mut t, &p).expect("patch");
        assert_eq!(t["metadata"]["finalizers"], json!(["a", "b"]));
        let cs = &t["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["name"], "side");
        assert_eq!(cs[1]["image"], "v2");
        assert_eq!(cs[1]["ports"][0]["containerPort"], 80);

        let p = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
                       "spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
        strategic_merge("Deployment", &mut t, &p).expect("patch");
        assert_eq!(t["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(
            t["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn json_patch_test_failure_is_422() {
        let mut t = json!({"a": 1});
        let err =
            json_patch(&mut t, br#"[{"op":"test","path":"/a","value":2}]"#).expect_err("test op");
        assert_eq!(err.code, 422);
        let err = json_patch(&mut t, b"{not json").expect_err("bad json");
        assert_eq!(err.code, 400);
    }
}
