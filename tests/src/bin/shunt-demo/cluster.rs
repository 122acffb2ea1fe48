//! Bringing the mini-cluster up: a node namespace running the real agent, five pod namespaces
//! (a client and the three-tier app), the demo cgroup, and the routes file.
//!
//! No kube-proxy: each Service has a virtual address that exists nowhere. The services are marked
//! `alwaysSteer`, so connects to them are captured even without a fork and the agent picks a
//! baseline endpoint (or, for a forked key, the sandbox).
use std::{
    fs,
    mem::ManuallyDrop,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;
use tests::{
    harness::http_get,
    kernel,
    netns::{Netns, PROXY4, PROXY6, Topology},
    process::spawn_in,
};

use crate::{gate, progress, teardown};

pub const SERVICE_PORT: u16 = 9080;
pub const POD_PORT: u16 = 8080;
const PROXY_PORT: u16 = 15001;
const ADMIN_PORT: u16 = 9464;
const DEBUG_PORT: u16 = 9465;
/// The routing key the sandbox is forked under.
pub const SANDBOX_KEY: &str = "pr-42";

/// A Service: its name and virtual address.
pub struct Svc {
    pub name: &'static str,
    pub vip: Ipv4Addr,
}

pub const SERVICES: [Svc; 3] = [
    Svc {
        name: "frontend",
        vip: Ipv4Addr::new(198, 19, 10, 6),
    },
    Svc {
        name: "reviews",
        vip: Ipv4Addr::new(198, 19, 10, 7),
    },
    Svc {
        name: "ratings",
        vip: Ipv4Addr::new(198, 19, 10, 8),
    },
];

/// What runs in each pod namespace (index = the topology's pod index).
pub struct PodSpec {
    pub name: &'static str,
    /// The service it serves (empty for the client).
    pub service: &'static str,
    pub version: &'static str,
    /// The routing key whose sandbox this pod is, if it is one.
    pub sandbox: Option<&'static str>,
    /// The service it calls for every request.
    pub calls: Option<&'static str>,
}

pub const CLIENT: usize = 0;
pub const PODS: [PodSpec; 5] = [
    PodSpec {
        name: "client",
        service: "",
        version: "",
        sandbox: None,
        calls: Some("frontend"),
    },
    PodSpec {
        name: "frontend-v1",
        service: "frontend",
        version: "v1",
        sandbox: None,
        calls: Some("reviews"),
    },
    PodSpec {
        name: "reviews-v1",
        service: "reviews",
        version: "v1",
        sandbox: None,
        calls: Some("ratings"),
    },
    PodSpec {
        name: "reviews-v2",
        service: "reviews",
        version: "v2",
        sandbox: Some(SANDBOX_KEY),
        calls: Some("ratings"),
    },
    PodSpec {
        name: "ratings-v1",
        service: "ratings",
        version: "v1",
        sandbox: None,
        calls: None,
    },
];

pub fn vip(service: &str) -> SocketAddr {
    let s = SERVICES
        .iter()
        .find(|s| s.name == service)
        .expect("a demo service");
    SocketAddr::from((s.vip, SERVICE_PORT))
}

/// The URL the client calls.
pub fn entry_url() -> String {
    format!("http://{}/", vip("frontend"))
}

/// Says what this machine lacks for the demo, in one line with the fix, or Ok.
pub fn preflight() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "not running as root: the demo creates network namespaces, a cgroup and loads eBPF \
             programs; run it as root (`sudo -E env PATH=\"$PATH\" cargo xtask demo`)"
        );
    }
    agent::capture::cgroup2_mount()?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "no kernel BTF (/sys/kernel/btf/vmlinux): boot a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (Debian's stock kernels are)"
        );
    }
    for (tool, pkg) in [("ip", "iproute2"), ("nsenter", "util-linux")] {
        if kernel::which(tool).is_none() {
            bail!("`{tool}` not found in PATH: install it (`apt-get install {pkg}`)");
        }
    }
    Ok(())
}

pub struct Cluster {
    /// Never dropped here: teardown finds the namespaces by name.
    pub topo: ManuallyDrop<Topology>,
    /// The cgroup the agent captures; every pod process runs in it.
    pub captured: PathBuf,
    pub bin_dir: PathBuf,
}

impl Cluster {
    pub fn up() -> anyhow::Result<Self> {
        let bin_dir = std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .context("no directory for the current executable")?;
        for bin in ["shunt-under-test", "demo-app"] {
            if !bin_dir.join(bin).is_file() {
                bail!(
                    "{} is missing: build it with `cargo build -p tests --bin {bin}` (or run \
                     `cargo xtask demo`)",
                    bin_dir.join(bin).display()
                );
            }
        }
        progress("creating the node and pod network namespaces (shunt-demo-*)");
        // Names: shunt-demo-node, shunt-demo-p0 .. -p4.
        let topo = ManuallyDrop::new(gate::step(|| Topology::new("demo", PODS.len()))?);

        let root = teardown::cgroup_root().context("no cgroup v2 mount")?;
        let captured = root.join("captured");
        let agent_cg = root.join("agent");
        gate::step(|| -> anyhow::Result<()> {
            for d in [&root, &captured, &agent_cg] {
                fs::create_dir(d).with_context(|| format!("creating cgroup {}", d.display()))?;
            }
            Ok(())
        })?;

        let routes_path = Path::new(teardown::RUN_DIR).join("routes.yaml");
        let routes = routes_yaml(&topo);
        if let Err(e) = agent::routes::file::parse_routes(&routes, "routes.yaml") {
            if e.to_string().contains("alwaysSteer") {
                bail!(
                    "this agent's routes file does not accept `alwaysSteer` yet, which the demo \
                     needs to serve Services without kube-proxy:\n{e}"
                );
            }
            bail!("the demo's routes file is invalid:\n{e}");
        }
        fs::write(&routes_path, &routes)?;

        progress("starting pods: frontend, reviews v1, reviews v2 (sandbox pr-42), ratings");
        for (i, pod) in PODS.iter().enumerate().skip(1) {
            let mut cmd = Command::new(bin_dir.join("demo-app"));
            cmd.args(["serve", "--service", pod.service, "--version", pod.version])
                .args(["--pod", pod.name])
                .args(["--listen", &topo.pods[i].addr4(POD_PORT).to_string()]);
            if let Some(callee) = pod.calls {
                cmd.args(["--call", &format!("http://{}/", vip(callee))]);
            }
            let log = log_file(pod.name)?;
            cmd.stdout(log.try_clone()?).stderr(log);
            // Each pod in its own child of the captured cgroup (the agent's programs apply to
            // the whole subtree); its record tells `shunt mcp --cluster-dir` its address and log.
            let cgroup = captured.join(pod.name);
            gate::step(|| fs::create_dir(&cgroup))
                .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
            agent::sandbox::local::PodRecord {
                name: pod.name.into(),
                namespace: "shop".into(),
                ips: vec![topo.pods[i].ip4.into()],
                service: pod.sandbox.is_none().then(|| pod.service.to_string()),
                sandbox: None,
            }
            .write(Path::new(teardown::RUN_DIR))?;
            // Not waited for: teardown stops every process in the cgroup.
            spawn(pod.name, cmd, &topo.pods[i].netns, &cgroup)?;
        }
        for (i, pod) in PODS.iter().enumerate().skip(1) {
            let addr = topo.pods[i].addr4(POD_PORT);
            wait_until(
                Duration::from_secs(10),
                &format!("{} listening", pod.name),
                || {
                    topo.node
                        .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
                        .is_ok_and(|r| r.is_ok())
                },
            )?;
        }

        progress(&format!(
            "starting the agent (`shunt run`, eBPF capture on {})",
            captured.display()
        ));
        let mut cmd = Command::new(bin_dir.join("shunt-under-test"));
        cmd.arg("run")
            .arg("--cgroup")
            .arg(&captured)
            .args(["--proxy-addr", &format!("{PROXY4}:{PROXY_PORT}")])
            .args(["--proxy-addr6", &format!("[{PROXY6}]:{PROXY_PORT}")])
            .arg("--bpffs-dir")
            .arg(teardown::bpffs())
            .args(["--admin-addr", &format!("127.0.0.1:{ADMIN_PORT}")])
            .arg("--routes")
            .arg(&routes_path)
            .args(["--shutdown-grace", "2s"])
            .env("SHUNT_LOG", "info");
        let log = log_file("agent")?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let mut agent = spawn("agent", cmd, &topo.node, &agent_cg)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if matches!(
                topo.node
                    .run(|| http_get(SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)), "/readyz")),
                Ok(Ok((200, _)))
            ) {
                break;
            }
            if let Some(status) = agent.try_wait()? {
                bail!(
                    "the agent exited ({status}) before ready:\n{}",
                    agent_log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!("the agent was not ready within 20 s:\n{}", agent_log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            topo,
            captured,
            bin_dir,
        })
    }

    fn pod_ip(&self, i: usize) -> Ipv4Addr {
        self.topo.pods[i].ip4
    }

    /// The pod at this IPv4 address.
    pub fn pod_at(&self, ip: std::net::IpAddr) -> Option<&'static PodSpec> {
        self.topo
            .pods
            .iter()
            .position(|p| std::net::IpAddr::V4(p.ip4) == ip)
            .map(|i| &PODS[i])
    }

    pub fn print_layout(&self) {
        println!();
        println!("mini-cluster (no kube-proxy: the agent serves the virtual addresses):");
        for svc in &SERVICES {
            let pods: Vec<String> = PODS
                .iter()
                .enumerate()
                .filter(|(_, p)| p.service == svc.name)
                .map(|(i, p)| {
                    let role = match p.sandbox {
                        Some(k) => format!("sandbox, key {k}"),
                        None => "baseline".into(),
                    };
                    format!("{} {} ({role})", p.name, self.pod_ip(i))
                })
                .collect();
            println!(
                "  {:<9} {:<17} → {}",
                svc.name,
                vip(svc.name).to_string(),
                pods.join(", ")
            );
        }
        println!(
            "  client    {:<17}   sends the requests; its calls, and every pod's, are captured",
            self.pod_ip(CLIENT).to_string()
        );
    }

    /// Runs `demo-app get` in the client pod, inside the captured cgroup; returns the JSON answer.
    pub fn client_get(&self, headers: &[(&str, &str)]) -> anyhow::Result<Value> {
        let mut cmd = Command::new(self.bin_dir.join("demo-app"));
        cmd.arg("get").arg(entry_url());
        for (n, v) in headers {
            cmd.args(["-H", &format!("{n}: {v}")]);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let cgroup = self.captured.join(PODS[CLIENT].name);
        let child = gate::step(|| {
            if !cgroup.exists() {
                fs::create_dir(&cgroup)?;
            }
            spawn_in(
                "client",
                in_own_group(cmd),
                Some(&self.topo.pods[CLIENT].netns),
                Some(&cgroup),
            )
        })?;
        let (status, out, err) = child.output_timeout(Duration::from_secs(30))?;
        if out.trim().is_empty() {
            bail!("the client got no answer ({status}): {}", err.trim());
        }
        serde_json::from_str(&out).with_context(|| format!("the client's answer: {out}"))
    }

    /// The agent's recent decisions for `key`.
    pub fn decisions(&self, key: &str) -> anyhow::Result<Vec<Value>> {
        let (status, body) = debug_get(&self.topo.node, &format!("/decisions?key={key}"))?;
        if status != 200 {
            bail!("/decisions answered {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// For `--keep`: how to use the cluster by hand, and how to remove it.
    pub fn print_how_to_use(&self) {
        let client_ns = format!("/run/netns/{}", self.topo.pods[CLIENT].netns.name);
        let node_ns = format!("/run/netns/{}", self.topo.node.name);
        let procs = self.captured.join("cgroup.procs");
        let curl = if kernel::which("curl").is_some() {
            "curl -s".to_string()
        } else {
            format!("{} get", self.bin_dir.join("demo-app").display())
        };
        let in_client = |cmd: &str| {
            format!(
                "nsenter --net={client_ns} -- sh -c 'echo $$ > {} && exec {cmd}'",
                procs.display()
            )
        };
        let url = entry_url();
        println!(
            "The mini-cluster is up. As root, call it from the client pod, inside the captured cgroup:"
        );
        println!();
        println!(
            "  {}",
            in_client(&format!(
                "{curl} -H \"baggage: sd-routing-key={SANDBOX_KEY}\" {url}"
            ))
        );
        println!("  {}", in_client(&format!("{curl} {url}")));
        println!();
        println!("or open a shell there: {}", in_client("bash"));
        println!();
        println!("The agent's admin API, in the node namespace:");
        println!();
        println!(
            "  nsenter --net={node_ns} -- {curl} 'http://127.0.0.1:{DEBUG_PORT}/decisions?key={SANDBOX_KEY}'"
        );
        println!("  nsenter --net={node_ns} -- {curl} http://127.0.0.1:{DEBUG_PORT}/routes");
        println!();
        println!(
            "Routes file (edits are picked up live): {}/routes.yaml; logs: {}/*.log",
            teardown::RUN_DIR,
            teardown::RUN_DIR
        );
        println!();
        let mcp = format!(
            "{} mcp --routes {}/routes.yaml --debug-netns {node_ns} --client-netns {client_ns} \
             --client-cgroup {} --cluster-dir {}",
            self.bin_dir.join("shunt-under-test").display(),
            teardown::RUN_DIR,
            self.captured.display(),
            teardown::RUN_DIR
        );
        println!("A coding agent drives it over MCP (as root; sandboxes of its own builds, logs,");
        println!("diffs against baseline; what a session creates goes with it):");
        println!();
        println!("  claude mcp add shunt -- sudo {mcp}");
        println!();
        println!("Tear it down with: cargo xtask demo --down (sandboxes left by MCP sessions too)");
    }
}

/// The routes file: three Services on virtual addresses, the sandbox pod, the `pr-42` route
/// forking `reviews` to it, and every pod as a node pod naming its network namespace, so the
/// agent's upstream connections leave from the calling pod's own address (source identity).
fn routes_yaml(topo: &Topology) -> String {
    let mut out = String::from(
        "# Written by `cargo xtask demo` (tests/src/bin/shunt-demo). No kube-proxy here:\n\
         # alwaysSteer makes the agent serve each Service's virtual address, fork or no fork.\n\
         services:\n",
    );
    for svc in &SERVICES {
        out.push_str(&format!(
            "  - name: {name}\n    namespace: shop\n    addresses: [{vip}]\n    alwaysSteer: true\n    \
             ports: [{{ name: http, port: {SERVICE_PORT}, targetPort: http }}]\n    endpoints:\n",
            name = svc.name,
            vip = svc.vip,
        ));
        for (i, pod) in PODS.iter().enumerate() {
            if pod.service == svc.name && pod.sandbox.is_none() {
                out.push_str(&format!(
                    "      - {{ ip: {}, ports: {{ http: {POD_PORT} }} }}\n",
                    topo.pods[i].ip4
                ));
            }
        }
    }
    out.push_str("pods:\n");
    for (i, pod) in PODS.iter().enumerate() {
        if let Some(key) = pod.sandbox {
            out.push_str(&format!(
                "  - name: {name}\n    namespace: shop\n    ips: [{ip}]\n    \
                 labels: {{ app: {svc}, version: {ver}, shunt.dev/sandbox: {key} }}\n    \
                 ports: {{ http: {POD_PORT} }}\n",
                name = pod.name,
                ip = topo.pods[i].ip4,
                svc = pod.service,
                ver = pod.version,
            ));
        }
    }
    out.push_str("routes:\n");
    for pod in PODS.iter().filter(|p| p.sandbox.is_some()) {
        let key = pod.sandbox.unwrap_or_default();
        out.push_str(&format!(
            "  - name: {key}\n    namespace: shop\n    spec:\n      routingKey: {key}\n      \
             forks:\n        - service: {svc}\n          \
             to: {{ selector: {{ app: {svc}, shunt.dev/sandbox: {key} }} }}\n      \
             fallback: Baseline\n",
            svc = pod.service,
        ));
    }
    let node_pods: Vec<(usize, &str, &str)> = PODS
        .iter()
        .enumerate()
        .map(|(i, pod)| (i, "shop", pod.name))
        .collect();
    out.push_str(&tests::source_world::node_pods_yaml(topo, &node_pods));
    out
}

fn log_file(name: &str) -> anyhow::Result<fs::File> {
    let path = Path::new(teardown::RUN_DIR).join(format!("{name}.log"));
    fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

fn agent_log_tail() -> String {
    let log =
        fs::read_to_string(Path::new(teardown::RUN_DIR).join("agent.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Children get their own process group: Ctrl-C in the terminal reaches only the demo, which
/// then tears down in order (and a kept cluster outlives the terminal's signals). They also get
/// an empty signal mask: a child inherits the mask across exec, and ours blocks SIGTERM, which
/// the agent needs for its graceful shutdown.
fn in_own_group(mut cmd: Command) -> Command {
    cmd.process_group(0);
    // SAFETY: only async-signal-safe calls (sigemptyset, pthread_sigmask) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    cmd
}

/// Starts a long-running process in a namespace and cgroup, under the gate.
fn spawn(name: &str, cmd: Command, netns: &Netns, cgroup: &Path) -> anyhow::Result<Child> {
    let mut guard = gate::step(|| spawn_in(name, in_own_group(cmd), Some(netns), Some(cgroup)))?;
    guard.child.take().context("spawned child missing")
}

fn debug_get(node: &Netns, path: &str) -> anyhow::Result<(u16, String)> {
    let path = path.to_string();
    node.run(move || http_get(SocketAddr::from(([127, 0, 0, 1], DEBUG_PORT)), &path))?
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
