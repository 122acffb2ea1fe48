//! Driving `shunt mcp` with the official MCP Python SDK (`pip install mcp`, installed on first
//! use into `target/mcp-venv`) running `tests/mcp_client.py`: shared by the MCP integration
//! tests.
//!
//! Without PyPI (no venv can be made) a test skips with a message, unless
//! `SHUNT_REQUIRE_KERNEL_TESTS=1`, where that is a failure.
use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::process::spawn_in;

fn required() -> bool {
    std::env::var("SHUNT_REQUIRE_KERNEL_TESTS").as_deref() == Ok("1")
}

fn skip(test: &str, why: &str) -> Option<PathBuf> {
    if required() {
        panic!("{test}: required (SHUNT_REQUIRE_KERNEL_TESTS=1) but {why}");
    }
    eprintln!("SKIPPED {test}: {why} (set SHUNT_REQUIRE_KERNEL_TESTS=1 to make this a failure)");
    None
}

/// `target/` of this build (a test binary is `target/<profile>/deps/NAME-HASH`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn run(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let child = spawn_in("setup", cmd, None, None).map_err(|e| format!("{what}: {e:#}"))?;
    match child.output_timeout(timeout) {
        Ok((status, out, _)) if status.success() => Ok(out),
        Ok((status, out, err)) => Err(format!("{what}: {status}: {out}{err}")),
        Err(e) => Err(format!("{what}: {e:#}")),
    }
}

/// The Python interpreter of a venv with the `mcp` SDK, made once per target directory (under
/// a lock, so parallel tests wait for one install), or None to skip.
pub fn python_with_mcp(test: &str) -> Option<PathBuf> {
    let target = target_dir();
    let venv = target.join("mcp-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".shunt-ready");
    if ready.exists() {
        return Some(python);
    }
    let _ = fs::create_dir_all(&target);
    let lock = fs::File::create(target.join("mcp-venv.lock")).expect("venv lock file");
    // SAFETY: a valid fd; the lock is released when `lock` is closed.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if ready.exists() {
        return Some(python);
    }
    let _ = fs::remove_dir_all(&venv);
    let mut mk = Command::new("python3");
    mk.args(["-m", "venv"]).arg(&venv);
    if let Err(e) = run(mk, Duration::from_secs(120)) {
        return skip(test, &format!("cannot create a Python venv: {e}"));
    }
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--timeout",
        "30",
        "mcp",
    ]);
    if let Err(e) = run(pip, Duration::from_secs(600)) {
        let _ = fs::remove_dir_all(&venv);
        return skip(
            test,
            &format!("cannot install the `mcp` Python SDK from PyPI: {e}"),
        );
    }
    fs::write(&ready, "").expect("venv marker");
    Some(python)
}

/// Runs tests/mcp_client.py `scenario` against `server` (the command line of `shunt mcp`).
pub fn mcp_client(python: &Path, scenario: &str, server: &[String]) -> Value {
    mcp_client_with(python, scenario, server, &[])
}

/// [`mcp_client`] with extra environment variables for the client (e.g. a scenario's config).
pub fn mcp_client_with(
    python: &Path,
    scenario: &str,
    server: &[String],
    envs: &[(&str, &str)],
) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp_client.py");
    let mut cmd = Command::new(python);
    cmd.envs(envs.iter().copied());
    cmd.arg(&script)
        .arg(scenario)
        .arg("--")
        .args(server)
        .env("SHUNT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn_in("mcp_client.py", cmd, None, None).expect("starting the MCP client");
    let (status, out, err) = child
        .output_timeout(Duration::from_secs(180))
        .expect("the MCP client finished in time");
    assert!(
        status.success(),
        "mcp_client.py {scenario} failed ({status}):\n{out}\n{err}"
    );
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("mcp_client.py printed no JSON ({e}):\n{out}\n{err}"))
}

/// A tool result that must have succeeded.
pub fn ok<'a>(o: &'a Value, step: &str) -> &'a Value {
    let r = &o[step];
    assert_eq!(r["is_error"], false, "{step} failed: {r:#}");
    &r["result"]
}

/// A tool result that must be a structured error; returns `error`.
pub fn err<'a>(o: &'a Value, step: &str, kind: &str) -> &'a Value {
    let r = &o[step];
    assert_eq!(r["is_error"], true, "{step} should have failed: {r:#}");
    let e = &r["result"]["error"];
    assert_eq!(e["kind"], kind, "{step}: {e:#}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty())
            && e["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{step}: an error needs a message and a fix: {e:#}"
    );
    e
}
