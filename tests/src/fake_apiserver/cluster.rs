//! API semantics on top of the raw store: what kube-apiserver's generic registry does for
//! create / update / patch / delete / list, including optimistic concurrency, finalizers,
//! namespace lifecycle, generation, the status subresource and CRD registration.
//!
//! Every operation runs under the one cluster lock (held by the caller), so each is atomic the
//! way an etcd transaction is: a PATCH reads, patches and writes without a window for a
//! concurrent writer, like kube-apiserver's GuaranteedUpdate loop.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::apply;
use super::defaults::{self, Allocator};
use super::error::{ApiError, ApiResult};
use super::meta::{
    NameRule, finalizers, meta, meta_mut, meta_str, name_suffix, new_uid, now_rfc3339,
    validate_meta, validate_name,
};
use super::patch::{self, PatchType};
use super::resources::{Registry, ResourceType, types_from_crd};
use super::selectors::Selectors;
use super::store::{Key, Store};

const CRD_STORAGE: &str = "apiextensions.k8s.io/customresourcedefinitions";
const NAMESPACE_STORAGE: &str = "/namespaces";

/// Main resource or `/status` subresource.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Sub {
    Main,
    Status,
}

/// Options common to writes (`?dryRun=All&fieldManager=...&force=true`).
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteOpts {
    pub(crate) dry_run: bool,
    pub(crate) field_manager: Option<String>,
}

/// DeleteOptions that matter here: dry run and preconditions.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeleteOpts {
    pub(crate) dry_run: bool,
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
}

/// Result of a DELETE.
#[derive(Clone, Debug)]
pub(crate) enum Deleted {
    /// Removed from storage (the final state).
    Gone(Value),
    /// Still there with `deletionTimestamp` set, waiting for finalizers.
    Pending(Value),
}

/// LIST parameters.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListOpts {
    pub(crate) selectors: Selectors,
    pub(crate) limit: Option<u64>,
    pub(crate) continue_token: Option<String>,
    pub(crate) resource_version: Option<String>,
    pub(crate) resource_version_match: Option<String>,
}

/// One page of a LIST.
#[derive(Clone, Debug)]
pub(crate) struct ListPage {
    pub(crate) items: Vec<Arc<Value>>,
    pub(crate) resource_version: u64,
    pub(crate) continue_token: Option<String>,
    pub(crate) remaining: Option<u64>,
}

pub(crate) struct Cluster {
    pub(crate) store: Store,
    pub(crate) registry: Registry,
    alloc: Allocator,
    /// Server-side apply: what each field manager last applied to each object.
    applied: HashMap<(Key, String), Value>,
}

/// Parse a resourceVersion string (400 if it is not one).
pub(crate) fn parse_rv(s: &str) -> ApiResult<u64> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Continue tokens carry the snapshot revision and the last key returned, like kube-apiserver's
/// (whose tokens are base64 JSON too); clients must treat them as opaque.
fn encode_continue(rv: u64, last: &Key) -> String {
    let token = json!({ "v": "meta.k8s.io/v1", "rv": rv, "ns": last.ns, "name": last.name });
    hex_encode(token.to_string().as_bytes())
}

fn decode_continue(token: &str) -> ApiResult<(u64, String, String)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let bytes = hex_decode(token).ok_or_else(bad)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let ns = v.get("ns").and_then(Value::as_str).ok_or_else(bad)?;
    let name = v.get("name").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((rv, ns.to_string(), name.to_string()))
}

fn name_rule(rt: &ResourceType) -> NameRule {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => NameRule::Dns1123Label,
        ("", "Service") => NameRule::Dns1035Label,
        _ => NameRule::Dns1123Subdomain,
    }
}

/// Whether kube-apiserver maintains `metadata.generation` for this type: custom resources and
/// most workload-like types do; plain data and bookkeeping types (ConfigMap, Secret, Service,
/// Namespace, Lease, ...) never get one.
fn has_generation(rt: &ResourceType) -> bool {
    let none = matches!(
        (rt.group.as_str(), rt.kind.as_str()),
        (
            "",
            "Namespace"
                | "ConfigMap"
                | "Secret"
                | "Service"
                | "Endpoints"
                | "ServiceAccount"
                | "Node"
                | "Event"
        ) | ("coordination.k8s.io", "Lease")
            | ("events.k8s.io", "Event")
    );
    !none
}

/// Everything but `metadata` and `status`: what `metadata.generation` tracks.
fn spec_part(obj: &Value) -> Value {
    match obj {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The object as served at `rt`'s version (custom resources may be stored under another served
/// version; conversion is the "None" strategy: only apiVersion changes).
pub(crate) fn versioned(rt: &ResourceType, obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Value::Object(m) = &mut out {
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
    }
    out
}

impl Cluster {
    pub(crate) fn new(max_history: usize) -> Self {
        Self {
            store: Store::new(max_history),
            registry: Registry::with_builtins(),
            alloc: Allocator::default(),
            applied: HashMap::new(),
        }
    }

    pub(crate) fn key(rt: &ResourceType, ns: Option<&str>, name: &str) -> Key {
        Key {
            storage: rt.storage_key(),
            ns: if rt.namespaced {
                ns.unwrap_or("").to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }

    fn rt_for_storage(&self, storage: &str) -> Option<ResourceType> {
        self.registry
            .all()
            .iter()
            .find(|t| t.storage_key() == storage)
            .cloned()
    }

    /// GET of one object.
    pub(crate) fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let key = Self::key(rt, ns, name);
        self.store
            .get(&key)
            .map(|o| versioned(rt, o))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// LIST with kube-apiserver's resourceVersion / resourceVersionMatch / limit / continue rules.
    pub(crate) fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOpts,
    ) -> ApiResult<ListPage> {
        let rv_param = opts.resource_version.as_deref().unwrap_or("");
        let rv_match = opts.resource_version_match.as_deref().unwrap_or("");
        let current = self.store.rv();
        // ListOptions validation, with kube-apiserver's messages.
        let mut problems = Vec::new();
        if !rv_match.is_empty() {
            if rv_param.is_empty() {
                problems.push("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided");
            }
            if opts.continue_token.is_some() {
                problems.push("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided");
            }
            if rv_match != "Exact" && rv_match != "NotOlderThan" {
                problems.push("resourceVersionMatch: Unsupported value: supported values: \"Exact\", \"NotOlderThan\", \"\"");
            }
            if rv_match == "Exact" && rv_param == "0" {
                problems.push("resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"");
            }
        }
        if !problems.is_empty() {
            return Err(ApiError::unprocessable(format!(
                "ListOptions.meta.k8s.io \"\" is invalid: {}",
                problems.join(", ")
            )));
        }

        // Which snapshot, and where in it to start.
        let (snapshot_rv, start_after) = if let Some(token) = &opts.continue_token {
            if !rv_param.is_empty() && rv_param != "0" {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, ns, name) = decode_continue(token)?;
            if rv < self.store.compacted() {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ));
            }
            (rv, Some((ns, name)))
        } else if rv_param.is_empty() || rv_param == "0" {
            (current, None)
        } else {
            let rv = parse_rv(rv_param)?;
            // Without resourceVersionMatch, a paginated list at an explicit version is an exact
            // read (legacy semantics); otherwise "not older than".
            let exact =
                rv_match == "Exact" || (rv_match.is_empty() && opts.limit.is_some_and(|l| l > 0));
            if rv > current {
                return Err(ApiError::too_large_resource_version(rv, current));
            }
            if exact {
                if rv < self.store.compacted() {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {rv} ({})",
                        self.store.compacted()
                    )));
                }
                (rv, None)
            } else {
                (current, None)
            }
        };

        let storage = rt.storage_key();
        let ns_filter = if rt.namespaced { ns } else { None };
        let all: Vec<(Key, Arc<Value>)> = if snapshot_rv == current {
            self.store
                .range(&storage, ns_filter)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            self.store
                .snapshot_at(&storage, ns_filter, snapshot_rv)
                .ok_or_else(|| {
                    ApiError::expired(format!(
                        "too old resource version: {snapshot_rv} ({})",
                        self.store.compacted()
                    ))
                })?
        };
        let mut matching = all.into_iter().filter(|(k, v)| {
            start_after
                .as_ref()
                .is_none_or(|(ns, name)| (&k.ns, &k.name) > (ns, name))
                && opts.selectors.matches(v)
        });
        let limit = opts.limit.filter(|l| *l > 0).map(|l| l as usize);
        let mut items = Vec::new();
        let mut last_key = None;
        for (k, v) in matching.by_ref() {
            if limit.is_some_and(|l| items.len() >= l) {
                // There is at least one more: hand out a continue token.
                let rest = 1 + matching.count() as u64;
                let token = last_key.as_ref().map(|k| encode_continue(snapshot_rv, k));
                return Ok(ListPage {
                    items,
                    resource_version: snapshot_rv,
                    continue_token: token,
                    // kube-apiserver only counts remaining items when there is no selector.
                    remaining: opts.selectors.is_empty().then_some(rest),
                });
            }
            last_key = Some(k);
            items.push(v);
        }
        Ok(ListPage {
            items,
            resource_version: snapshot_rv,
            continue_token: None,
            remaining: None,
        })
    }

    /// Check (and fill in) `apiVersion` / `kind` of a request body against the endpoint.
    fn check_type(&self, rt: &ResourceType, obj: &mut Value) -> ApiResult<()> {
        let Value::Object(m) = obj else {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        };
        let api_version = m.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = m.get("kind").and_then(Value::as_str).unwrap_or("");
        if !kind.is_empty() && kind != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the request body ({kind}) does not match the kind of the endpoint ({})",
                rt.kind
            )));
        }
        if !api_version.is_empty() && api_version != rt.api_version() {
            // Another served version of the same custom resource converts trivially.
            let same_group = self
                .registry
                .by_kind(api_version, &rt.kind)
                .is_some_and(|t| t.group == rt.group && t.plural == rt.plural);
            if !same_group {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({api_version}) does not match the expected API version ({})",
                    rt.api_version()
                )));
            }
        }
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
        Ok(())
    }

    fn check_namespace_open(&self, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<()> {
        let key = Key {
            storage: NAMESPACE_STORAGE.into(),
            ns: String::new(),
            name: ns.to_string(),
        };
        match self.store.get(&key) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if !meta_str(n, "deletionTimestamp").is_empty() => Err(ApiError::forbidden(
                &rt.group,
                &rt.plural,
                name,
                &format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Pod Security admission: a Pod created in a namespace that enforces `restricted` must pass
    /// its checks, or gets the plugin's 403.
    fn admit_pod_security(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: &Value,
    ) -> ApiResult<()> {
        if !(rt.group.is_empty() && rt.plural == "pods") {
            return Ok(());
        }
        let key = Key {
            storage: NAMESPACE_STORAGE.into(),
            ns: String::new(),
            name: ns.to_string(),
        };
        let enforced = self
            .store
            .get(&key)
            .and_then(|n| n["metadata"]["labels"][super::pod_security::ENFORCE_LABEL].as_str())
            .map(str::to_string);
        if enforced.as_deref() != Some("restricted") {
            return Ok(());
        }
        let violations = super::pod_security::restricted_violations(obj);
        if violations.is_empty() {
            return Ok(());
        }
        Err(ApiError::forbidden(
            &rt.group,
            &rt.plural,
            name,
            &format!(
                "violates PodSecurity \"restricted:latest\": {}",
                violations.join(", ")
            ),
        ))
    }

    fn invalid(rt: &ResourceType, name: &str, causes: &[defaults::Cause]) -> ApiError {
        ApiError::invalid(&rt.kind, &rt.group, name, causes)
    }

    /// CREATE (POST). `ns` is the namespace from the URL.
    pub(crate) fn create(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        body: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let mut obj = body;
        self.check_type(rt, &mut obj)?;
        let m = meta_mut(&mut obj);
        let name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let generate = m
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() && generate.is_empty() {
            return Err(Self::invalid(
                rt,
                "",
                &[(
                    "metadata.name".into(),
                    "FieldValueRequired",
                    "Required value: name or generateName is required".into(),
                )],
            ));
        }
        // Namespace: from the URL; a different one in the body is a 400.
        let body_ns = m
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ns = if rt.namespaced {
            let url_ns = ns.unwrap_or("");
            if !body_ns.is_empty() && body_ns != url_ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            m.insert("namespace".into(), json!(url_ns));
            Some(url_ns.to_string())
        } else {
            m.remove("namespace");
            None
        };
        if !meta_str(&obj, "resourceVersion").is_empty() {
            // Verbatim kube-apiserver behaviour (a 500 from the storage layer): clients must not
            // create objects carrying a resourceVersion.
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let display_name = if name.is_empty() {
            generate.clone()
        } else {
            name.clone()
        };
        if let Some(ns) = &ns {
            self.check_namespace_open(rt, ns, &display_name)?;
        }
        // System-owned metadata.
        let m = meta_mut(&mut obj);
        for field in [
            "uid",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
            "resourceVersion",
            "generation",
        ] {
            m.remove(field);
        }
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if has_generation(rt) {
            m.insert("generation".into(), json!(1));
        }
        if let Value::Object(root) = &mut obj {
            root.remove("status");
        }
        // Resolve the name (generateName retries on collision like the real server's
        // name generator does not, but a 5-character collision in a test is just noise).
        let mut name = name;
        if name.is_empty() {
            for _ in 0..16 {
                let candidate = format!("{generate}{}", name_suffix());
                if self
                    .store
                    .get(&Self::key(rt, ns.as_deref(), &candidate))
                    .is_none()
                {
                    name = candidate;
                    break;
                }
            }
            meta_mut(&mut obj).insert("name".into(), json!(name));
        }
        let mut causes = Vec::new();
        if let Err(e) = validate_name(name_rule(rt), &name) {
            causes.push((
                "metadata.name".to_string(),
                "FieldValueInvalid",
                format!("Invalid value: {name:?}: {e}"),
            ));
        }
        if let Some(m) = meta(&obj) {
            causes.extend(validate_meta(m));
        }
        if !causes.is_empty() {
            return Err(Self::invalid(rt, &name, &causes));
        }
        if let Some(ns) = &ns {
            self.admit_pod_security(rt, ns, &name, &obj)?;
        }
        let key = Self::key(rt, ns.as_deref(), &name);
        if self.store.get(&key).is_some() {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        // Type-specific defaults and allocations; a dry run allocates from a scratch copy.
        let mut scratch;
        let alloc = if opts.dry_run {
            scratch = self.alloc.clone();
            &mut scratch
        } else {
            &mut self.alloc
        };
        defaults::on_create(rt, &mut obj, alloc).map_err(|c| Self::invalid(rt, &name, &c))?;
        let crd_types = if key.storage == CRD_STORAGE {
            Some(self.prepare_crd(&mut obj, None)?)
        } else {
            None
        };
        if opts.dry_run {
            return Ok(obj);
        }
        let stored = self.store.commit(key.clone(), Some(obj), None);
        if let Some((group, plural, types)) = crd_types {
            self.registry.set_crd(&group, &plural, types);
        }
        Ok(versioned(rt, &stored))
    }

    /// Validate a CustomResourceDefinition, fill its status (it is established at once) and
    /// return the types to register.
    fn prepare_crd(
        &self,
        crd: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<(String, String, Vec<ResourceType>)> {
        let name = meta_str(crd, "name").to_string();
        let invalid = |field: &str, msg: String| {
            ApiError::invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                &name,
                &[(field.to_string(), "FieldValueInvalid", msg)],
            )
        };
        let types = types_from_crd(crd).map_err(|e| invalid("spec", e))?;
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let plural = crd
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !group.contains('.') {
            return Err(invalid(
                "spec.group",
                format!("Invalid value: {group:?}: should be a domain with at least one dot"),
            ));
        }
        if self
            .registry
            .all()
            .iter()
            .any(|t| t.builtin && t.group == group)
        {
            return Err(invalid(
                "spec.group",
                format!("Invalid value: {group:?}: this group is served by the API server itself"),
            ));
        }
        if name != format!("{plural}.{group}") {
            return Err(invalid(
                "metadata.name",
                format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
            ));
        }
        if let Some(old) = old
            && old.pointer("/spec/scope") != crd.pointer("/spec/scope")
        {
            return Err(invalid(
                "spec.scope",
                "Invalid value: field is immutable".into(),
            ));
        }
        let storage_version = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .and_then(|vs| {
                vs.iter()
                    .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            })
            .and_then(|v| v.get("name").cloned())
            .unwrap_or(Value::Null);
        let now = now_rfc3339();
        let since = |ty: &str| {
            old.and_then(|o| o.pointer("/status/conditions"))
                .and_then(Value::as_array)
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
                })
                .and_then(|c| c.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| json!(now))
        };
        let mut accepted = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
        if let (Value::Object(a), Some(t)) = (&mut accepted, types.first()) {
            a.insert("singular".into(), json!(t.singular));
            a.insert("listKind".into(), json!(t.list_kind));
        }
        crd["status"] = json!({
            "acceptedNames": accepted,
            "conditions": [
                { "type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                  "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted") },
                { "type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                  "message": "the initial names have been accepted", "lastTransitionTime": since("Established") },
            ],
            "storedVersions": [storage_version],
        });
        Ok((group, plural, types))
    }

    /// UPDATE (PUT) of the main resource or its status.
    pub(crate) fn update(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        body: Value,
        sub: Sub,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let mut body = body;
        self.check_type(rt, &mut body)?;
        let body_name = meta_str(&body, "name");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let key = Self::key(rt, ns, name);
        let Some(old) = self.store.get(&key).cloned() else {
            return Err(ApiError::not_found(&rt.group, &rt.plural, name));
        };
        // Custom resources do not allow unconditional updates (kube-apiserver's
        // AllowUnconditionalUpdate is false for them); built-in types do.
        let require_rv = !rt.builtin;
        self.update_existing(rt, key, old, body, sub, require_rv, opts)
    }

    /// The shared tail of PUT and PATCH: preconditions, system metadata, status handling,
    /// generation, finalizers, no-op detection, commit.
    #[allow(clippy::too_many_arguments)]
    fn update_existing(
        &mut self,
        rt: &ResourceType,
        key: Key,
        old: Arc<Value>,
        mut new: Value,
        sub: Sub,
        require_rv: bool,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        let name = key.name.clone();
        if meta_str(&new, "name") != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&new, "name")
            )));
        }
        let new_ns = meta_str(&new, "namespace").to_string();
        if rt.namespaced && !new_ns.is_empty() && new_ns != key.ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        // Optimistic concurrency.
        let old_rv = meta_str(&old, "resourceVersion").to_string();
        let new_rv = meta_str(&new, "resourceVersion").to_string();
        if new_rv.is_empty() {
            if require_rv {
                return Err(Self::invalid(
                    rt,
                    &name,
                    &[(
                        "metadata.resourceVersion".into(),
                        "FieldValueInvalid",
                        "Invalid value: 0x0: must be specified for an update".into(),
                    )],
                ));
            }
        } else {
            parse_rv(&new_rv)?;
            if new_rv != old_rv {
                return Err(ApiError::conflict(&rt.group, &rt.plural, &name));
            }
        }

        let mut new = match sub {
            // The main resource ignores status changes (every type here has a status
            // subresource).
            Sub::Main => {
                if let Value::Object(m) = &mut new {
                    match old.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
                new
            }
            // The status subresource ignores everything but status.
            Sub::Status => {
                let mut merged = (*old).clone();
                if let Value::Object(m) = &mut merged {
                    match new.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
                merged
            }
        };
        self.check_type(rt, &mut new)?;
        // System-owned metadata is not client-writable.
        let old_meta = meta(&old).cloned().unwrap_or_default();
        {
            let m = meta_mut(&mut new);
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
            ] {
                match old_meta.get(field) {
                    Some(v) => m.insert(field.into(), v.clone()),
                    None => m.remove(field),
                };
            }
            m.remove("managedFields");
            m.remove("selfLink");
            m.insert("resourceVersion".into(), json!(old_rv));
        }
        let deleting = old_meta.contains_key("deletionTimestamp");
        if deleting {
            let before = finalizers(&old);
            let added: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(Self::invalid(
                    rt,
                    &name,
                    &[(
                        "metadata.finalizers".into(),
                        "FieldValueForbidden",
                        format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                        ),
                    )],
                ));
            }
        }
        if let Some(m) = meta(&new) {
            let causes = validate_meta(m);
            if !causes.is_empty() {
                return Err(Self::invalid(rt, &name, &causes));
            }
        }
        let mut scratch;
        let alloc = if opts.dry_run {
            scratch = self.alloc.clone();
            &mut scratch
        } else {
            &mut self.alloc
        };
        if sub == Sub::Main {
            defaults::on_update(rt, &old, &mut new, alloc)
                .map_err(|c| Self::invalid(rt, &name, &c))?;
        }
        let crd_types = if key.storage == CRD_STORAGE && sub == Sub::Main {
            Some(self.prepare_crd(&mut new, Some(&old))?)
        } else {
            None
        };
        // Only spec changes (anything outside metadata and status) bump the generation.
        if has_generation(rt) && spec_part(&new) != spec_part(&old) {
            let g = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        // A write that changes nothing is a no-op: no new resourceVersion, no watch event.
        if new == *old {
            return Ok(versioned(rt, &old));
        }
        if opts.dry_run {
            return Ok(versioned(rt, &new));
        }
        // The last finalizer of an object being deleted is gone: the object goes with it.
        let ns_finalizers_left = key.storage == NAMESPACE_STORAGE
            && new
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        if deleting && finalizers(&new).is_empty() && !ns_finalizers_left {
            let gone = self.remove(key, new);
            return Ok(versioned(rt, &gone));
        }
        let stored = self.store.commit(key.clone(), Some(new), None);
        if let Some((group, plural, types)) = crd_types {
            self.registry.set_crd(&group, &plural, types);
        }
        if deleting && key.storage == NAMESPACE_STORAGE {
            self.maybe_finalize_namespace(&key.name);
        }
        Ok(versioned(rt, &stored))
    }

    /// PATCH of the main resource or its status. Returns the object and whether it was created
    /// (server-side apply creates).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        ptype: PatchType,
        body: &[u8],
        sub: Sub,
        opts: &WriteOpts,
    ) -> ApiResult<(Value, bool)> {
        let parse_json = || -> ApiResult<Value> {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
        };
        if ptype == PatchType::Strategic && !rt.builtin {
            return Err(ApiError::unsupported_media_type(
                "application/strategic-merge-patch+json (strategic merge patch is not supported for custom resources)",
            ));
        }
        let key = Self::key(rt, ns, name);
        let manager = opts.field_manager.clone().unwrap_or_default();
        if ptype == PatchType::Apply && manager.is_empty() {
            return Err(ApiError::unprocessable(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        let config = if ptype == PatchType::Apply {
            let config = parse_apply_body(body)?;
            let has = |f: &str| {
                config
                    .get(f)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            };
            if !has("apiVersion") || !has("kind") {
                return Err(ApiError::bad_request(
                    "error decoding YAML: apply patches must set apiVersion and kind",
                ));
            }
            if meta_str(&config, "name") != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    meta_str(&config, "name")
                )));
            }
            Some(config)
        } else {
            None
        };
        let Some(old) = self.store.get(&key).cloned() else {
            return match (config, sub) {
                (Some(config), Sub::Main) => {
                    let created = self.create(rt, ns, config.clone(), opts)?;
                    if !opts.dry_run {
                        self.applied.insert((key, manager), config);
                    }
                    Ok((created, true))
                }
                _ => Err(ApiError::not_found(&rt.group, &rt.plural, name)),
            };
        };
        let mut target = versioned(rt, &old);
        match ptype {
            PatchType::Merge => patch::merge_patch(&mut target, &parse_json()?),
            PatchType::Json => patch::json_patch(&mut target, body)?,
            PatchType::Strategic => patch::strategic_merge(&rt.kind, &mut target, &parse_json()?)?,
            PatchType::Apply => {
                let config = config.unwrap_or_default();
                let last = self.applied.get(&(key.clone(), manager.clone()));
                let scoped = |v: &Value| -> Value {
                    // Applying to /status only touches status.
                    match sub {
                        Sub::Status => {
                            json!({ "status": v.get("status").cloned().unwrap_or(Value::Null) })
                        }
                        Sub::Main => v.clone(),
                    }
                };
                let last = last.map(scoped);
                let custom = self.crd_list_types(rt);
                let lists = apply::Lists {
                    kind: &rt.kind,
                    builtin: rt.builtin,
                    custom: &custom,
                };
                apply::server_side_apply(&lists, &mut target, last.as_ref(), &scoped(&config));
                if !opts.dry_run {
                    self.applied.insert((key.clone(), manager), config);
                }
            }
        }
        let result = self.update_existing(rt, key, old, target, sub, false, opts)?;
        Ok((result, false))
    }

    /// The merging lists of a custom resource's schema (none for a built-in type), from its
    /// stored CRD: server-side apply merges them as the real server does.
    fn crd_list_types(&self, rt: &ResourceType) -> apply::ListTypes {
        if rt.builtin {
            return apply::ListTypes::new();
        }
        let key = Key {
            storage: CRD_STORAGE.to_string(),
            ns: String::new(),
            name: format!("{}.{}", rt.plural, rt.group),
        };
        let Some(crd) = self.store.get(&key) else {
            return apply::ListTypes::new();
        };
        crd["spec"]["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == rt.version.as_str()))
            .map(|v| apply::list_types_of_schema(&v["schema"]["openAPIV3Schema"]))
            .unwrap_or_default()
    }

    /// GET of the `/scale` subresource (autoscaling/v1 Scale).
    pub(crate) fn get_scale(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<Value> {
        Ok(scale_of(&self.get(rt, ns, name)?))
    }

    /// PUT of the `/scale` subresource: only `spec.replicas` of the parent changes.
    pub(crate) fn update_scale(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        scale: &Value,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let key = Self::key(rt, ns, name);
        let Some(old) = self.store.get(&key).cloned() else {
            return Err(ApiError::not_found(&rt.group, &rt.plural, name));
        };
        let rv = meta_str(scale, "resourceVersion");
        if !rv.is_empty() && rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                &[(
                    "spec.replicas".into(),
                    "FieldValueInvalid",
                    format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                )],
            ));
        }
        let mut new = versioned(rt, &old);
        new["spec"]["replicas"] = json!(replicas);
        let updated = self.update_existing(rt, key, old, new, Sub::Main, false, opts)?;
        Ok(scale_of(&updated))
    }

    /// PATCH of the `/scale` subresource: the patch applies to the Scale object.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch_scale(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        ptype: PatchType,
        body: &[u8],
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let mut scale = self.get_scale(rt, ns, name)?;
        let parse = || -> ApiResult<Value> {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
        };
        match ptype {
            PatchType::Merge => patch::merge_patch(&mut scale, &parse()?),
            PatchType::Json => patch::json_patch(&mut scale, body)?,
            PatchType::Strategic => patch::strategic_merge("Scale", &mut scale, &parse()?)?,
            PatchType::Apply => {
                let custom = apply::ListTypes::new();
                let lists = apply::Lists {
                    kind: "Scale",
                    builtin: true,
                    custom: &custom,
                };
                apply::server_side_apply(&lists, &mut scale, None, &parse_apply_body(body)?)
            }
        }
        self.update_scale(rt, ns, name, &scale, opts)
    }

    /// DELETE of one object, honouring preconditions and finalizers.
    pub(crate) fn delete(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> ApiResult<Deleted> {
        let key = Self::key(rt, ns, name);
        let Some(old) = self.store.get(&key).cloned() else {
            return Err(ApiError::not_found(&rt.group, &rt.plural, name));
        };
        if let Some(uid) = &opts.uid
            && uid != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict_msg(
                &rt.group,
                &rt.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid")
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && rv != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict_msg(
                &rt.group,
                &rt.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion")
                ),
            ));
        }
        if !meta_str(&old, "deletionTimestamp").is_empty() {
            return Ok(Deleted::Pending(versioned(rt, &old)));
        }
        let is_namespace = key.storage == NAMESPACE_STORAGE;
        if is_namespace || !finalizers(&old).is_empty() {
            let mut new = (*old).clone();
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if is_namespace {
                new["status"] = json!({ "phase": "Terminating" });
            }
            if opts.dry_run {
                return Ok(Deleted::Pending(versioned(rt, &new)));
            }
            let stored = self.store.commit(key.clone(), Some(new), None);
            if is_namespace {
                self.purge_namespace(&key.name);
                if let Some(now) = self.store.get(&key) {
                    return Ok(Deleted::Pending(versioned(rt, now)));
                }
            }
            return Ok(Deleted::Pending(versioned(rt, &stored)));
        }
        if opts.dry_run {
            return Ok(Deleted::Gone(versioned(rt, &old)));
        }
        let gone = self.remove(key, (*old).clone());
        Ok(Deleted::Gone(versioned(rt, &gone)))
    }

    /// DELETE of a collection: every matching object, each like a single DELETE.
    pub(crate) fn delete_collection(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        selectors: &Selectors,
        opts: &DeleteOpts,
    ) -> ApiResult<Vec<Value>> {
        let storage = rt.storage_key();
        let ns_filter = if rt.namespaced { ns } else { None };
        let names: Vec<(String, String)> = self
            .store
            .range(&storage, ns_filter)
            .filter(|(_, v)| selectors.matches(v))
            .map(|(k, _)| (k.ns.clone(), k.name.clone()))
            .collect();
        let mut out = Vec::new();
        for (ns, name) in names {
            match self.delete(rt, Some(&ns), &name, opts)? {
                Deleted::Gone(v) | Deleted::Pending(v) => out.push(v),
            }
        }
        Ok(out)
    }

    /// Remove an object from storage (DELETED with `last` as the final state) and run the
    /// cleanups that follow: allocations, apply bookkeeping, CRD instances, namespace
    /// finalization.
    fn remove(&mut self, key: Key, last: Value) -> Value {
        let gone = self.store.commit(key.clone(), None, Some(last));
        if let Some(rt) = self.rt_for_storage(&key.storage) {
            self.alloc.release(&rt, &gone);
        }
        self.applied.retain(|(k, _), _| *k != key);
        if key.storage == CRD_STORAGE {
            let group = gone
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let plural = gone
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            // Deleting a CRD deletes all its instances (kube-apiserver's
            // customresourcecleanup finalizer), then stops serving it.
            let storage = format!("{group}/{plural}");
            let instances: Vec<(Key, Value)> = self
                .store
                .range(&storage, None)
                .map(|(k, v)| (k.clone(), (**v).clone()))
                .collect();
            for (k, v) in instances {
                self.remove(k, v);
            }
            self.registry.set_crd(&group, &plural, Vec::new());
        }
        if !key.ns.is_empty() {
            self.maybe_finalize_namespace(&key.ns);
        }
        (*gone).clone()
    }

    /// Delete everything in a terminating namespace (the namespace controller's job).
    fn purge_namespace(&mut self, ns: &str) {
        let storages: Vec<ResourceType> = {
            let mut seen = Vec::new();
            for t in self.registry.all().iter().filter(|t| t.namespaced) {
                if !seen
                    .iter()
                    .any(|s: &ResourceType| s.storage_key() == t.storage_key())
                {
                    seen.push(t.clone());
                }
            }
            seen
        };
        for rt in storages {
            let names: Vec<String> = self
                .store
                .range(&rt.storage_key(), Some(ns))
                .map(|(k, _)| k.name.clone())
                .collect();
            for name in names {
                // Objects with finalizers stay (Terminating) until those are removed.
                let _ = self.delete(&rt, Some(ns), &name, &DeleteOpts::default());
            }
        }
        self.maybe_finalize_namespace(ns);
    }

    /// A terminating namespace with no content left loses its `kubernetes` finalizer and, if no
    /// other finalizers remain, is removed.
    fn maybe_finalize_namespace(&mut self, ns: &str) {
        let key = Key {
            storage: NAMESPACE_STORAGE.into(),
            ns: String::new(),
            name: ns.to_string(),
        };
        let Some(obj) = self.store.get(&key).cloned() else {
            return;
        };
        if meta_str(&obj, "deletionTimestamp").is_empty() {
            return;
        }
        let has_content = self
            .registry
            .all()
            .iter()
            .filter(|t| t.namespaced)
            .any(|t| {
                self.store
                    .range(&t.storage_key(), Some(ns))
                    .next()
                    .is_some()
            });
        if has_content {
            return;
        }
        let mut new = (*obj).clone();
        if let Some(Value::Object(spec)) = new.get_mut("spec") {
            spec.insert("finalizers".into(), json!([]));
        }
        if finalizers(&new).is_empty() {
            self.remove(key, new);
        } else if new != *obj {
            self.store.commit(key, Some(new), None);
        }
    }

    /// Create the namespaces and objects every cluster starts with.
    pub(crate) fn seed(&mut self, api_port: u16, kubernetes_service: bool) {
        let ns_rt = self.registry.by_plural("", "v1", "namespaces").cloned();
        if let Some(ns_rt) = ns_rt {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let _ = self.create(
                    &ns_rt,
                    None,
                    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
                    &WriteOpts::default(),
                );
            }
        }
        if kubernetes_service {
            let (svc, slice) = defaults::kubernetes_service(api_port);
            for obj in [svc, slice] {
                let _ = self.create_any(obj);
            }
        }
    }

    /// Create an object of whatever type its apiVersion/kind name (the test handle's entry point).
    pub(crate) fn create_any(&mut self, obj: Value) -> ApiResult<Value> {
        let rt = self.rt_of(&obj)?;
        let ns = meta_str(&obj, "namespace").to_string();
        let ns = if rt.namespaced {
            Some(if ns.is_empty() {
                "default".to_string()
            } else {
                ns
            })
        } else {
            None
        };
        self.create(&rt, ns.as_deref(), obj, &WriteOpts::default())
    }

    /// The resource type of an object, from its apiVersion and kind.
    pub(crate) fn rt_of(&self, obj: &Value) -> ApiResult<ResourceType> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        self.rt_by_kind(api_version, kind)
    }

    pub(crate) fn rt_by_kind(&self, api_version: &str, kind: &str) -> ApiResult<ResourceType> {
        self.registry
            .by_kind(api_version, kind)
            .cloned()
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "no resource of kind {kind:?} in {api_version:?} is served"
                ))
            })
    }
}

/// Apply bodies are YAML (JSON is a subset, and what kube-rs and kubectl send).
fn parse_apply_body(body: &[u8]) -> ApiResult<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("error decoding YAML: body is not UTF-8"))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// Decode a request body: JSON, or YAML for `application/yaml`.
pub(crate) fn parse_body(content_type: &str, body: &[u8]) -> ApiResult<Value> {
    let base = content_type.split(';').next().unwrap_or("").trim();
    match base {
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        }),
        "application/yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("error decoding YAML: body is not UTF-8"))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
        // kube-apiserver decodes protobuf for built-in types; this fake has no protobuf
        // schemas. kubectl's typed generators (`kubectl create configmap ...`) send protobuf;
        // `kubectl create/apply -f` sends JSON and works.
        "application/vnd.kubernetes.protobuf" => Err(ApiError::unsupported_media_type(
            "application/vnd.kubernetes.protobuf (the fake API server decodes JSON and YAML only; with kubectl use `create -f`/`apply -f` instead of `kubectl create <kind>` generators)",
        )),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// Resources with a `/scale` subresource.
pub(crate) fn has_scale(rt: &ResourceType) -> bool {
    rt.group == "apps"
        && matches!(
            rt.kind.as_str(),
            "Deployment" | "ReplicaSet" | "StatefulSet"
        )
}

/// The autoscaling/v1 Scale view of a scalable object.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let m = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m("name"),
            "namespace": m("namespace"),
            "uid": m("uid"),
            "resourceVersion": m("resourceVersion"),
            "creationTimestamp": m("creationTimestamp"),
        },
        "spec": { "replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1)) },
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}
