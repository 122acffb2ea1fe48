//! Installs what building and testing Shunt needs, idempotently, with progress output:
//! the pinned stable and nightly toolchains, bpf-linker built against the nightly's own libLLVM,
//! and the apt packages the tests use. See ../shared/TOOLCHAIN.md for why each pin exists.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

/// Keep in step with rust-toolchain.toml.
pub const STABLE: &str = "1.99.1";
/// Keep in step with agent/build.rs. Never float: bpf-linker links this nightly's libLLVM.
pub const EBPF_NIGHTLY: &str = "nightly-2026-10-29";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// `cargo xtask fuzz` drives the fuzz targets with it (libFuzzer, on `EBPF_NIGHTLY`).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The LLVM major of `EBPF_NIGHTLY`; bpf-linker's feature must match it.
pub const BPF_LINKER_LLVM_FEATURE: &str = "llvm-23";

/// Commands the tests run, and the Debian package providing each.
const APT_TOOLS: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("sysctl", "procps"),
    // The source-identity tests put a NetworkPolicy-like rule in a backend's namespace.
    ("nft", "nftables"),
    // `cargo xtask demo` run by a normal user raises privileges with it for the built demo only.
    ("sudo", "sudo"),
];

/// What later steps need to know.
pub struct Env {
    /// PATH with the directory holding bpf-linker first.
    pub path: std::ffi::OsString,
}

pub fn step(msg: &str) {
    eprintln!("\x1b[1m==>\x1b[0m {msg}");
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

pub fn setup() -> anyhow::Result<Env> {
    let started = Instant::now();
    if output(Command::new("rustup").arg("--version")).is_none() {
        bail!("rustup not found: install it from your distribution or rustup.rs, then rerun");
    }
    install_toolchain(STABLE, &["rustfmt", "clippy"])?;
    install_toolchain(EBPF_NIGHTLY, &["rust-src", "clippy"])?;
    let bin = cargo_home().join("bin");
    // Prepend the cargo bin dir only when it is missing: build scripts rerun when PATH changes,
    // so an unchanged PATH keeps `cargo xtask` and plain `cargo` sharing their builds.
    let current = env::var_os("PATH").unwrap_or_default();
    let path = if env::split_paths(&current).any(|p| p == bin) {
        current
    } else {
        env::join_paths(std::iter::once(bin.clone()).chain(env::split_paths(&current)))?
    };
    install_bpf_linker(&bin, &path)?;
    install_cargo_fuzz(&bin, &path)?;
    install_apt_tools()?;
    eprintln!("setup done in {:.1?}", started.elapsed());
    Ok(Env { path })
}

fn install_toolchain(name: &str, components: &[&str]) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))
        .map(|l| l.lines().any(|t| t.starts_with(name)))
        .unwrap_or(false);
    let missing: Vec<&str> = if installed {
        let have = output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            name,
        ]))
        .unwrap_or_default();
        components
            .iter()
            .copied()
            .filter(|c| {
                !have
                    .lines()
                    .any(|l| l.starts_with(&format!("{c}-")) || l == *c)
            })
            .collect()
    } else {
        components.to_vec()
    };
    if installed && missing.is_empty() {
        step(&format!("toolchain {name}: installed"));
        return Ok(());
    }
    step(&format!(
        "installing toolchain {name} with {}",
        components.join(", ")
    ));
    let mut cmd = Command::new("rustup");
    cmd.args([
        "toolchain",
        "install",
        name,
        "--profile",
        "minimal",
        "--no-self-update",
    ]);
    for c in components {
        cmd.args(["--component", c]);
    }
    run(&mut cmd)
}

fn bpf_linker_ok(bin: &Path) -> bool {
    // Running it proves its libLLVM still resolves (the rpath points into the pinned nightly).
    output(Command::new(bin.join("bpf-linker")).arg("--version"))
        .map(|v| v.contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

fn install_bpf_linker(bin: &Path, path: &std::ffi::OsStr) -> anyhow::Result<()> {
    if bpf_linker_ok(bin) {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: installed"));
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {EBPF_NIGHTLY}'s libLLVM (first time only, about 70 s)"
    ));
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{EBPF_NIGHTLY}"))
            .args(["--print", "sysroot"]),
    )
    .context("rustc +nightly --print sysroot")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    // The real library is `libLLVM.so.<ver>-rust-<ver>-nightly`; `libLLVM-<major>-….so` beside it
    // is a one-line linker script, which bpf-linker's link cannot use as libLLVM.so.
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    // bpf-linker's build looks for $LLVM_PREFIX/lib/libLLVM.so: point it at the nightly's copy.
    let prefix = env::temp_dir().join(format!("shunt-llvm-prefix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    std::fs::create_dir_all(prefix.join("lib"))?;
    std::os::unix::fs::symlink(&llvm, prefix.join("lib/libLLVM.so"))?;
    let root = bin.parent().context("cargo bin dir has no parent")?;
    let result = run(Command::new("cargo")
        .arg(format!("+{EBPF_NIGHTLY}"))
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            BPF_LINKER_LLVM_FEATURE,
        ])
        .arg("--root")
        .arg(root)
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
        )
        .env("PATH", path)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"));
    let _ = std::fs::remove_dir_all(&prefix);
    result?;
    if !bpf_linker_ok(bin) {
        bail!(
            "bpf-linker was built but does not run: check `ldd {}`",
            bin.join("bpf-linker").display()
        );
    }
    Ok(())
}

fn install_cargo_fuzz(bin: &Path, path: &std::ffi::OsStr) -> anyhow::Result<()> {
    let installed = output(Command::new(bin.join("cargo-fuzz")).arg("--version"))
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_FUZZ_VERSION));
    if installed {
        step(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}: installed"));
        return Ok(());
    }
    step(&format!(
        "building cargo-fuzz {CARGO_FUZZ_VERSION} (first time only, about 60 s)"
    ));
    let root = bin.parent().context("cargo bin dir has no parent")?;
    run(Command::new("cargo")
        .args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
            "--force",
        ])
        .arg("--root")
        .arg(root)
        .env("PATH", path)
        .env_remove("CARGO_TARGET_DIR"))
}

fn install_apt_tools() -> anyhow::Result<()> {
    let names: Vec<&str> = APT_TOOLS.iter().map(|(tool, _)| *tool).collect();
    install_apt(&format!("test tools ({})", names.join(", ")), &APT_TOOLS)
}

/// Installs the Debian package of each `(command, package)` whose command is missing.
pub fn install_apt(what: &str, tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let path = env::var_os("PATH").unwrap_or_default();
    let has = |tool: &str| {
        env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .any(|d| d.join(tool).is_file())
    };
    let mut pkgs: Vec<&str> = tools
        .iter()
        .filter(|(t, _)| !has(t))
        .map(|(_, p)| *p)
        .collect();
    pkgs.dedup();
    if pkgs.is_empty() {
        step(&format!("{what}: installed"));
        return Ok(());
    }
    step(&format!("installing apt packages: {}", pkgs.join(" ")));
    // apt-get needs root: a normal user's setup asks sudo for it (only for apt-get).
    let apt = |args: &[&str]| {
        let mut cmd = if crate::demo::is_root() {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-E", "apt-get"]);
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(&mut apt(&["update", "-q"]))?;
    let mut install = apt(&["install", "-y", "-q"]);
    run(install.args(&pkgs))
}
