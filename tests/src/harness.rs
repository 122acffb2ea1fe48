//! One test's world: a topology, a cgroup with capture attached, a bpffs pin directory, and the
//! real agent process. Everything is torn down on drop, in reverse order, even on panic.
use std::{
    ffi::CString,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::{
    backends::Reply,
    cgroup::TestCgroup,
    kernel,
    netns::{Netns, PROXY4, PROXY6, Topology},
    process::{ChildGuard, spawn_in},
};

/// Paths of the binaries under test (cargo only tells integration tests; see [`bins!`]).
#[derive(Clone, Debug)]
pub struct Bins {
    pub agent: PathBuf,
    pub netpeer: PathBuf,
}

impl Bins {
    /// The binaries built beside the running one (for the bench binaries, which cargo does not
    /// hand `CARGO_BIN_EXE_*`).
    pub fn beside_current_exe() -> std::io::Result<Self> {
        let dir = std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        Ok(Self {
            agent: dir.join("shunt-under-test"),
            netpeer: dir.join("netpeer"),
        })
    }
}

/// `Bins` for the calling integration test.
#[macro_export]
macro_rules! bins {
    () => {
        $crate::harness::Bins {
            agent: env!("CARGO_BIN_EXE_shunt-under-test").into(),
            netpeer: env!("CARGO_BIN_EXE_netpeer").into(),
        }
    };
}

pub const PROXY_PORT: u16 = 15001;
pub const ADMIN_PORT: u16 = 9464;
/// The agent's default `--debug-addr` port (loopback of the node namespace).
pub const DEBUG_PORT: u16 = 9465;

/// A directory for this test's files, with a bpffs the agent mounts at `bpf/`.
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn bpffs(&self) -> PathBuf {
        self.path.join("bpf")
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.bpffs().as_os_str().as_bytes()) {
            // SAFETY: valid path; MNT_DETACH cannot leave a dangling pointer.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

pub struct Env {
    pub id: String,
    pub bins: Bins,
    // Drop order: topology (and its processes' sockets), cgroup, then run dir.
    pub topo: Topology,
    pub cgroup: TestCgroup,
    pub run: RunDir,
}

/// One client result line from netpeer.
#[derive(Debug, Deserialize)]
pub struct ClientLine {
    pub peername: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub reply: Option<Reply>,
    pub error: Option<String>,
}

impl Env {
    /// Builds a world with `pods` pods, or returns None when kernel tests cannot run here (and
    /// are not required).
    pub fn new(test: &str, pods: usize, bins: Bins) -> Option<Self> {
        if !kernel::available(test) {
            return None;
        }
        let id = kernel::unique_id();
        let env = (|| -> anyhow::Result<Self> {
            let run = RunDir {
                path: PathBuf::from(format!("/run/shunt-test-{id}")),
            };
            fs::create_dir_all(&run.path)?;
            let cgroup = TestCgroup::create(&id)?;
            let topo = Topology::new(&id, pods)?;
            Ok(Self {
                id: id.clone(),
                bins,
                topo,
                cgroup,
                run,
            })
        })();
        Some(env.unwrap_or_else(|e| panic!("{test}: building the test topology: {e:#}")))
    }

    pub fn node(&self) -> &Netns {
        &self.topo.node
    }

    /// The standard agent flags for this world.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--cgroup".into(),
            self.cgroup.path().display().to_string(),
            "--proxy-addr".into(),
            format!("{PROXY4}:{PROXY_PORT}"),
            "--proxy-addr6".into(),
            format!("[{PROXY6}]:{PROXY_PORT}"),
            "--bpffs-dir".into(),
            self.run.bpffs().display().to_string(),
            "--admin-addr".into(),
            format!("127.0.0.1:{ADMIN_PORT}"),
        ]
    }

    /// Starts the agent in the node namespace with the standard flags plus `extra`, in `cgroup`
    /// (None: the runner's own cgroup, outside capture), and waits until it is ready.
    pub fn start_agent(&self, extra: &[String], cgroup: Option<&Path>) -> AgentProc {
        let mut args = self.agent_args();
        args.extend_from_slice(extra);
        self.start_agent_wrapped(&[], &args, cgroup)
    }

    /// Starts the agent with exactly `args` (not the standard flags), run through the command
    /// `wrapper` when it is not empty (`wrapper[0] wrapper[1..] AGENT args...`, e.g. `setpriv
    /// ... --`), in the node namespace and `cgroup`, and waits until it is ready.
    pub fn start_agent_wrapped(
        &self,
        wrapper: &[String],
        args: &[String],
        cgroup: Option<&Path>,
    ) -> AgentProc {
        let n = fs::read_dir(&self.run.path).map(|d| d.count()).unwrap_or(0);
        let log = self.run.path.join(format!("agent-{n}.log"));
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.bins.agent);
                c
            }
            None => Command::new(&self.bins.agent),
        };
        cmd.args(args).env("SHUNT_LOG", "debug");
        let logf = fs::File::create(&log).expect("agent log file");
        cmd.stdout(Stdio::null()).stderr(logf);
        let child = spawn_in("agent", cmd, Some(self.node()), cgroup).expect("spawning the agent");
        let mut agent = AgentProc {
            child,
            log,
            node: self.node().name.clone(),
        };
        agent.wait_ready(Duration::from_secs(15));
        agent
    }

    /// Starts netpeer in pod `pod` (captured) in the background; the handle yields its stdout.
    pub fn peer_in_background(&self, pod: usize, args: &[&str]) -> std::thread::JoinHandle<String> {
        let mut cmd = Command::new(&self.bins.netpeer);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = spawn_in(
            "netpeer",
            cmd,
            Some(&self.topo.pods[pod].netns),
            Some(self.cgroup.path()),
        )
        .expect("spawning netpeer");
        std::thread::spawn(move || {
            child
                .output_timeout(Duration::from_secs(60))
                .expect("netpeer finished in time")
                .1
        })
    }

    /// Runs netpeer in pod `pod` (captured) and returns its JSON lines.
    pub fn peer(&self, pod: usize, args: &[&str]) -> Vec<serde_json::Value> {
        self.client_lines(pod, true, args)
    }

    /// Runs netpeer in pod `pod`, inside the captured cgroup when `captured`.
    pub fn client(&self, pod: usize, captured: bool, args: &[&str]) -> Vec<ClientLine> {
        self.client_lines(pod, captured, args)
    }

    fn client_lines<T: serde::de::DeserializeOwned>(
        &self,
        pod: usize,
        captured: bool,
        args: &[&str],
    ) -> Vec<T> {
        let mut cmd = Command::new(&self.bins.netpeer);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let cg = captured.then(|| self.cgroup.path());
        let child = spawn_in("netpeer", cmd, Some(&self.topo.pods[pod].netns), cg)
            .expect("spawning netpeer");
        let (status, out, err) = child
            .output_timeout(Duration::from_secs(60))
            .expect("netpeer finished in time");
        assert!(status.success(), "netpeer {args:?} failed: {err}");
        netpeer_lines(&out)
    }
}

impl ClientLine {
    /// The backend's reply, or a panic naming the client's error.
    pub fn reply(&self) -> &Reply {
        self.reply
            .as_ref()
            .unwrap_or_else(|| panic!("client failed: {:?}", self.error))
    }
}

impl Env {
    /// One plain HTTP GET from pod 0 (captured) to `dst`; returns the peer address the backend
    /// saw (the client pod's when direct, the node's when proxied), or the error text.
    pub fn client_http_peer(&self, dst: SocketAddr) -> String {
        let lines: Vec<serde_json::Value> =
            self.client_lines(0, true, &["http", &dst.to_string(), r#"[{"path":"/"}]"#]);
        lines
            .first()
            .and_then(|l| l["served"]["peer"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("error: {lines:?}"))
    }
}

/// The agent process under test.
pub struct AgentProc {
    pub child: ChildGuard,
    pub log: PathBuf,
    node: String,
}

impl AgentProc {
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn node_ns(&self) -> Netns {
        Netns {
            name: self.node.clone(),
        }
    }

    /// GET a path on the admin API (inside the node namespace).
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let path = path.to_string();
        let ns = self.node_ns();
        let r = ns.run(move || http_get(SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)), &path));
        std::mem::forget(ns); // not ours to delete
        r?
    }

    /// GET a path on the debug API (`/routes`, `/decisions`, `/topology`; loopback of the node
    /// namespace, where the agent's default `--debug-addr` listens).
    pub fn debug_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let path = path.to_string();
        let ns = self.node_ns();
        let r = ns.run(move || http_get(SocketAddr::from(([127, 0, 0, 1], DEBUG_PORT)), &path));
        std::mem::forget(ns); // not ours to delete
        r?
    }

    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.admin_get("/readyz") {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.child.as_mut().map(|c| c.try_wait()) {
                panic!("agent exited ({status}) before ready:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                panic!("agent not ready within {timeout:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of a metric line (first match of `name` with these labels).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").expect("metrics");
        text.lines()
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == name_and_labels).then(|| v.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// SIGTERM, then wait for exit.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.child.signal(libc::SIGTERM);
        self.child
            .wait_timeout(timeout)
            .expect("agent exits after SIGTERM")
    }

    /// SIGKILL (a crash), then reap.
    pub fn kill(&mut self) {
        self.child.signal(libc::SIGKILL);
        let _ = self.child.wait_timeout(Duration::from_secs(5));
    }
}

/// A minimal HTTP/1.1 GET for the admin API, with timeouts.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status: u16 = buf
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    if body.is_empty() && status == 0 {
        bail!("empty response");
    }
    Ok((status, body))
}

/// The JSON lines a netpeer printed.
pub fn netpeer_lines<T: serde::de::DeserializeOwned>(out: &str) -> Vec<T> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad netpeer line {l:?}: {e}")))
        .collect()
}
