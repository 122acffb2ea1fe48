//! Project tasks: `cargo xtask setup | test`.
//!
//! Every task runs `setup` first, so a fresh Debian machine with rustup needs nothing else.
mod setup;
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
    /// fmt check, clippy (userspace and eBPF), unit tests, integration tests, leftover check.
    Test(test::TestArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = setup::setup().and_then(|env| match cli.task {
        Task::Setup => Ok(()),
        Task::Test(args) => test::run(&env, args),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
