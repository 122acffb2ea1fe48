//! The `shunt` command line: parses flags and hands each subcommand plain values (`run` gets a
//! [`RunConfig`]); `mcp` and `sandbox` own their flags and are only dispatched to from here.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

#[cfg(feature = "node")]
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
    #[cfg(feature = "node")]
    Run(Box<RunConfig>),
    /// Print the agent's current route table (from its debug API, or with --kube through the
    /// traffic API for one namespace).
    Routes(DebugArgs),
    /// Print the service graph observed from real traffic (from the agent's debug API).
    Topology(TopologyArgs),
    /// Print the SandboxRoute CustomResourceDefinition (YAML), for `kubectl apply -f -`.
    Crd,
    /// MCP server (stdio) for coding agents: services, sandbox routes, keyed test requests and
    /// the routing decisions they caused.
    Mcp(crate::mcp::McpArgs),
    /// Fork a Deployment into a sandbox with its SandboxRoute (create, list, delete).
    Sandbox(crate::sandbox::SandboxArgs),
    /// Run a test command whose requests carry a routing key they do not send (no-cluster
    /// mode): `shunt test --key KEY -- COMMAND...`.
    Test(crate::sandbox::test_runner::TestArgs),
    /// Install the shunt-validate agent skill (the validation loop, step by step).
    Skill(crate::skill::SkillArgs),
    /// The traffic API (an aggregated Kubernetes API): serves the agents' decisions, topology
    /// and routes per namespace to users whose RBAC grants it (the Deployment's entry point).
    #[cfg(feature = "node")]
    TrafficApi(crate::traffic::TrafficApiArgs),
}

/// Where the agents' debug data is read.
#[derive(Debug, Clone, Args)]
pub struct DebugArgs {
    /// No cluster: the agent's debug API (`shunt run --debug-addr`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465")]
    pub debug_addr: SocketAddr,
    /// Cluster: read every agent's answer for one namespace through the traffic API
    /// (traffic.shunt.dev), with your kubeconfig and RBAC.
    #[arg(long)]
    pub kube: bool,
    /// Kubeconfig for --kube (default: KUBECONFIG or ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "PATH", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace for --kube (default: the kubeconfig context's).
    #[arg(long, short = 'n', value_name = "NS", requires = "kube")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct TopologyArgs {
    #[command(flatten)]
    pub debug: DebugArgs,
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
        #[cfg(feature = "node")]
        Command::Run(cfg) => crate::run::run(*cfg),
        Command::Routes(a) => debug_cli(&a, "routes").map(|t| print!("{t}")),
        Command::Topology(t) => debug_cli(&t.debug, "topology").and_then(|text| {
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
        Command::Test(args) => return crate::sandbox::test_runner::run(args),
        Command::Skill(args) => crate::skill::run(args),
        #[cfg(feature = "node")]
        Command::TrafficApi(args) => crate::traffic::run(args),
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

/// The agents' `resource` (`routes`, `topology`) as JSON text: from the local debug API, or
/// through the traffic API (every agent's answer for the namespace, merged).
fn debug_cli(a: &DebugArgs, resource: &str) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if !a.kube {
        return rt.block_on(crate::admin::client::get(
            a.debug_addr,
            &format!("/{resource}"),
        ));
    }
    rt.block_on(async {
        let (client, default_ns) = crate::kube::client::load(a.kubeconfig.as_deref()).await?;
        let ns = a.namespace.clone().unwrap_or(default_ns);
        let answers = crate::traffic::client::get(&client, &ns, resource, "").await?;
        for w in &answers.warnings {
            eprintln!("shunt: warning: {w}");
        }
        let merged = if resource == "topology" {
            let mut edges = Vec::new();
            for item in answers.items {
                let t: crate::admin::topology::Topology = serde_json::from_value(item.body)?;
                edges.extend(t.edges);
            }
            serde_json::to_value(crate::admin::topology::Topology::merged(edges))?
        } else {
            // Every agent holds the same table: the first answer is the table.
            answers
                .items
                .into_iter()
                .next()
                .map(|i| i.body)
                .unwrap_or_else(|| serde_json::json!([]))
        };
        let mut text = serde_json::to_string_pretty(&merged)?;
        text.push('\n');
        anyhow::Ok(text)
    })
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
