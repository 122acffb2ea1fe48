//! The demo as a normal user (most laptops): `cargo xtask demo --prebuilt DIR` run by a user
//! who has no toolchain on PATH and whose sudo may run only the built `shunt-demo` (NOPASSWD,
//! SETENV for `sudo -E`). It works only if xtask never runs cargo (or anything else) as root and
//! raises privileges for the built demo alone.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use tests::{kernel, process::ChildGuard};

/// A system user with a NOPASSWD sudoers drop-in for one command; both removed on drop, so
/// even a failing test leaves neither behind.
struct DemoUser {
    name: String,
    home: PathBuf,
    sudoers: PathBuf,
}

impl DemoUser {
    fn create(allowed: &Path) -> Self {
        let id = std::process::id();
        let name = format!("shunt-demo-u{id}");
        let home = std::env::temp_dir().join(format!("shunt-test-demo-user-{id}"));
        let sudoers = PathBuf::from(format!("/etc/sudoers.d/shunt-test-demo-user-{id}"));
        // Constructed first: whatever exists by the time a step fails is removed.
        let user = DemoUser {
            name,
            home,
            sudoers,
        };
        fs::create_dir_all(&user.home).expect("home");
        let out = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", "--shell"])
            .arg("/bin/sh")
            .arg("--home-dir")
            .arg(&user.home)
            .arg(&user.name)
            .output()
            .expect("running useradd");
        assert!(out.status.success(), "useradd: {out:?}");
        let chown = Command::new("chown")
            .arg(format!("{0}:{0}", user.name))
            .arg(&user.home)
            .status()
            .expect("chown");
        assert!(chown.success());
        let rule = format!(
            "{} ALL=(root) NOPASSWD:SETENV: {}\n",
            user.name,
            allowed.display()
        );
        fs::write(&user.sudoers, rule).expect("sudoers drop-in");
        fs::set_permissions(&user.sudoers, fs::Permissions::from_mode(0o440)).expect("chmod");
        let check = Command::new("visudo")
            .arg("-cf")
            .arg(&user.sudoers)
            .output()
            .expect("visudo");
        assert!(check.status.success(), "the sudoers drop-in: {check:?}");
        user
    }

    /// `program args...` as this user: its own uid, gid and groups, a login-like environment
    /// with no cargo or rustup on PATH.
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            &self.name,
            "--regid",
            &self.name,
            "--init-groups",
            "--",
        ])
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &self.home)
        .env("USER", &self.name)
        .env("LOGNAME", &self.name)
        .current_dir(&self.home);
        c
    }
}

impl Drop for DemoUser {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.sudoers);
        let _ = Command::new("userdel").arg(&self.name).output();
        let _ = fs::remove_dir_all(&self.home);
    }
}

/// `cargo xtask` builds xtask into the workspace's target directory (`.cargo/config.toml`
/// aliases it to `cargo run -p xtask`), beside the demo binaries this test crate builds.
fn xtask_beside(bins: &Path) -> PathBuf {
    let xtask = bins.join("xtask");
    assert!(
        xtask.is_file(),
        "{} not found: build it with `cargo build -p xtask` (any `cargo xtask` does)",
        xtask.display()
    );
    xtask
}

#[test]
fn demo_runs_as_a_normal_user() {
    let test = "demo_runs_as_a_normal_user";
    if !kernel::available(test) {
        return;
    }
    for tool in ["sudo", "visudo", "useradd", "userdel", "setpriv"] {
        assert!(
            kernel::which(tool).is_some() || Path::new("/usr/sbin").join(tool).is_file(),
            "{test}: `{tool}` not installed (`cargo xtask setup` installs sudo)"
        );
    }
    let demo = PathBuf::from(env!("CARGO_BIN_EXE_shunt-demo"));
    let bins = demo.parent().expect("bin dir").to_path_buf();
    // The other binaries `--prebuilt DIR` runs, built by this crate too.
    for b in [
        env!("CARGO_BIN_EXE_demo-app"),
        env!("CARGO_BIN_EXE_shunt-under-test"),
    ] {
        assert_eq!(Path::new(b).parent(), Some(bins.as_path()));
    }
    let xtask = xtask_beside(&bins);
    let user = DemoUser::create(&demo);

    let mut cmd = user.command(&xtask);
    cmd.arg("demo")
        .arg("--prebuilt")
        .arg(&bins)
        .arg("--check")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = ChildGuard {
        child: Some(cmd.spawn().expect("running xtask demo as the user")),
        name: "xtask demo --prebuilt DIR --check".into(),
    };
    let (status, stdout, stderr) = run
        .output_timeout(Duration::from_secs(240))
        .expect("the demo finishes");
    assert!(
        status.success(),
        "`xtask demo --prebuilt DIR --check` as {} failed ({status}):\n{stdout}\n{stderr}",
        user.name,
    );
    let row = |key: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key) && l.contains('→'))
            .unwrap_or_else(|| panic!("no row for {key}:\n{stdout}"))
            .to_string()
    };
    assert!(
        row("pr-42").contains("reviews v2 (sandbox)"),
        "keyed: {stdout}"
    );
    assert!(
        row("(none)").contains("reviews v1 (baseline)"),
        "unkeyed: {stdout}"
    );
}
