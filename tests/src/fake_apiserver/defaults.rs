//! Per-type defaulting, allocation and the validation rules most likely to bite an agent.
//!
//! Not a schema validator: objects stay schemaless JSON. What is here is what a real cluster
//! does to objects that clients then read back and depend on: Services get a ClusterIP from
//! 10.96.0.0/12 (and NodePorts), ports get `protocol: TCP` / `targetPort`, EndpointSlice ports
//! get `name: ""`, Namespaces get their `kubernetes.io/metadata.name` label and `Active` phase,
//! Pods start `Pending`; plus the immutability rules (Service ClusterIP, Pod spec, Deployment
//! selector) that reject updates in real clusters.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

use super::resources::ResourceType;

/// A field error: `(field path, cause reason, message)`.
pub(crate) type Cause = (String, &'static str, String);

fn required(field: &str) -> Cause {
    (
        field.to_string(),
        "FieldValueRequired",
        "Required value".into(),
    )
}

fn invalid(field: &str, value: &Value, msg: &str) -> Cause {
    (
        field.to_string(),
        "FieldValueInvalid",
        format!("Invalid value: {value}: {msg}"),
    )
}

/// The service ClusterIP range, as kind/kubeadm default it.
const SERVICE_CIDR: (Ipv4Addr, u32) = (Ipv4Addr::new(10, 96, 0, 0), 12);
const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// ClusterIP and NodePort allocations.
#[derive(Clone, Debug, Default)]
pub(crate) struct Allocator {
    cluster_ips: BTreeSet<u32>,
    node_ports: BTreeSet<u16>,
}

impl Allocator {
    fn in_range(ip: Ipv4Addr) -> bool {
        let (base, bits) = SERVICE_CIDR;
        let mask = u32::MAX << (32 - bits);
        (u32::from(ip) & mask) == u32::from(base)
    }

    fn allocate_ip(&mut self) -> Option<Ipv4Addr> {
        let (base, bits) = SERVICE_CIDR;
        let base = u32::from(base);
        // Sequential from 10.96.0.11: 10.96.0.1 is the `kubernetes` Service and 10.96.0.10 is
        // conventionally cluster DNS; both can still be requested explicitly. Deterministic
        // addresses make test failures easier to read than kube-apiserver's random pick.
        let first = base + 11;
        let last = base + (1u32 << (32 - bits)) - 2;
        (first..=last)
            .find(|ip| !self.cluster_ips.contains(ip))
            .map(|ip| {
                self.cluster_ips.insert(ip);
                Ipv4Addr::from(ip)
            })
    }

    fn reserve_ip(&mut self, ip: Ipv4Addr) -> Result<(), String> {
        if !Self::in_range(ip) {
            return Err(format!(
                "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}/{}",
                SERVICE_CIDR.0, SERVICE_CIDR.1
            ));
        }
        if !self.cluster_ips.insert(u32::from(ip)) {
            return Err(format!(
                "failed to allocate IP {ip}: provided IP is already allocated"
            ));
        }
        Ok(())
    }

    fn allocate_node_port(&mut self) -> Option<u16> {
        NODE_PORTS
            .clone()
            .find(|p| !self.node_ports.contains(p))
            .inspect(|p| {
                self.node_ports.insert(*p);
            })
    }

    /// Release what a removed object held.
    pub(crate) fn release(&mut self, rt: &ResourceType, obj: &Value) {
        if !(rt.group.is_empty() && rt.kind == "Service") {
            return;
        }
        if let Some(ip) = obj
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        {
            self.cluster_ips.remove(&u32::from(ip));
        }
        for p in obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                self.node_ports.remove(&(np as u16));
            }
        }
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = Value::Object(Map::new());
    }
    match v.get_mut(key) {
        Some(Value::Object(m)) => m,
        _ => unreachable!("{key} was just set to an object"),
    }
}

fn set_default(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), value);
    }
}

/// Defaults and allocations on create. Runs after generic metadata handling; `status` has
/// already been cleared.
pub(crate) fn on_create(
    rt: &ResourceType,
    obj: &mut Value,
    alloc: &mut Allocator,
) -> Result<(), Vec<Cause>> {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => {
            namespace_defaults(obj);
            Ok(())
        }
        ("", "Service") => service_create(obj, alloc),
        ("", "Pod") => {
            pod_validate(obj)?;
            pod_defaults(obj);
            obj["status"] = json!({ "phase": "Pending", "qosClass": "BestEffort" });
            Ok(())
        }
        ("apps", "Deployment") => {
            deployment_validate(obj)?;
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(
                spec,
                "strategy",
                json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": "25%", "maxSurge": "25%" } }),
            );
            obj["status"] = json!({});
            Ok(())
        }
        ("discovery.k8s.io", "EndpointSlice") => endpointslice(obj),
        _ => Ok(()),
    }
}

/// Defaults, carry-overs and immutability checks on update (main resource only).
pub(crate) fn on_update(
    rt: &ResourceType,
    old: &Value,
    new: &mut Value,
    alloc: &mut Allocator,
) -> Result<(), Vec<Cause>> {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => {
            namespace_defaults(new);
            Ok(())
        }
        ("", "Service") => service_update(old, new, alloc),
        ("", "Pod") => {
            pod_validate(new)?;
            pod_defaults(new);
            pod_spec_immutable(old, new)
        }
        ("apps", "Deployment") => {
            deployment_validate(new)?;
            if old.pointer("/spec/selector") != new.pointer("/spec/selector") {
                return Err(vec![invalid(
                    "spec.selector",
                    new.pointer("/spec/selector").unwrap_or(&Value::Null),
                    "field is immutable",
                )]);
            }
            Ok(())
        }
        ("discovery.k8s.io", "EndpointSlice") => endpointslice(new),
        _ => Ok(()),
    }
}

fn namespace_defaults(obj: &mut Value) {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let meta = obj_mut(obj, "metadata");
    if !meta.get("labels").is_some_and(Value::is_object) {
        meta.insert("labels".into(), json!({}));
    }
    if let Some(Value::Object(labels)) = meta.get_mut("labels") {
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    let spec = obj_mut(obj, "spec");
    set_default(spec, "finalizers", json!(["kubernetes"]));
    let status = obj_mut(obj, "status");
    set_default(status, "phase", json!("Active"));
}

fn service_ports_defaults(obj: &mut Value, errs: &mut Vec<Cause>) {
    let Some(Value::Array(ports)) = obj.pointer_mut("/spec/ports") else {
        return;
    };
    let many = ports.len() > 1;
    for (i, p) in ports.iter_mut().enumerate() {
        let Value::Object(pm) = p else {
            errs.push(invalid(&format!("spec.ports[{i}]"), p, "must be an object"));
            continue;
        };
        let port = pm.get("port").and_then(Value::as_u64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            let v = pm.get("port").cloned().unwrap_or(json!(0));
            errs.push(invalid(
                &format!("spec.ports[{i}].port"),
                &v,
                "must be between 1 and 65535, inclusive",
            ));
        }
        if many
            && pm
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        {
            errs.push(required(&format!("spec.ports[{i}].name")));
        }
        set_default(pm, "protocol", json!("TCP"));
        set_default(pm, "targetPort", json!(port));
    }
}

fn service_create(obj: &mut Value, alloc: &mut Allocator) -> Result<(), Vec<Cause>> {
    let mut errs = Vec::new();
    let spec = obj_mut(obj, "spec");
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if !matches!(
        ty.as_str(),
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        errs.push(invalid(
            "spec.type",
            &json!(ty),
            "supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        ));
        return Err(errs);
    }
    if ty == "ExternalName" {
        if spec
            .get("externalName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            errs.push(required("spec.externalName"));
        }
        service_ports_defaults(obj, &mut errs);
        obj["status"] = json!({ "loadBalancer": {} });
        return if errs.is_empty() { Ok(()) } else { Err(errs) };
    }
    let requested = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let headless = requested == "None";
    if !headless
        && spec
            .get("ports")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    {
        errs.push(required("spec.ports"));
    }
    service_ports_defaults(obj, &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    // Allocate last, so that a rejected object holds nothing.
    let ip = if headless {
        "None".to_string()
    } else if requested.is_empty() {
        match alloc.allocate_ip() {
            Some(ip) => ip.to_string(),
            None => {
                return Err(vec![invalid(
                    "spec.clusterIPs",
                    &json!([]),
                    "failed to allocate IP: range is full",
                )]);
            }
        }
    } else {
        let parsed: Ipv4Addr = requested.parse().map_err(|_| {
            vec![invalid(
                "spec.clusterIPs[0]",
                &json!(requested),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )]
        })?;
        alloc
            .reserve_ip(parsed)
            .map_err(|e| vec![invalid("spec.clusterIPs", &json!([requested]), &e)])?;
        requested
    };
    let spec = obj_mut(obj, "spec");
    spec.insert("clusterIP".into(), json!(ip));
    spec.insert("clusterIPs".into(), json!([ip]));
    set_default(spec, "ipFamilies", json!(["IPv4"]));
    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
        allocate_node_ports(obj, alloc);
    }
    obj["status"] = json!({ "loadBalancer": {} });
    Ok(())
}

fn allocate_node_ports(obj: &mut Value, alloc: &mut Allocator) {
    if let Some(Value::Array(ports)) = obj.pointer_mut("/spec/ports") {
        for p in ports.iter_mut() {
            if p.get("nodePort").and_then(Value::as_u64).is_none()
                && let Some(np) = alloc.allocate_node_port()
            {
                p["nodePort"] = json!(np);
            } else if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                alloc.node_ports.insert(np as u16);
            }
        }
    }
}

fn service_update(old: &Value, new: &mut Value, alloc: &mut Allocator) -> Result<(), Vec<Cause>> {
    let mut errs = Vec::new();
    let old_ip = old.pointer("/spec/clusterIP").cloned();
    let spec = obj_mut(new, "spec");
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    // Like kube-apiserver's patchAllocatedValues: an update that omits allocated values keeps
    // them (so a PUT of a hand-written manifest does not try to "unset" the ClusterIP).
    if spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
        && let Some(ip) = &old_ip
    {
        spec.insert("clusterIP".into(), ip.clone());
        if let Some(ips) = old.pointer("/spec/clusterIPs") {
            spec.insert("clusterIPs".into(), ips.clone());
        }
    }
    for field in [
        "ipFamilies",
        "ipFamilyPolicy",
        "internalTrafficPolicy",
        "externalTrafficPolicy",
    ] {
        if let Some(v) = old.pointer(&format!("/spec/{field}")) {
            set_default(spec, field, v.clone());
        }
    }
    if spec.get("clusterIP") != old_ip.as_ref() {
        let v = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
        errs.push(invalid("spec.clusterIPs[0]", &v, "may not change once set"));
    }
    service_ports_defaults(new, &mut errs);
    // Carry NodePorts over by port number.
    if let (Some(old_ports), Some(Value::Array(new_ports))) = (
        old.pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned(),
        new.pointer_mut("/spec/ports"),
    ) {
        for p in new_ports.iter_mut() {
            if p.get("nodePort").is_none()
                && let Some(np) = old_ports
                    .iter()
                    .find(|o| o.get("port") == p.get("port"))
                    .and_then(|o| o.get("nodePort"))
            {
                p["nodePort"] = np.clone();
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let ty = new
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if matches!(ty, "NodePort" | "LoadBalancer") {
        allocate_node_ports(new, alloc);
    }
    Ok(())
}

fn pod_validate(obj: &Value) -> Result<(), Vec<Cause>> {
    let mut errs = Vec::new();
    match obj.pointer("/spec/containers").and_then(Value::as_array) {
        None => errs.push(required("spec.containers")),
        Some(cs) if cs.is_empty() => errs.push(required("spec.containers")),
        Some(cs) => {
            for (i, c) in cs.iter().enumerate() {
                if c.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
                {
                    errs.push(required(&format!("spec.containers[{i}].name")));
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
                {
                    errs.push(required(&format!("spec.containers[{i}].image")));
                }
            }
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

fn pod_defaults(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "enableServiceLinks", json!(true));
    if let Some(Value::Array(cs)) = spec.get_mut("containers") {
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let tag = image
                .rsplit('/')
                .next()
                .and_then(|last| last.split_once(':'))
                .map(|(_, t)| t);
            let policy = if matches!(tag, None | Some("latest")) {
                "Always"
            } else {
                "IfNotPresent"
            };
            set_default(c, "imagePullPolicy", json!(policy));
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            if let Some(Value::Array(ports)) = c.get_mut("ports") {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
        }
    }
}

/// Pod specs are immutable apart from a few fields, as in kube-apiserver.
fn pod_spec_immutable(old: &Value, new: &Value) -> Result<(), Vec<Cause>> {
    let (Some(old_spec), Some(new_spec)) = (old.get("spec"), new.get("spec")) else {
        return Ok(());
    };
    let mut allowed = old_spec.clone();
    for field in [
        "activeDeadlineSeconds",
        "tolerations",
        "terminationGracePeriodSeconds",
        "schedulingGates",
    ] {
        match new_spec.get(field) {
            Some(v) => allowed[field] = v.clone(),
            None => {
                if let Some(m) = allowed.as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    for list in ["containers", "initContainers"] {
        if let (Some(Value::Array(a)), Some(b)) = (
            allowed.get_mut(list),
            new_spec.get(list).and_then(Value::as_array),
        ) && a.len() == b.len()
        {
            for (x, y) in a.iter_mut().zip(b) {
                if let Some(img) = y.get("image") {
                    x["image"] = img.clone();
                }
            }
        }
    }
    if allowed == *new_spec {
        Ok(())
    } else {
        Err(vec![(
            "spec".into(),
            "FieldValueForbidden",
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
        )])
    }
}

fn deployment_validate(obj: &Value) -> Result<(), Vec<Cause>> {
    let Some(selector) = obj.pointer("/spec/selector").filter(|s| s.is_object()) else {
        return Err(vec![required("spec.selector")]);
    };
    let template_labels = obj
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let matches = match_labels.is_none_or(|ml| {
        ml.iter()
            .all(|(k, v)| template_labels.and_then(|t| t.get(k)) == Some(v))
    });
    let empty = match_labels.is_none_or(Map::is_empty)
        && selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
    if empty {
        return Err(vec![invalid(
            "spec.selector",
            selector,
            "empty selector is invalid for deployment",
        )]);
    }
    if !matches {
        let labels = template_labels
            .cloned()
            .map(Value::Object)
            .unwrap_or(Value::Null);
        return Err(vec![invalid(
            "spec.template.metadata.labels",
            &labels,
            "`selector` does not match template `labels`",
        )]);
    }
    Ok(())
}

fn endpointslice(obj: &mut Value) -> Result<(), Vec<Cause>> {
    let mut errs = Vec::new();
    match obj.get("addressType").and_then(Value::as_str) {
        Some("IPv4" | "IPv6" | "FQDN") => {}
        Some(other) => errs.push(invalid(
            "addressType",
            &json!(other),
            "supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
        )),
        None => errs.push(required("addressType")),
    }
    if let Some(Value::Array(eps)) = obj.get("endpoints") {
        for (i, ep) in eps.iter().enumerate() {
            if ep
                .get("addresses")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                errs.push(required(&format!("endpoints[{i}].addresses")));
            }
        }
    }
    if let Some(Value::Array(ports)) = obj.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "name", json!(""));
            set_default(p, "protocol", json!("TCP"));
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// The `default/kubernetes` Service and its EndpointSlice, as every cluster has them.
pub(crate) fn kubernetes_service(port: u16) -> (Value, Value) {
    let svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": { "component": "apiserver", "provider": "kubernetes" },
        },
        "spec": {
            "clusterIP": "10.96.0.1",
            "ports": [{ "name": "https", "port": 443, "protocol": "TCP", "targetPort": port }],
        },
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": { "kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io" },
        },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": ["127.0.0.1"], "conditions": { "ready": true } }],
        "ports": [{ "name": "https", "port": port, "protocol": "TCP" }],
    });
    (svc, slice)
}
