//! Fails early, with the fix named, when bpf-linker is missing: rustc would otherwise report a
//! bare "linker `bpf-linker` not found" deep inside the nested build.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if !env::var("TARGET").unwrap_or_default().starts_with("bpf") {
        return;
    }
    let found = env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d: PathBuf| d.join("bpf-linker").is_file()))
        .unwrap_or(false);
    if !found {
        panic!(
            "bpf-linker is not on PATH: run `cargo xtask setup` \
             (it builds bpf-linker 0.13 against the pinned nightly's libLLVM into ~/.cargo/bin)"
        );
    }
}
