//! Pod Security admission, the `restricted` level, for namespaces labelled
//! `pod-security.kubernetes.io/enforce: restricted`: the checks a request pod can fail, with the
//! real admission plugin's wording (k8s.io/pod-security-admission, policy "restricted:latest").
use serde_json::Value;

pub(crate) const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Containers of a pod spec (init and ephemeral included), with their names.
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect()
}

fn quoted(names: &[&str]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!(
        "{} {}",
        if names.len() == 1 {
            "container"
        } else {
            "containers"
        },
        q.join(", ")
    )
}

/// The `restricted` violations of a Pod object, in the plugin's order; empty when it passes.
pub(crate) fn restricted_violations(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let psc = &spec["securityContext"];
    let cs = containers(spec);
    let name = |c: &Value| c["name"].as_str().unwrap_or("").to_string();
    let mut out = Vec::new();
    let host: Vec<&str> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| spec[*k] == true)
        .collect();
    if !host.is_empty() {
        let list: Vec<String> = host.iter().map(|k| format!("{k}=true")).collect();
        out.push(format!("host namespaces ({})", list.join(", ")));
    }
    let privileged: Vec<String> = cs
        .iter()
        .filter(|c| c["securityContext"]["privileged"] == true)
        .map(|c| name(c))
        .collect();
    if !privileged.is_empty() {
        let n: Vec<&str> = privileged.iter().map(String::as_str).collect();
        out.push(format!(
            "privileged ({} must not set securityContext.privileged=true)",
            quoted(&n)
        ));
    }
    let host_path: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| format!("{:?}", v["name"].as_str().unwrap_or("")))
        .collect();
    if !host_path.is_empty() {
        out.push(format!(
            "restricted volume types (volume {} uses restricted volume type \"hostPath\")",
            host_path.join(", ")
        ));
    }
    let escalation: Vec<String> = cs
        .iter()
        .filter(|c| c["securityContext"]["allowPrivilegeEscalation"] != false)
        .map(|c| name(c))
        .collect();
    if !escalation.is_empty() {
        let n: Vec<&str> = escalation.iter().map(String::as_str).collect();
        out.push(format!(
            "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
            quoted(&n)
        ));
    }
    let caps: Vec<String> = cs
        .iter()
        .filter(|c| {
            let caps = &c["securityContext"]["capabilities"];
            let drops_all = caps["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "ALL"));
            let adds_only_bind = caps["add"]
                .as_array()
                .is_none_or(|a| a.iter().all(|x| x == "NET_BIND_SERVICE"));
            !(drops_all && adds_only_bind)
        })
        .map(|c| name(c))
        .collect();
    if !caps.is_empty() {
        let n: Vec<&str> = caps.iter().map(String::as_str).collect();
        out.push(format!(
            "unrestricted capabilities ({} must set securityContext.capabilities.drop=[\"ALL\"])",
            quoted(&n)
        ));
    }
    let non_root: Vec<String> = cs
        .iter()
        .filter(|c| {
            let v = &c["securityContext"]["runAsNonRoot"];
            !(v == true || (v.is_null() && psc["runAsNonRoot"] == true))
        })
        .map(|c| name(c))
        .collect();
    if !non_root.is_empty() {
        let n: Vec<&str> = non_root.iter().map(String::as_str).collect();
        out.push(format!(
            "runAsNonRoot != true (pod or {} must set securityContext.runAsNonRoot=true)",
            quoted(&n)
        ));
    }
    let root_user: Vec<String> = cs
        .iter()
        .filter(|c| c["securityContext"]["runAsUser"] == 0)
        .map(|c| name(c))
        .collect();
    if !root_user.is_empty() || psc["runAsUser"] == 0 {
        let n: Vec<&str> = root_user.iter().map(String::as_str).collect();
        out.push(format!(
            "runAsUser=0 ({} must not set runAsUser=0)",
            quoted(&n)
        ));
    }
    let allowed = |p: &Value| matches!(p["type"].as_str(), Some("RuntimeDefault" | "Localhost"));
    let seccomp: Vec<String> = cs
        .iter()
        .filter(|c| {
            let p = &c["securityContext"]["seccompProfile"];
            if p.is_null() {
                !allowed(&psc["seccompProfile"])
            } else {
                !allowed(p)
            }
        })
        .map(|c| name(c))
        .collect();
    if !seccomp.is_empty() {
        let n: Vec<&str> = seccomp.iter().map(String::as_str).collect();
        out.push(format!(
            "seccompProfile (pod or {} must set securityContext.seccompProfile.type to \
             \"RuntimeDefault\" or \"Localhost\")",
            quoted(&n)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_pod_without_a_seccomp_profile_is_named_as_the_real_plugin_names_it() {
        let pod = json!({ "spec": { "containers": [{ "name": "request", "securityContext": {
            "runAsNonRoot": true, "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] } } }] } });
        assert_eq!(
            restricted_violations(&pod),
            [
                "seccompProfile (pod or container \"request\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
            ]
        );
        let mut ok = pod.clone();
        ok["spec"]["securityContext"] = json!({ "seccompProfile": { "type": "RuntimeDefault" } });
        assert!(restricted_violations(&ok).is_empty());
        let bare = json!({ "spec": { "containers": [{ "name": "c" }], "hostNetwork": true } });
        assert_eq!(
            restricted_violations(&bare).len(),
            5,
            "{:?}",
            restricted_violations(&bare)
        );
    }
}
