//! The traffic API in a test world: `shunt traffic-api` in a node's namespace, registered with
//! the fake API server as the APIService `v1alpha1.traffic.shunt.dev` (the server's aggregator
//! dials it in that namespace, over TLS with a front-proxy certificate made by `openssl`),
//! running as its ServiceAccount with exactly the access lists of `agent::kube::rbac`; and
//! tenants: users with a bearer token and RBAC objects, as a cluster's admin would grant them.
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    fake_apiserver::ServiceTarget,
    kube_world::{FakeCluster, KubeNode, LEASE_NS},
    netns::PROXY4,
    process::{ChildGuard, spawn_in},
};

/// The traffic API's ServiceAccount user.
pub const TRAFFIC_API_USER: &str = "system:serviceaccount:shunt-system:shunt-traffic-api";
/// The agents' debug port on the node address (the DaemonSet's `--debug-addr $(NODE_IP):9465`).
pub const AGENT_DEBUG_PORT: u16 = 9465;
/// Where `shunt traffic-api` listens, in the node namespace (its Service's port).
pub const TRAFFIC_API_PORT: u16 = 8443;
/// The agent pod [`TrafficApi::start`] registers.
pub const AGENT_POD: &str = "shunt-node-a";

/// RBAC rules (JSON) granting an access list.
pub fn rules(access: &[agent::kube::rbac::ApiAccess]) -> Value {
    Value::Array(
        access
            .iter()
            .map(|a| json!({ "apiGroups": [a.group], "resources": [a.resource], "verbs": a.verbs }))
            .collect(),
    )
}

/// A Role (in `namespace`) or ClusterRole (`None`) granting `access`, bound to `subject`.
pub fn grant(
    cluster: &FakeCluster,
    namespace: Option<&str>,
    name: &str,
    access: &[agent::kube::rbac::ApiAccess],
    subject: Value,
) {
    let (role, binding) = match namespace {
        Some(_) => ("Role", "RoleBinding"),
        None => ("ClusterRole", "ClusterRoleBinding"),
    };
    let meta = |n: &str| match namespace {
        Some(ns) => json!({ "name": n, "namespace": ns }),
        None => json!({ "name": n }),
    };
    cluster.create(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": role,
        "metadata": meta(name), "rules": rules(access),
    }));
    cluster.create(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding,
        "metadata": meta(name),
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": role, "name": name },
        "subjects": [subject],
    }));
}

/// A User subject.
pub fn user(name: &str) -> Value {
    json!({ "kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name })
}

/// A tenant: a token and a kubeconfig for `name`, with the traffic reader Role (the ClusterRole
/// `shunt-traffic-reader` of deploy/, bound in each of `namespaces`).
pub fn tenant(
    cluster: &FakeCluster,
    dir: &std::path::Path,
    name: &str,
    namespaces: &[&str],
) -> PathBuf {
    let token = format!("{name}-token");
    cluster.api.add_token(&token, name, &[]);
    if cluster
        .api
        .get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            None,
            "shunt-traffic-reader",
        )
        .is_none()
    {
        cluster.create(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": "shunt-traffic-reader" },
            "rules": rules(agent::kube::rbac::TRAFFIC_READER_ACCESS),
        }));
    }
    for ns in namespaces {
        cluster.create(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": format!("{name}-traffic-reader"), "namespace": ns },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "shunt-traffic-reader" },
            "subjects": [user(name)],
        }));
    }
    let path = dir.join(format!("kubeconfig-{name}"));
    cluster
        .api
        .write_kubeconfig_with_token(&path, &token)
        .expect("tenant kubeconfig");
    path
}

/// `shunt traffic-api` in a node's namespace, registered as the APIService
/// `v1alpha1.traffic.shunt.dev` with the fake API server, running as its ServiceAccount with
/// exactly the access lists of `agent::kube::rbac`; and the agent pod it fans out to.
pub struct TrafficApi {
    pub child: ChildGuard,
    pub log: PathBuf,
    /// The debug token file the agents must get (`--debug-token-file`).
    pub token_file: PathBuf,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An EC key and a certificate signed by `ca` (self-signed when `None`), with `ext` lines.
fn cert(dir: &std::path::Path, name: &str, cn: &str, ca: Option<&str>, ext: &str) {
    let key = format!("{name}.key");
    let crt = format!("{name}.crt");
    let extfile = format!("{name}.ext");
    std::fs::write(dir.join(&extfile), ext).expect("ext file");
    let subj = format!("/CN={cn}");
    match ca {
        None => openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &crt,
                "-days",
                "2",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ),
        Some(ca) => {
            let csr = format!("{name}.csr");
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &subj,
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &format!("{ca}.crt"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-extfile",
                    &extfile,
                ],
            );
        }
    }
}

impl TrafficApi {
    /// Sets up certificates, RBAC, the APIService and its Service, the agent pod object
    /// ([`AGENT_POD`], at the node address where the agent's debug listener is), and starts the
    /// server. The agent must run with [`Self::agent_args`].
    pub fn start(cluster: &FakeCluster, node: &KubeNode) -> Self {
        let dir = node.env.run.path.join("traffic-api");
        std::fs::create_dir_all(&dir).expect("traffic-api dir");
        // The API server's front-proxy CA and client certificate; the serving CA and cert.
        cert(&dir, "front-proxy-ca", "front-proxy-ca", None, "");
        cert(
            &dir,
            "front-proxy-client",
            "front-proxy-client",
            Some("front-proxy-ca"),
            "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
        );
        cert(&dir, "serving-ca", "shunt-traffic-api-ca", None, "");
        cert(
            &dir,
            "serving",
            "shunt-traffic-api",
            Some("serving-ca"),
            "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n\
             subjectAltName=DNS:shunt-traffic-api.shunt-system.svc\n",
        );
        let read = |f: &str| std::fs::read(dir.join(f)).expect("certificate file");
        cluster.api.set_front_proxy_client(
            &read("front-proxy-client.crt"),
            &read("front-proxy-client.key"),
        );
        cluster.create(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "extension-apiserver-authentication", "namespace": "kube-system" },
            "data": { "requestheader-client-ca-file": String::from_utf8_lossy(&read("front-proxy-ca.crt")) },
        }));
        // The Service and the APIService, pinned to the serving CA.
        cluster.create(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "shunt-traffic-api", "namespace": LEASE_NS },
            "spec": { "selector": { "app.kubernetes.io/component": "traffic-api" },
                      "ports": [{ "port": 443, "targetPort": TRAFFIC_API_PORT }] },
        }));
        use base64::Engine as _;
        cluster.create(json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": { "name": agent::traffic::API_SERVICE },
            "spec": {
                "group": agent::traffic::GROUP, "version": agent::traffic::VERSION,
                "service": { "namespace": LEASE_NS, "name": "shunt-traffic-api", "port": 443 },
                "caBundle": base64::engine::general_purpose::STANDARD.encode(read("serving-ca.crt")),
                "groupPriorityMinimum": 1000, "versionPriority": 15,
            },
        }));
        let node_ns = std::sync::Arc::new(node.env.node().open().expect("node netns"));
        cluster
            .api
            .set_service_dialer(std::sync::Arc::new(move |t: &ServiceTarget| {
                if (t.namespace.as_str(), t.name.as_str()) != (LEASE_NS, "shunt-traffic-api") {
                    return Err(std::io::Error::other(
                        "only the traffic API is reachable here",
                    ));
                }
                dial_in(
                    &node_ns,
                    SocketAddr::from(([127, 0, 0, 1], TRAFFIC_API_PORT)),
                )
            }));
        // Its ServiceAccount, with exactly the code's access lists.
        let token = "traffic-api-token";
        cluster.api.add_token(
            token,
            TRAFFIC_API_USER,
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:shunt-system",
            ],
        );
        let sa =
            json!({ "kind": "ServiceAccount", "name": "shunt-traffic-api", "namespace": LEASE_NS });
        use agent::kube::rbac;
        grant(
            cluster,
            None,
            "shunt-traffic-api",
            rbac::TRAFFIC_API_ACCESS,
            sa.clone(),
        );
        grant(
            cluster,
            Some(LEASE_NS),
            "shunt-traffic-api",
            rbac::TRAFFIC_API_AGENT_NAMESPACE_ACCESS,
            sa.clone(),
        );
        grant(
            cluster,
            Some("kube-system"),
            "extension-apiserver-authentication-reader",
            rbac::TRAFFIC_API_KUBE_SYSTEM_ACCESS,
            sa,
        );
        let kubeconfig = dir.join("kubeconfig");
        cluster
            .api
            .write_kubeconfig_with_token(&kubeconfig, token)
            .expect("traffic-api kubeconfig");
        let token_file = dir.join("debug-token");
        std::fs::write(&token_file, "agents-and-traffic-api-only\n").expect("debug token");
        // The agent pod, as the DaemonSet makes it: hostNetwork, so its IP is the node's.
        cluster.create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": AGENT_POD, "namespace": LEASE_NS,
                          "labels": { "app.kubernetes.io/name": "shunt",
                                      "app.kubernetes.io/component": "agent" } },
            "spec": { "nodeName": "node-a", "hostNetwork": true,
                      "containers": [{ "name": "agent", "image": "registry.example/shunt:test" }] },
        }));
        cluster
            .api
            .replace_status(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": AGENT_POD, "namespace": LEASE_NS },
                "status": { "phase": "Running", "podIP": PROXY4.to_string() },
            }))
            .expect("agent pod status");

        let log = dir.join("traffic-api.log");
        let mut cmd = std::process::Command::new(&node.env.bins.agent);
        cmd.args(["traffic-api", "--listen-addr"])
            .arg(format!("127.0.0.1:{TRAFFIC_API_PORT}"))
            .arg("--tls-cert-file")
            .arg(dir.join("serving.crt"))
            .arg("--tls-private-key-file")
            .arg(dir.join("serving.key"))
            .arg("--debug-token-file")
            .arg(&token_file)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("SHUNT_LOG", "debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("traffic-api log"));
        let child = spawn_in("traffic-api", cmd, Some(node.env.node()), None)
            .expect("spawning shunt traffic-api");
        let t = Self {
            child,
            log,
            token_file,
        };
        let listening = || {
            node.env
                .node()
                .run(|| {
                    std::net::TcpStream::connect(SocketAddr::from((
                        [127, 0, 0, 1],
                        TRAFFIC_API_PORT,
                    )))
                    .is_ok()
                })
                .unwrap_or(false)
        };
        let start = Instant::now();
        while !listening() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "shunt traffic-api did not listen:\n{}",
                t.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    /// The agent flags that put its debug listener where the traffic API looks for it.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--debug-addr".into(),
            format!("{PROXY4}:{AGENT_DEBUG_PORT}"),
            "--debug-token-file".into(),
            self.token_file.display().to_string(),
        ]
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Connects from inside the network namespace `ns` (the API server's aggregator, a kubelet).
pub fn dial_in(ns: &std::fs::File, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::AsRawFd as _;
    let fd = ns.try_clone()?;
    std::thread::spawn(move || {
        // SAFETY: a valid namespace fd; setns affects only this thread.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("dial thread panicked")))
}
