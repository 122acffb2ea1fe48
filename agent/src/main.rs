agent::global_allocator!();

fn main() -> std::process::ExitCode {
    agent::cli::main()
}
