//! `shunt traffic-api`: the aggregated API server. It serves TLS, and takes the user from the
//! front-proxy headers (`X-Remote-User`, `X-Remote-Group`) only on connections whose client
//! certificate the cluster's requestheader CA signed: the API server's. Anything else gets
//! `/healthz` and `/readyz` only. Each read is authorized again with a SubjectAccessReview
//! (`list` on the resource in the namespace), then fanned out to the agents.
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::ConfigMap,
};
use kube::{Api, api::PostParams};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde_json::json;
use tokio::sync::Semaphore;

use super::{GROUP, RESOURCES, VERB, VERSION, agents::Agents};
use crate::admin::DebugToken;

/// Flags of `shunt traffic-api`.
#[derive(Debug, Clone, Args)]
pub struct TrafficApiArgs {
    /// Where to serve (TLS).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    pub listen_addr: SocketAddr,

    /// Serving certificate (PEM), e.g. from a Secret.
    #[arg(long, value_name = "PATH")]
    pub tls_cert_file: PathBuf,

    /// Serving key (PEM).
    #[arg(long, value_name = "PATH")]
    pub tls_private_key_file: PathBuf,

    /// CA of the API server's front-proxy client certificate (PEM). Default: the
    /// `requestheader-client-ca-file` of ConfigMap kube-system/extension-apiserver-authentication,
    /// as every aggregated API server reads it.
    #[arg(long, value_name = "PATH")]
    pub requestheader_client_ca_file: Option<PathBuf>,

    /// The agents' debug token (the Secret the agents mount).
    #[arg(long, value_name = "PATH")]
    pub debug_token_file: PathBuf,

    #[command(flatten)]
    pub agents: crate::kube::agents::AgentPodsArgs,

    /// The agents' debug port (`shunt run --debug-addr`).
    #[arg(long, value_name = "PORT", default_value_t = 9465)]
    pub agent_debug_port: u16,

    /// Kubeconfig (default: in-cluster config, else KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Connections served at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections: usize,
}

struct State {
    client: kube::Client,
    agents: Agents,
}

/// `shunt traffic-api`.
pub fn run(args: TrafficApiArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn requestheader_ca(args: &TrafficApiArgs, client: &kube::Client) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = &args.requestheader_client_ca_file {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    }
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .get("extension-apiserver-authentication")
        .await
        .context("reading ConfigMap kube-system/extension-apiserver-authentication")?;
    cm.data
        .and_then(|d| d.get("requestheader-client-ca-file").cloned())
        .map(String::into_bytes)
        .context(
            "ConfigMap kube-system/extension-apiserver-authentication has no \
             requestheader-client-ca-file: the API server runs without front-proxy \
             authentication, so aggregated APIs cannot work",
        )
}

fn tls_config(args: &TrafficApiArgs, ca_pem: &[u8]) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(&args.tls_cert_file)
        .with_context(|| format!("reading {}", args.tls_cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", args.tls_cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&args.tls_private_key_file)
        .with_context(|| format!("reading {}", args.tls_private_key_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(c.context("parsing the requestheader CA")?)
            .context("the requestheader CA")?;
    }
    // Unauthenticated connections are accepted (for the kubelet's probes), but get nothing
    // beyond health: see `handle`.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("the front-proxy client verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("the serving certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

async fn serve(args: TrafficApiArgs) -> anyhow::Result<()> {
    let (client, _) = crate::kube::client::load(args.kubeconfig.as_deref()).await?;
    let ca = requestheader_ca(&args, &client).await?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&args, &ca)?));
    let token = DebugToken::from_file(&args.debug_token_file)?;
    let state = Arc::new(State {
        client,
        agents: Agents {
            namespace: args.agents.agent_namespace.clone(),
            selector: args.agents.agent_selector.clone(),
            debug_port: args.agent_debug_port,
            token,
        },
    });
    let listener = tokio::net::TcpListener::bind(args.listen_addr)
        .await
        .with_context(|| format!("binding --listen-addr {}", args.listen_addr))?;
    tracing::info!(addr = %args.listen_addr, "traffic API serving");
    let permits = Arc::new(Semaphore::new(args.max_connections.max(1)));
    loop {
        let permit = permits.clone().acquire_owned().await?;
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let front_proxy = tls.get_ref().1.peer_certificates().is_some();
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req, front_proxy).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn ok_json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The discovery document of the group version (the aggregator reads it for availability).
fn resource_list() -> serde_json::Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": RESOURCES.iter().map(|r| json!({
            "name": r, "singularName": "", "namespaced": true, "kind": "AgentAnswerList",
            "verbs": [VERB],
        })).collect::<Vec<_>>(),
    })
}

async fn handle(state: &State, req: Request<Incoming>, front_proxy: bool) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") {
        return Response::new(Full::new(Bytes::from_static(b"ok")));
    }
    if !front_proxy {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the traffic API answers only the Kubernetes API server (front-proxy client \
             certificate); read it through /apis/traffic.shunt.dev"
                .into(),
        );
    }
    let user = req
        .headers()
        .get("x-remote-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let groups: Vec<String> = req
        .headers()
        .get_all("x-remote-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let prefix = format!("/apis/{GROUP}/{VERSION}");
    let rest = path.strip_prefix(&prefix).unwrap_or("/unknown");
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segs.is_empty() {
        return ok_json(&resource_list());
    }
    let (namespace, resource) = match segs.as_slice() {
        ["namespaces", ns, res] if RESOURCES.contains(res) => (ns.to_string(), res.to_string()),
        [res] if RESOURCES.contains(res) => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{res} is read per namespace: /apis/{GROUP}/{VERSION}/namespaces/NS/{res}"),
            );
        }
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path}: not found"),
            );
        }
    };
    if req.method() != hyper::Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{resource} is read-only"),
        );
    }
    let Some(user) = user else {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "no X-Remote-User from the API server".into(),
        );
    };
    match authorize(&state.client, &user, &groups, &resource, &namespace).await {
        Ok(true) => {}
        Ok(false) => {
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{resource}.{GROUP} is forbidden: User \"{user}\" cannot {VERB} resource \
                     \"{resource}\" in API group \"{GROUP}\" in the namespace \"{namespace}\""
                ),
            );
        }
        Err(e) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("authorizing with a SubjectAccessReview: {e}"),
            );
        }
    }
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .filter(|(k, _)| matches!(&**k, "key" | "since" | "limit"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    match state
        .agents
        .get(&state.client, &resource, &namespace, &query)
        .await
    {
        Ok(answers) => ok_json(&answers),
        Err(e) => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("{:#}", anyhow::Error::from(e)),
        ),
    }
}

/// Whether `user` may `list` `resource` in `namespace`: asked of the API server, so the
/// cluster's own authorizers (RBAC, webhooks) decide.
async fn authorize(
    client: &kube::Client,
    user: &str,
    groups: &[String],
    resource: &str,
    namespace: &str,
) -> Result<bool, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                version: Some(VERSION.into()),
                resource: Some(resource.into()),
                verb: Some(VERB.into()),
                namespace: Some(namespace.into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}
