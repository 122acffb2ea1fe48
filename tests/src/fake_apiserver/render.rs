//! Response encodings chosen by content negotiation on `Accept`, as kube-apiserver does:
//! plain JSON, `as=Table` (what `kubectl get` asks for) and `as=PartialObjectMetadata[List]`
//! (kube-rs `metadata_watcher`, `Api::list_metadata`).
//!
//! Tables have the generic `Name` / `Age` columns only (the real server adds type-specific
//! columns for built-in types); kubectl prints whatever columns the server sends.

use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::meta::age_seconds;
use super::resources::ResourceType;

/// `?includeObject=` for tables.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub(crate) fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s.unwrap_or("") {
            "" | "Metadata" => Ok(Self::Metadata),
            "None" => Ok(Self::None),
            "Object" => Ok(Self::Object),
            other => Err(ApiError::bad_request(format!(
                "includeObject: Unsupported value: {other:?}: supported values: \"None\", \"Metadata\", \"Object\""
            ))),
        }
    }
}

/// The negotiated representation of a read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Output {
    Json,
    Table {
        version: String,
        include: IncludeObject,
    },
    PartialMetadata {
        version: String,
    },
}

impl Output {
    /// The response Content-Type.
    pub(crate) fn content_type(&self) -> String {
        match self {
            Output::Json => "application/json".into(),
            Output::Table { version, .. } => {
                format!("application/json;as=Table;v={version};g=meta.k8s.io")
            }
            Output::PartialMetadata { version } => {
                format!("application/json;as=PartialObjectMetadata;v={version};g=meta.k8s.io")
            }
        }
    }
}

/// One entry of an Accept header: base type and parameters.
pub(crate) struct MediaRange {
    pub(crate) base: String,
    pub(crate) params: Vec<(String, String)>,
}

impl MediaRange {
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn is_json(&self) -> bool {
        matches!(
            self.base.as_str(),
            "application/json" | "*/*" | "application/*"
        )
    }
}

pub(crate) fn parse_accept(accept: &str) -> Vec<MediaRange> {
    accept
        .split(',')
        .filter_map(|part| {
            let mut it = part.split(';').map(str::trim);
            let base = it.next()?.to_ascii_lowercase();
            if base.is_empty() {
                return None;
            }
            let params = it
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
                .filter(|(k, _)| k != "q")
                .collect();
            Some(MediaRange { base, params })
        })
        .collect()
}

/// Choose the representation of a GET/LIST/WATCH response.
pub(crate) fn negotiate(accept: Option<&str>, include: IncludeObject) -> ApiResult<Output> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Output::Json);
    };
    for mr in parse_accept(accept) {
        if !mr.is_json() {
            continue;
        }
        let meta_group = mr.param("g") == Some("meta.k8s.io");
        let version = mr.param("v").unwrap_or("v1");
        let known_version = matches!(version, "v1" | "v1beta1");
        match mr.param("as") {
            None => return Ok(Output::Json),
            Some("Table") if meta_group && known_version => {
                return Ok(Output::Table {
                    version: version.to_string(),
                    include,
                });
            }
            Some("PartialObjectMetadata" | "PartialObjectMetadataList")
                if meta_group && known_version =>
            {
                return Ok(Output::PartialMetadata {
                    version: version.to_string(),
                });
            }
            Some(_) => continue,
        }
    }
    Err(ApiError::not_acceptable(accept))
}

/// Writes only answer plain JSON.
pub(crate) fn negotiate_plain(accept: Option<&str>) -> ApiResult<()> {
    match negotiate(accept, IncludeObject::Metadata)? {
        Output::Json => Ok(()),
        _ => {
            // A client that accepts JSON later in its list still gets JSON.
            let plain = accept
                .map(parse_accept)
                .unwrap_or_default()
                .iter()
                .any(|m| m.is_json() && m.param("as").is_none());
            if plain {
                Ok(())
            } else {
                Err(ApiError::not_acceptable(accept.unwrap_or("")))
            }
        }
    }
}

fn partial(obj: &Value, version: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// kubectl's `duration.HumanDuration`, for the Age column.
pub(crate) fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = s / 60;
    if minutes < 10 {
        return match s % 60 {
            0 => format!("{minutes}m"),
            rem => format!("{minutes}m{rem}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = s / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn table(objs: &[&Value], version: &str, include: IncludeObject, list_meta: Value) -> Value {
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let name = o.pointer("/metadata/name").cloned().unwrap_or(json!(""));
            let age = o
                .pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .and_then(age_seconds)
                .map(human_duration)
                .unwrap_or_else(|| "<unknown>".into());
            let mut row = json!({ "cells": [name, age] });
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = partial(o, version),
                IncludeObject::Object => row["object"] = (*o).clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": list_meta,
        "columnDefinitions": [
            { "name": "Name", "type": "string", "format": "name", "priority": 0,
              "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names" },
            { "name": "Age", "type": "string", "format": "", "priority": 0,
              "description": "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata" },
        ],
        "rows": rows,
    })
}

/// One object (GET, watch events) in the negotiated representation.
pub(crate) fn render_one(obj: &Value, out: &Output) -> Value {
    match out {
        Output::Json => obj.clone(),
        Output::PartialMetadata { version } => partial(obj, version),
        Output::Table { version, include } => table(&[obj], version, *include, json!({})),
    }
}

/// A list page in the negotiated representation.
pub(crate) fn render_list(
    rt: &ResourceType,
    items: &[Value],
    resource_version: u64,
    continue_token: Option<&str>,
    remaining: Option<u64>,
    out: &Output,
) -> Value {
    let mut list_meta = json!({ "resourceVersion": resource_version.to_string() });
    if let Some(c) = continue_token {
        list_meta["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        list_meta["remainingItemCount"] = json!(r);
    }
    match out {
        Output::Json => {
            // kube-apiserver's typed list encoding leaves apiVersion/kind out of the items of
            // built-in types; unstructured (custom resource) items keep them.
            let items: Vec<Value> = items
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if rt.builtin
                        && let Value::Object(m) = &mut i
                    {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    i
                })
                .collect();
            json!({
                "kind": rt.list_kind,
                "apiVersion": rt.api_version(),
                "metadata": list_meta,
                "items": items,
            })
        }
        Output::PartialMetadata { version } => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": format!("meta.k8s.io/{version}"),
            "metadata": list_meta,
            "items": items.iter().map(|i| partial(i, version)).collect::<Vec<_>>(),
        }),
        Output::Table { version, include } => {
            let refs: Vec<&Value> = items.iter().collect();
            table(&refs, version, *include, list_meta)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_header_negotiates_a_table() {
        let out = negotiate(
            Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"),
            IncludeObject::Metadata,
        )
        .expect("negotiate");
        assert!(matches!(out, Output::Table { .. }));
        assert_eq!(
            negotiate(
                Some("application/vnd.kubernetes.protobuf, */*"),
                IncludeObject::Metadata
            )
            .expect("ok"),
            Output::Json
        );
        assert!(
            negotiate(
                Some("application/vnd.kubernetes.protobuf"),
                IncludeObject::Metadata
            )
            .is_err()
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 3 + 60), "3h1m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }
}
