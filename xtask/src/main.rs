//! Project tasks: `cargo xtask setup | test | client | demo | bench | fuzz | soak`.
//!
//! Every task runs `setup` first, so a fresh Debian machine with rustup needs nothing else.
mod bench;
mod client;
mod demo;
mod fuzz;
mod setup;
mod soak;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the pinned toolchains, bpf-linker and the apt packages the tests need (idempotent).
    Setup,
    /// fmt check, clippy (userspace and eBPF), the client build (stable, no bpf-linker) and its
    /// macOS check, unit tests, integration tests, leftover check.
    Test(test::TestArgs),
    /// Build the client (`agent --no-default-features`) as a laptop would, with stable Rust and
    /// no bpf-linker on PATH, into target/client; then check it for macOS.
    Client,
    /// A mini-cluster of network namespaces on this machine, with the real agent and eBPF
    /// capture, showing keyed requests steered to a sandbox (needs root). Tears down at the end
    /// and on Ctrl-C.
    Demo(demo::DemoArgs),
    /// Direct vs Shunt vs HAProxy: latency percentiles, saturation and CPU, side by side in one
    /// run (needs root). Installs haproxy, h2load and oha; writes target/bench/.
    Bench(bench::BenchArgs),
    /// The cargo-fuzz targets in fuzz/ (libFuzzer, the pinned nightly), one after another:
    /// 10 million executions each, `--runs N`, or 30 s each with `--smoke` (CI).
    Fuzz(fuzz::FuzzArgs),
    /// The agent under mixed load with route churn, restarts and a SIGKILL, for N minutes (needs
    /// root); fails on a misroute or RSS growth. Writes target/soak/.
    Soak(soak::SoakArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo says what this machine lacks before installing or building anything.
    let preflight = match cli.task {
        Task::Demo(_) => demo::preflight(),
        _ => Ok(()),
    };
    let result = preflight.and_then(|()| match cli.task {
        // Prebuilt binaries need no toolchain: nothing to set up or build.
        Task::Demo(args) if args.prebuilt.is_some() => demo::run(None, args),
        task => setup::setup().and_then(|env| match task {
            Task::Setup => Ok(()),
            Task::Test(args) => test::run(&env, args),
            Task::Client => client::build(&env).and_then(|()| client::check_macos(&env)),
            Task::Demo(args) => demo::run(Some(&env), args),
            Task::Bench(args) => bench::run(&env, args),
            Task::Fuzz(args) => fuzz::run(&env, args),
            Task::Soak(args) => soak::run(&env, args),
        }),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
