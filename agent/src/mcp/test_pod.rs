//! run_tests in cluster mode: a test command runs as a Pod labelled `shunt.dev/inject-key: KEY`,
//! so the agent of its node marks it and adds the key to every HTTP request it sends without
//! one; the command needs no key header.
//!
//! The command starts only once the pod is marked: an init container (the agent's image,
//! `shunt mcp --internal-wait-marked`, see [`super::mark_probe`]) probes from inside the pod
//! until its own connections go through Shunt. The pod meets Pod Security `restricted` (non-root
//! uid 65532, no capabilities, no service account token, RuntimeDefault seccomp), has a deadline
//! (`activeDeadlineSeconds`), carries this session's label, and is deleted once its log has been
//! read, on any error, and when the tool call is dropped half-way.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::{
    Api, ResourceExt as _,
    api::{ListParams, LogParams, PostParams},
};
use serde_json::{Value, json};

use super::{
    cluster::Cluster,
    error::{ToolError, ToolErrorKind, ToolResult},
    mark_probe,
    request_pod::DeleteOnDrop,
    sandbox_types::{RunTestsParams, RunTestsResult},
    session::{SESSION_LABEL, Session},
};
use crate::{
    kube::{
        crd::SandboxRoute,
        marks::INJECT_KEY_LABEL,
        pods::{Waiting, waiting_verdict},
    },
    routes::RoutingKey,
};

/// The test command's container.
pub const TEST_CONTAINER: &str = "test";
/// The init container that waits for the mark.
pub const WAIT_CONTAINER: &str = "wait-marked";
/// `app.kubernetes.io/component` of test pods.
pub const COMPONENT: &str = "test-runner";
const DEFAULT_TIMEOUT_S: u64 = 600;
const MAX_TIMEOUT_S: u64 = 3600;
/// How long the init step waits for the mark.
const MARK_TIMEOUT_S: u64 = 60;
/// The log bytes returned (the end of it).
const LOG_BYTES: i64 = 256 * 1024;

/// What the pod is made of, apart from the cluster's defaults.
pub struct TestPodSpec<'a> {
    pub namespace: &'a str,
    pub key: &'a str,
    pub image: &'a str,
    pub command: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    /// The agent's image (and its command, when its entrypoint is not the shunt binary).
    pub agent_image: &'a str,
    pub agent_command: Option<&'a [String]>,
    pub session: &'a str,
    pub deadline_s: u64,
}

fn restricted() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "allowPrivilegeEscalation": false,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// The test pod.
pub fn test_pod(s: &TestPodSpec<'_>) -> Value {
    let env: Vec<Value> = s
        .env
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .collect();
    let mut init_security = restricted();
    init_security["readOnlyRootFilesystem"] = json!(true);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("shunt-test-{}-", s.key.to_ascii_lowercase().replace(['.', '_'], "-")),
            "namespace": s.namespace,
            "labels": {
                "app.kubernetes.io/name": "shunt",
                "app.kubernetes.io/component": COMPONENT,
                INJECT_KEY_LABEL: s.key,
                SESSION_LABEL: s.session,
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": s.deadline_s,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 0,
            "securityContext": {
                "runAsNonRoot": true,
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "initContainers": [{
                "name": WAIT_CONTAINER,
                "image": s.agent_image,
                "command": s.agent_command,
                "args": ["mcp", "--internal-wait-marked"],
                "env": [
                    { "name": mark_probe::KEY_ENV, "value": s.key },
                    { "name": mark_probe::TIMEOUT_ENV, "value": MARK_TIMEOUT_S.to_string() },
                    { "name": mark_probe::POD_IP_ENV,
                      "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                ],
                "resources": {
                    "requests": { "cpu": "10m", "memory": "16Mi" },
                    "limits": { "memory": "64Mi" },
                },
                "securityContext": init_security,
            }],
            "containers": [{
                "name": TEST_CONTAINER,
                "image": s.image,
                "command": s.command,
                "env": env,
                "securityContext": restricted(),
            }],
        },
    })
}

fn terminated(
    statuses: Option<&Vec<ContainerStatus>>,
    name: &str,
) -> Option<(i32, Option<String>)> {
    let t = statuses?
        .iter()
        .find(|c| c.name == name)?
        .state
        .as_ref()?
        .terminated
        .as_ref()?;
    Some((t.exit_code, t.reason.clone()))
}

impl Cluster {
    /// Runs the test pod to its end and returns its exit code and log.
    pub async fn run_tests(
        &self,
        p: RunTestsParams,
        session: &Session,
    ) -> ToolResult<RunTestsResult> {
        let started = Instant::now();
        let key = RoutingKey::parse(&p.key)
            .map_err(|e| ToolError::invalid(format!("key {:?}: {e}", p.key), RoutingKey::SYNTAX))?;
        if key.as_str().len() > 63 {
            return Err(ToolError::invalid(
                format!("key {key:?} is longer than 63 characters, the most a pod label holds"),
                "use a shorter key for run_tests",
            ));
        }
        if p.command.is_empty() || p.image.trim().is_empty() {
            return Err(ToolError::invalid(
                "run_tests needs an image and a command",
                "e.g. image \"curlimages/curl\", command [\"curl\", \"-sf\", \"http://frontend:9080/\"]",
            ));
        }
        let ns = p
            .namespace
            .clone()
            .unwrap_or_else(|| self.namespace.clone());
        let timeout_s = p
            .timeout_seconds
            .unwrap_or(DEFAULT_TIMEOUT_S)
            .clamp(1, MAX_TIMEOUT_S);
        // The agents mark the pod only if its namespace has a route with the key: say so now,
        // rather than after the init step's minute of waiting.
        let routes = Api::<SandboxRoute>::namespaced(self.client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(ToolError::api)?;
        let now = jiff::Timestamp::now();
        let applies = |r: &SandboxRoute| {
            r.spec.routing_key == key.as_str()
                && r.metadata.deletion_timestamp.is_none()
                && r.spec.expires_at.is_none_or(|at| at > now)
        };
        if !routes.items.iter().any(applies) {
            return Err(ToolError::new(
                ToolErrorKind::RouteNotFound,
                format!(
                    "no SandboxRoute with key {key:?} applies in namespace {ns} (none, or \
                     expired): the agents mark a test pod only with a key of its own namespace"
                ),
                "create the sandbox (create_sandbox) or its route (create_sandbox_route) first, or \
                 pass the namespace that has it",
            ));
        }
        let (agent_image, agent_command) = self.request_image().await?;
        let pod = test_pod(&TestPodSpec {
            namespace: &ns,
            key: key.as_str(),
            image: &p.image,
            command: &p.command,
            env: &p.env,
            agent_image: &agent_image,
            agent_command: agent_command.as_deref(),
            session: &session.id,
            deadline_s: timeout_s + MARK_TIMEOUT_S,
        });
        let pod: Pod = serde_json::from_value(pod)
            .map_err(|e| ToolError::invalid(format!("building the test pod: {e}"), ""))?;
        let api = Api::<Pod>::namespaced(self.client.clone(), &ns);
        let created = api
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|e| create_error(e, &ns))?;
        let name = created.name_any();
        let cleanup = DeleteOnDrop {
            api: api.clone(),
            name: name.clone(),
        };
        let deadline = Instant::now()
            + self.request_pod_timeout
            + Duration::from_secs(timeout_s + MARK_TIMEOUT_S);
        let result = self
            .finish_test(&api, &ns, &name, &p.image, key.as_str(), deadline)
            .await;
        cleanup.delete_now().await;
        let mut r = result?;
        r.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(r)
    }

    async fn finish_test(
        &self,
        api: &Api<Pod>,
        ns: &str,
        name: &str,
        image: &str,
        key: &str,
        deadline: Instant,
    ) -> ToolResult<RunTestsResult> {
        let log_of = |container: &'static str| {
            let api = api.clone();
            async move {
                api.logs(
                    name,
                    &LogParams {
                        container: Some(container.into()),
                        limit_bytes: Some(LOG_BYTES),
                        ..LogParams::default()
                    },
                )
                .await
                .unwrap_or_default()
            }
        };
        let mut last_state = String::from("not created yet");
        let pod = loop {
            let pod = api.get(name).await.map_err(ToolError::api)?;
            let status = pod.status.clone().unwrap_or_default();
            let phase = status.phase.clone().unwrap_or_default();
            if let Some((code, _)) =
                terminated(status.init_container_statuses.as_ref(), WAIT_CONTAINER)
                && code != 0
            {
                let log = log_of(WAIT_CONTAINER).await;
                return Err(ToolError::new(
                    ToolErrorKind::RequestFailed,
                    format!(
                        "the test pod {ns}/{name} was never marked with key {key:?}, so the command \
                         did not run: {}",
                        log.lines().last().unwrap_or("its init step failed")
                    ),
                    "check that a Shunt agent runs on every node (get_decisions shows the \
                     agents) and that the route of this key is Ready (list_sandbox_routes)",
                ));
            }
            if phase == "Succeeded" || phase == "Failed" {
                break pod;
            }
            match waiting_verdict(&status) {
                Some(Waiting::ImageUnpullable(detail)) => {
                    return Err(ToolError::new(
                        ToolErrorKind::RequestFailed,
                        format!("the test pod {ns}/{name} cannot pull its image ({detail})"),
                        format!(
                            "check the image {image:?} (and the agent image the init step uses, \
                         or `shunt mcp --request-image`)"
                        ),
                    ));
                }
                Some(Waiting::WontStart(detail)) => {
                    return Err(ToolError::new(
                        ToolErrorKind::RequestFailed,
                        format!("the test pod {ns}/{name} does not start ({detail})"),
                        "the test container runs as uid 65532 without capabilities (Pod \
                     Security restricted): check that the image and command work so",
                    ));
                }
                Some(Waiting::Starting(detail)) => last_state = detail,
                None => {}
            }
            if !phase.is_empty() && last_state == "not created yet" {
                last_state = phase;
            }
            if Instant::now() > deadline {
                let log = log_of(TEST_CONTAINER).await;
                return Err(ToolError::new(
                    ToolErrorKind::RequestFailed,
                    format!(
                        "the test pod {ns}/{name} did not finish in time (last state: {last_state}); \
                         its log so far: {}",
                        tail(&log, 2000)
                    ),
                    "raise timeout_seconds, or check that pods can be scheduled in this namespace",
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let status = pod.status.clone().unwrap_or_default();
        let (exit_code, reason) = terminated(status.container_statuses.as_ref(), TEST_CONTAINER)
            .map_or((None, None), |(c, r)| (Some(c), r));
        let mut warnings = Vec::new();
        if exit_code.is_none() {
            warnings.push(format!(
                "the pod ended ({}) before the test container reported an exit code",
                status.reason.as_deref().unwrap_or("no reason given")
            ));
        }
        let marked = log_of(WAIT_CONTAINER)
            .await
            .lines()
            .last()
            .map(str::to_string);
        Ok(RunTestsResult {
            pod: format!("{ns}/{name}"),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            key: key.to_string(),
            exit_code,
            reason,
            log: log_of(TEST_CONTAINER).await,
            marked,
            elapsed_ms: 0,
            warnings,
        })
    }
}

/// The last `max` characters of `s`.
fn tail(s: &str, max: usize) -> &str {
    let n = s.chars().count();
    match s.char_indices().nth(n.saturating_sub(max)) {
        Some((i, _)) => &s[i..],
        None => s,
    }
}

/// A refused create, as the user can act on it.
fn create_error(e: kube::Error, ns: &str) -> ToolError {
    match &e {
        kube::Error::Api(s) if s.code == 403 && !s.message.contains(" cannot ") => ToolError::new(
            ToolErrorKind::Admission,
            format!("admission refused the test pod in {ns}: {}", s.message),
            "the test pod meets Pod Security `restricted`; another admission policy of the \
             namespace refuses it: ask its admins which",
        ),
        kube::Error::Api(s) if s.code == 403 => ToolError::new(
            ToolErrorKind::Forbidden,
            format!("creating the test pod in {ns}: {}", s.message),
            format!(
                "your user needs `create`, `get` and `delete` on pods and `get` on pods/log in {ns} \
                 for run_tests"
            ),
        ),
        _ => ToolError::api(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pod_is_labelled_restricted_and_waits_for_its_mark() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        let cmd = vec!["pytest".to_string(), "-q".to_string()];
        let p = test_pod(&TestPodSpec {
            namespace: "shop",
            key: "pr-42",
            image: "tests:1",
            command: &cmd,
            env: &env,
            agent_image: "shunt:1",
            agent_command: None,
            session: "mcp-1",
            deadline_s: 660,
        });
        assert_eq!(p["metadata"]["labels"][INJECT_KEY_LABEL], "pr-42");
        assert_eq!(p["metadata"]["labels"][SESSION_LABEL], "mcp-1");
        assert_eq!(p["spec"]["activeDeadlineSeconds"], 660);
        let init = &p["spec"]["initContainers"][0];
        assert_eq!(init["args"], json!(["mcp", "--internal-wait-marked"]));
        assert_eq!(init["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(init["securityContext"]["runAsNonRoot"], true);
        let test = &p["spec"]["containers"][0];
        assert_eq!(test["command"], json!(["pytest", "-q"]));
        assert_eq!(test["env"], json!([{ "name": "A", "value": "1" }]));
        assert_eq!(
            test["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        // A real Pod.
        let _: Pod = serde_json::from_value(p).expect("a Pod");
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("abcdef", 2), "ef");
        assert_eq!(tail("ab", 5), "ab");
    }
}
