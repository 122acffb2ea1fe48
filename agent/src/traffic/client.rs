//! Reading the traffic API with the user's own kubeconfig (`shunt mcp --kube`, `shunt routes
//! --kube`, `shunt topology --kube`).
use serde::{Deserialize, Serialize};

use super::{API_SERVICE, path};

/// What the traffic API answers: each agent's answer for the namespace, and the agents that
/// did not answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentAnswers {
    pub items: Vec<AgentAnswer>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One agent's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentAnswer {
    /// The agent pod.
    pub agent: String,
    /// The debug endpoint's JSON, as the agent sent it.
    pub body: serde_json::Value,
}

/// Why the traffic API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error(
        "the traffic API (APIService {API_SERVICE}, Service shunt-traffic-api in shunt-system) is \
         not installed in this cluster"
    )]
    NotInstalled,
    /// The API server's or the traffic API's 403, which names the permission.
    #[error("{0}")]
    Forbidden(String),
    #[error("the traffic API is unavailable: {0}")]
    Unavailable(String),
    #[error("reading the traffic API")]
    Api(#[source] kube::Error),
    #[error("the traffic API's answer did not parse")]
    Parse(#[source] serde_json::Error),
}

/// GETs `resource` (`decisions`, `topology`, `routes`) of `namespace` with `query`.
pub async fn get(
    client: &kube::Client,
    namespace: &str,
    resource: &str,
    query: &str,
) -> Result<AgentAnswers, TrafficError> {
    let req = http::Request::get(path(namespace, resource, query))
        .body(Vec::new())
        .map_err(|e| TrafficError::Unavailable(e.to_string()))?;
    let text = client.request_text(req).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 404 => TrafficError::NotInstalled,
        kube::Error::Api(s) if s.code == 403 => TrafficError::Forbidden(s.message.clone()),
        kube::Error::Api(s) if s.code == 503 => TrafficError::Unavailable(s.message.clone()),
        other => TrafficError::Api(other),
    })?;
    serde_json::from_str(&text).map_err(TrafficError::Parse)
}
