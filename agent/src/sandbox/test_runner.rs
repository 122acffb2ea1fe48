//! `shunt test --key KEY -- COMMAND...`: runs a test command whose requests reach the sandbox
//! without carrying the key themselves (no-cluster mode).
//!
//! 1. a child cgroup of the captured cgroup (`--client-cgroup`), for COMMAND alone;
//! 2. its `sources:` entry in the routes file the agent reads (`--routes`);
//! 3. a wait until the agent's debug API lists it as applied (`/routes/sources`);
//! 4. COMMAND, in that cgroup and the client pod's network namespace (`--client-netns`, as
//!    send_test_request's client), with this terminal;
//! 5. the entry and the cgroup removed, whatever happened, and COMMAND's exit status returned.
//!
//! The agent then adds the key to every HTTP request COMMAND sends without one.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    duration::parse_duration,
    mcp::edit::edit_sources,
    routes::{MarkedSource, RoutingKey},
};

/// Exit status when `shunt test` itself fails before or around COMMAND (as `env` does).
const SETUP_FAILED: u8 = 125;

#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// The routing key COMMAND's requests carry (added by the agent where they have none).
    #[arg(long, value_name = "KEY")]
    pub key: String,

    /// The routes file the agent runs with (`shunt run --routes FILE`).
    #[arg(long, value_name = "FILE", env = "SHUNT_ROUTES")]
    pub routes: PathBuf,

    /// The cgroup v2 directory the agent captures (`shunt run --cgroup`); COMMAND runs in a
    /// new child of it.
    #[arg(long, value_name = "PATH", env = "SHUNT_CLIENT_CGROUP")]
    pub client_cgroup: PathBuf,

    /// The client pod's network namespace (e.g. /run/netns/NAME) COMMAND runs in. Default:
    /// this process's.
    #[arg(long, value_name = "PATH", env = "SHUNT_CLIENT_NETNS")]
    pub client_netns: Option<PathBuf>,

    /// The agent's debug API (`shunt run --debug-addr`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465")]
    pub debug_addr: std::net::SocketAddr,

    /// Network namespace where --debug-addr is reachable. Default: this process's.
    #[arg(long, value_name = "PATH")]
    pub debug_netns: Option<PathBuf>,

    /// How long to wait for the agent to apply the entry.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub apply_timeout: Duration,

    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Runs `shunt test`; the exit code is COMMAND's (128 + signal if it was killed), or 125 when
/// `shunt test` could not run it.
pub fn run(args: TestArgs) -> ExitCode {
    match run_test(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("shunt test: {e:#}");
            ExitCode::from(SETUP_FAILED)
        }
    }
}

fn run_test(args: &TestArgs) -> anyhow::Result<u8> {
    let key = RoutingKey::parse(&args.key).context("--key")?;
    if let Some(ns) = &args.debug_netns {
        let f = std::fs::File::open(ns)
            .with_context(|| format!("--debug-netns: opening {}", ns.display()))?;
        // The only thread so far: the debug API is reached from here on.
        crate::placement::enter_netns(&f)
            .with_context(|| format!("--debug-netns: entering {}", ns.display()))?;
    }
    let cgroup = args
        .client_cgroup
        .join(format!("shunt-test-{}", std::process::id()));
    std::fs::create_dir(&cgroup)
        .with_context(|| format!("creating the cgroup {}", cgroup.display()))?;
    let marked = Marked {
        routes: &args.routes,
        cgroup: &cgroup,
    };
    let source = MarkedSource {
        cgroup: cgroup.clone(),
        key: key.as_str().to_string(),
        origin: format!("shunt test (pid {})", std::process::id()),
    };
    edit_sources(&args.routes, |s| s.push(source))
        .with_context(|| format!("adding the source to {}", args.routes.display()))?;
    wait_applied(args.debug_addr, &cgroup, args.apply_timeout)?;

    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    crate::placement::join_before_exec(&mut cmd, args.client_netns.as_deref(), Some(&cgroup))?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", args.command[0]))?;
    // A terminal's Ctrl-C reaches COMMAND (same process group); this process outlives it to
    // clean up, then exits with its status.
    // SAFETY: setting a signal disposition; no handler runs.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let status = child.wait().context("waiting for COMMAND")?;
    drop(marked);
    use std::os::unix::process::ExitStatusExt as _;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        _ => 1,
    })
}

/// Undoes the marking on drop: the entry first (the agent unmarks), then the cgroup (its
/// stragglers killed).
struct Marked<'a> {
    routes: &'a Path,
    cgroup: &'a Path,
}

impl Drop for Marked<'_> {
    fn drop(&mut self) {
        let cgroup = self.cgroup.to_path_buf();
        if let Err(e) = edit_sources(self.routes, |s| s.retain(|x| x.cgroup != cgroup)) {
            eprintln!(
                "shunt test: removing the source from {}: {e:#}",
                self.routes.display()
            );
        }
        super::local::kill_cgroup(self.cgroup);
    }
}

/// Waits until the agent's `/routes/sources` lists `cgroup`.
fn wait_applied(
    debug: std::net::SocketAddr,
    cgroup: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Applied {
        cgroup: PathBuf,
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + timeout;
    loop {
        let answer = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(2),
                crate::admin::client::get(debug, "/routes/sources"),
            )
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 2s"))?
        });
        let last_error = match answer.and_then(|t| Ok(serde_json::from_str::<Vec<Applied>>(&t)?)) {
            Ok(list) if list.iter().any(|a| a.cgroup == cgroup) => return Ok(()),
            Ok(_) => None,
            Err(e) => Some(e),
        };
        if Instant::now() > deadline {
            match last_error {
                Some(e) => bail!(
                    "the agent's debug API ({debug}) did not confirm the source within {timeout:?}: {e:#}"
                ),
                None => bail!(
                    "the agent did not apply the source {} within {timeout:?} (is it running with --routes on this file and --cgroup above it?)",
                    cgroup.display()
                ),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
