//! The `shunt` command line: parses flags and hands each subcommand plain values (`run` gets a
//! [`RunConfig`]); `mcp` and `sandbox` own their flags and are only dispatched to from here.
use std::{net::SocketAddr, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::config::RunConfig;

#[derive(Debug, Parser)]
#[command(
    name = "shunt",
    version,
    about = "eBPF traffic steering for Kubernetes sandboxes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at startup: a large `Run` variant costs nothing worth boxing it for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: capture, node proxy and admin API (the DaemonSet entry point).
    Run(Box<RunConfig>),
    /// Print the agent's current route table (from its admin API).
    Routes(AdminArgs),
    /// Print the service graph observed from real traffic (from the agent's admin API).
    Topology(TopologyArgs),
    /// Print the SandboxRoute CustomResourceDefinition (YAML), for `kubectl apply -f -`.
    Crd,
    /// MCP server (stdio) for coding agents: services, sandbox routes, keyed test requests and
    /// the routing decisions they caused.
    Mcp(crate::mcp::McpArgs),
    /// Fork a Deployment into a sandbox with its SandboxRoute (create, list, delete).
    Sandbox(crate::sandbox::SandboxArgs),
}

/// Where the agent's admin API is.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,
}

#[derive(Debug, Clone, Args)]
pub struct TopologyArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Print a Mermaid flowchart instead of a tree.
    #[arg(long)]
    pub mermaid: bool,
    /// Print the raw JSON.
    #[arg(long, conflicts_with = "mermaid")]
    pub json: bool,
}

/// Entry point of the `shunt` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Run(cfg) => crate::run::run(*cfg),
        Command::Routes(a) => admin_cli(a.admin_addr, "/routes").map(|t| print!("{t}")),
        Command::Topology(t) => admin_cli(t.admin.admin_addr, "/topology").and_then(|text| {
            if t.json {
                print!("{text}");
                return Ok(());
            }
            let topo: crate::admin::topology::Topology = serde_json::from_str(&text)?;
            if t.mermaid {
                print!("{}", topo.render_mermaid());
            } else if topo.edges.is_empty() {
                println!("no connections observed yet");
            } else {
                print!("{}", topo.render_tree());
            }
            Ok(())
        }),
        Command::Crd => {
            print!("{}", crate::kube::crd::crd_yaml());
            Ok(())
        }
        Command::Mcp(args) => crate::mcp::run(args),
        Command::Sandbox(args) => crate::sandbox::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error chain, outermost first.
            eprintln!("shunt: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn admin_cli(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(crate::admin::client::get(addr, path))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHUNT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
