//! The fake API server with the SandboxRoute CRD, namespace `shop` and the objects a test starts
//! from, and a kubeconfig for it: what the cluster-mode MCP tests and the `shunt sandbox` tests
//! run their commands against.
use std::path::PathBuf;

use serde_json::Value;

use crate::{fake_apiserver::FakeApiServer, kube_world::FakeCluster};

/// The fake API server with the given objects, and a kubeconfig for it.
pub struct ShopCluster {
    pub api: FakeApiServer,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    // Last: the server's tasks run on it.
    _rt: tokio::runtime::Runtime,
}

impl ShopCluster {
    /// Starts the server (the SandboxRoute CRD and namespace `shop`) and creates `objects`.
    pub fn start(objects: impl IntoIterator<Item = Value>) -> Self {
        let FakeCluster { api, rt } = FakeCluster::start(false).expect("fake API server");
        for obj in objects {
            api.create(obj.clone())
                .unwrap_or_else(|e| panic!("creating {obj}: {e}"));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        Self {
            api,
            kubeconfig,
            _dir: dir,
            _rt: rt,
        }
    }
}
