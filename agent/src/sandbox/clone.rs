//! The pure part of `shunt sandbox create`: from the baseline Deployment and the Services that
//! select its pods, the clone Deployment and the SandboxRoute that forks those Services to it.
//!
//! The clone's pods must never be selected by a baseline Service (they would take baseline
//! traffic) nor by the baseline Deployment: every label a matching Service's selector or the
//! Deployment's `matchLabels` uses gets the key appended (`app: reviews` → `app:
//! reviews-pr-42`), and `shunt.dev/sandbox: KEY` is added, which the fork's selector requires.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{EnvVar, Service},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

use crate::{
    kube::crd,
    routes::{RoutingKey, SANDBOX_LABEL},
};

/// Annotation on the clone: the Deployment it was forked from.
pub const FORKED_FROM: &str = "shunt.dev/forked-from";

/// What `create` will make.
#[derive(Clone, Debug)]
pub struct ClonePlan {
    pub route_name: String,
    pub deployment: Deployment,
    /// The Services forked (those selecting the baseline pods).
    pub services: Vec<String>,
    /// The clone's pod labels (the fork selector).
    pub pod_labels: BTreeMap<String, String>,
    /// The clone's `spec.selector.matchLabels` (to find its pods).
    pub match_labels: BTreeMap<String, String>,
    /// The container whose image was replaced.
    pub container: String,
    pub route_spec: crd::SandboxRouteSpec,
}

/// Inputs of [`plan`] beyond the objects.
#[derive(Clone, Debug)]
pub struct CloneOptions<'a> {
    pub key: &'a str,
    pub image: &'a str,
    pub env: &'a [(String, String)],
    pub container: Option<&'a str>,
    pub replicas: i32,
    pub fallback: crd::Fallback,
    pub expires_at: Option<jiff::Timestamp>,
}

/// Why a sandbox cannot be made as asked; each message names the fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error(
        "--key {key:?} is not usable: a key is 1-63 of [A-Za-z0-9._-], starting and ending with a \
         letter or digit (it becomes the {SANDBOX_LABEL} label); fix: pick e.g. --key pr-42"
    )]
    InvalidKey { key: String },
    #[error("deployment/{deployment} has no spec")]
    NoSpec { deployment: String },
    #[error(
        "no Service in namespace {namespace} selects the pods of deployment/{deployment} (labels \
         {labels}); fix: a sandbox forks a Service, so fork a Deployment that a Service routes to"
    )]
    NoSelectingService {
        namespace: String,
        deployment: String,
        labels: String,
    },
    #[error("deployment/{deployment} has no pod spec")]
    NoPodSpec { deployment: String },
    #[error(
        "deployment/{deployment} has no container {container:?} (containers: {containers}); fix: \
         pass one of them to --container"
    )]
    NoSuchContainer {
        deployment: String,
        container: String,
        containers: String,
    },
    #[error("deployment/{deployment} has no containers")]
    NoContainers { deployment: String },
    #[error(
        "the sandbox of deployment/{deployment} would be selected by Service {services} in \
         namespace {namespace} (its pods' labels: {labels}), so baseline traffic would reach it; \
         refusing. fix: give that Service a selector on a label the Deployment's pods carry"
    )]
    SelectedByBaseline {
        namespace: String,
        deployment: String,
        services: String,
        labels: String,
    },
}

/// Whether `v` is a valid label value (≤ 63, alphanumerics at both ends, `-_.` inside).
pub fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))))
}

/// Checks a key is usable for a sandbox: a routing key and a label value.
pub fn check_key(key: &str) -> Result<(), CloneError> {
    if RoutingKey::parse(key).is_err() || !is_label_value(key) {
        return Err(CloneError::InvalidKey {
            key: key.to_string(),
        });
    }
    Ok(())
}

/// A DNS-1123 name from `s`: lowercase alphanumerics and `-`, at most `max` long.
pub fn dns_name(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    out.truncate(max);
    out.trim_matches('-').to_string()
}

/// Longest label value and object name this module produces.
const MAX_NAME: usize = 63;

/// `value-key` as a label value, trimmed to end on an alphanumeric. When that is longer than a
/// label value may be, the value is cut and ends in a hash of the whole `value-key` instead:
/// cutting alone would give back `value` itself for a value of 62 or 63 characters, and the
/// clone's pods would then be selected by the baseline Service.
fn suffixed(value: &str, key: &str) -> String {
    let whole = format!("{value}-{key}");
    if whole.len() <= MAX_NAME {
        return whole
            .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_string();
    }
    hashed(value, &whole, |c| c.is_ascii_alphanumeric())
}

/// `prefix` cut so that `-` and 8 hex digits of `whole`'s SHA-256 fit in [`MAX_NAME`], without
/// trailing characters that `keep_end` refuses.
fn hashed(prefix: &str, whole: &str, keep_end: impl Fn(char) -> bool) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(whole.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let cut = prefix
        .char_indices()
        .take_while(|(i, c)| i + c.len_utf8() <= MAX_NAME - 1 - hash.len())
        .map(|(_, c)| c)
        .collect::<String>();
    let cut = cut.trim_end_matches(|c: char| !keep_end(c));
    if cut.is_empty() {
        hash
    } else {
        format!("{cut}-{hash}")
    }
}

/// Services (in the Deployment's namespace) whose selector matches the pod template labels.
pub fn selecting_services<'a>(
    services: &'a [Service],
    pod_labels: &BTreeMap<String, String>,
) -> Vec<&'a Service> {
    services
        .iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.selector.as_ref())
                .is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
                })
        })
        .collect()
}

/// The clone name for `deployment` and `key`.
pub fn clone_name(deployment: &str, key: &str) -> String {
    let whole = dns_name(&format!("{deployment}-{key}"), usize::MAX);
    if whole.len() <= MAX_NAME {
        return whole;
    }
    // Cut alone could give back the baseline Deployment's own name.
    hashed(&whole, &whole, |c| c != '-')
}

pub fn plan(
    baseline: &Deployment,
    services: &[Service],
    o: &CloneOptions<'_>,
) -> Result<ClonePlan, CloneError> {
    check_key(o.key)?;
    let name = baseline.metadata.name.clone().unwrap_or_default();
    let namespace = baseline.metadata.namespace.clone().unwrap_or_default();
    let spec = baseline.spec.as_ref().ok_or_else(|| CloneError::NoSpec {
        deployment: name.clone(),
    })?;
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selecting = selecting_services(services, &template_labels);
    if selecting.is_empty() {
        return Err(CloneError::NoSelectingService {
            namespace,
            deployment: name,
            labels: fmt_labels(&template_labels),
        });
    }
    let match_labels = spec.selector.match_labels.clone().unwrap_or_default();
    let rewrite: BTreeSet<String> = selecting
        .iter()
        .filter_map(|s| s.spec.as_ref().and_then(|sp| sp.selector.as_ref()))
        .flat_map(|sel| sel.keys().cloned())
        .chain(match_labels.keys().cloned())
        .filter(|k| k != SANDBOX_LABEL)
        .collect();
    let relabel = |labels: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| {
                if rewrite.contains(k) {
                    (k.clone(), suffixed(v, o.key))
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        out.insert(SANDBOX_LABEL.into(), o.key.into());
        out
    };
    let pod_labels = relabel(&template_labels);
    let new_match = relabel(&match_labels);
    // The clone must never serve baseline traffic: no Service may select its pods.
    let still_selected = selecting_services(services, &pod_labels);
    if !still_selected.is_empty() {
        return Err(CloneError::SelectedByBaseline {
            namespace,
            deployment: name,
            services: still_selected
                .iter()
                .filter_map(|s| s.metadata.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
            labels: fmt_labels(&pod_labels),
        });
    }

    let mut d = baseline.clone();
    d.status = None;
    let clone = clone_name(&name, o.key);
    let mut annotations = BTreeMap::new();
    annotations.insert(FORKED_FROM.to_string(), format!("deployment/{name}"));
    d.metadata = ObjectMeta {
        name: Some(clone.clone()),
        namespace: Some(namespace.clone()),
        labels: Some(relabel(
            &baseline.metadata.labels.clone().unwrap_or_default(),
        )),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    };
    let dspec = d.spec.get_or_insert_with(Default::default);
    dspec.replicas = Some(o.replicas);
    dspec.selector.match_labels = Some(new_match.clone());
    let tmeta = dspec.template.metadata.get_or_insert_with(Default::default);
    tmeta.labels = Some(pod_labels.clone());
    let pod_spec = dspec
        .template
        .spec
        .as_mut()
        .ok_or_else(|| CloneError::NoPodSpec {
            deployment: name.clone(),
        })?;
    let names: Vec<String> = pod_spec.containers.iter().map(|c| c.name.clone()).collect();
    let container = match o.container {
        Some(c) => pod_spec
            .containers
            .iter_mut()
            .find(|x| x.name == c)
            .ok_or_else(|| CloneError::NoSuchContainer {
                deployment: name.clone(),
                container: c.to_string(),
                containers: names.join(", "),
            })?,
        None => pod_spec
            .containers
            .first_mut()
            .ok_or_else(|| CloneError::NoContainers {
                deployment: name.clone(),
            })?,
    };
    container.image = Some(o.image.to_string());
    let env = container.env.get_or_insert_with(Vec::new);
    for (k, v) in o.env {
        match env.iter_mut().find(|e| &e.name == k) {
            Some(e) => {
                e.value = Some(v.clone());
                e.value_from = None;
            }
            None => env.push(EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                value_from: None,
            }),
        }
    }
    let container = container.name.clone();

    let mut forked: Vec<String> = selecting
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    forked.sort();
    let route_spec = crd::SandboxRouteSpec {
        routing_key: o.key.to_string(),
        forks: forked
            .iter()
            .map(|svc| crd::Fork {
                service: svc.clone(),
                to: crd::ForkTo {
                    selector: Some(pod_labels.clone()),
                    service: None,
                },
                ports: None,
            })
            .collect(),
        fallback: o.fallback,
        expires_at: o.expires_at,
        inject_key: true,
    };
    Ok(ClonePlan {
        route_name: dns_name(o.key, 63),
        deployment: d,
        services: forked,
        pod_labels,
        match_labels: new_match,
        container,
        route_spec,
    })
}

/// Makes the SandboxRoute the clone's owner, so deleting the route garbage-collects it.
pub fn set_owner(d: &mut Deployment, route_name: &str, route_uid: &str) {
    d.metadata.owner_references = Some(vec![OwnerReference {
        api_version: format!("{}/{}", crd::GROUP, crd::VERSION),
        kind: "SandboxRoute".into(),
        name: route_name.into(),
        uid: route_uid.into(),
        controller: Some(true),
        // true would need `update` on sandboxroutes/finalizers; the route need not wait.
        block_owner_deletion: Some(false),
    }]);
}

pub fn fmt_labels(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "reviews", "namespace": "shop", "uid": "u1",
                          "resourceVersion": "5", "labels": { "app": "reviews" } },
            "spec": {
                "replicas": 3,
                "selector": { "matchLabels": { "app": "reviews", "version": "v1" } },
                "template": {
                    "metadata": { "labels": { "app": "reviews", "version": "v1", "team": "x" } },
                    "spec": { "containers": [
                        { "name": "main", "image": "reviews:1", "env": [{ "name": "A", "value": "1" }] },
                        { "name": "side", "image": "side:1" },
                    ] },
                },
            },
            "status": { "replicas": 3 },
        }))
        .expect("deployment")
    }

    fn service(name: &str, sel: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "shop" },
            "spec": { "selector": sel, "ports": [{ "port": 9080 }] },
        }))
        .expect("service")
    }

    fn opts<'a>(env: &'a [(String, String)]) -> CloneOptions<'a> {
        CloneOptions {
            key: "pr-42",
            image: "reviews:2",
            env,
            container: None,
            replicas: 1,
            fallback: crd::Fallback::Baseline,
            expires_at: None,
        }
    }

    #[test]
    fn clone_is_never_selected_by_the_baseline_service() {
        let svcs = [
            service("reviews", json!({ "app": "reviews" })),
            service("other", json!({ "app": "other" })),
            service("empty", json!({})),
        ];
        let env = [("A".to_string(), "2".to_string()), ("B".into(), "3".into())];
        let p = plan(&deployment(), &svcs, &opts(&env)).expect("plan");
        assert_eq!(p.services, ["reviews"]);
        assert_eq!(p.pod_labels["app"], "reviews-pr-42");
        assert_eq!(p.pod_labels["version"], "v1-pr-42");
        assert_eq!(p.pod_labels["team"], "x");
        assert_eq!(p.pod_labels[SANDBOX_LABEL], "pr-42");
        assert!(selecting_services(&svcs, &p.pod_labels).is_empty());
        let d = &p.deployment;
        assert_eq!(d.metadata.name.as_deref(), Some("reviews-pr-42"));
        assert!(d.metadata.uid.is_none() && d.metadata.resource_version.is_none());
        assert!(d.status.is_none());
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.selector.match_labels.as_ref(), Some(&p.match_labels));
        let c = &spec.template.spec.as_ref().unwrap().containers;
        assert_eq!(c[0].image.as_deref(), Some("reviews:2"));
        assert_eq!(c[1].image.as_deref(), Some("side:1"));
        let env: Vec<(String, String)> = c[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env, [("A".into(), "2".into()), ("B".into(), "3".into())]);
        let r = &p.route_spec;
        assert_eq!(r.routing_key, "pr-42");
        assert_eq!(r.forks.len(), 1);
        assert_eq!(r.forks[0].to.selector.as_ref(), Some(&p.pod_labels));
        // The spec passes the agent's own checks.
        assert!(
            crate::routes::SandboxRouteSpec::from(r)
                .problems("shop")
                .is_empty()
        );
    }

    #[test]
    fn bad_inputs_name_the_fix() {
        let svcs = [service("reviews", json!({ "app": "reviews" }))];
        let mut o = opts(&[]);
        o.container = Some("nope");
        let e = plan(&deployment(), &svcs, &o).unwrap_err().to_string();
        assert!(e.contains("containers: main, side"), "{e}");
        let e = plan(
            &deployment(),
            &[service("x", json!({ "app": "x" }))],
            &opts(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("no Service in namespace shop selects"), "{e}");
        assert!(check_key("-bad").is_err());
        assert!(check_key(&"a".repeat(64)).is_err());
        assert!(check_key("PR_42.x").is_ok());
    }

    #[test]
    fn names_and_label_values_stay_valid() {
        assert_eq!(clone_name("Reviews", "PR_42"), "reviews-pr-42");
        let long = "a".repeat(60);
        let v = suffixed(&long, "pr-42");
        assert!(is_label_value(&v), "{v}");
        assert_eq!(v.len(), 63);
        assert_eq!(suffixed("reviews", "x."), "reviews-x");
    }

    #[test]
    fn clone_of_a_63_character_label_is_not_selected_by_baseline() {
        for len in [61, 62, 63] {
            let value = format!("{}z", "r".repeat(len - 1));
            let v = suffixed(&value, "pr-42");
            assert!(is_label_value(&v), "{v}");
            assert_ne!(v, value, "a {len}-character value");
            assert_eq!(v, suffixed(&value, "pr-42"), "deterministic");
            assert_ne!(v, suffixed(&value, "pr-43"), "distinct per key");
            // Through plan(): the baseline Service does not select the clone.
            let mut d = deployment();
            let spec = d.spec.as_mut().unwrap();
            spec.selector.match_labels = Some([("app".to_string(), value.clone())].into());
            spec.template.metadata.as_mut().unwrap().labels =
                Some([("app".to_string(), value.clone())].into());
            let svcs = [service("reviews", json!({ "app": value }))];
            let p = plan(&d, &svcs, &opts(&[])).expect("plan");
            assert!(
                selecting_services(&svcs, &p.pod_labels).is_empty(),
                "{:?}",
                p.pod_labels
            );
        }
        let long = "d".repeat(63);
        let n = clone_name(&long, "pr-42");
        assert!(n.len() <= 63 && n != long, "{n}");
    }

    #[test]
    fn plan_refuses_a_clone_that_a_service_still_selects() {
        // A Service selecting on the sandbox label alone: no rewrite can keep it off the clone.
        let svcs = [
            service("reviews", json!({ "app": "reviews" })),
            service("catch-all", json!({ SANDBOX_LABEL: "pr-42" })),
        ];
        let e = plan(&deployment(), &svcs, &opts(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("would be selected by Service catch-all"), "{e}");
    }
}
