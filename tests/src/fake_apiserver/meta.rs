//! `ObjectMeta` helpers: validation with kube-apiserver's rules and messages, uids, timestamps.
//!
//! Name and label validation is deliberately as strict as the real server: an agent that builds
//! an invalid label value or an uppercase name must fail here the way it would in a cluster.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Which name rule a resource uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum NameRule {
    Dns1123Subdomain,
    Dns1123Label,
    Dns1035Label,
}

/// `Err(message)` if `name` is not valid under `rule`.
pub(crate) fn validate_name(rule: NameRule, name: &str) -> Result<(), String> {
    match rule {
        NameRule::Dns1123Subdomain if !is_dns1123_subdomain(name) => {
            if name.len() > 253 {
                Err("must be no more than 253 characters".into())
            } else {
                Err(DNS1123_SUBDOMAIN_MSG.into())
            }
        }
        NameRule::Dns1123Label if !is_dns1123_label(name) => {
            if name.len() > 63 {
                Err("must be no more than 63 characters".into())
            } else {
                Err(DNS1123_LABEL_MSG.into())
            }
        }
        NameRule::Dns1035Label
            if !(is_dns1123_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())) =>
        {
            if name.len() > 63 {
                Err("must be no more than 63 characters".into())
            } else {
                Err(DNS1035_LABEL_MSG.into())
            }
        }
        _ => Ok(()),
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Label keys, annotation keys and finalizers are "qualified names": `[prefix/]name`.
pub(crate) fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return Err(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".into());
    }
    if !is_qualified_name_part(name) {
        return Err(QUALIFIED_NAME_MSG.into());
    }
    Ok(())
}

pub(crate) fn validate_label_value(v: &str) -> Result<(), String> {
    if v.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !v.is_empty() && !is_qualified_name_part(v) {
        return Err(LABEL_VALUE_MSG.into());
    }
    Ok(())
}

/// Field errors in `metadata` other than the name: `(field, cause reason, message)`.
pub(crate) fn validate_meta(meta: &Map<String, Value>) -> Vec<(String, &'static str, String)> {
    let mut errs = Vec::new();
    let invalid = |field: String, value: &Value, msg: String| {
        (
            field,
            "FieldValueInvalid",
            format!("Invalid value: {value}: {msg}"),
        )
    };
    match meta.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                if let Err(e) = validate_label_key(k) {
                    errs.push(invalid(
                        "metadata.labels".into(),
                        &Value::String(k.clone()),
                        e,
                    ));
                }
                match v.as_str() {
                    Some(s) => {
                        if let Err(e) = validate_label_value(s) {
                            errs.push(invalid("metadata.labels".to_string(), v, e));
                        }
                    }
                    None => errs.push(invalid(
                        "metadata.labels".into(),
                        v,
                        "must be a string".into(),
                    )),
                }
            }
        }
        Some(other) => errs.push(invalid(
            "metadata.labels".into(),
            other,
            "must be a map".into(),
        )),
    }
    match meta.get("annotations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(ann)) => {
            let mut total = 0;
            for (k, v) in ann {
                if let Err(e) = validate_label_key(k) {
                    errs.push(invalid(
                        "metadata.annotations".into(),
                        &Value::String(k.clone()),
                        e,
                    ));
                }
                match v.as_str() {
                    Some(s) => total += k.len() + s.len(),
                    None => errs.push(invalid(
                        "metadata.annotations".into(),
                        v,
                        "must be a string".into(),
                    )),
                }
            }
            if total > 256 * 1024 {
                errs.push((
                    "metadata.annotations".into(),
                    "FieldValueTooLong",
                    "Too long: must have at most 262144 bytes".into(),
                ));
            }
        }
        Some(other) => errs.push(invalid(
            "metadata.annotations".into(),
            other,
            "must be a map".into(),
        )),
    }
    match meta.get("finalizers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(fs)) => {
            for (i, f) in fs.iter().enumerate() {
                let ok = f.as_str().map(validate_label_key);
                match ok {
                    Some(Ok(())) => {}
                    Some(Err(e)) => errs.push(invalid(format!("metadata.finalizers[{i}]"), f, e)),
                    None => errs.push(invalid(
                        format!("metadata.finalizers[{i}]"),
                        f,
                        "must be a string".into(),
                    )),
                }
            }
        }
        Some(other) => errs.push(invalid(
            "metadata.finalizers".into(),
            other,
            "must be a list".into(),
        )),
    }
    errs
}

/// Now, in the RFC 3339 second-precision form Kubernetes uses (`2025-01-02T03:04:05Z`).
pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Seconds elapsed since an RFC 3339 timestamp, if it parses.
pub(crate) fn age_seconds(ts: &str) -> Option<i64> {
    let t: jiff::Timestamp = ts.parse().ok()?;
    Some(jiff::Timestamp::now().as_second() - t.as_second())
}

static RNG: AtomicU64 = AtomicU64::new(0);

/// A cheap pseudo-random u64 (splitmix64); uniqueness within a process is all that's needed.
pub(crate) fn random_u64() -> u64 {
    let mut seed = RNG.load(Ordering::Relaxed);
    if seed == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        seed = nanos ^ (u64::from(std::process::id()) << 32);
        let _ = RNG.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut z = RNG
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random version-4 UUID string, like the uids kube-apiserver assigns.
pub(crate) fn new_uid() -> String {
    let a = random_u64();
    let b = random_u64();
    let bytes: Vec<u8> = a.to_be_bytes().into_iter().chain(b.to_be_bytes()).collect();
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The 5-character suffix `generateName` appends (same alphabet as kube-apiserver: no vowels,
/// no confusable characters).
pub(crate) fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// `metadata` of an object as a map (objects are always validated to have one).
pub(crate) fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// Mutable `metadata`, created if absent or not a map.
pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Map::new());
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just set to an object"),
    }
}

/// A string field of `metadata`, `""` if absent.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    meta(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.finalizers` as strings.
pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name(NameRule::Dns1123Subdomain, "a.b-c").is_ok());
        assert!(validate_name(NameRule::Dns1123Subdomain, "Foo").is_err());
        assert!(validate_name(NameRule::Dns1123Label, "a.b").is_err());
        assert!(validate_name(NameRule::Dns1035Label, "1abc").is_err());
        assert!(validate_name(NameRule::Dns1035Label, "abc-1").is_ok());
    }

    #[test]
    fn labels() {
        assert!(validate_label_key("app.kubernetes.io/name").is_ok());
        assert!(validate_label_key("a/b/c").is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("a/b").is_err());
        assert!(validate_label_value(&"x".repeat(64)).is_err());
    }

    #[test]
    fn uids_are_uuid_shaped_and_unique() {
        let a = new_uid();
        assert_eq!(a.len(), 36);
        assert_ne!(a, new_uid());
        assert_eq!(name_suffix().len(), 5);
    }
}
