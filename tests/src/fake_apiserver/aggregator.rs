//! API aggregation: an APIService (`apiregistration.k8s.io/v1`) with `spec.service` makes the
//! server proxy `/apis/GROUP/VERSION/...` to that Service, as kube-apiserver's aggregator does:
//! over TLS, authenticating itself with the front-proxy client certificate
//! ([`super::FakeApiServer::set_front_proxy_client`]), checking the server's certificate
//! against `spec.caBundle` (or not, with `insecureSkipTLSVerify`) for the name
//! `SERVICE.NAMESPACE.svc`, with the requesting user in `X-Remote-User`/`X-Remote-Group` and
//! its own credentials removed. The request was authorized before (RBAC on the URL's resource).
//! How the Service is reached is the test's to say ([`super::FakeApiServer::set_service_dialer`]);
//! by default its ClusterIP.
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use serde_json::Value;

use super::auth::User;
use super::error::{ApiError, ApiResult};
use super::http::{Body, read_body};
use super::state::Shared;
use super::upstream::{self, Wording, unavailable};

/// Where an aggregated request goes.
#[derive(Clone, Debug)]
pub struct ServiceTarget {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    /// The Service's ClusterIP, if it exists and has one.
    pub cluster_ip: Option<IpAddr>,
}

/// Opens the connection for an aggregated request.
pub type ServiceDialer = Arc<dyn Fn(&ServiceTarget) -> std::io::Result<TcpStream> + Send + Sync>;

/// The default dialer: the Service's ClusterIP.
pub fn dial_cluster_ip(t: &ServiceTarget) -> std::io::Result<TcpStream> {
    let ip = t
        .cluster_ip
        .ok_or_else(|| std::io::Error::other("the Service has no ClusterIP"))?;
    TcpStream::connect_timeout(&SocketAddr::new(ip, t.port), Duration::from_secs(5))
}

/// The front-proxy client identity (PEM), as kube-apiserver's `--proxy-client-cert-file`.
#[derive(Clone)]
pub(crate) struct FrontProxy {
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
}

const MAX_BODY: usize = 16 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

/// The APIService serving `group`/`version` through a Service, if any.
pub(crate) fn api_service(shared: &Shared, group: &str, version: &str) -> Option<Value> {
    let cluster = shared.lock();
    let rt = cluster
        .rt_by_kind("apiregistration.k8s.io/v1", "APIService")
        .ok()?;
    let svc = cluster.get(&rt, None, &format!("{version}.{group}")).ok()?;
    svc["spec"]["service"].is_object().then_some(svc)
}

/// Accepts any server certificate (`insecureSkipTLSVerify: true`).
#[derive(Debug)]
struct SkipVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(spec: &Value, front: &FrontProxy) -> ApiResult<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let bad = |what: &str, e: &dyn std::fmt::Display| unavailable(format!("{what}: {e}"));
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?;
    let builder = if spec["insecureSkipTLSVerify"] == true {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
    } else {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(spec["caBundle"].as_str().unwrap_or_default())
            .map_err(|e| bad("APIService spec.caBundle", &e))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(|e| bad("APIService spec.caBundle", &e))?;
            roots
                .add(c)
                .map_err(|e| bad("APIService spec.caBundle", &e))?;
        }
        builder.with_root_certificates(roots)
    };
    let certs = CertificateDer::pem_slice_iter(&front.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("front-proxy certificate", &e))?;
    let key =
        PrivateKeyDer::from_pem_slice(&front.key_pem).map_err(|e| bad("front-proxy key", &e))?;
    builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| bad("front-proxy identity", &e))
}

/// Proxies `req` to the APIService's Service as `user`.
pub(crate) async fn proxy(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    api_service: Value,
    user: User,
) -> ApiResult<Response<Body>> {
    let name = api_service["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let spec = api_service["spec"].clone();
    let svc = &spec["service"];
    let target = ServiceTarget {
        namespace: svc["namespace"].as_str().unwrap_or_default().to_string(),
        name: svc["name"].as_str().unwrap_or_default().to_string(),
        port: svc["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(443),
        cluster_ip: {
            let cluster = shared.lock();
            cluster
                .rt_by_kind("v1", "Service")
                .ok()
                .and_then(|rt| {
                    cluster
                        .get(
                            &rt,
                            Some(svc["namespace"].as_str().unwrap_or_default()),
                            svc["name"].as_str().unwrap_or_default(),
                        )
                        .ok()
                })
                .and_then(|s| {
                    s["spec"]["clusterIP"]
                        .as_str()
                        .and_then(|ip| ip.parse().ok())
                })
        },
    };
    let front = shared
        .front_proxy
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| {
            unavailable(format!(
                "{name}: no front-proxy client certificate configured (set_front_proxy_client)"
            ))
        })?;
    let config = tls_config(&spec, &front)?;
    let dialer = shared
        .service_dialer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let t = target.clone();
    let stream = tokio::task::spawn_blocking(move || dialer(&t))
        .await
        .map_err(|e| ApiError::internal(format!("service dialer: {e}")))?
        .map_err(|e| unavailable(format!("{name}: error trying to reach service: {e}")))?;
    stream
        .set_nonblocking(true)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let stream =
        tokio::net::TcpStream::from_std(stream).map_err(|e| ApiError::internal(e.to_string()))?;
    let server_name = ServerName::try_from(format!("{}.{}.svc", target.name, target.namespace))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, stream)
        .await
        .map_err(|e| unavailable(format!("{name}: TLS handshake with the service: {e}")))?;

    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(&pq)
        .header(
            hyper::header::HOST,
            format!("{}.{}.svc", target.name, target.namespace),
        );
    for (n, v) in parts.headers.iter() {
        let skip = matches!(
            n.as_str(),
            "authorization" | "host" | "connection" | "content-length" | "transfer-encoding"
        ) || n.as_str().starts_with("x-remote-");
        if !skip {
            out = out.header(n, v);
        }
    }
    out = out.header("X-Remote-User", user.name.as_str());
    for g in &user.groups {
        out = out.header("X-Remote-Group", g.as_str());
    }
    let out = out
        .body(Full::new(body))
        .map_err(|e| ApiError::bad_request(format!("proxy request: {e}")))?;
    let words = Wording {
        reach: name.to_string(),
        read: format!("{name}: reading the response"),
        timeout: format!("{name} did not answer in {TIMEOUT:?}"),
    };
    let (mut resp, headers) = upstream::exchange(tls, out, MAX_BODY, TIMEOUT, &words).await?;
    for (n, v) in headers.iter() {
        if !matches!(
            n.as_str(),
            "connection" | "transfer-encoding" | "content-length"
        ) {
            resp.headers_mut().append(n.clone(), v.clone());
        }
    }
    Ok(resp)
}
