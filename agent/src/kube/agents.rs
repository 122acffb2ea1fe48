//! Where the node agents run: the flags of the clients that find their pods (`shunt mcp --kube`
//! for send_test_request's image, `shunt traffic-api` for the agents' debug ports).
use clap::Args;

#[derive(Clone, Debug, Args)]
pub struct AgentPodsArgs {
    /// Namespace of the agent pods.
    #[arg(long, value_name = "NS", default_value = "shunt-system")]
    pub agent_namespace: String,

    /// Label selector of the agent pods.
    #[arg(
        long,
        value_name = "SELECTOR",
        default_value = "app.kubernetes.io/name=shunt,app.kubernetes.io/component=agent"
    )]
    pub agent_selector: String,
}
