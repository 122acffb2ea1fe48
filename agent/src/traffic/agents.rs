//! The fan-out: every running agent pod's debug listener, asked for one namespace, with the
//! debug token. Agents run with hostNetwork, so a pod's IP is its node's, where
//! `--debug-addr $(NODE_IP):9465` listens.
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt as _, api::ListParams};

use super::client::{AgentAnswer, AgentAnswers};
use crate::admin::DebugToken;

/// How the traffic API finds and reaches the agents.
#[derive(Clone, Debug)]
pub struct Agents {
    pub namespace: String,
    pub selector: String,
    pub debug_port: u16,
    pub token: DebugToken,
}

/// Largest answer read from one agent (a full page of decisions is about 1 MiB).
const MAX_ANSWER: usize = 16 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why no agent could be asked.
#[derive(Debug, thiserror::Error)]
pub enum FanOutError {
    #[error("listing the agent pods in {namespace}")]
    List {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("no running agent pod in {namespace} with labels {selector}")]
    NoAgents { namespace: String, selector: String },
}

impl Agents {
    /// GETs `/{resource}?namespace=NS&{query}` from every agent; fails only when there is no
    /// agent to ask.
    pub async fn get(
        &self,
        client: &kube::Client,
        resource: &str,
        namespace: &str,
        query: &[(String, String)],
    ) -> Result<AgentAnswers, FanOutError> {
        let pods = Api::<Pod>::namespaced(client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&self.selector))
            .await
            .map_err(|source| FanOutError::List {
                namespace: self.namespace.clone(),
                source,
            })?;
        let targets: Vec<(String, std::net::IpAddr)> = pods
            .items
            .iter()
            .filter(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.metadata.deletion_timestamp.is_none()
            })
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
                Some((p.name_any(), ip))
            })
            .collect();
        if targets.is_empty() {
            return Err(FanOutError::NoAgents {
                namespace: self.namespace.clone(),
                selector: self.selector.clone(),
            });
        }
        let path = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("namespace", namespace);
            for (k, v) in query {
                q.append_pair(k, v);
            }
            format!("/{resource}?{}", q.finish())
        };
        // All agents at once: one slow node must not add up.
        let answers = futures::future::join_all(targets.into_iter().map(|(agent, ip)| {
            let addr = std::net::SocketAddr::new(ip, self.debug_port);
            let path = path.clone();
            async move { tokio::time::timeout(TIMEOUT, self.ask(addr, &path)).await }
                .map(move |r| (agent, addr, r))
        }))
        .await;
        let mut out = AgentAnswers::default();
        for (agent, addr, r) in answers {
            match r {
                Ok(Ok(body)) => out.items.push(AgentAnswer { agent, body }),
                Ok(Err(e)) => out.warnings.push(format!("agent {agent} ({addr}): {e}")),
                Err(_) => out
                    .warnings
                    .push(format!("agent {agent} ({addr}): no answer in {TIMEOUT:?}")),
            }
        }
        Ok(out)
    }

    async fn ask(
        &self,
        addr: std::net::SocketAddr,
        path: &str,
    ) -> Result<serde_json::Value, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::AUTHORIZATION, self.token.bearer())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("the answer did not parse: {e}"))
    }
}
