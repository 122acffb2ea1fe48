//! The `shunt` entry point, built inside the tests package so integration tests can spawn the real
//! agent (cargo exposes binaries only to tests of their own package).
agent::global_allocator!();

fn main() -> std::process::ExitCode {
    agent::cli::main()
}
