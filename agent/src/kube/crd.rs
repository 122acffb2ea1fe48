//! The `SandboxRoute` custom resource (`shunt.dev/v1alpha1`): its Rust type, its CRD (printed by
//! `shunt crd`, committed as `deploy/base/crd.yaml`), and the conversions to and from the
//! plain-data [`routes::SandboxRouteSpec`] the route computation reads.
//!
//! The spec mirrors [`routes::SandboxRouteSpec`] field for field; it is a separate type only
//! because `routes` must not depend on kube-rs or schemars. The schema makes a real API server
//! reject the obvious mistakes at admission (a selector without `shunt.dev/sandbox`, a fork with
//! both or neither of `selector`/`service`, a malformed key); the agent checks the same things
//! again through `routes` and reports them in the status, so a route that got in anyway (an
//! older CRD, a server without CEL) is refused and explained, never applied.
use std::collections::BTreeMap;

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{CustomResource, CustomResourceExt as _};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::routes::{self, PortRef, SANDBOX_LABEL, Selector};

/// `shunt.dev`
pub const GROUP: &str = "shunt.dev";
/// `v1alpha1`
pub const VERSION: &str = "v1alpha1";
/// The condition type the agent maintains.
pub const READY: &str = "Ready";

/// Routes requests carrying `routingKey` to sandbox pods, per forked Service.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shunt.dev",
    version = "v1alpha1",
    kind = "SandboxRoute",
    plural = "sandboxroutes",
    shortname = "sbr",
    namespaced,
    status = "SandboxRouteStatus",
    derive = "PartialEq",
    doc = "Routes requests that carry a routing key to sandbox pods, per forked Service.",
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".spec.routingKey"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRouteSpec {
    /// The routing key requests carry (W3C baggage `sd-routing-key=KEY`, or a configured
    /// header). One SandboxRoute per key and namespace: the older route wins.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub routing_key: String,
    /// For each forked baseline Service, where keyed requests go.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub forks: Vec<Fork>,
    /// What keyed requests get when a fork has no ready sandbox endpoint: the baseline
    /// (`Baseline`, the default) or a 503 (`Reject`).
    #[serde(default)]
    pub fallback: Fallback,
    /// When the route stops applying; the agent then deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time_schema")]
    pub expires_at: Option<jiff::Timestamp>,
    /// Shunt adds the routing key to HTTP requests that the sandbox's pods (the pods the forks
    /// select on each node) send without one, so a sandbox that drops the key still reaches
    /// downstream sandboxes. On by default; `false` turns it off.
    #[serde(
        default = "crate::routes::inject_key_default",
        skip_serializing_if = "crate::routes::is_inject_key_default"
    )]
    pub inject_key: bool,
}

/// Requests for `service` carrying the key go to `to`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fork {
    /// The baseline Service, in the route's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub service: String,
    pub to: ForkTo,
    /// Only these ports of the Service (numbers or names) are forked; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "ports_schema")]
    pub ports: Option<Vec<IntOrString>>,
}

/// Where forked requests go: exactly one of `selector` or `service`, in the route's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.selector) != has(self.service)",
    "message": "set exactly one of selector or service",
}]))]
pub struct ForkTo {
    /// Labels of the sandbox pods; must include `shunt.dev/sandbox`, which baseline pods never
    /// carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "selector_schema")]
    pub selector: Option<BTreeMap<String, String>>,
    /// A sandbox Service (its ready endpoints receive the forked requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "service_name_schema")]
    pub service: Option<String>,
}

/// What keyed requests get when no sandbox endpoint is ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Fallback {
    #[default]
    Baseline,
    Reject,
}

/// Written by the one agent holding the status Lease.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRouteStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True when every fork has a ready sandbox endpoint; otherwise its reason says why
    /// (ServiceNotFound, NoReadyEndpoints, DuplicateKey, Expired, CrossNamespace, InvalidKey,
    /// InvalidSelector, InvalidTarget, PortNotFound).
    #[serde(default)]
    pub conditions: Vec<RouteCondition>,
    /// One entry per spec fork, in spec order (empty when the route is not applied at all).
    #[serde(default)]
    pub forks: Vec<ForkStatus>,
    /// One entry per node whose agent could not apply the route there, written by that node's
    /// agent with server-side apply under its own field manager (`shunt-agent/<node>`), so
    /// agents never overwrite each other's entries; removed by it once the route applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["name"]
    ))]
    #[schemars(length(max = 5000))]
    pub nodes: Vec<NodeStatus>,
    /// Set only in the agent's watch cache, which keeps a status in its
    /// [`cached`](Self::cached) form: never read from or written to the API.
    #[serde(skip)]
    pub digest: Option<u64>,
}

impl SandboxRouteStatus {
    /// A hash of everything the status says (its JSON form), or the one kept in its cached form.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        if let Some(d) = self.digest {
            return d;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_vec(self).unwrap_or_default().hash(&mut h);
        h.finish()
    }

    /// What the agent's watch cache keeps of a status: its [`digest`](Self::digest), and what
    /// the status writers read (the Ready condition's status and transition time, and the
    /// nodes' entries). At 10,000 routes the whole statuses (messages, one entry per fork) were
    /// a quarter of the agent's heap, kept only to be compared with the next status computed.
    pub fn cached(&self) -> Self {
        Self {
            observed_generation: self.observed_generation,
            conditions: self
                .conditions
                .iter()
                .filter(|c| c.type_ == READY)
                .map(|c| RouteCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    last_transition_time: c.last_transition_time,
                    ..Default::default()
                })
                .collect(),
            forks: Vec::new(),
            nodes: self.nodes.clone(),
            digest: Some(self.digest()),
        }
    }

    /// Whether this status (whole or cached) says what `whole` says.
    pub fn says(&self, whole: &SandboxRouteStatus) -> bool {
        self.digest() == whole.digest()
    }
}

/// What one node's agent could not apply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node name (the agent's `--node-name`).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `SteeredMapFull`: some of the route's destinations could not be inserted in `STEERED`.
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub message: String,
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time_schema")]
    pub last_transition_time: Option<jiff::Timestamp>,
}

/// The state of one fork.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForkStatus {
    /// The baseline Service, as written in the spec.
    pub service: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Ready sandbox endpoints (distinct pod IPs) serving the forked ports.
    #[serde(default)]
    pub ready_endpoints: u32,
}

fn date_time_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "format": "date-time" })
}

// Bounds (maxItems, maxProperties, maxLength) keep the API server's cost estimate of the CEL
// rules small; without them it assumes request-sized lists and may refuse the CRD.

fn service_name_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "minLength": 1, "maxLength": 253 })
}

fn ports_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 64,
        "items": { "x-kubernetes-int-or-string": true },
    })
}

fn selector_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": { "type": "string", "maxLength": 63 },
        "x-kubernetes-validations": [{
            "rule": format!("'{SANDBOX_LABEL}' in self && self['{SANDBOX_LABEL}'] != ''"),
            "message": format!("selector must include the {SANDBOX_LABEL} label, so it can never match baseline pods"),
        }],
    })
}

impl From<Fallback> for routes::Fallback {
    fn from(f: Fallback) -> Self {
        match f {
            Fallback::Baseline => routes::Fallback::Baseline,
            Fallback::Reject => routes::Fallback::Reject,
        }
    }
}

/// A port reference as written in the CRD. An integer outside 1..=65535 cannot name a Service
/// port, so it becomes a name that matches none and the fork reports `PortNotFound`.
fn port_ref(p: &IntOrString) -> PortRef {
    match p {
        IntOrString::Int(n) => match u16::try_from(*n) {
            Ok(n) if n != 0 => PortRef::Number(n),
            _ => PortRef::Name(n.to_string()),
        },
        IntOrString::String(s) => match s.parse::<u16>() {
            // "8080" in YAML quotes still means the number.
            Ok(n) if n != 0 => PortRef::Number(n),
            _ => PortRef::Name(s.clone()),
        },
    }
}

impl From<&SandboxRouteSpec> for routes::SandboxRouteSpec {
    fn from(s: &SandboxRouteSpec) -> Self {
        routes::SandboxRouteSpec {
            routing_key: s.routing_key.clone(),
            forks: s
                .forks
                .iter()
                .map(|f| routes::ForkSpec {
                    service: f.service.clone(),
                    to: routes::ForkTarget {
                        selector: f.to.selector.as_ref().map(Selector::from),
                        service: f.to.service.clone(),
                    },
                    ports: f.ports.as_ref().map(|ps| ps.iter().map(port_ref).collect()),
                })
                .collect(),
            fallback: s.fallback.into(),
            expires_at: s.expires_at,
            inject_key: s.inject_key,
        }
    }
}

impl From<routes::Fallback> for Fallback {
    fn from(f: routes::Fallback) -> Self {
        match f {
            routes::Fallback::Baseline => Fallback::Baseline,
            routes::Fallback::Reject => Fallback::Reject,
        }
    }
}

/// The inverse of [`port_ref`] (for references it produced: a number stays a number).
fn int_or_string(p: &PortRef) -> IntOrString {
    match p {
        PortRef::Number(n) => IntOrString::Int(i32::from(*n)),
        PortRef::Name(s) => IntOrString::String(s.clone()),
    }
}

/// The inverse of the conversion above: the object a client (`shunt mcp --kube`) creates for a
/// spec it built and checked as plain data.
impl From<&routes::SandboxRouteSpec> for SandboxRouteSpec {
    fn from(s: &routes::SandboxRouteSpec) -> Self {
        SandboxRouteSpec {
            routing_key: s.routing_key.clone(),
            forks: s
                .forks
                .iter()
                .map(|f| Fork {
                    service: f.service.clone(),
                    to: ForkTo {
                        selector: f.to.selector.as_ref().map(Selector::to_map),
                        service: f.to.service.clone(),
                    },
                    ports: f
                        .ports
                        .as_ref()
                        .map(|ps| ps.iter().map(int_or_string).collect()),
                })
                .collect(),
            fallback: s.fallback.into(),
            expires_at: s.expires_at,
            inject_key: s.inject_key,
        }
    }
}

/// The CustomResourceDefinition object.
pub fn crd() -> CustomResourceDefinition {
    SandboxRoute::crd()
}

const CRD_YAML_HEADER: &str = "# Generated by `shunt crd`; do not edit. \
    Regenerate: cargo run -p agent -- crd > deploy/base/crd.yaml\n";

/// The CRD as YAML, exactly what `shunt crd` prints and `deploy/base/crd.yaml` holds.
pub fn crd_yaml() -> String {
    let body = serde_saphyr::to_string(&crd())
        .unwrap_or_else(|e| format!("# serializing the CRD failed: {e}\n"));
    format!("{CRD_YAML_HEADER}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_converts_to_the_routes_spec() {
        let s: SandboxRouteSpec = serde_json::from_value(json!({
            "routingKey": "pr-42",
            "forks": [
                { "service": "reviews", "to": { "selector": { "app": "r", "shunt.dev/sandbox": "pr-42" } },
                  "ports": [9080, "grpc", "8080", 0] },
                { "service": "ratings", "to": { "service": "ratings-pr-42" } },
            ],
            "fallback": "Reject",
            "expiresAt": "2030-01-02T03:04:05Z",
        }))
        .expect("parses");
        let r = routes::SandboxRouteSpec::from(&s);
        let want: routes::SandboxRouteSpec = serde_json::from_value(json!({
            "routingKey": "pr-42",
            "forks": [
                { "service": "reviews", "to": { "selector": { "app": "r", "shunt.dev/sandbox": "pr-42" } },
                  "ports": [9080, "grpc", 8080, "0"] },
                { "service": "ratings", "to": { "service": "ratings-pr-42" } },
            ],
            "fallback": "Reject",
            "expiresAt": "2030-01-02T03:04:05Z",
        }))
        .expect("parses");
        assert_eq!(r, want);
        assert!(r.problems("shop").is_empty());
    }

    #[test]
    fn routes_spec_converts_back_unchanged() {
        let r: routes::SandboxRouteSpec = serde_json::from_value(json!({
            "routingKey": "pr-42",
            "forks": [
                { "service": "reviews", "to": { "selector": { "app": "r", "shunt.dev/sandbox": "pr-42" } },
                  "ports": [9080, "grpc"] },
                { "service": "ratings", "to": { "service": "ratings-pr-42" } },
            ],
            "fallback": "Reject",
            "expiresAt": "2030-01-02T03:04:05Z",
        }))
        .expect("parses");
        let s = SandboxRouteSpec::from(&r);
        assert_eq!(routes::SandboxRouteSpec::from(&s), r);
        // The same object the two types' shared serialization gives.
        assert_eq!(
            serde_json::to_value(&s).expect("ser"),
            serde_json::to_value(&r).expect("ser")
        );
    }

    #[test]
    fn defaults_match_the_routes_spec() {
        let s: SandboxRouteSpec =
            serde_json::from_value(json!({ "routingKey": "k" })).expect("parses");
        let r = routes::SandboxRouteSpec::from(&s);
        assert_eq!(r.fallback, routes::Fallback::Baseline);
        assert!(r.forks.is_empty());
        assert_eq!(r.expires_at, None);
        assert!(r.inject_key, "key injection is on unless turned off");
        // Serialized the same way as the routes spec, so both read the same YAML.
        assert_eq!(
            serde_json::to_value(&s).expect("ser"),
            serde_json::to_value(&r).expect("ser")
        );
    }

    #[test]
    fn inject_key_false_converts_and_writes_back() {
        let s: SandboxRouteSpec =
            serde_json::from_value(json!({ "routingKey": "k", "injectKey": false }))
                .expect("parses");
        let r = routes::SandboxRouteSpec::from(&s);
        assert!(!r.inject_key);
        assert_eq!(serde_json::to_value(&r).expect("ser")["injectKey"], false);
        assert_eq!(SandboxRouteSpec::from(&r), s);
    }

    #[test]
    fn agent_side_checks_still_apply_to_converted_specs() {
        let s: SandboxRouteSpec = serde_json::from_value(json!({
            "routingKey": "k",
            "forks": [{ "service": "reviews", "to": { "selector": { "app": "r" } } }],
        }))
        .expect("parses");
        let p = routes::SandboxRouteSpec::from(&s).problems("shop");
        assert_eq!(p[0].reason, routes::RouteReason::InvalidSelector);
    }

    #[test]
    fn crd_has_names_schema_status_and_columns() {
        let c = serde_json::to_value(crd()).expect("ser");
        assert_eq!(c["metadata"]["name"], "sandboxroutes.shunt.dev");
        assert_eq!(c["spec"]["scope"], "Namespaced");
        assert_eq!(c["spec"]["names"]["kind"], "SandboxRoute");
        assert_eq!(c["spec"]["names"]["shortNames"], json!(["sbr"]));
        let v = &c["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha1");
        assert_eq!(v["subresources"]["status"], json!({}));
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(cols, ["Key", "Ready", "Reason", "Age"]);
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], json!(["routingKey"]));
        let to = &spec["properties"]["forks"]["items"]["properties"]["to"];
        assert_eq!(
            to["x-kubernetes-validations"][0]["rule"],
            "has(self.selector) != has(self.service)"
        );
        assert_eq!(
            to["properties"]["selector"]["x-kubernetes-validations"][0]["rule"],
            "'shunt.dev/sandbox' in self && self['shunt.dev/sandbox'] != ''"
        );
        let ports = &spec["properties"]["forks"]["items"]["properties"]["ports"];
        assert_eq!(ports["items"]["x-kubernetes-int-or-string"], true);
        assert_eq!(
            spec["properties"]["fallback"]["enum"],
            json!(["Baseline", "Reject"])
        );
        let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"];
        assert!(status["properties"]["conditions"].is_object(), "{status}");
        assert!(status["properties"]["forks"]["items"]["properties"]["readyEndpoints"].is_object());
    }

    #[test]
    fn crd_yaml_round_trips() {
        let y = crd_yaml();
        assert!(y.starts_with("# Generated by `shunt crd`"));
        let back: CustomResourceDefinition = serde_saphyr::from_str(&y).expect("parses back");
        assert_eq!(back, crd());
    }
}
