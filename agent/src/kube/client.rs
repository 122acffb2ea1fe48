//! The one kubeconfig loader: `shunt run --kube`, `shunt mcp --kube` and `shunt sandbox` all get
//! their Kubernetes client here, so they read configurations the same way.
use std::path::{Path, PathBuf};

use kube::{
    Client, Config,
    config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError},
};

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The file given with `--kubeconfig` is unreadable or does not describe a usable context.
    #[error("--kubeconfig {}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster); fix: pass --kubeconfig"
    )]
    NoConfig(#[source] InferConfigError),
    #[error("building the Kubernetes client")]
    Build(#[source] kube::Error),
}

/// A client from `kubeconfig` (else KUBECONFIG / ~/.kube/config, else the in-cluster
/// configuration) and the context's default namespace. Only reads configuration: an unreachable
/// API server is not an error here.
pub async fn load(kubeconfig: Option<&Path>) -> Result<(Client, String), ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let bad_file = |source| ClientError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(bad_file)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(bad_file)?
        }
        None => Config::infer().await.map_err(ClientError::NoConfig)?,
    };
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(ClientError::Build)?;
    Ok((client, namespace))
}
