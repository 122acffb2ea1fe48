//! The routes-file world most proxy tests use: five pods (0 client, 1 reviews-v1, 2 reviews-v2
//! as the sandbox, 3 ratings-v1, 4 nothing), HTTP echo backends, and the agent on a routes file.
use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::{
    harness::{AgentProc, Bins, Env},
    http_backend::HttpBackend,
    routes_fixture::{POD_PORT, REVIEWS_VIP, RoutesSpec, SERVICE_PORT, routes_yaml},
};

pub struct World {
    pub env: Env,
    _backends: Vec<HttpBackend>,
    pub routes: std::path::PathBuf,
}

impl World {
    /// Pods: 0 client, 1 reviews-v1, 2 reviews-v2 (sandbox), 3 ratings-v1, 4 nothing.
    pub fn new(test: &str, bins: Bins, spec: RoutesSpec) -> Option<Self> {
        let env = Env::new(test, 5, bins)?;
        let backends = vec![
            HttpBackend::start(
                &env.topo.pods[1].netns,
                "reviews-v1",
                env.topo.pods[1].addr4(POD_PORT),
            )
            .unwrap(),
            HttpBackend::start(
                &env.topo.pods[2].netns,
                "reviews-v2",
                env.topo.pods[2].addr4(POD_PORT),
            )
            .unwrap(),
            HttpBackend::start(
                &env.topo.pods[3].netns,
                "ratings-v1",
                env.topo.pods[3].addr4(POD_PORT),
            )
            .unwrap(),
        ];
        let routes = env.run.path.join("routes.yaml");
        std::fs::write(&routes, routes_yaml(&env.topo, &spec)).unwrap();
        Some(Self {
            env,
            _backends: backends,
            routes,
        })
    }

    pub fn agent(&self, extra: &[&str]) -> AgentProc {
        let mut args = vec!["--routes".to_string(), self.routes.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.env.start_agent(&args, None)
    }

    pub fn http(&self, dst: SocketAddr, flags: &[&str], reqs: Value) -> Vec<Value> {
        let (dst, reqs) = (dst.to_string(), reqs.to_string());
        let mut args = vec!["http", dst.as_str()];
        args.extend_from_slice(flags);
        args.push(&reqs);
        self.env.peer(0, &args)
    }
}

pub fn reviews() -> SocketAddr {
    SocketAddr::from((REVIEWS_VIP, SERVICE_PORT))
}

/// A request carrying `key` as baggage.
pub fn keyed(key: &str) -> Value {
    json!({ "path": "/", "headers": { "baggage": format!("sd-routing-key={key}") } })
}

/// Which backend served a netpeer result line.
pub fn served_by(line: &Value) -> &str {
    line["served_by"]
        .as_str()
        .unwrap_or_else(|| panic!("no x-served-by in {line}"))
}
