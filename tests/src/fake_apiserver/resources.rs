//! The resource types the fake serves: built-in ones plus CRDs registered at run time.
//!
//! Discovery, routing and storage all read this one registry, so a CRD is visible everywhere
//! (kubectl's RESTMapper, kube-rs's `Discovery`, the REST endpoints) the moment it is created.

use serde_json::Value;

/// One served group/version/resource.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: String,
    /// API version within the group (`v1`).
    pub version: String,
    /// Plural resource name used in URLs (`pods`).
    pub plural: String,
    /// Singular name (`pod`).
    pub singular: String,
    /// Kind (`Pod`).
    pub kind: String,
    /// List kind (`PodList`).
    pub list_kind: String,
    /// Namespaced (true) or cluster-scoped (false).
    pub namespaced: bool,
    /// kubectl short names (`po`).
    pub short_names: Vec<String>,
    /// kubectl categories (`all`).
    pub categories: Vec<String>,
    /// Built into kube-apiserver (false for custom resources). Custom resources differ in a few
    /// documented ways: no strategic merge patch (415), PUT requires a resourceVersion, DELETE
    /// returns the object.
    pub builtin: bool,
    /// Field selector labels supported besides `metadata.name` / `metadata.namespace`.
    pub field_labels: Vec<String>,
}

impl ResourceType {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Storage key shared by every version of the same group/resource (like etcd's
    /// `/registry/<group>/<resource>` prefix).
    pub(crate) fn storage_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    /// URL prefix of the group version: `/api/v1` or `/apis/apps/v1`.
    pub(crate) fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    fn builtin(
        group: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        short: &[&str],
        field_labels: &[&str],
    ) -> Self {
        let version = "v1";
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            list_kind: format!("{kind}List"),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            builtin: true,
            field_labels: field_labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn in_all(mut self) -> Self {
        self.categories = vec!["all".into()];
        self
    }
}

/// All served resource types, in discovery order.
#[derive(Clone, Debug)]
pub(crate) struct Registry {
    types: Vec<ResourceType>,
}

impl Registry {
    pub(crate) fn with_builtins() -> Self {
        let b = ResourceType::builtin;
        let types = vec![
            b(
                "",
                "namespaces",
                "Namespace",
                false,
                &["ns"],
                &["status.phase"],
            ),
            b(
                "",
                "pods",
                "Pod",
                true,
                &["po"],
                &[
                    "spec.nodeName",
                    "spec.restartPolicy",
                    "spec.schedulerName",
                    "spec.serviceAccountName",
                    "spec.hostNetwork",
                    "status.phase",
                    "status.podIP",
                    "status.nominatedNodeName",
                ],
            )
            .in_all(),
            b("", "services", "Service", true, &["svc"], &[]).in_all(),
            b("", "endpoints", "Endpoints", true, &["ep"], &[]),
            b("", "configmaps", "ConfigMap", true, &["cm"], &[]),
            b("", "secrets", "Secret", true, &[], &["type"]),
            b("", "serviceaccounts", "ServiceAccount", true, &["sa"], &[]),
            b("", "nodes", "Node", false, &["no"], &["spec.unschedulable"]),
            b(
                "",
                "events",
                "Event",
                true,
                &["ev"],
                &[
                    "involvedObject.kind",
                    "involvedObject.name",
                    "involvedObject.namespace",
                    "involvedObject.uid",
                    "reason",
                    "type",
                ],
            ),
            // events.k8s.io/v1 (what kube-runtime's event Recorder writes). kube-apiserver
            // serves these and core/v1 Events from one storage; here they are separate.
            b(
                "events.k8s.io",
                "events",
                "Event",
                true,
                &["ev"],
                &[
                    "reason",
                    "type",
                    "regarding.kind",
                    "regarding.name",
                    "regarding.namespace",
                ],
            ),
            b("apps", "deployments", "Deployment", true, &["deploy"], &[]).in_all(),
            b("apps", "replicasets", "ReplicaSet", true, &["rs"], &[]).in_all(),
            b("apps", "daemonsets", "DaemonSet", true, &["ds"], &[]).in_all(),
            b("apps", "statefulsets", "StatefulSet", true, &["sts"], &[]).in_all(),
            b(
                "discovery.k8s.io",
                "endpointslices",
                "EndpointSlice",
                true,
                &[],
                &[],
            ),
            b("coordination.k8s.io", "leases", "Lease", true, &[], &[]),
            b("rbac.authorization.k8s.io", "roles", "Role", true, &[], &[]),
            b(
                "rbac.authorization.k8s.io",
                "rolebindings",
                "RoleBinding",
                true,
                &[],
                &[],
            ),
            b(
                "rbac.authorization.k8s.io",
                "clusterroles",
                "ClusterRole",
                false,
                &[],
                &[],
            ),
            b(
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                "ClusterRoleBinding",
                false,
                &[],
                &[],
            ),
            b(
                "apiregistration.k8s.io",
                "apiservices",
                "APIService",
                false,
                &[],
                &[],
            ),
            b(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                &["crd", "crds"],
                &[],
            ),
        ];
        Self { types }
    }

    pub(crate) fn all(&self) -> &[ResourceType] {
        &self.types
    }

    /// The type served at `group/version/plural`.
    pub(crate) fn by_plural(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The type for an object's `apiVersion` + `kind`.
    pub(crate) fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// Groups in discovery order, each with its versions in order of registration (the first one is
    /// the preferred version).
    pub(crate) fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in &self.types {
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) => {
                    if !versions.contains(&t.version) {
                        versions.push(t.version.clone());
                    }
                }
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        out
    }

    /// Types served in one group version.
    pub(crate) fn in_group_version(&self, group: &str, version: &str) -> Vec<&ResourceType> {
        self.types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .collect()
    }

    /// Replace the types a CRD defines (every served version) with `types`; an empty `types`
    /// unregisters the CRD.
    pub(crate) fn set_crd(&mut self, group: &str, plural: &str, types: Vec<ResourceType>) {
        self.types
            .retain(|t| t.builtin || !(t.group == group && t.plural == plural));
        self.types.extend(types);
    }
}

/// The resource types a `CustomResourceDefinition` object defines, one per served version,
/// storage version first (so it is the preferred version in discovery).
pub(crate) fn types_from_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let group = str_at(spec, &["group"]).ok_or("spec.group: Required value")?;
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let plural = str_at(names, &["plural"]).ok_or("spec.names.plural: Required value")?;
    let kind = str_at(names, &["kind"]).ok_or("spec.names.kind: Required value")?;
    let singular = str_at(names, &["singular"])
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let list_kind = str_at(names, &["listKind"])
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let strings = |key: &str| -> Vec<String> {
        names
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = match str_at(spec, &["scope"]) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => return Err("spec.scope: Unsupported value: must be Namespaced or Cluster".into()),
    };
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or(
            "spec.versions: Invalid value: must have exactly one version marked as storage version",
        )?;
    let mut served: Vec<(bool, String)> = Vec::new();
    for v in versions {
        let name = str_at(v, &["name"]).ok_or("spec.versions[].name: Required value")?;
        if v.get("served").and_then(Value::as_bool).unwrap_or(false) {
            let storage = v.get("storage").and_then(Value::as_bool).unwrap_or(false);
            served.push((storage, name.to_string()));
        }
    }
    // Storage version first: it becomes the preferred version.
    served.sort_by_key(|(storage, _)| !*storage);
    Ok(served
        .into_iter()
        .map(|(_, version)| ResourceType {
            group: group.to_string(),
            version,
            plural: plural.to_string(),
            singular: singular.clone(),
            kind: kind.to_string(),
            list_kind: list_kind.clone(),
            namespaced,
            short_names: strings("shortNames"),
            categories: strings("categories"),
            builtin: false,
            field_labels: Vec::new(),
        })
        .collect())
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}
