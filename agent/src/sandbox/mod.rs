//! `shunt sandbox create|list|delete`: fork a Deployment into a sandbox and route a key to it.
//!
//! `create` clones the Deployment under `NAME-KEY` with the new image and env, relabelled so no
//! baseline Service selects it (see [`clone`]), creates the SandboxRoute forking the Services
//! that select the baseline pods to the clone's pods, then the clone with an ownerReference to
//! the route (so deleting the route garbage-collects it, and the agents' deletion of an expired
//! route removes the whole sandbox), and waits until the agents report the route Ready.
//!
//! Runs with the user's kubeconfig; the permissions it needs are in the README ("For coding
//! agents"). The agent daemon needs none of them.
//!
//! - [`clone`]: the clone Deployment and its route, computed (pure).
//! - [`fork`]: the clone and its route created, and the wait for Ready (shared with MCP
//!   `create_sandbox` in cluster mode).
//! - `create`, `list`, `delete`: the subcommands, against the API.
pub mod clone;
mod create;
mod delete;
pub mod fork;
mod list;
pub mod local;
pub mod test_runner;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};
use kube::Client;

use crate::duration::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    #[command(subcommand)]
    pub command: SandboxCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SandboxCommand {
    /// Fork a Deployment with a new image/env and route a key to it.
    Create(CreateArgs),
    /// List the sandboxes (SandboxRoutes and their forked Deployments).
    List(ListArgs),
    /// Delete a sandbox: its Deployment and its SandboxRoute.
    Delete(DeleteArgs),
}

#[derive(Debug, Clone, Args)]
pub struct KubeFlags {
    /// Namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// Kubeconfig (default: KUBECONFIG or ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The Deployment to fork: `deployment/NAME`.
    #[arg(long, value_name = "deployment/NAME")]
    pub fork: String,
    /// The sandbox's image (of the first container, or of --container).
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// Set an environment variable in that container (repeatable).
    #[arg(long, value_name = "K=V")]
    pub env: Vec<String>,
    /// The routing key (default: `sbx-` and 6 random hex digits).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Delete the sandbox after this long (e.g. 2h): sets the route's expiresAt.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// The container whose image is replaced (default: the first).
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// Replicas of the sandbox.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub replicas: i32,
    /// Keyed requests get a 503 instead of the baseline while no sandbox pod is ready.
    #[arg(long)]
    pub reject_when_unready: bool,
    /// How long to wait for the sandbox to be Ready.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Do not wait for Ready.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub kube: KubeFlags,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Every namespace.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub kube: KubeFlags,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// The sandbox's routing key.
    pub key: String,
    #[command(flatten)]
    pub kube: KubeFlags,
}

/// `shunt sandbox ...`.
pub fn run(args: SandboxArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match args.command {
            SandboxCommand::Create(a) => create::create(a).await,
            SandboxCommand::List(a) => list::list(a).await,
            SandboxCommand::Delete(a) => delete::delete(a).await,
        }
    })
}

/// A client and the namespace to work in (--namespace, else the kubeconfig context's).
async fn connect(k: &KubeFlags) -> anyhow::Result<(Client, String)> {
    let (client, ns) = crate::kube::client::load(k.kubeconfig.as_deref()).await?;
    Ok((client, k.namespace.clone().unwrap_or(ns)))
}

fn api_err(what: &str, e: kube::Error) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "{what}: forbidden ({}); fix: your user needs the permissions listed in the README (\"For coding agents\")",
            s.message
        ),
        kube::Error::Api(s) if s.code == 404 && s.message.contains("sandboxroutes") => {
            anyhow::anyhow!(
                "{what}: the SandboxRoute CRD is not installed; fix: `shunt crd | kubectl apply -f -` (or deploy/)"
            )
        }
        _ => anyhow::anyhow!("{what}: {e}"),
    }
}

pub use create::expiry;
pub use delete::remove;

fn progress(msg: &str) {
    eprintln!("==> {msg}");
}
