//! The no-cluster mini-cluster the MCP loop tests drive: frontend → reviews → ratings, each a
//! `demo-app` pod in its own child of the captured cgroup, with its log and pod record in the
//! run directory (what `shunt mcp --cluster-dir` reads), and a bare JSON-RPC session on
//! `shunt mcp` for what an SDK cannot do (signals).
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use agent::sandbox::local::{PodRecord, kill_cgroup};
use serde_json::{Value, json};

use crate::{
    harness::{DEBUG_PORT, Env},
    process::{ChildGuard, spawn_in},
};

pub const SERVICE_PORT: u16 = 9080;
pub const POD_PORT: u16 = 8080;

/// Pods: 0 client, then (pod, name, service, calls).
pub const APPS: [(usize, &str, &str, Option<&str>); 3] = [
    (1, "frontend-v1", "frontend", Some("reviews")),
    (2, "reviews-v1", "reviews", Some("ratings")),
    (3, "ratings-v1", "ratings", None),
];

pub fn vip(service: &str) -> SocketAddr {
    let ip = match service {
        "frontend" => Ipv4Addr::new(198, 19, 10, 6),
        "reviews" => Ipv4Addr::new(198, 19, 10, 7),
        _ => Ipv4Addr::new(198, 19, 10, 8),
    };
    SocketAddr::from((ip, SERVICE_PORT))
}

/// The three services, no sandbox pod, and a route a person wrote (the session must not
/// delete it).
pub fn routes_yaml(env: &Env) -> String {
    let mut out = String::from("# written by tests/tests/mcp_loop.rs\nservices:\n");
    for (i, _, svc, _) in APPS {
        out.push_str(&format!(
            "  - name: {svc}\n    namespace: shop\n    addresses: [{}]\n    alwaysSteer: true\n    \
             ports: [{{ name: http, port: {SERVICE_PORT}, targetPort: http }}]\n    endpoints:\n      \
             - {{ ip: {}, ports: {{ http: {POD_PORT} }} }}\n",
            vip(svc).ip(),
            env.topo.pods[i].ip4
        ));
    }
    out.push_str(
        "pods: []\nroutes:\n  - name: pr-person\n    namespace: shop\n    spec:\n      \
         routingKey: pr-person\n      forks: [{ service: reviews, to: { selector: { \
         shunt.dev/sandbox: person } } }]\n",
    );
    out
}

/// Each pod in its own child of the captured cgroup, its log and record in the run directory.
pub fn start_apps(env: &Env, demo_app: &Path) -> Vec<ChildGuard> {
    let mut apps = Vec::new();
    for (i, name, service, calls) in APPS {
        let mut cmd = Command::new(demo_app);
        cmd.args([
            "serve",
            "--service",
            service,
            "--version",
            "v1",
            "--pod",
            name,
        ])
        .args(["--listen", &env.topo.pods[i].addr4(POD_PORT).to_string()]);
        if let Some(callee) = calls {
            cmd.args(["--call", &format!("http://{}/", vip(callee))]);
        }
        let log = fs::File::create(PodRecord::log_path(&env.run.path, name)).expect("log");
        cmd.stdout(log.try_clone().expect("log")).stderr(log);
        let cgroup = env.cgroup.child(name).expect("pod cgroup");
        apps.push(
            spawn_in(name, cmd, Some(&env.topo.pods[i].netns), Some(&cgroup))
                .expect("starting demo-app"),
        );
        PodRecord {
            name: name.into(),
            namespace: "shop".into(),
            ips: vec![env.topo.pods[i].ip4.into()],
            service: Some(service.into()),
            sandbox: None,
        }
        .write(&env.run.path)
        .expect("pod record");
    }
    for (i, name, ..) in APPS {
        let addr = env.topo.pods[i].addr4(POD_PORT);
        wait(
            Duration::from_secs(10),
            &format!("{name} listening"),
            || {
                env.node()
                    .run(move || {
                        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                    })
                    .unwrap_or(false)
            },
        );
    }
    apps
}

/// `shunt mcp` in no-cluster mode on `env`'s node: the routes file, the agent's debug listener
/// in the node namespace, pod 0 as the client for test requests, the captured cgroup; then
/// `extra`.
pub fn node_mcp_server(env: &Env, routes: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        env.bins.agent.display().to_string(),
        "mcp".into(),
        "--routes".into(),
        routes.display().to_string(),
        "--debug-addr".into(),
        format!("127.0.0.1:{DEBUG_PORT}"),
        "--debug-netns".into(),
        env.node().path(),
        "--client-netns".into(),
        env.topo.pods[0].netns.path(),
        "--client-cgroup".into(),
        env.cgroup.path().display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub fn wait(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Removes whatever sandboxes are left (kept ones, or all after a failure).
pub struct SandboxSweep<'a>(pub &'a Env);

impl Drop for SandboxSweep<'_> {
    fn drop(&mut self) {
        for rec in PodRecord::all(&self.0.run.path) {
            if let Some(sb) = rec.sandbox {
                kill_cgroup(&sb.cgroup);
                let _ = Command::new("ip")
                    .arg("netns")
                    .arg("del")
                    .arg(sb.netns.file_name().unwrap_or_default())
                    .output();
            }
        }
    }
}

/// A bare JSON-RPC session on `shunt mcp`'s stdio (for what the SDK cannot do: signals).
pub struct RawSession {
    guard: ChildGuard,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    next: u64,
}

impl RawSession {
    pub fn start(server: &[String]) -> Self {
        use std::process::Stdio;
        let mut cmd = Command::new(&server[0]);
        cmd.args(&server[1..])
            .env("SHUNT_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("shunt mcp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut s = RawSession {
            guard: ChildGuard {
                child: Some(child),
                name: "shunt mcp".into(),
            },
            stdin,
            stdout,
            next: 0,
        };
        s.call(
            "initialize",
            json!({ "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": { "name": "mcp_loop.rs", "version": "0" } }),
        );
        s.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
        s
    }

    fn send(&mut self, v: &Value) {
        use std::io::Write as _;
        writeln!(self.stdin, "{v}").expect("writing to shunt mcp");
        self.stdin.flush().expect("flush");
    }

    /// One request; its result. (Reads stay bounded: each tool call has its own timeout.)
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        use std::io::BufRead as _;
        self.next += 1;
        let id = self.next;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("reading shunt mcp");
            assert!(n > 0, "shunt mcp closed stdout before answering {method}");
            let v: Value = serde_json::from_str(&line).expect("JSON-RPC line");
            if v["id"] == id {
                return v["result"].clone();
            }
        }
    }

    pub fn tool(&mut self, name: &str, args: Value) -> Value {
        let r = self.call("tools/call", json!({ "name": name, "arguments": args }));
        assert_ne!(r["isError"], true, "{name}: {r:#}");
        r["structuredContent"].clone()
    }

    /// Sends `sig` and waits for the server to exit.
    pub fn end_with(mut self, sig: i32) {
        let pid = self.guard.pid();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, sig) };
        let child = self.guard.child.as_mut().expect("child");
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "shunt mcp did not exit on signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
