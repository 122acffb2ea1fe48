//! compare_with_baseline's diff of two responses: status, headers and body, JSON-aware, with
//! volatile fields ignored (pure).
use std::collections::BTreeMap;

use serde_json::Value;

use crate::mcp::sandbox_types::Difference;

/// Headers that differ between any two responses of one server.
pub const VOLATILE_HEADERS: [&str; 12] = [
    "date",
    "content-length",
    "x-request-id",
    "request-id",
    "x-correlation-id",
    "x-trace-id",
    "x-amzn-trace-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "server-timing",
];

/// Body fields (any depth, compared without case, `-` and `_`) that differ on every request.
pub const VOLATILE_FIELDS: [&str; 8] = [
    "date",
    "timestamp",
    "requestid",
    "traceid",
    "spanid",
    "correlationid",
    "xrequestid",
    "time",
];

fn norm(field: &str) -> String {
    field
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether `path` (segments) matches the pattern (dotted; `*` one segment; a leading `**.` any
/// depth).
fn matches(pattern: &str, path: &[String]) -> bool {
    if let Some(rest) = pattern.strip_prefix("**.") {
        let want: Vec<&str> = rest.split('.').collect();
        return path.len() >= want.len()
            && path[path.len() - want.len()..]
                .iter()
                .zip(&want)
                .all(|(s, w)| *w == "*" || s == w);
    }
    let want: Vec<&str> = pattern.split('.').collect();
    want.len() == path.len() && path.iter().zip(&want).all(|(s, w)| *w == "*" || s == w)
}

fn ignored(path: &[String], ignore: &[String]) -> bool {
    path.last()
        .is_some_and(|f| VOLATILE_FIELDS.contains(&norm(f).as_str()))
        || ignore.iter().any(|p| matches(p, path))
}

fn walk(
    a: Option<&Value>,
    b: Option<&Value>,
    path: &mut Vec<String>,
    ignore: &[String],
    out: &mut Vec<Difference>,
) {
    if !path.is_empty() && ignored(path, ignore) {
        return;
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                path.push(k.clone());
                walk(x.get(k), y.get(k), path, ignore, out);
                path.pop();
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                path.push(i.to_string());
                walk(x.get(i), y.get(i), path, ignore, out);
                path.pop();
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Difference {
            path: format!("body.{}", path.join(".")),
            keyed: a.cloned(),
            baseline: b.cloned(),
        }),
    }
}

/// The differences between the keyed response and the baseline one.
pub fn diff_responses(
    keyed: (u16, &BTreeMap<String, String>, &str, Option<&Value>),
    baseline: (u16, &BTreeMap<String, String>, &str, Option<&Value>),
    ignore: &[String],
) -> Vec<Difference> {
    let mut out = Vec::new();
    if keyed.0 != baseline.0 {
        out.push(Difference {
            path: "status".into(),
            keyed: Some(keyed.0.into()),
            baseline: Some(baseline.0.into()),
        });
    }
    let names: std::collections::BTreeSet<&String> =
        keyed.1.keys().chain(baseline.1.keys()).collect();
    for n in names {
        let l = n.to_ascii_lowercase();
        if VOLATILE_HEADERS.contains(&l.as_str())
            || ignore.iter().any(|i| i.eq_ignore_ascii_case(&l))
        {
            continue;
        }
        let (a, b) = (keyed.1.get(n), baseline.1.get(n));
        if a != b {
            out.push(Difference {
                path: format!("header.{l}"),
                keyed: a.map(|s| Value::String(s.clone())),
                baseline: b.map(|s| Value::String(s.clone())),
            });
        }
    }
    match (keyed.3, baseline.3) {
        (Some(a), Some(b)) => walk(Some(a), Some(b), &mut Vec::new(), ignore, &mut out),
        _ if keyed.2 != baseline.2 => out.push(Difference {
            path: "body".into(),
            keyed: Some(keyed.2.into()),
            baseline: Some(baseline.2.into()),
        }),
        _ => {}
    }
    out
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
