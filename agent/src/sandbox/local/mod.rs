//! No-cluster sandboxes: a command the agent names (its own build of a service), started as a
//! new pod of the `cargo xtask demo` mini-cluster: its own network namespace ([`net`]), its own
//! child cgroup under the captured cgroup (so its calls are captured like every pod's), its
//! stdout and stderr kept as its log, and a record ([`record`]) saying how to remove it.
//!
//! Blocking code (iproute2, cgroupfs, process spawning): callers run it off the async runtime.
pub mod net;
pub mod record;

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub use record::{PodRecord, SandboxRecord};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{what}: {message}")]
    Command { what: String, message: String },
    #[error("no free 198.18.N.0/24 subnet left for a sandbox pod")]
    NoSubnet,
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("placing the sandbox in its pod")]
    Placement(#[from] crate::placement::PlacementError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LocalError {
    let path = path.to_path_buf();
    move |source| LocalError::Io { what, path, source }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where the mini-cluster lives.
#[derive(Clone, Debug)]
pub struct MiniCluster {
    /// Its run directory: pod records and logs.
    pub dir: PathBuf,
    /// The node's network namespace, where pods' veths attach.
    pub node_netns: PathBuf,
    /// The cgroup the agent captures; each sandbox gets a child of it.
    pub captured: PathBuf,
    /// Prefix of sandbox network namespace names, so the mini-cluster's teardown finds them.
    pub netns_prefix: String,
    /// The routes file the agent reads: each sandbox pod is listed in its `sources:` with its
    /// route's key while it runs, so its calls carry the key even when its build drops it.
    pub routes: Option<PathBuf>,
}

/// What to start.
pub struct StartSpec {
    pub name: String,
    pub namespace: String,
    pub service: String,
    pub key: String,
    pub session: String,
    pub keep: bool,
    pub expires_unix_ms: Option<u64>,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub port: u16,
    pub route: String,
}

/// Whether a sandbox's process runs, and how it ended if not.
#[derive(Clone, Debug)]
pub struct ProcessState {
    pub running: bool,
    pub termination: Option<String>,
}

/// Kubernetes-style `$(VAR)` expansion in arguments, from the pod's environment.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

impl MiniCluster {
    fn lock(&self) -> Result<fs::File, LocalError> {
        let path = self.dir.join("pods.lock");
        fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let f = fs::File::create(&path).map_err(io("creating", &path))?;
        // SAFETY: a valid fd; released when the file is closed.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        Ok(f)
    }

    /// Starts the sandbox: network, cgroup, process, record. Everything made is removed again
    /// when a step fails.
    pub fn start(&self, s: StartSpec) -> Result<PodRecord, LocalError> {
        let _lock = self.lock()?;
        let taken: Vec<u8> = PodRecord::all(&self.dir)
            .iter()
            .filter_map(|p| p.sandbox.as_ref().map(|s| s.subnet))
            .collect();
        let subnet = net::free_subnet(&self.node_netns, &taken)?;
        let netns_name = format!("{}-sbx-{}", self.netns_prefix, s.name);
        let netns = net::create(&self.node_netns, &netns_name, subnet)?;
        let cgroup = self.captured.join(format!("sandbox-{}", s.name));
        let started = (|| {
            if !cgroup.exists() {
                fs::create_dir(&cgroup).map_err(io("creating cgroup", &cgroup))?;
            }
            let ip = net::pod_ip(subnet);
            let mut env = s.env.clone();
            env.insert("POD_NAME".into(), s.name.clone());
            env.insert("POD_NAMESPACE".into(), s.namespace.clone());
            env.insert("POD_IP".into(), ip.to_string());
            env.insert("PORT".into(), s.port.to_string());
            env.insert("SHUNT_SANDBOX_KEY".into(), s.key.clone());
            let log_path = PodRecord::log_path(&self.dir, &s.name);
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(io("opening", &log_path))?;
            let mut cmd = Command::new(&s.command);
            cmd.args(s.args.iter().map(|a| expand(a, &env)))
                .envs(&env)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(io("opening", &log_path))?)
                .stderr(log)
                // Its own process group: the session's terminal signals do not reach it.
                .process_group(0);
            crate::placement::join_before_exec(&mut cmd, Some(&netns), Some(&cgroup))?;
            let mut child = cmd.spawn().map_err(io("starting", Path::new(&s.command)))?;
            let pid = child.id();
            let rec = PodRecord {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                ips: vec![IpAddr::V4(ip)],
                service: Some(s.service.clone()),
                sandbox: Some(SandboxRecord {
                    key: s.key.clone(),
                    session: s.session.clone(),
                    keep: s.keep,
                    expires_unix_ms: s.expires_unix_ms,
                    started_unix_ms: now_ms(),
                    pid,
                    netns: netns.clone(),
                    cgroup: cgroup.clone(),
                    subnet,
                    port: s.port,
                    command: s.command.clone(),
                    args: s.args.clone(),
                    route: s.route.clone(),
                }),
            };
            // Reaps it, and records how it ended (the last termination reason).
            let exit = record::exit_path(&self.dir, &s.name);
            std::thread::spawn(move || {
                if let Ok(status) = child.wait() {
                    let _ = fs::write(exit, describe_exit(status));
                }
            });
            rec.write(&self.dir).map_err(io("writing", &self.dir))?;
            if let Err(e) = self.mark(&cgroup, &s.key, &format!("pod {}/{}", s.namespace, s.name)) {
                PodRecord::remove(&self.dir, &s.name);
                return Err(e);
            }
            Ok(rec)
        })();
        if started.is_err() {
            self.unmark(&cgroup);
            kill_cgroup(&cgroup);
            net::delete(&netns_name);
        }
        started
    }

    /// Lists the sandbox pod's cgroup as a marked source with its route's key.
    fn mark(&self, cgroup: &Path, key: &str, origin: &str) -> Result<(), LocalError> {
        let Some(routes) = &self.routes else {
            return Ok(());
        };
        let source = crate::routes::MarkedSource {
            cgroup: cgroup.to_path_buf(),
            key: key.to_string(),
            origin: origin.to_string(),
        };
        crate::mcp::edit::edit_sources(routes, |list| {
            list.retain(|x| x.cgroup != source.cgroup);
            list.push(source);
        })
        .map(drop)
        .map_err(|e| LocalError::Command {
            what: format!("listing the sandbox pod in {}", routes.display()),
            message: format!("{e:#}"),
        })
    }

    /// Removes the sandbox pod's cgroup from the marked sources.
    fn unmark(&self, cgroup: &Path) {
        let Some(routes) = &self.routes else {
            return;
        };
        if let Err(e) =
            crate::mcp::edit::edit_sources(routes, |list| list.retain(|x| x.cgroup != cgroup))
        {
            tracing::warn!(routes = %routes.display(), error = %format!("{e:#}"),
                "removing a sandbox pod from the marked sources failed");
        }
    }

    /// Whether its process still runs; how it ended otherwise.
    pub fn state(&self, rec: &PodRecord) -> ProcessState {
        let Some(sb) = &rec.sandbox else {
            return ProcessState {
                running: true,
                termination: None,
            };
        };
        let running = !pids_in(&sb.cgroup).is_empty();
        let termination = fs::read_to_string(record::exit_path(&self.dir, &rec.name))
            .ok()
            .or_else(|| (!running).then(|| "exited (status unknown)".to_string()));
        ProcessState {
            running,
            termination,
        }
    }

    /// Waits until the pod accepts connections on its port (from the node), its process exits,
    /// or `timeout`. True when ready.
    pub fn wait_ready(&self, rec: &PodRecord, timeout: Duration) -> bool {
        let (Some(sb), Some(ip)) = (&rec.sandbox, rec.ips.first()) else {
            return false;
        };
        let addr = SocketAddr::new(*ip, sb.port);
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_ready(addr) {
                return true;
            }
            if !self.state(rec).running || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_ready(&self, addr: SocketAddr) -> bool {
        net::run_in(&self.node_netns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
        .unwrap_or(false)
    }

    /// Stops its processes, removes its cgroup, namespace and record; keeps its log.
    pub fn stop(&self, rec: &PodRecord) {
        if let Some(sb) = &rec.sandbox {
            self.unmark(&sb.cgroup);
            kill_cgroup(&sb.cgroup);
            if let Some(name) = sb.netns.file_name() {
                net::delete(&name.to_string_lossy());
            }
        }
        PodRecord::remove(&self.dir, &rec.name);
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "exited".into(),
    }
}

fn pids_in(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in `cgroup` and removes it.
pub fn kill_cgroup(cgroup: &Path) {
    // cgroup.kill (Linux >= 5.14) also catches processes forked meanwhile.
    let _ = fs::write(cgroup.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for pid in pids_in(cgroup) {
            // SAFETY: kill(2) on a pid read from the sandbox's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if fs::remove_dir(cgroup).is_ok() || !cgroup.exists() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of `path` after byte `from`, at most `max_lines` lines and `max_bytes` bytes,
/// optionally only those containing `grep`; and whether lines were left out.
pub fn read_lines(
    path: &Path,
    from: u64,
    to: Option<u64>,
    grep: Option<&str>,
    max_lines: usize,
    max_bytes: usize,
) -> (Vec<String>, bool) {
    let Ok(bytes) = fs::read(path) else {
        return (Vec::new(), false);
    };
    let end = to.map_or(bytes.len(), |t| (t as usize).min(bytes.len()));
    let start = (from as usize).min(end);
    let text = String::from_utf8_lossy(&bytes[start..end]);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| grep.is_none_or(|g| l.contains(g)))
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut size = 0;
    for l in lines.iter().rev() {
        if out.len() == max_lines || size + l.len() > max_bytes {
            break;
        }
        size += l.len() + 1;
        out.push((*l).to_string());
    }
    let truncated = out.len() < lines.len();
    out.reverse();
    (out, truncated)
}
