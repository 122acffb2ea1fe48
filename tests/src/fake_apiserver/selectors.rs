//! Label and field selectors, parsed with kube-apiserver's grammar and rules.
//!
//! Label selectors: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k>1`, `k<1`.
//! `!=` and `notin` also match objects without the label, as in Kubernetes. Field selectors:
//! `f=v`, `f==v`, `f!=v` over `metadata.name`, `metadata.namespace` and the per-resource field
//! labels; any other field is a 400, which is what the real server answers too.

use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::meta::{validate_label_key, validate_label_value};

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Exists,
    DoesNotExist,
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LabelSelector {
    reqs: Vec<(String, Op)>,
}

/// Split on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn parse_err(sel: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: found invalid label selector {sel:?}: {why}"
    ))
}

fn check_key(sel: &str, key: &str) -> ApiResult<()> {
    validate_label_key(key).map_err(|e| parse_err(sel, format!("key {key:?}: {e}")))
}

fn check_value(sel: &str, value: &str) -> ApiResult<()> {
    validate_label_value(value).map_err(|e| parse_err(sel, format!("value {value:?}: {e}")))
}

impl LabelSelector {
    pub(crate) fn parse(sel: &str) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        if sel.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for part in split_top_level(sel) {
            let part = part.trim();
            if part.is_empty() {
                return Err(parse_err(sel, "empty requirement"));
            }
            if let Some(key) = part.strip_prefix('!') {
                let key = key.trim();
                check_key(sel, key)?;
                reqs.push((key.to_string(), Op::DoesNotExist));
                continue;
            }
            let key_end = part.find(|c: char| !is_key_char(c)).unwrap_or(part.len());
            let key = &part[..key_end];
            check_key(sel, key)?;
            let rest = part[key_end..].trim_start();
            let op = if rest.is_empty() {
                Op::Exists
            } else if let Some(v) = rest.strip_prefix("!=") {
                Op::NotEquals(Self::single_value(sel, v)?)
            } else if let Some(v) = rest.strip_prefix("==") {
                Op::Equals(Self::single_value(sel, v)?)
            } else if let Some(v) = rest.strip_prefix('=') {
                Op::Equals(Self::single_value(sel, v)?)
            } else if let Some(v) = rest.strip_prefix('>') {
                Op::Gt(Self::integer(sel, v)?)
            } else if let Some(v) = rest.strip_prefix('<') {
                Op::Lt(Self::integer(sel, v)?)
            } else if let Some(v) = rest.strip_prefix("notin") {
                Op::NotIn(Self::set(sel, v)?)
            } else if let Some(v) = rest.strip_prefix("in") {
                Op::In(Self::set(sel, v)?)
            } else {
                return Err(parse_err(
                    sel,
                    format!("unexpected {rest:?} after key {key:?}"),
                ));
            };
            reqs.push((key.to_string(), op));
        }
        Ok(Self { reqs })
    }

    fn single_value(sel: &str, v: &str) -> ApiResult<String> {
        let v = v.trim();
        check_value(sel, v)?;
        Ok(v.to_string())
    }

    fn integer(sel: &str, v: &str) -> ApiResult<i64> {
        v.trim()
            .parse()
            .map_err(|_| parse_err(sel, format!("{:?} is not an integer", v.trim())))
    }

    fn set(sel: &str, v: &str) -> ApiResult<Vec<String>> {
        // `in`/`notin` must be followed by whitespace or the opening parenthesis; otherwise it
        // was a longer word such as `inside`.
        let v = v.trim();
        let inner = v
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(|| parse_err(sel, "expected a parenthesised set of values"))?;
        let mut out = Vec::new();
        for item in inner.split(',') {
            let item = item.trim();
            check_value(sel, item)?;
            out.push(item.to_string());
        }
        Ok(out)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Does an object with these labels match?
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|(key, op)| {
            let v = get(key);
            match op {
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::Equals(want) => v == Some(want.as_str()),
                Op::NotEquals(want) => v != Some(want.as_str()),
                Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => !v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                Op::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FieldSelector {
    // (field path, wanted value, negated)
    reqs: Vec<(String, String, bool)>,
}

/// Split on unescaped `sep`, keeping escapes for a later unescape.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if escaped {
        cur.push('\\');
    }
    out.push(cur);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

impl FieldSelector {
    /// Parse `sel`, accepting `metadata.name`, `metadata.namespace` and `extra` field labels.
    pub(crate) fn parse(sel: &str, extra: &[String]) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        if sel.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for part in split_unescaped(sel, ',') {
            let (field, value, negated) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{sel}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            let supported = matches!(field, "metadata.name" | "metadata.namespace")
                || extra.iter().any(|f| f == field);
            if !supported {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), unescape(value), negated));
        }
        Ok(Self { reqs })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(field, want, negated)| {
            let mut cur = Some(obj);
            for seg in field.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            // Field labels are strings on the server; absent fields read as "".
            let have = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (have == *want) != *negated
        })
    }
}

/// Label and field selector of one request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Selectors {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

impl Selectors {
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({ "metadata": { "name": "a", "namespace": "ns", "labels": labels } })
    }

    #[test]
    fn label_operators() {
        let o = obj(json!({ "app": "web", "tier": "1" }));
        let m = |s: &str| LabelSelector::parse(s).expect(s).matches(&o);
        assert!(m("app"));
        assert!(!m("!app"));
        assert!(m("!missing"));
        assert!(m("app=web"));
        assert!(m("app==web"));
        assert!(!m("app!=web"));
        assert!(m("missing!=x"));
        assert!(m("app in (web, db)"));
        assert!(!m("app notin (web,db)"));
        assert!(m("missing notin (x)"));
        assert!(m("tier>0"));
        assert!(!m("tier<1"));
        assert!(m("app=web,tier in (1,2)"));
        assert!(m(""));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b").is_err());
        assert!(LabelSelector::parse("app=a/b").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        let m = |s: &str| FieldSelector::parse(s, &[]).expect(s).matches(&o);
        assert!(m("metadata.name=a"));
        assert!(m("metadata.name==a,metadata.namespace!=other"));
        assert!(!m("metadata.namespace=other"));
        assert!(FieldSelector::parse("spec.foo=1", &[]).is_err());
    }
}
