//! The client (`cargo install --path agent --no-default-features`: `mcp`, `sandbox`, `routes`,
//! `topology`, `crd`, `skill`) builds with stable Rust alone. `cargo xtask test` proves it: it
//! builds the client with no bpf-linker on PATH and the stable toolchain, then type-checks it for
//! macOS (aarch64-apple-darwin).
use std::{env, ffi::OsString, fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::setup::{Env, STABLE, install_apt, run as exec, step};

/// Its own target directory: the client's feature set would otherwise replace the full
/// `target/debug/shunt` that the integration tests run.
const TARGET_DIR: &str = "target/client";
const MACOS: &str = "aarch64-apple-darwin";

/// Builds the client as a laptop would: stable toolchain, no bpf-linker anywhere on PATH.
pub fn build(env: &Env) -> anyhow::Result<()> {
    step("client (agent --no-default-features): stable Rust, no bpf-linker on PATH");
    let path = path_without_bpf_linker(&env.path, &env::current_dir()?.join(TARGET_DIR))?;
    exec(client_cargo(&path).args(["build", "-p", "agent", "--no-default-features"]))?;
    let shunt = Path::new(TARGET_DIR).join("debug/shunt");
    let help = Command::new(&shunt)
        .arg("--help")
        .output()
        .with_context(|| format!("running {}", shunt.display()))?;
    let help = String::from_utf8_lossy(&help.stdout);
    let commands = help_commands(&help);
    for c in ["mcp", "sandbox", "routes", "topology", "crd", "skill"] {
        if !commands.iter().any(|h| h == c) {
            bail!("the client lacks `shunt {c}`:\n{help}");
        }
    }
    if commands.iter().any(|h| h == "run") {
        bail!("the client build has `shunt run`, the node data path:\n{help}");
    }
    Ok(())
}

/// Type-checks the client for macOS. The C that `ring` compiles needs the macOS SDK's libc
/// headers, which are not on a Linux machine (nor redistributable): `cargo check` never links
/// that C, so clang compiles it freestanding against the few declarations it uses
/// ([`MACOS_HEADER_STUBS`]). Every crate's Rust is checked for the real target. Skipped, with a
/// note, only when rustup cannot install the target's standard library.
pub fn check_macos(env: &Env) -> anyhow::Result<()> {
    step(&format!("client: cargo check --target {MACOS}"));
    let added = Command::new("rustup")
        .args(["target", "add", MACOS, "--toolchain", STABLE])
        .env("PATH", &env.path)
        .status();
    if !added.is_ok_and(|s| s.success()) {
        eprintln!(
            "note: skipping the macOS check: rustup could not install the {MACOS} standard library"
        );
        return Ok(());
    }
    install_apt(
        "clang and llvm-ar (C for the macOS check)",
        &[("clang", "clang"), ("llvm-ar", "llvm")],
    )?;
    let stubs = env::current_dir()?
        .join(TARGET_DIR)
        .join("macos-header-stubs");
    fs::create_dir_all(&stubs)?;
    for (name, text) in MACOS_HEADER_STUBS {
        fs::write(stubs.join(name), text)?;
    }
    let path = path_without_bpf_linker(&env.path, &env::current_dir()?.join(TARGET_DIR))?;
    let target_env = MACOS.replace('-', "_");
    exec(
        client_cargo(&path)
            .args(["check", "-p", "agent", "--no-default-features", "--target"])
            .arg(MACOS)
            .env(format!("CC_{target_env}"), "clang")
            .env(format!("AR_{target_env}"), "llvm-ar")
            .env(
                format!("CFLAGS_{target_env}"),
                format!("-ffreestanding -nostdlibinc -I{}", stubs.display()),
            ),
    )
}

/// The SDK headers `ring`'s C includes beyond the compiler's own (`stdint.h`, `stddef.h`...).
const MACOS_HEADER_STUBS: [(&str, &str); 4] = [
    (
        "TargetConditionals.h",
        "#pragma once\n#define TARGET_OS_OSX 1\n#define TARGET_OS_IPHONE 0\n#define TARGET_OS_MAC 1\n",
    ),
    ("assert.h", "#pragma once\n#define assert(x) ((void)0)\n"),
    (
        "string.h",
        "#pragma once\n#include <stddef.h>\nvoid *memcpy(void *, const void *, size_t);\n\
         void *memmove(void *, const void *, size_t);\nvoid *memset(void *, int, size_t);\n\
         int memcmp(const void *, const void *, size_t);\n",
    ),
    (
        "stdlib.h",
        "#pragma once\n#include <stddef.h>\nvoid abort(void);\n",
    ),
];

fn client_cargo(path: &OsString) -> Command {
    let mut c = Command::new("cargo");
    c.env("PATH", path)
        // The pinned stable, whatever an outer `cargo +toolchain` set.
        .env("RUSTUP_TOOLCHAIN", STABLE)
        .env("CARGO_TARGET_DIR", TARGET_DIR);
    c
}

/// `path` with every directory holding `bpf-linker` replaced by a directory of links to all its
/// other entries (cargo and rustup live beside bpf-linker in `~/.cargo/bin`).
fn path_without_bpf_linker(path: &OsString, shims: &Path) -> anyhow::Result<OsString> {
    let mut dirs = Vec::new();
    for (i, dir) in env::split_paths(path).enumerate() {
        if !dir.join("bpf-linker").exists() {
            dirs.push(dir);
            continue;
        }
        let shim = shims.join(format!("path-without-bpf-linker-{i}"));
        let _ = fs::remove_dir_all(&shim);
        fs::create_dir_all(&shim)?;
        for entry in fs::read_dir(&dir)?.filter_map(Result::ok) {
            if entry.file_name() != "bpf-linker" {
                std::os::unix::fs::symlink(entry.path(), shim.join(entry.file_name()))?;
            }
        }
        dirs.push(shim);
    }
    if let Some(d) = dirs.iter().find(|d| d.join("bpf-linker").exists()) {
        bail!("bpf-linker is still on PATH ({})", d.display());
    }
    Ok(env::join_paths(dirs)?)
}

/// The subcommand names in clap's `--help` output.
fn help_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn help_commands_are_read_from_clap_help() {
        let help = "eBPF\n\nUsage: shunt <COMMAND>\n\nCommands:\n  routes    Print\n  mcp       MCP\n  \
                    help      Print this\n\nOptions:\n  -h, --help  Print help\n";
        assert_eq!(help_commands(help), ["routes", "mcp", "help"]);
    }

    #[test]
    fn bpf_linker_dirs_are_replaced_by_links_to_the_rest() {
        let dir = env::temp_dir().join(format!("xtask-client-path-{}", std::process::id()));
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join("bpf-linker"), "").unwrap();
        fs::write(bin.join("cargo"), "").unwrap();
        let path = env::join_paths([bin.clone(), PathBuf::from("/usr/bin")]).unwrap();
        let stripped = path_without_bpf_linker(&path, &dir.join("shims")).unwrap();
        let dirs: Vec<PathBuf> = env::split_paths(&stripped).collect();
        assert_eq!(dirs.len(), 2);
        assert!(dirs[0].starts_with(dir.join("shims")));
        assert!(dirs[0].join("cargo").exists());
        assert!(!dirs[0].join("bpf-linker").exists());
        assert_eq!(dirs[1], Path::new("/usr/bin"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
