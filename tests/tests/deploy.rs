//! Deploying Shunt to a cluster (`deploy/`, `Dockerfile`, `deploy/kind/e2e.sh`): every part that
//! can be checked without a cluster.
//!
//! - The kustomize overlays render (`kubectl kustomize`), and every object deserializes into its
//!   k8s-openapi type.
//! - The DaemonSet's args parse with the agent's own CLI; its ports, probes and scrape
//!   annotations match the agent's; it is unprivileged with exactly the minimal capabilities.
//! - RBAC grants exactly `agent::kube::rbac::AGENT_ACCESS`.
//! - The CRD describes the SandboxRoute API, and the project's sample routes validate against
//!   its schema (its drift from `shunt crd` is checked where `shunt crd` is).
//! - The kind e2e's pieces agree with each other (images, overlay, demo app, route).
//! - Kernel: the agent runs as the DaemonSet runs it (only its capabilities, its own cgroup
//!   namespace, the node's cgroup tree and bpffs mounted in) and still steers; and the time new
//!   connections go direct across an agent restart is measured and bounded.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use agent::{
    capture::CgroupSelector,
    cli::{Cli, Command as AgentCommand},
    config::RunConfig,
    kube::rbac::AGENT_ACCESS,
};
use clap::Parser as _;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{Container, Namespace, PodSpec, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tests::{
    backends::Backend,
    bins,
    harness::{ADMIN_PORT, AgentProc, Env},
    http_backend::HttpBackend,
    kernel,
    netns::PROXY4,
    process::spawn_in,
};

/// The capabilities the agent needs, found by experiment (deploy/README.md): CAP_BPF and
/// CAP_NET_ADMIN to load and attach the cgroup programs (each alone fails with EPERM); CAP_SYS_ADMIN
/// to enter a client pod's network namespace (setns) and CAP_SYS_PTRACE to open it through a pod
/// process of another user (source identity; without them upstream connections fall back to the
/// node's address). CAP_PERFMON is not among them: the agent loads and steers without it.
const MINIMAL_CAPS: [&str; 4] = ["BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"];
const OVERLAYS: [&str; 2] = ["default", "kind"];
const NAMESPACE: &str = "shunt-system";
/// What `$(NODE_IP)` stands for when the DaemonSet's args are parsed here.
const SAMPLE_NODE_IP: &str = "10.1.2.3";
/// The Secret holding the debug API's token (agents and the traffic API mount it).
const DEBUG_TOKEN_SECRET: &str = "shunt-debug-token";
/// The token the kernel tests give the agent in place of the Secret's.
const DEBUG_TOKEN: &str = "test-debug-token-7f3a";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{what}: not YAML: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn kind_of(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or("")
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

fn kubectl_required() -> bool {
    std::env::var("SHUNT_REQUIRE_KERNEL_TESTS").as_deref() == Ok("1")
}

/// `kubectl kustomize deploy/overlays/OVERLAY`, or None (after saying why) when kubectl is not
/// installed and not required.
fn render(overlay: &str) -> Option<Vec<Value>> {
    let Some(kubectl) = kernel::which("kubectl") else {
        assert!(
            !kubectl_required(),
            "kubectl is required to render deploy/overlays/{overlay} (SHUNT_REQUIRE_KERNEL_TESTS=1) \
             but is not installed"
        );
        eprintln!(
            "SKIPPED rendering deploy/overlays/{overlay}: kubectl is not installed (set \
             SHUNT_REQUIRE_KERNEL_TESTS=1 to make this a failure)"
        );
        return None;
    };
    let dir = repo().join("deploy/overlays").join(overlay);
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("running kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(yaml_docs(
        &String::from_utf8_lossy(&out.stdout),
        &format!("rendered overlay {overlay}"),
    ))
}

/// The base's objects read straight from the files its kustomization lists: what the checks use
/// when kubectl is not installed, and what the kernel tests use (they need no kubectl).
fn base_objects() -> Vec<Value> {
    let kustomization = yaml_docs(&read("deploy/base/kustomization.yaml"), "kustomization");
    let resources = kustomization[0]["resources"]
        .as_array()
        .expect("the base lists its resources");
    resources
        .iter()
        .flat_map(|r| {
            let rel = format!("deploy/base/{}", r.as_str().expect("a file name"));
            yaml_docs(&read(&rel), &rel)
        })
        .collect()
}

/// Every overlay's objects (rendered), or the base's when kubectl is not there.
fn manifests() -> Vec<(String, Vec<Value>)> {
    let rendered: Vec<_> = OVERLAYS
        .iter()
        .filter_map(|o| render(o).map(|objs| (format!("overlay {o}"), objs)))
        .collect();
    if rendered.is_empty() {
        vec![("base (kubectl not installed)".to_string(), base_objects())]
    } else {
        rendered
    }
}

fn typed<T: DeserializeOwned>(obj: &Value) -> T {
    serde_json::from_value(obj.clone()).unwrap_or_else(|e| {
        panic!(
            "{} {}: does not deserialize into {}: {e}",
            kind_of(obj),
            name_of(obj),
            std::any::type_name::<T>()
        )
    })
}

fn all_of<T: DeserializeOwned>(objs: &[Value], kind: &str) -> Vec<T> {
    objs.iter()
        .filter(|o| kind_of(o) == kind)
        .map(typed)
        .collect()
}

fn the<T: DeserializeOwned>(objs: &[Value], kind: &str, what: &str) -> T {
    let mut all = all_of::<T>(objs, kind);
    assert_eq!(all.len(), 1, "{what}: expected exactly one {kind}");
    all.remove(0)
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the DaemonSet has a pod template")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "one container: the agent");
    &spec.containers[0]
}

/// The container's args with every `$(VAR)` of its environment replaced by `values[VAR]`.
fn expanded_args(c: &Container, values: &BTreeMap<&str, String>) -> Vec<String> {
    let declared: BTreeSet<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    c.args
        .iter()
        .flatten()
        .map(|a| {
            let mut a = a.clone();
            for (var, value) in values {
                assert!(
                    !a.contains(&format!("$({var})")) || declared.contains(var),
                    "arg {a:?} uses $({var}), which the container does not declare"
                );
                a = a.replace(&format!("$({var})"), value);
            }
            assert!(!a.contains("$("), "unexpanded variable in arg {a:?}");
            a
        })
        .collect()
}

fn sample_values() -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("NODE_IP", SAMPLE_NODE_IP.to_string()),
        ("POD_NAMESPACE", NAMESPACE.to_string()),
    ])
}

/// Parses `shunt <args>` with the agent's own clap parser.
fn parse_run(args: &[String]) -> RunConfig {
    let argv = std::iter::once("shunt".to_string()).chain(args.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: AgentCommand::Run(run),
        }) => RunConfig::clone(&run),
        Ok(other) => panic!("{args:?} is not `shunt run`: {other:?}"),
        Err(e) => panic!("the agent's CLI rejects {args:?}:\n{e}"),
    }
}

/// The agent's default admin address (`--admin-addr` unset).
fn default_admin_addr() -> SocketAddr {
    parse_run(&["run", "--cgroup", "/c", "--proxy-addr", "10.0.0.1:1"].map(String::from)).admin_addr
}

fn container_port(c: &Container, name: &str) -> u16 {
    let p = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name}"));
    u16::try_from(p.container_port).expect("a port number")
}

fn probe_target(c: &Container, probe: &str) -> (String, u16) {
    let p = match probe {
        "readiness" => c.readiness_probe.as_ref(),
        "liveness" => c.liveness_probe.as_ref(),
        _ => unreachable!(),
    }
    .unwrap_or_else(|| panic!("no {probe} probe"));
    let get = p
        .http_get
        .as_ref()
        .unwrap_or_else(|| panic!("{probe} probe: not httpGet"));
    // By number: the container declares no ports (they would be hostPorts, see below).
    let port = match &get.port {
        IntOrString::Int(n) => u16::try_from(*n).expect("a port number"),
        IntOrString::String(name) => panic!("{probe} probe: port {name:?} is a name, not a number"),
    };
    (get.path.clone().unwrap_or_default(), port)
}

/// The hostPath volume with `host_path` and where the agent container mounts it.
fn host_mount(ds: &DaemonSet, host_path: &str) -> (String, bool) {
    let spec = pod_spec(ds);
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host_path))
        .unwrap_or_else(|| panic!("no hostPath volume for {host_path}"));
    let mount = agent_container(ds)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .unwrap_or_else(|| panic!("volume {} is not mounted", volume.name));
    (mount.mount_path.clone(), mount.read_only.unwrap_or(false))
}

fn added_caps(ds: &DaemonSet) -> Vec<String> {
    agent_container(ds)
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
}

/// The base DaemonSet, without kubectl (for the kernel tests).
fn base_daemonset() -> DaemonSet {
    the(&base_objects(), "DaemonSet", "deploy/base")
}

#[test]
fn overlays_render_into_valid_kubernetes_objects() {
    let expected_kinds = BTreeSet::from([
        "APIService",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "DaemonSet",
        "Deployment",
        "Namespace",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]);
    for (what, objs) in manifests() {
        let kinds: BTreeSet<&str> = objs.iter().map(kind_of).collect();
        assert_eq!(kinds, expected_kinds, "{what}: the kinds of objects");
        for obj in &objs {
            // Each object is a valid instance of its API type.
            match kind_of(obj) {
                "Namespace" => _ = typed::<Namespace>(obj),
                "CustomResourceDefinition" => _ = typed::<CustomResourceDefinition>(obj),
                "ServiceAccount" => _ = typed::<ServiceAccount>(obj),
                "ClusterRole" => _ = typed::<ClusterRole>(obj),
                "ClusterRoleBinding" => _ = typed::<ClusterRoleBinding>(obj),
                "Role" => _ = typed::<Role>(obj),
                "RoleBinding" => _ = typed::<RoleBinding>(obj),
                "DaemonSet" => _ = typed::<DaemonSet>(obj),
                "Deployment" => _ = typed::<Deployment>(obj),
                "Service" => _ = typed::<Service>(obj),
                // No k8s-openapi type (kube-aggregator's): its fields are checked in
                // traffic_api_is_served_where_its_apiservice_points.
                "APIService" => assert_eq!(obj["apiVersion"], "apiregistration.k8s.io/v1"),
                other => panic!("{what}: unexpected {other}"),
            }
            let cluster_scoped = matches!(
                kind_of(obj),
                "Namespace"
                    | "CustomResourceDefinition"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "APIService"
            );
            let ns = obj["metadata"]["namespace"].as_str();
            if name_of(obj) == "shunt-traffic-api-auth-reader" {
                // The one object elsewhere: the traffic API reads the front-proxy CA there.
                assert_eq!(ns, Some("kube-system"), "{what}");
                assert_eq!(kind_of(obj), "RoleBinding", "{what}");
            } else if cluster_scoped {
                assert_eq!(ns, None, "{what}: {} is cluster-scoped", kind_of(obj));
            } else {
                assert_eq!(
                    ns,
                    Some(NAMESPACE),
                    "{what}: {} {}",
                    kind_of(obj),
                    name_of(obj)
                );
            }
        }
        let ns: Namespace = the(&objs, "Namespace", &what);
        assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
        // hostNetwork, hostPath and added capabilities are only admitted at this level.
        assert_eq!(
            ns.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-security.kubernetes.io/enforce"))
                .map(String::as_str),
            Some("privileged"),
            "{what}: Pod Security level of {NAMESPACE}"
        );
    }
}

#[test]
fn overlays_pick_their_images() {
    let e2e = read("deploy/kind/e2e.sh");
    for (overlay, image, pull) in [
        ("default", "ghcr.io/shunt-dev/shunt:0.1.0", None),
        ("kind", "shunt:e2e", Some("Never")),
    ] {
        let Some(objs) = render(overlay) else {
            continue;
        };
        let ds: DaemonSet = the(&objs, "DaemonSet", overlay);
        let c = agent_container(&ds);
        assert_eq!(c.image.as_deref(), Some(image), "overlay {overlay}");
        assert_eq!(c.image_pull_policy.as_deref(), pull, "overlay {overlay}");
        // The traffic API runs the same binary.
        let d: Deployment = the(&objs, "Deployment", overlay);
        let tc = &d.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(
            tc.image.as_deref(),
            Some(image),
            "overlay {overlay}: traffic API"
        );
        assert_eq!(
            tc.image_pull_policy.as_deref(),
            pull,
            "overlay {overlay}: traffic API"
        );
        if overlay == "kind" {
            // e2e.sh builds and loads exactly the image the kind overlay runs.
            assert!(
                e2e.contains(&format!("AGENT_IMAGE={image}")),
                "deploy/kind/e2e.sh must build {image}"
            );
        }
    }
}

#[test]
fn daemonset_args_parse_with_the_agents_cli() {
    for (what, objs) in manifests() {
        let ds: DaemonSet = the(&objs, "DaemonSet", &what);
        let c = agent_container(&ds);
        let args = expanded_args(c, &sample_values());
        let run = parse_run(&args);
        assert!(
            run.kube,
            "{what}: routes come from the Kubernetes API (--kube)"
        );
        assert!(run.routes.is_none(), "{what}: no routes file in a cluster");
        assert!(
            run.steer.is_empty(),
            "{what}: no static --steer in a cluster"
        );
        assert_eq!(
            run.lease_namespace, NAMESPACE,
            "{what}: the Role's namespace"
        );
        let node_ip: IpAddr = SAMPLE_NODE_IP.parse().unwrap();
        assert_eq!(
            run.proxy_addr.ip(),
            node_ip,
            "{what}: proxy on the node's address"
        );
        assert_eq!(
            run.admin_addr.ip(),
            node_ip,
            "{what}: admin on the node's address"
        );
        // The identity in the Lease and the address come from the downward API.
        let field = |name: &str| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.clone())
        };
        assert_eq!(field("NODE_IP").as_deref(), Some("status.hostIP"), "{what}");
        assert_eq!(
            field("NODE_NAME").as_deref(),
            Some("spec.nodeName"),
            "{what}"
        );
        assert_eq!(
            field("POD_NAMESPACE").as_deref(),
            Some("metadata.namespace"),
            "{what}"
        );

        // --cgroup auto searches the node's cgroup tree (--cgroup-root), mounted at a path of its
        // own, never over the container's /sys/fs/cgroup: there the agent finds its own cgroup
        // (see deploy/README.md).
        let (cgroup_mount, ro) = host_mount(&ds, "/sys/fs/cgroup");
        assert_eq!(
            run.cgroup_selector(),
            CgroupSelector::Auto,
            "{what}: --cgroup"
        );
        assert_eq!(
            run.cgroup_root,
            Path::new(&cgroup_mount),
            "{what}: --cgroup-root"
        );
        assert!(ro, "{what}: the node's cgroup tree is mounted read-only");
        assert!(
            !Path::new(&cgroup_mount).starts_with("/sys/fs/cgroup"),
            "{what}: the node's cgroup tree must not cover the container's own /sys/fs/cgroup"
        );
        // --bpffs-dir is on the node's bpffs, which the agent never mounts in --kube mode.
        let (bpffs_mount, ro) = host_mount(&ds, "/sys/fs/bpf");
        assert!(
            run.bpffs_dir.starts_with(&bpffs_mount) && run.bpffs_dir != Path::new(&bpffs_mount),
            "{what}: --bpffs-dir {} must be a directory on the node's bpffs ({bpffs_mount})",
            run.bpffs_dir.display()
        );
        assert!(!ro, "{what}: the agent pins maps on the node's bpffs");
        // The debug API is on the node's address (the traffic API fans out to it) and only
        // with the token from the Secret, mounted read-only where --debug-token-file points.
        assert_eq!(
            run.debug_addr.ip(),
            node_ip,
            "{what}: debug on the node's address"
        );
        let token = run
            .debug_token_file
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: --debug-token-file is required off loopback"));
        let spec = pod_spec(&ds);
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| token.starts_with(&m.mount_path))
            .unwrap_or_else(|| panic!("{what}: {} is not on a mounted volume", token.display()));
        assert_eq!(
            mount.read_only,
            Some(true),
            "{what}: the token is mounted read-only"
        );
        let secret = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone());
        assert_eq!(secret.as_deref(), Some(DEBUG_TOKEN_SECRET), "{what}");
        // Terminating waits for the agent's own drain.
        let grace = pod_spec(&ds)
            .termination_grace_period_seconds
            .expect("terminationGracePeriodSeconds");
        assert!(
            Duration::from_secs(u64::try_from(grace).unwrap()) > run.shutdown_grace,
            "{what}: terminationGracePeriodSeconds {grace} must exceed --shutdown-grace {:?}",
            run.shutdown_grace
        );
    }
}

/// Issue 15: the DaemonSet captures the node's pods, never its whole cgroup tree (the kubelet,
/// the runtime and host processes beside them keep their own traffic), and runs on Linux nodes
/// only.
#[test]
fn daemonset_captures_only_pods_with_cgroup_auto_on_linux_nodes() {
    for (what, objs) in manifests() {
        let ds: DaemonSet = the(&objs, "DaemonSet", &what);
        let args = expanded_args(agent_container(&ds), &sample_values());
        let cgroup_flags: Vec<&[String]> = args.windows(2).filter(|w| w[0] == "--cgroup").collect();
        assert_eq!(
            cgroup_flags.len(),
            1,
            "{what}: exactly one --cgroup in {args:?}"
        );
        assert_eq!(cgroup_flags[0][1], "auto", "{what}: --cgroup auto");
        let run = parse_run(&args);
        assert_eq!(run.cgroup_selector(), CgroupSelector::Auto, "{what}");
        let (cgroup_mount, _) = host_mount(&ds, "/sys/fs/cgroup");
        assert_eq!(
            run.cgroup_root,
            Path::new(&cgroup_mount),
            "{what}: auto searches the node's cgroup tree"
        );
        let os = pod_spec(&ds)
            .node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .map(String::as_str);
        assert_eq!(os, Some("linux"), "{what}: nodeSelector kubernetes.io/os");
    }
}

#[test]
fn daemonset_ports_probes_and_scrape_annotations_match_the_agent() {
    let default_admin = default_admin_addr();
    for (what, objs) in manifests() {
        let ds: DaemonSet = the(&objs, "DaemonSet", &what);
        let c = agent_container(&ds);
        let run = parse_run(&expanded_args(c, &sample_values()));
        let admin = run.admin_addr.port();
        assert_eq!(
            admin,
            default_admin.port(),
            "{what}: the agent's default admin port"
        );
        // Under hostNetwork a declared port is a hostPort: the scheduler would never place the
        // surge pod beside the old one.
        assert!(
            c.ports.as_ref().is_none_or(Vec::is_empty),
            "{what}: the agent container declares no ports"
        );
        assert_eq!(
            probe_target(c, "readiness"),
            ("/readyz".to_string(), admin),
            "{what}: readiness probe"
        );
        assert_eq!(
            probe_target(c, "liveness"),
            ("/healthz".to_string(), admin),
            "{what}: liveness probe"
        );
        let annotations = ds
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        let get = |k: &str| annotations.get(k).map(String::as_str);
        assert_eq!(get("prometheus.io/scrape"), Some("true"), "{what}");
        assert_eq!(
            get("prometheus.io/port"),
            Some(admin.to_string().as_str()),
            "{what}"
        );
        assert_eq!(get("prometheus.io/path"), Some("/metrics"), "{what}");
        // The probes and Prometheus reach the agent on the node's address.
        assert_eq!(
            pod_spec(&ds).host_network,
            Some(true),
            "{what}: hostNetwork"
        );
    }
}

/// The Privileges section of deploy/README.md names exactly the DaemonSet's capabilities: in its
/// `add: [...]` and in the first row of its table (the set the DaemonSet runs with).
#[test]
fn readme_states_exactly_the_daemonsets_capabilities() {
    let readme = read("deploy/README.md");
    let section = readme
        .split("### Privileges")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("a Privileges section");
    let ds_caps: BTreeSet<String> = added_caps(&base_daemonset()).into_iter().collect();
    let listed = |text: &str| -> BTreeSet<String> {
        text.split(',').map(|c| c.trim().to_string()).collect()
    };
    let add = section
        .split("`add: [")
        .nth(1)
        .and_then(|s| s.split("]`").next())
        .expect("`add: [...]` in the Privileges section");
    assert_eq!(listed(add), ds_caps, "the README's add: [...]");
    let first_row = section
        .lines()
        .skip_while(|l| !l.starts_with("|---|"))
        .nth(1)
        .expect("the capability table");
    let set = first_row.trim_start_matches('|').split('|').next().unwrap();
    assert_eq!(listed(set), ds_caps, "the table's first row: {first_row}");
}

#[test]
fn daemonset_is_unprivileged_with_exactly_the_minimal_capabilities() {
    let minimal: BTreeSet<String> = MINIMAL_CAPS.iter().map(|c| c.to_string()).collect();
    for (what, objs) in manifests() {
        let ds: DaemonSet = the(&objs, "DaemonSet", &what);
        let spec = pod_spec(&ds);
        // Source identity finds a client pod's network namespace through its processes, by
        // the node's PIDs (deploy/README.md).
        assert_eq!(spec.host_pid, Some(true), "{what}: hostPID");
        assert_ne!(spec.host_ipc, Some(true), "{what}: hostIPC");
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let sc = c
                .security_context
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: container {} has no securityContext", c.name));
            assert_ne!(
                sc.privileged,
                Some(true),
                "{what}: {} is privileged",
                c.name
            );
            assert_eq!(
                sc.allow_privilege_escalation,
                Some(false),
                "{what}: {}",
                c.name
            );
            assert_eq!(
                sc.read_only_root_filesystem,
                Some(true),
                "{what}: {}",
                c.name
            );
            let caps = sc.capabilities.as_ref().expect("capabilities");
            assert_eq!(
                caps.drop.as_deref(),
                Some(&["ALL".to_string()][..]),
                "{what}: {} drops every capability first",
                c.name
            );
            let added: BTreeSet<String> = caps.add.iter().flatten().cloned().collect();
            assert_eq!(
                added, minimal,
                "{what}: {} adds exactly the minimal set",
                c.name
            );
            assert_eq!(
                sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                Some("RuntimeDefault"),
                "{what}: {}",
                c.name
            );
        }
        let ds_spec = ds.spec.as_ref().unwrap();
        let rolling = ds_spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .expect("a rolling update");
        // The new pod first, then the old one hands over to it (a surge needs maxUnavailable 0).
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)), "{what}");
        assert_eq!(
            rolling.max_surge,
            Some(IntOrString::Int(1)),
            "{what}: maxSurge 1"
        );
        assert!(
            spec.tolerations
                .iter()
                .flatten()
                .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
            "{what}: tolerates every taint, so every node runs an agent"
        );
        let resources = agent_container(&ds).resources.as_ref().expect("resources");
        for (kind, set) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            let set = set.as_ref().unwrap_or_else(|| panic!("{what}: no {kind}"));
            assert!(
                set.contains_key("cpu") && set.contains_key("memory"),
                "{what}: cpu and memory {kind}"
            );
        }
    }
}

/// (apiGroup, resource, verb) triples.
fn triples(rules: &[PolicyRule], what: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        assert!(
            r.non_resource_urls.is_none() && r.resource_names.is_none(),
            "{what}: unexpected rule shape {r:?}"
        );
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert!(
                        g != "*" && res != "*" && v != "*",
                        "{what}: wildcard in {r:?}"
                    );
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

/// The traffic API's objects (labelled `app.kubernetes.io/component: traffic-api`), or the rest.
fn traffic_api_objects(objs: &[Value], theirs: bool) -> Vec<Value> {
    objs.iter()
        .filter(|o| {
            (o["metadata"]["labels"]["app.kubernetes.io/component"] == "traffic-api") == theirs
        })
        .cloned()
        .collect()
}

/// The line before the table in deploy/README.md that says why each agent RBAC rule remains.
const RBAC_TABLE_MARKER: &str = "<!-- AGENT_ACCESS: rendered by agent::kube::rbac::markdown_table; tests/tests/deploy.rs checks it -->";

#[test]
fn readme_says_why_each_agent_rbac_rule_remains() {
    let readme = read("deploy/README.md");
    let start = readme
        .find(RBAC_TABLE_MARKER)
        .unwrap_or_else(|| panic!("deploy/README.md lacks {RBAC_TABLE_MARKER:?}"))
        + RBAC_TABLE_MARKER.len();
    let table: String = readme[start..]
        .trim_start_matches('\n')
        .lines()
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    let wanted = agent::kube::rbac::markdown_table(AGENT_ACCESS);
    assert_eq!(
        table, wanted,
        "deploy/README.md's RBAC table is not AGENT_ACCESS; it should read:\n{wanted}"
    );
    for a in AGENT_ACCESS {
        assert!(
            a.why.len() > 20,
            "{}/{}: say why the rule remains",
            a.group,
            a.resource
        );
    }
}

#[test]
fn rbac_grants_exactly_the_agents_api_access() {
    let wanted = tests::kube_world::granted(AGENT_ACCESS);
    for (what, objs) in manifests() {
        // The agent's objects; the traffic API's are checked in traffic_api_rbac_is_the_codes.
        let objs = traffic_api_objects(&objs, false);
        let ds: DaemonSet = the(&objs, "DaemonSet", &what);
        let sa_name = pod_spec(&ds)
            .service_account_name
            .clone()
            .expect("the DaemonSet names its ServiceAccount");
        let sa: ServiceAccount = the(&objs, "ServiceAccount", &what);
        assert_eq!(
            sa.metadata.name.as_deref(),
            Some(sa_name.as_str()),
            "{what}"
        );
        let is_agent = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
            subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == sa_name
                    && s.namespace.as_deref() == Some(NAMESPACE)
            })
        };
        let mut granted = BTreeSet::new();
        // Every role is bound to the agent, and only to it; the bound roles' rules are the grant.
        let roles: Vec<ClusterRole> = all_of(&objs, "ClusterRole");
        for b in all_of::<ClusterRoleBinding>(&objs, "ClusterRoleBinding") {
            assert!(
                is_agent(&b.subjects),
                "{what}: {:?} binds someone else",
                b.metadata.name
            );
            assert_eq!(b.role_ref.kind, "ClusterRole", "{what}");
            let role = roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(b.role_ref.name.as_str()))
                .unwrap_or_else(|| panic!("{what}: ClusterRole {} missing", b.role_ref.name));
            granted.extend(triples(role.rules.as_deref().unwrap_or_default(), &what));
        }
        let ns_roles: Vec<Role> = all_of(&objs, "Role");
        let bindings: Vec<RoleBinding> = all_of(&objs, "RoleBinding");
        for b in &bindings {
            assert!(
                is_agent(&b.subjects),
                "{what}: {:?} binds someone else",
                b.metadata.name
            );
            assert_eq!(b.role_ref.kind, "Role", "{what}");
            let role = ns_roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(b.role_ref.name.as_str()))
                .unwrap_or_else(|| panic!("{what}: Role {} missing", b.role_ref.name));
            let t = triples(role.rules.as_deref().unwrap_or_default(), &what);
            // Namespaced grants only for what lives beside the agent: its status Lease.
            assert!(
                t.iter()
                    .all(|(g, r, _)| g == "coordination.k8s.io" && r == "leases"),
                "{what}: the Role grants more than leases: {t:?}"
            );
            granted.extend(t);
        }
        assert_eq!(
            roles.len(),
            all_of::<ClusterRoleBinding>(&objs, "ClusterRoleBinding").len()
        );
        assert_eq!(
            ns_roles.len(),
            bindings.len(),
            "{what}: every Role is bound"
        );
        let missing: Vec<_> = wanted.difference(&granted).collect();
        let extra: Vec<_> = granted.difference(&wanted).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what}: RBAC differs from agent::kube::rbac::AGENT_ACCESS\n  missing: {missing:?}\n  \
             extra: {extra:?}"
        );
    }
}

/// The rules of the role named `name` of `kind` among `objs`, as triples.
fn role_triples(
    objs: &[Value],
    kind: &str,
    name: &str,
    what: &str,
) -> BTreeSet<(String, String, String)> {
    let role = objs
        .iter()
        .find(|o| kind_of(o) == kind && name_of(o) == name)
        .unwrap_or_else(|| panic!("{what}: {kind} {name} missing"));
    let rules: Vec<PolicyRule> = serde_json::from_value(role["rules"].clone()).unwrap();
    triples(&rules, what)
}

#[test]
fn traffic_api_rbac_is_the_codes() {
    use agent::kube::rbac;
    let granted = tests::kube_world::granted;
    for (what, objs) in manifests() {
        let objs = traffic_api_objects(&objs, true);
        assert_eq!(
            role_triples(&objs, "ClusterRole", "shunt-traffic-api", &what),
            granted(rbac::TRAFFIC_API_ACCESS),
            "{what}: ClusterRole shunt-traffic-api"
        );
        assert_eq!(
            role_triples(&objs, "Role", "shunt-traffic-api", &what),
            granted(rbac::TRAFFIC_API_AGENT_NAMESPACE_ACCESS),
            "{what}: Role shunt-traffic-api"
        );
        // The tenant's Role: what the README tells admins to bind per namespace.
        assert_eq!(
            role_triples(&objs, "ClusterRole", "shunt-traffic-reader", &what),
            granted(rbac::TRAFFIC_READER_ACCESS),
            "{what}: ClusterRole shunt-traffic-reader"
        );
        // Nothing node-level for anyone here.
        for o in objs.iter().filter(|o| kind_of(o).ends_with("Role")) {
            let rules: Vec<PolicyRule> = serde_json::from_value(o["rules"].clone()).unwrap();
            for (_, res, _) in triples(&rules, &what) {
                assert!(
                    !res.ends_with("/proxy") && !res.ends_with("/portforward"),
                    "{what}: {} grants {res}",
                    name_of(o)
                );
            }
        }
        // Every binding is to the traffic API's ServiceAccount, of the roles above, or of the
        // built-in Role that reads the front-proxy CA (TRAFFIC_API_KUBE_SYSTEM_ACCESS).
        for b in objs.iter().filter(|o| kind_of(o).ends_with("Binding")) {
            let name = name_of(b);
            assert_eq!(
                b["subjects"],
                serde_json::json!([{ "kind": "ServiceAccount", "name": "shunt-traffic-api",
                                     "namespace": NAMESPACE }]),
                "{what}: {name}"
            );
            if b["metadata"]["namespace"] == "kube-system" {
                assert_eq!(
                    b["roleRef"]["name"], "extension-apiserver-authentication-reader",
                    "{what}"
                );
                assert_eq!(
                    granted(rbac::TRAFFIC_API_KUBE_SYSTEM_ACCESS),
                    BTreeSet::from([("".into(), "configmaps".into(), "get".into())]),
                    "the built-in Role grants get configmaps (extension-apiserver-authentication)"
                );
            } else {
                assert_eq!(b["roleRef"]["name"], "shunt-traffic-api", "{what}: {name}");
            }
        }
    }
}

#[test]
fn traffic_api_is_served_where_its_apiservice_points() {
    for (what, objs) in manifests() {
        let d: Deployment = the(&objs, "Deployment", &what);
        let spec = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &spec.containers[0];
        let args: Vec<String> = c.args.clone().unwrap_or_default();
        let parsed = Cli::try_parse_from(std::iter::once("shunt".to_string()).chain(args.clone()))
            .unwrap_or_else(|e| panic!("{what}: {args:?}: {e}"));
        let AgentCommand::TrafficApi(t) = parsed.command else {
            panic!("{what}: the Deployment runs {args:?}, not traffic-api");
        };
        // The APIService names the code's group and version, and the Service in front of the
        // Deployment's port.
        let api = objs
            .iter()
            .find(|o| kind_of(o) == "APIService")
            .expect("the APIService");
        assert_eq!(name_of(api), agent::traffic::API_SERVICE, "{what}");
        assert_eq!(api["spec"]["group"], agent::traffic::GROUP, "{what}");
        assert_eq!(api["spec"]["version"], agent::traffic::VERSION, "{what}");
        let svc: Service = the(&objs, "Service", &what);
        assert_eq!(
            api["spec"]["service"]["name"],
            svc.metadata.name.clone().unwrap().as_str()
        );
        assert_eq!(api["spec"]["service"]["namespace"], NAMESPACE);
        let port = svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].clone();
        assert_eq!(api["spec"]["service"]["port"], port.port, "{what}");
        assert_eq!(
            port.target_port,
            Some(IntOrString::String("https".into())),
            "{what}"
        );
        assert_eq!(container_port(c, "https"), t.listen_addr.port(), "{what}");
        // Its ServiceAccount is the one its RBAC binds; it never runs as root.
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("shunt-traffic-api")
        );
        assert_eq!(
            spec.security_context
                .as_ref()
                .and_then(|s| s.run_as_non_root),
            Some(true),
            "{what}"
        );
        // The debug token comes from the very Secret the agents mount; the serving certificate
        // from its own.
        let secret_of = |pod: &PodSpec, c: &Container, file: &Path| -> String {
            let mount = c
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| file.starts_with(&m.mount_path))
                .unwrap_or_else(|| panic!("{what}: {} is not mounted", file.display()));
            assert_eq!(mount.read_only, Some(true), "{what}: {}", file.display());
            pod.volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .and_then(|v| v.secret.as_ref())
                .and_then(|s| s.secret_name.clone())
                .unwrap_or_else(|| panic!("{what}: {} is not on a Secret", file.display()))
        };
        assert_eq!(secret_of(spec, c, &t.debug_token_file), DEBUG_TOKEN_SECRET);
        assert_eq!(
            secret_of(spec, c, &t.tls_cert_file),
            "shunt-traffic-api-tls"
        );
        assert_eq!(
            secret_of(spec, c, &t.tls_private_key_file),
            "shunt-traffic-api-tls"
        );
        let ds: DaemonSet = the(&objs, "DaemonSet", &what);
        let run = parse_run(&expanded_args(agent_container(&ds), &sample_values()));
        let agent_token = run.debug_token_file.expect("the agents' token file");
        assert_eq!(
            secret_of(pod_spec(&ds), agent_container(&ds), &agent_token),
            DEBUG_TOKEN_SECRET
        );
        // It fans out to the agents' debug port.
        assert_eq!(t.agent_debug_port, run.debug_addr.port(), "{what}");
    }
}

/// Checks `v` against a structural OpenAPI schema, the way the API server prunes and validates:
/// unknown fields, types, required fields, enums. Patterns and CEL rules are not evaluated (the
/// agent checks the same things, see `routes::SandboxRouteSpec::problems`).
fn check_schema(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true
        || schema.get("anyOf").is_some()
        || schema.get("oneOf").is_some()
        || schema.get("allOf").is_some()
    {
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(v.is_i64() || v.is_string()) {
            errors.push(format!("{path}: expected an integer or a string, got {v}"));
        }
        return;
    }
    if v.is_null() && schema["nullable"] == true {
        return;
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{path}: expected {ty}, got {v}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        errors.push(format!("{path}: {v} is not one of {allowed:?}"));
    }
    match v {
        Value::Object(map) => {
            for req in schema["required"].as_array().into_iter().flatten() {
                if !map.contains_key(req.as_str().unwrap_or("")) {
                    errors.push(format!("{path}: required field {req} missing"));
                }
            }
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties");
            for (k, child) in map {
                let p = format!("{path}.{k}");
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(s), _) => check_schema(s, child, &p, errors),
                    (None, Some(s)) if s.is_object() => check_schema(s, child, &p, errors),
                    _ => errors.push(format!("{p}: not in the schema (the API server prunes it)")),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_schema(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

/// SandboxRoutes written elsewhere in the project: the architecture's example and the e2e's.
fn sample_routes() -> Vec<(String, Value)> {
    let mut out = vec![(
        "ARCHITECTURE.md example".to_string(),
        serde_json::json!({
            "apiVersion": "shunt.dev/v1alpha1",
            "kind": "SandboxRoute",
            "metadata": { "name": "pr-123", "namespace": "shop" },
            "spec": {
                "routingKey": "pr-123",
                "forks": [{
                    "service": "reviews",
                    "to": { "selector": { "app": "reviews-sbx", "shunt.dev/sandbox": "pr-123" } },
                }],
                "fallback": "Baseline",
            },
            "status": {
                "conditions": [{ "type": "Ready", "status": "True", "reason": "EndpointsReady" }],
            },
        }),
    )];
    for doc in yaml_docs(&read("deploy/kind/demo.yaml"), "deploy/kind/demo.yaml") {
        if kind_of(&doc) == "SandboxRoute" {
            out.push((format!("deploy/kind/demo.yaml {}", name_of(&doc)), doc));
        }
    }
    out
}

#[test]
fn crd_describes_the_sandbox_route_api() {
    for (what, objs) in manifests() {
        let crd: CustomResourceDefinition = the(&objs, "CustomResourceDefinition", &what);
        let spec = &crd.spec;
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("sandboxroutes.shunt.dev")
        );
        assert_eq!(spec.group, "shunt.dev");
        assert_eq!(spec.scope, "Namespaced");
        assert_eq!(spec.names.kind, "SandboxRoute");
        assert_eq!(spec.names.plural, "sandboxroutes");
        // The RBAC rules name the same resource.
        assert!(
            AGENT_ACCESS
                .iter()
                .any(|a| a.group == spec.group && a.resource == spec.names.plural)
        );
        assert_eq!(spec.versions.len(), 1, "{what}: one version");
        let v = &spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{what}: the agent patches the status subresource"
        );
        let columns: Vec<(String, String)> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.json_path.clone()))
            .collect();
        let ready = |f: &str| format!(".status.conditions[?(@.type==\"Ready\")].{f}");
        assert_eq!(
            columns,
            vec![
                ("Key".into(), ".spec.routingKey".into()),
                ("Ready".into(), ready("status")),
                ("Reason".into(), ready("reason")),
                ("Age".into(), ".metadata.creationTimestamp".into()),
            ],
            "{what}: printer columns"
        );
        let schema = serde_json::to_value(
            v.schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("a schema"),
        )
        .unwrap();
        for (name, route) in sample_routes() {
            let mut errors = Vec::new();
            let body = serde_json::json!({ "spec": route["spec"], "status": route["status"] });
            let body = match body["status"].is_null() {
                true => serde_json::json!({ "spec": route["spec"] }),
                false => body,
            };
            check_schema(&schema, &body, "", &mut errors);
            assert!(
                errors.is_empty(),
                "{what}: {name} against the CRD: {errors:#?}"
            );
        }
    }
}

#[test]
fn kind_e2e_pieces_agree() {
    let docs = yaml_docs(&read("deploy/kind/demo.yaml"), "deploy/kind/demo.yaml");
    let e2e = read("deploy/kind/e2e.sh");
    let services: Vec<Service> = all_of(&docs, "Service");
    let deployments: Vec<Deployment> = all_of(&docs, "Deployment");
    let pod_labels = |d: &Deployment| -> BTreeMap<String, String> {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    };
    let matches = |sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
        sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let deployment = |name: &str| {
        deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Deployment {name} in demo.yaml"))
    };
    for name in ["frontend", "reviews-v1", "reviews-v2", "ratings"] {
        let d = deployment(name);
        let spec = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .unwrap();
        for c in &spec.containers {
            assert!(
                e2e.contains(&format!(
                    "APP_IMAGE={}",
                    c.image.as_deref().unwrap_or_default()
                )),
                "{name}: e2e.sh builds and loads its image"
            );
            // Every $(VAR) is declared, or a service link variable of a Service created first.
            for arg in c.args.iter().flatten() {
                for var in arg.split("$(").skip(1).filter_map(|s| s.split(')').next()) {
                    let declared = c.env.iter().flatten().any(|e| e.name == var);
                    let link = services.iter().any(|s| {
                        let svc = s.metadata.name.as_deref().unwrap_or("").to_uppercase();
                        var == format!("{svc}_SERVICE_HOST") || var == format!("{svc}_SERVICE_PORT")
                    });
                    assert!(declared || link, "{name}: $({var}) in {arg:?} is never set");
                }
            }
        }
    }
    let service = |name: &str| {
        services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Service {name}"))
    };
    let selector = |s: &Service| s.spec.as_ref().and_then(|s| s.selector.clone()).unwrap();
    let sandbox = pod_labels(deployment("reviews-v2"));
    // The baseline Service never selects sandbox pods: unkeyed requests cannot reach them.
    assert!(matches(
        &selector(service("reviews")),
        &pod_labels(deployment("reviews-v1"))
    ));
    assert!(!matches(&selector(service("reviews")), &sandbox));
    for doc in docs.iter().filter(|d| kind_of(d) == "SandboxRoute") {
        let ns = doc["metadata"]["namespace"].as_str().unwrap();
        let spec: agent::routes::SandboxRouteSpec =
            serde_json::from_value(doc["spec"].clone()).expect("the agent reads the route");
        assert_eq!(spec.problems(ns), vec![], "the route is valid");
        assert!(
            e2e.contains(&format!("KEY={}", spec.routing_key)),
            "e2e.sh uses its key"
        );
        for fork in &spec.forks {
            let _ = service(&fork.service);
            let sel = &fork.to.selector.as_ref().expect("a selector fork").to_map();
            assert!(
                matches(sel, &sandbox),
                "the fork selects the sandbox's pods"
            );
            for base in ["frontend", "reviews-v1", "ratings"] {
                assert!(
                    !matches(sel, &pod_labels(deployment(base))),
                    "{base} is not sandbox"
                );
            }
        }
    }
    // The script itself: valid bash, on the kind overlay, cleaning up whatever happens.
    let status = Command::new("bash")
        .arg("-n")
        .arg(repo().join("deploy/kind/e2e.sh"))
        .status()
        .expect("bash");
    assert!(status.success(), "deploy/kind/e2e.sh has a syntax error");
    for needed in [
        "set -euo pipefail",
        "trap cleanup EXIT",
        "kind delete cluster",
        "deploy/overlays/kind",
        "kind load docker-image",
        "deploy/kind/demo.yaml",
    ] {
        assert!(e2e.contains(needed), "e2e.sh: {needed}");
    }
    // The workflow runs it.
    let wf = yaml_docs(&read(".github/workflows/e2e.yml"), "e2e.yml");
    let runs: Vec<&str> = wf[0]["jobs"]
        .as_object()
        .expect("jobs")
        .values()
        .flat_map(|j| j["steps"].as_array().into_iter().flatten())
        .filter_map(|s| s["run"].as_str())
        .collect();
    assert!(
        runs.iter().any(|r| r.trim() == "deploy/kind/e2e.sh"),
        "{runs:?}"
    );
}

#[test]
fn dockerfile_builds_the_agent_with_the_projects_toolchain_setup() {
    let dockerfile = read("Dockerfile");
    // The toolchain stage copies every workspace member's manifest (cargo must load the
    // workspace to run xtask), then runs the project's own setup.
    let cargo_toml = read("Cargo.toml");
    let members_line = cargo_toml
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    let members: Vec<&str> = members_line.split('"').skip(1).step_by(2).collect();
    assert!(members.contains(&"agent"));
    for m in members {
        assert!(
            dockerfile.contains(&format!("COPY {m}/Cargo.toml"))
                || dockerfile.contains(&format!("COPY {m}/ {m}/")),
            "Dockerfile: workspace member {m} is not copied into the toolchain stage"
        );
    }
    for needed in [
        "rustup toolchain install",
        "cargo xtask setup",
        "cargo build --release --locked -p agent",
        "AS demo-app",
        "--bin demo-app",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile: {needed}");
    }
    // The last stage (the default target) is the runtime: one binary, no toolchain.
    let last = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, s)| s)
        .expect("stages");
    assert!(last.starts_with("gcr.io/distroless/cc") || last.starts_with("debian:bookworm-slim"));
    let copies: Vec<&str> = last.lines().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(copies, ["COPY --from=build /shunt /usr/local/bin/shunt"]);
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        ".dockerignore keeps target/ out"
    );
}

// --- kernel tests: the agent as the DaemonSet runs it -------------------------------------------

const PORT: u16 = 8080;

fn cap_number(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("add capability {other} to cap_number"),
    }
}

/// The capability sets of a process (`CapEff`, `CapPrm`, ...) from /proc.
fn status_caps(pid: i32) -> BTreeMap<String, u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the agent's status")
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), u64::from_str_radix(v.trim(), 16).ok()?))
        })
        .collect()
}

/// Mounts a bpffs at `dir`, as the node has one at /sys/fs/bpf (the agent must not mount it).
fn mount_bpffs(dir: &Path) {
    tests::kube_world::mount_bpffs(dir).expect("mounting bpffs");
}

/// How the agent is started to reproduce its DaemonSet pod in a test world.
struct PodLike {
    /// The command prefix (see [`Env::start_agent_wrapped`]).
    wrapper: Vec<String>,
    /// The agent's args: the DaemonSet's, with the node's paths and addresses of this world.
    args: Vec<String>,
}

/// Reproduces what the container runtime and the DaemonSet give the agent:
/// - its own cgroup namespace, with its own cgroup mounted read-only where the runtime mounts it
///   (so /proc/self/cgroup reads `0::/`, and the first cgroup2 mount resolves to its own cgroup);
/// - the node's cgroup v2 tree bind-mounted read-only elsewhere, as the hostPath volume;
/// - the node's bpffs (mounted beforehand here), never mounted by the agent;
/// - exactly the capabilities the DaemonSet adds: bounding set reduced to them, inheritable and
///   ambient cleared, as a root container with `drop: [ALL]` and `add: [...]`.
///
/// The args are the DaemonSet's with `--kube` replaced by `--steer dst` (no API server here), the
/// node's paths mapped into this world, and the proxy on the node address of the harness.
fn pod_like(
    env: &Env,
    ds: &DaemonSet,
    dst: SocketAddr,
    admin_on_loopback: bool,
    extra: &[&str],
) -> PodLike {
    let c = agent_container(ds);
    let caps = added_caps(ds);
    let cgroup2 = agent::capture::cgroup2_mount().expect("a cgroup2 mount");
    let host_cgroup = env.run.path.join("host-cgroup");
    fs::create_dir_all(&host_cgroup).unwrap();
    let bounding: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    // The kernel refuses a second cgroup2 mount on the very mount point of the first one, so a
    // tmpfs goes in between (it stands for the container's fresh /sys). Mount order is the
    // runtime's: the first cgroup2 entry in mountinfo is at the cgroup2 path and resolves to the
    // pod's own cgroup; the node's tree is a later mount at another path.
    let script = format!(
        "set -e\n\
         mount --bind \"$1\" \"$2\"\n\
         mount -o remount,bind,ro \"$2\"\n\
         mount -t tmpfs none \"$1\"\n\
         mount -t cgroup2 -o ro cgroup2 \"$1\"\n\
         shift 2\n\
         exec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all,{} -- \"$@\"",
        bounding.join(",")
    );
    let wrapper = [
        "unshare",
        "--cgroup",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &script,
        "sh",
    ]
    .map(String::from)
    .into_iter()
    .chain([
        cgroup2.display().to_string(),
        host_cgroup.display().to_string(),
    ])
    .collect();

    // The DaemonSet's args, mapped into this world.
    let (cgroup_mount, _) = host_mount(ds, "/sys/fs/cgroup");
    let (bpffs_mount, _) = host_mount(ds, "/sys/fs/bpf");
    let values = BTreeMap::from([
        ("NODE_IP", PROXY4.to_string()),
        ("POD_NAMESPACE", NAMESPACE.to_string()),
    ]);
    let test_cgroup = env.cgroup.path().strip_prefix(&cgroup2).unwrap();
    let mut args = Vec::new();
    let mut it = expanded_args(c, &values).into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kube" => args.extend(["--steer".to_string(), dst.to_string()]),
            "--cgroup" => {
                let v = it.next().unwrap();
                assert_eq!(v, "auto");
                // The test's captured cgroup stands for the node's pods' cgroup, named outright:
                // the search itself is capture_scope.rs's business.
                args.extend([a, host_cgroup.join(test_cgroup).display().to_string()]);
            }
            "--cgroup-root" => {
                let v = it.next().unwrap();
                assert_eq!(v, cgroup_mount);
                args.extend([a, host_cgroup.display().to_string()]);
            }
            "--bpffs-dir" => {
                let v = PathBuf::from(it.next().unwrap());
                let rel = v.strip_prefix(&bpffs_mount).unwrap();
                args.extend([a, env.run.bpffs().join(rel).display().to_string()]);
            }
            "--admin-addr" if admin_on_loopback => {
                // The harness reads the admin API on loopback.
                let v: SocketAddr = it.next().unwrap().parse().unwrap();
                assert_eq!(v.port(), ADMIN_PORT);
                args.extend([a, format!("127.0.0.1:{}", v.port())]);
            }
            "--debug-token-file" => {
                // The Secret's file, with this world's token.
                let _ = it.next().unwrap();
                let token = env.run.path.join("debug-token");
                fs::write(&token, format!("{DEBUG_TOKEN}\n")).unwrap();
                args.extend([a, token.display().to_string()]);
            }
            _ => args.push(a),
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let _ = parse_run(&args);
    PodLike { wrapper, args }
}

/// Sum of the `memlock` the kernel accounts to the BPF maps the process holds.
fn maps_memlock(pid: i32) -> u64 {
    let mut total = 0;
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let is_map = fs::read_link(fd.path())
            .map(|l| l.to_string_lossy() == "anon_inode:bpf-map")
            .unwrap_or(false);
        if !is_map {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

#[test]
fn agent_runs_with_only_the_daemonsets_privileges_and_steers() {
    let Some(env) = Env::new(
        "agent_runs_with_only_the_daemonsets_privileges_and_steers",
        2,
        bins!(),
    ) else {
        return;
    };
    let ds = base_daemonset();
    let backend = &env.topo.pods[1];
    let dst = backend.addr4(PORT);
    let _b = Backend::tcp(&backend.netns, "b", dst).unwrap();
    mount_bpffs(&env.run.bpffs());
    // The client pod's "pause" process runs as another user (the pause image's 65535), as on a
    // node: the agent reaches the pod's network namespace through it (source identity), which
    // takes CAP_SYS_PTRACE to open and CAP_SYS_ADMIN to enter.
    let mut pause = Command::new("setpriv");
    pause.args([
        "--reuid",
        "65535",
        "--regid",
        "65535",
        "--clear-groups",
        "sleep",
        "120",
    ]);
    let pause = spawn_in("pause", pause, Some(&env.topo.pods[0].netns), None).unwrap();
    let routes = env.run.path.join("node-pods.yaml");
    fs::write(
        &routes,
        format!(
            "nodePods:\n  - {{ name: client, namespace: front, ips: [{}], netns: /proc/{}/ns/net }}\n",
            env.topo.pods[0].ip4,
            pause.pid()
        ),
    )
    .unwrap();
    let routes_flag = routes.display().to_string();
    let pod = pod_like(&env, &ds, dst, true, &["--routes", &routes_flag]);
    // The agent's pod sits under the captured root, like every pod on the node.
    let pod_cgroup = env.cgroup.child("agent-pod").unwrap();
    let agent = env.start_agent_wrapped(&pod.wrapper, &pod.args, Some(&pod_cgroup));

    // It holds exactly the DaemonSet's capabilities, nothing inheritable or ambient.
    let want: u64 = added_caps(&ds).iter().map(|c| 1u64 << cap_number(c)).sum();
    let caps = status_caps(agent.child.pid());
    assert_eq!(caps["CapEff"], want, "effective capabilities: {caps:x?}");
    assert_eq!(caps["CapPrm"], want, "permitted capabilities: {caps:x?}");
    assert_eq!(caps["CapBnd"], want, "bounding set: {caps:x?}");
    assert_eq!((caps["CapInh"], caps["CapAmb"]), (0, 0), "{caps:x?}");

    // A connection from a pod is steered through the proxy, and the agent's own upstream
    // connect is not captured again: it found its own cgroup from inside its namespace. The
    // upstream connection leaves from the client pod's namespace, with the pod's address.
    let line = env.client(0, true, &["tcp", &dst.to_string()]).remove(0);
    assert_eq!(line.reply().local, dst);
    assert_eq!(
        line.reply().peer.ip(),
        env.topo.pods[0].ip4,
        "steered, from the client pod's own address: {}",
        agent.log_text()
    );
    assert_eq!(agent.metric("shunt_source_netns_fallbacks_total"), 0.0);
    assert_eq!(
        agent.metric("shunt_proxy_connections_accepted_total"),
        1.0,
        "no loop"
    );
    assert!(agent.metric("shunt_capture_events_total{event=\"exempt_agent_cgroup\"}") >= 1.0);

    // The maps are pinned on the node's bpffs, in the directory the agent created there.
    let (bpffs_mount, _) = host_mount(&ds, "/sys/fs/bpf");
    let run = parse_run(&expanded_args(agent_container(&ds), &sample_values()));
    let pins = env
        .run
        .bpffs()
        .join(run.bpffs_dir.strip_prefix(&bpffs_mount).unwrap());
    let (steered, _) = agent::capture::open_pinned(&pins).expect("maps pinned on the bpffs");
    assert_eq!(steered.entries(), vec![(dst, 0)]);

    // The probes and the scrape path answer as the kubelet and Prometheus expect.
    let c = agent_container(&ds);
    for probe in ["readiness", "liveness"] {
        let (path, _) = probe_target(c, probe);
        let (status, _) = agent.admin_get(&path).unwrap();
        assert_eq!(status, 200, "{probe} probe {path}");
    }
    let (status, metrics) = agent.admin_get("/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("shunt_proxy_connections_accepted_total"));

    let memlock = maps_memlock(agent.child.pid());
    eprintln!(
        "the agent's BPF maps hold {:.1} MiB (charged to the pod's memory cgroup when created)",
        memlock as f64 / (1024.0 * 1024.0)
    );
    let request = c
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("memory"))
        .map(|q| q.0.clone())
        .expect("a memory request");
    let request_mib: u64 = request
        .trim_end_matches("Mi")
        .parse()
        .expect("a request in Mi");
    assert!(
        memlock < request_mib * 1024 * 1024,
        "the maps ({memlock} bytes) must fit in the memory request ({request})"
    );
}

/// Ports listening on `ip` (or on every address) in the calling thread's network namespace.
fn listening_ports(ip: IpAddr) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for file in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "0A" {
                continue;
            }
            let Some((addr, port)) = f[1].split_once(':') else {
                continue;
            };
            let port = u16::from_str_radix(port, 16).unwrap();
            let bytes: Vec<u8> = (0..addr.len() / 2)
                .map(|i| u8::from_str_radix(&addr[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            // /proc/net/tcp holds addresses as host-order 32-bit words.
            let words: Vec<u8> = bytes
                .chunks(4)
                .flat_map(|w| w.iter().rev().copied())
                .collect();
            let local: IpAddr = match words.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(&words[..]).unwrap()),
                _ => IpAddr::from(<[u8; 16]>::try_from(&words[..]).unwrap()),
            };
            let local = match local {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(local, IpAddr::V4),
                v4 => v4,
            };
            if local == ip || local.is_unspecified() {
                ports.insert(port);
            }
        }
    }
    ports
}

/// One GET with optional extra header lines; the status and body, or the error as text.
fn get_with(addr: SocketAddr, path: &str, headers: &str) -> Result<(u16, String), String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    Ok((status, body.unwrap_or_default()))
}

#[test]
fn pod_network_reads_health_but_not_decisions_routes_or_topology() {
    let Some(env) = Env::new(
        "pod_network_reads_health_but_not_decisions_routes_or_topology",
        2,
        bins!(),
    ) else {
        return;
    };
    let ds = base_daemonset();
    let backend = &env.topo.pods[1];
    let dst = backend.addr4(PORT);
    let _b = HttpBackend::start(&backend.netns, "b", dst).unwrap();
    mount_bpffs(&env.run.bpffs());
    // Exactly the DaemonSet's admin and debug flags: both on the node's address.
    let pod = pod_like(&env, &ds, dst, false, &[]);
    let run = parse_run(&pod.args);
    let node_ip = IpAddr::V4(PROXY4);
    assert_eq!(run.admin_addr.ip(), node_ip);
    assert_eq!(run.debug_addr.ip(), node_ip);
    let pod_cgroup = env.cgroup.child("agent-pod").unwrap();
    let log = env.run.path.join("agent.log");
    let (program, rest) = pod.wrapper.split_first().unwrap();
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .arg(&env.bins.agent)
        .args(&pod.args)
        .env("SHUNT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    let _agent = spawn_in("agent", cmd, Some(env.node()), Some(&pod_cgroup)).unwrap();
    let admin = run.admin_addr;
    let agent_log = || fs::read_to_string(&log).unwrap_or_default();
    let start = Instant::now();
    while !matches!(
        env.node()
            .run(move || get_with(admin, "/readyz", ""))
            .unwrap(),
        Ok((200, _))
    ) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "agent not ready:\n{}",
            agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A keyed request with a telling path, from a pod: the agent logs its decision.
    let (key, path) = ("tenant-secret-key", "/orders/4111111111111111");
    let req = serde_json::json!([{ "path": path, "headers": { "baggage": format!("sd-routing-key={key}") } }]);
    let lines = env.peer(0, &["http", &dst.to_string(), &req.to_string()]);
    assert_eq!(lines[0]["status"], 200, "{lines:?}\n{}", agent_log());
    let client_ip = env.topo.pods[0].ip4.to_string();

    // The token's holder reads it on the debug port (so the checks below are not vacuous).
    let debug = run.debug_addr;
    let auth = format!("Authorization: Bearer {DEBUG_TOKEN}\r\n");
    let (status, body) = env
        .node()
        .run(move || get_with(debug, "/decisions", &auth))
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(key) && body.contains(path), "{body}");

    // From the pod's network: health answers on the admin port...
    let pod_ns = &env.topo.pods[0].netns;
    let (status, _) = pod_ns
        .run(move || get_with(admin, "/healthz", ""))
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "/healthz from a pod");
    // ... and the metrics name no key, path or client.
    let (status, metrics) = pod_ns
        .run(move || get_with(admin, "/metrics", ""))
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("shunt_requests_total"), "{metrics}");
    for secret in [key, path, client_ip.as_str()] {
        assert!(
            !metrics.contains(secret),
            "/metrics shows {secret}:\n{metrics}"
        );
    }
    // No port of the node's address serves decisions, routes or topology without the token, nor
    // with a wrong one.
    let ports = env.node().run(move || listening_ports(node_ip)).unwrap();
    assert!(
        ports.contains(&admin.port()) && ports.contains(&debug.port()),
        "{ports:?}"
    );
    for port in ports {
        let addr = SocketAddr::new(node_ip, port);
        for p in [
            "/decisions",
            "/decisions?key=tenant-secret-key",
            "/routes",
            "/topology",
        ] {
            for headers in ["", "Authorization: Bearer not-the-token\r\n"] {
                let got = pod_ns.run(move || get_with(addr, p, headers)).unwrap();
                if let Ok((status, body)) = &got {
                    assert!(
                        *status != 200 && !body.contains(key) && !body.contains(path),
                        "{addr}{p} ({headers:?}) answered {status}: {body}"
                    );
                }
            }
        }
    }
}

/// One restart, timed.
struct Gap {
    /// SIGTERM to the old agent's exit (watchdog stop, clearing STEERED, draining).
    stop: Duration,
    /// The old agent's exit to the new agent's readiness.
    ready: Duration,
    /// The old agent's exit to the first steered connection (an upper bound, at the prober's
    /// resolution of a few milliseconds).
    resteered: Duration,
    /// The first connection that went direct to the first one steered again.
    direct: Duration,
}

/// One connection attempt of the prober.
struct Probe {
    started: Instant,
    /// Some(true): through the proxy; Some(false): direct; None: failed.
    steered: Option<bool>,
    error: Option<String>,
}

#[test]
fn restart_gap_is_measured_and_bounded() {
    let Some(env) = Env::new("restart_gap_is_measured_and_bounded", 2, bins!()) else {
        return;
    };
    let ds = base_daemonset();
    let backend = &env.topo.pods[1];
    let dst = backend.addr4(PORT);
    let _b = Backend::tcp(&backend.netns, "b", dst).unwrap();
    mount_bpffs(&env.run.bpffs());
    // A short drain so the held connection below ends quickly; 10 s in the DaemonSet.
    let grace = Duration::from_secs(2);
    let pod = pod_like(&env, &ds, dst, true, &["--shutdown-grace", "2s"]);
    let start = |i: usize| -> AgentProc {
        let cg = env.cgroup.child(&format!("agent-pod-{i}")).unwrap();
        env.start_agent_wrapped(&pod.wrapper, &pod.args, Some(&cg))
    };
    let mut agent = start(0);

    // A connection proxied by the first agent, held open across its shutdown.
    let mut held_cmd = Command::new(&env.bins.netpeer);
    held_cmd
        .args(["raw", &dst.to_string(), "held\\n"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut held = spawn_in(
        "held",
        held_cmd,
        Some(&env.topo.pods[0].netns),
        Some(env.cgroup.path()),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.metric("shunt_proxy_connections_accepted_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the held connection never reached the proxy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let probes: Mutex<Vec<Probe>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let node_ip = IpAddr::from(backend.node_ip4);
    let client_ip = IpAddr::from(env.topo.pods[0].ip4);
    let first_since = |t: Instant, steered: bool| {
        probes
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.started >= t && p.steered == Some(steered))
            .map(|p| p.started)
    };
    let wait_steered_since = |t: Instant, what: &str| -> Instant {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(at) = first_since(t, true) {
                return at;
            }
            assert!(Instant::now() < deadline, "{what}: no steered connection");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut gaps = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let line = env.client(0, true, &["tcp", &dst.to_string()]).remove(0);
                let steered = line.reply.as_ref().map(|r| {
                    assert!(r.peer.ip() == node_ip || r.peer.ip() == client_ip, "{r:?}");
                    r.peer.ip() == node_ip
                });
                probes.lock().unwrap().push(Probe {
                    started,
                    steered,
                    error: line.error,
                });
            }
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_steered_since(Instant::now(), "before the restart");
            for i in 1..=3 {
                if i == 1 {
                    let running = held.child.as_mut().unwrap().try_wait().unwrap().is_none();
                    assert!(running, "the held connection is open when the agent stops");
                }
                // SIGTERM: the old agent clears STEERED (new connections go direct), drains, and
                // exits; its links go with it. The new agent starts on the same pins right after,
                // as the DaemonSet's replacement pod does once the old one is gone.
                let term = Instant::now();
                agent.terminate(grace + Duration::from_secs(10));
                let exited = Instant::now();
                agent = start(i);
                let ready = Instant::now();
                let steered = wait_steered_since(exited, "after the restart");
                let direct_from = first_since(term, false).unwrap_or(steered);
                gaps.push(Gap {
                    stop: exited - term,
                    ready: ready - exited,
                    resteered: steered.saturating_duration_since(exited),
                    direct: steered.saturating_duration_since(direct_from),
                });
            }
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });

    // The held connection lasted until the old agent's drain ended, then was closed by it.
    let (_, out, _) = held.output_timeout(Duration::from_secs(20)).unwrap();
    let held: Value = serde_json::from_str(out.trim()).expect("netpeer raw's line");
    let reply = held["response"].as_str().unwrap_or_default();
    assert!(
        reply.contains(&format!("\"peer\":\"{node_ip}:")),
        "the held connection was proxied: {held}"
    );
    let after = Duration::from_millis(held["after_ms"].as_u64().unwrap());
    assert!(
        after >= grace.saturating_sub(Duration::from_millis(500))
            && after < grace + Duration::from_secs(5),
        "the held connection ended when the old agent's drain ({grace:?}) ended, after {after:?}"
    );

    let probes = probes.into_inner().unwrap();
    let failed: Vec<_> = probes.iter().filter_map(|p| p.error.as_ref()).collect();
    let direct = probes.iter().filter(|p| p.steered == Some(false)).count();
    eprintln!(
        "restart gap: {} probe connections, {direct} went direct during restarts, {} failed",
        probes.len(),
        failed.len()
    );
    eprintln!("held connection: {held}");
    for (i, g) in gaps.iter().enumerate() {
        eprintln!(
            "restart {}: SIGTERM→exit {:?}, exit→ready {:?}, exit→steered again {:?}; new \
             connections went direct for {:?}",
            i + 1,
            g.stop,
            g.ready,
            g.resteered,
            g.direct
        );
    }
    assert!(
        failed.is_empty(),
        "connections failed across restarts: {failed:?}"
    );
    assert!(
        direct > 0,
        "connections went direct (fail open) while no agent ran"
    );
    for g in &gaps {
        assert!(
            g.resteered < Duration::from_secs(5),
            "a restarted agent steers again within 5 s of the old one's exit, took {:?}",
            g.resteered
        );
    }
}
