//! send_test_request in cluster mode: the request is made by a short-lived Pod, so its connection
//! leaves from inside the cluster and is captured and routed like any pod's.
//!
//! The Pod runs the agent's own image (found on a running agent pod, or `--request-image`) with
//! `shunt mcp --internal-request`: the same client the no-cluster mode runs in the client pod's
//! namespace, reading its [`ChildRequest`] from the `SHUNT_REQUEST` variable and printing its
//! [`ChildResponse`] as the last line of its log. It has no service account token, no
//! capabilities, a read-only root and the RuntimeDefault seccomp profile (so namespaces that
//! enforce the `restricted` Pod Security level admit it), and it is deleted once its log has been
//! read (or on any error).
//!
//! The request itself (its headers may hold credentials) never goes into the pod's spec, which
//! anyone who may read pods can see: it travels in a Secret that the pod's variable refers to,
//! owned by the pod so the garbage collector deletes it with the pod.
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{
    cluster::Cluster,
    error::{ToolError, ToolErrorKind, ToolResult},
    request::{ChildRequest, ChildResponse, REQUEST_ENV},
};
use crate::kube::pods::{Waiting, waiting_verdict};

/// Labels of every request pod (for `kubectl get pods -l ...` and for clean-up).
pub const REQUEST_POD_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/name", "shunt"),
    ("app.kubernetes.io/component", "test-request"),
];
const CONTAINER: &str = "request";
/// The key of the request in its Secret.
const SECRET_KEY: &str = "request";
/// Largest encoded request a pod carries (in an env var of its spec; objects are limited to
/// about 1.5 MB by etcd).
const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Deletes the request pod: at once when the request is done, in the background when the tool
/// call is dropped half-way.
pub(super) struct DeleteOnDrop {
    pub(super) api: Api<Pod>,
    pub(super) name: String,
}

/// Deletes a request pod, bounded in time; failures are logged (the pod's deadline ends it).
async fn delete_pod(api: Api<Pod>, name: String) {
    let dp = DeleteParams::background();
    match tokio::time::timeout(Duration::from_secs(5), api.delete(&name, &dp)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(pod = %name, error = %e, "deleting the request pod failed"),
        Err(_) => tracing::warn!(pod = %name, "deleting the request pod timed out"),
    }
}

impl DeleteOnDrop {
    /// Deletes now, so a server that exits right after answering leaves nothing.
    pub(super) async fn delete_now(mut self) {
        delete_pod(self.api.clone(), std::mem::take(&mut self.name)).await;
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let name = std::mem::take(&mut self.name);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(pod = %name, "no runtime to delete the request pod; its deadline ends it");
            return;
        };
        rt.spawn(delete_pod(self.api.clone(), name));
    }
}

/// Where the request ran.
#[derive(Clone, Debug)]
pub struct RequestPod {
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub pod_ip: Option<String>,
}

impl Cluster {
    /// The image the request pod runs: `--request-image`, else a running agent pod's.
    pub(super) async fn request_image(&self) -> ToolResult<(String, Option<Vec<String>>)> {
        if let Some(image) = &self.request_image {
            return Ok((image.clone(), None));
        }
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.agent_namespace)
            .list(&ListParams::default().labels(&self.agent_selector))
            .await
            .map_err(ToolError::api)?;
        pods.items
            .iter()
            .filter_map(|p| p.spec.as_ref()?.containers.first())
            .find_map(|c| Some((c.image.clone()?, c.command.clone())))
            .ok_or_else(|| {
                ToolError::new(
                    ToolErrorKind::Unsupported,
                    format!(
                        "no agent pod in namespace {} (labels {}) to take the request image from",
                        self.agent_namespace, self.agent_selector
                    ),
                    "install the agent (deploy/), or give `shunt mcp --request-image IMAGE` (an \
                     image with the shunt binary as its entrypoint)",
                )
            })
    }

    /// Runs `req` from a new Pod in `namespace` and returns what the client saw.
    pub async fn request_from_pod(
        &self,
        namespace: &str,
        req: &ChildRequest,
    ) -> ToolResult<(ChildResponse, RequestPod)> {
        let (image, command) = self.request_image().await?;
        let api = Api::<Pod>::namespaced(self.client.clone(), namespace);
        let request_json = serde_json::to_string(req)
            .map_err(|e| ToolError::invalid(format!("encoding the request: {e}"), ""))?;
        if request_json.len() > MAX_REQUEST_BYTES {
            return Err(ToolError::invalid(
                format!(
                    "the request is {} bytes; a request pod carries at most {MAX_REQUEST_BYTES} \
                     (it travels in the pod's spec)",
                    request_json.len()
                ),
                "send a smaller body",
            ));
        }
        let deadline_s = req.timeout_ms.div_ceil(1000) + self.request_pod_timeout.as_secs();
        let labels: serde_json::Map<_, _> = REQUEST_POD_LABELS
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let secrets = Api::<Secret>::namespaced(self.client.clone(), namespace);
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "generateName": "shunt-request-", "namespace": namespace, "labels": labels },
            "type": "Opaque",
            "stringData": { SECRET_KEY: request_json },
        }))
        .map_err(|e| ToolError::invalid(format!("building the request's Secret: {e}"), ""))?;
        let secret = secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| create_error(e, namespace, "secrets"))?;
        let secret_name = secret.name_any();
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "shunt-request-",
                "namespace": namespace,
                "labels": labels,
            },
            "spec": {
                "restartPolicy": "Never",
                "activeDeadlineSeconds": deadline_s,
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "terminationGracePeriodSeconds": 0,
                "securityContext": {
                    "runAsNonRoot": true,
                    "seccompProfile": { "type": "RuntimeDefault" },
                },
                "containers": [{
                    "name": CONTAINER,
                    "image": image,
                    "command": command,
                    "args": ["mcp", "--internal-request"],
                    "env": [{ "name": REQUEST_ENV, "valueFrom": {
                        "secretKeyRef": { "name": secret_name, "key": SECRET_KEY },
                    } }],
                    "resources": {
                        "requests": { "cpu": "10m", "memory": "16Mi" },
                        "limits": { "memory": "64Mi" },
                    },
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "capabilities": { "drop": ["ALL"] },
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                }],
            },
        }))
        .map_err(|e| ToolError::invalid(format!("building the request pod: {e}"), ""))?;
        let created = match api.create(&PostParams::default(), &pod).await {
            Ok(p) => p,
            Err(e) => {
                // Nothing owns the Secret yet: delete it here.
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    secrets.delete(&secret_name, &DeleteParams::background()),
                )
                .await;
                return Err(create_error(e, namespace, "pods"));
            }
        };
        // From now on the Secret goes with the pod (garbage collection), whatever happens here.
        let owner = json!({ "metadata": { "ownerReferences": [{
            "apiVersion": "v1", "kind": "Pod", "name": created.name_any(),
            "uid": created.uid().unwrap_or_default(),
        }] } });
        secrets
            .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&owner))
            .await
            .map_err(|e| create_error(e, namespace, "secrets"))?;
        let name = created.name_any();
        // Whatever happens (an answer, an error, the tool call cancelled), the pod goes.
        let cleanup = DeleteOnDrop {
            api: api.clone(),
            name: name.clone(),
        };
        let result = self.finish(&api, &name, namespace, &image, req).await;
        cleanup.delete_now().await;
        result
    }

    async fn finish(
        &self,
        api: &Api<Pod>,
        name: &str,
        namespace: &str,
        image: &str,
        req: &ChildRequest,
    ) -> ToolResult<(ChildResponse, RequestPod)> {
        let deadline =
            Instant::now() + self.request_pod_timeout + Duration::from_millis(req.timeout_ms);
        let mut last_state = "not created yet".to_string();
        let pod = loop {
            let pod = api.get(name).await.map_err(ToolError::api)?;
            let status = pod.status.clone().unwrap_or_default();
            let phase = status.phase.clone().unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                break pod;
            }
            match waiting_verdict(&status) {
                Some(Waiting::ImageUnpullable(detail)) => {
                    return Err(ToolError::new(
                        ToolErrorKind::RequestFailed,
                        format!("the request pod's image {image} cannot be pulled ({detail})"),
                        "give `shunt mcp --request-image IMAGE` an image the cluster can pull \
                     whose entrypoint is the shunt binary (the agent's image is)",
                    ));
                }
                Some(Waiting::WontStart(detail)) => {
                    return Err(ToolError::new(
                        ToolErrorKind::RequestFailed,
                        format!("the request pod {namespace}/{name} does not start ({detail})"),
                        "check --request-image (its entrypoint must be the shunt binary) and \
                     that pods may run as non-root in this namespace",
                    ));
                }
                Some(Waiting::Starting(detail)) => last_state = detail,
                None => {}
            }
            if let Some(c) = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            {
                last_state = format!(
                    "not scheduled: {}",
                    c.message
                        .clone()
                        .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
                );
            } else if !phase.is_empty() {
                last_state = phase;
            }
            if Instant::now() > deadline {
                return Err(ToolError::new(
                    ToolErrorKind::RequestFailed,
                    format!(
                        "the request pod {namespace}/{name} did not finish in time (last state: \
                         {last_state})"
                    ),
                    "check that pods can be scheduled in this namespace and that the image \
                     starts quickly; raise `shunt mcp --request-pod-timeout`",
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let info = RequestPod {
            name: name.to_string(),
            namespace: namespace.to_string(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            pod_ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
        };
        let log = api
            .logs(
                name,
                &LogParams {
                    container: Some(CONTAINER.into()),
                    ..LogParams::default()
                },
            )
            .await
            .map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 403 => ToolError::new(
                    ToolErrorKind::Forbidden,
                    format!("reading the request pod's log: {}", s.message),
                    format!("your user needs `get` on pods/log in {namespace}"),
                ),
                _ => ToolError::api(e),
            })?;
        let line = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let resp: ChildResponse = serde_json::from_str(line).map_err(|e| {
            ToolError::new(
                ToolErrorKind::RequestFailed,
                format!(
                    "the request pod {namespace}/{name} printed no response ({e}); its log: {}",
                    log.chars().take(500).collect::<String>()
                ),
                "check --request-image: its entrypoint must be a shunt binary of this version",
            )
        })?;
        Ok((resp, info))
    }
}

/// A refused create, as the user can act on it: admission (Pod Security, a webhook) is not a
/// missing permission.
fn create_error(e: kube::Error, namespace: &str, resource: &str) -> ToolError {
    match &e {
        kube::Error::Api(s) if s.code == 403 && s.message.contains("violates PodSecurity") => {
            ToolError::new(
                ToolErrorKind::Admission,
                format!(
                    "the namespace {namespace} refused the request {resource}: {}",
                    s.message
                ),
                format!(
                    "namespace {namespace}'s Pod Security level refuses it; the request pod meets \
                     `restricted`, so another admission policy is stricter: ask its admins, or \
                     send the request from a namespace that admits it"
                ),
            )
        }
        kube::Error::Api(s) if s.code == 403 && !s.message.contains(" cannot ") => ToolError::new(
            ToolErrorKind::Admission,
            format!(
                "admission refused the request {resource} in {namespace}: {}",
                s.message
            ),
            "an admission policy of the namespace refuses it (not a missing permission); ask its \
             admins which",
        ),
        kube::Error::Api(s) if s.code == 403 => ToolError::new(
            ToolErrorKind::Forbidden,
            format!(
                "creating the request {resource} in {namespace}: {}",
                s.message
            ),
            format!(
                "your user needs `create`, `get` and `delete` on pods, `create` and `patch` on \
                 secrets and `get` on pods/log in {namespace} for send_test_request"
            ),
        ),
        _ => ToolError::api(e),
    }
}
