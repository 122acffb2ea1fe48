//! The soak's world: the harness's topology, three backend pods (HTTP/1.1 + h2c, and gRPC), the
//! routes file the churn rewrites, and the agent with its restarts.
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use tests::{
    grpc_backend::GrpcBackend,
    harness::{AgentProc, Bins, Env},
    http_backend::HttpBackend,
};

use crate::analysis::FaultKind;

pub const HTTP_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 8085;
const SERVICE_VIP: &str = "198.19.10.7";

/// What the churn has changed.
#[derive(Clone, Copy, Debug)]
pub struct Churn {
    pub pr43: bool,
    pub v3_ready: bool,
    pub pr44: bool,
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            pr43: false,
            v3_ready: true,
            pr44: false,
        }
    }
}

impl Churn {
    /// The change of second `tick`, on a six-second cycle: `pr-43` added, its sandbox unready,
    /// ready again, `pr-44` added, removed, `pr-43` removed. `pr-43` has a ready endpoint for 3 s
    /// of each cycle.
    pub fn step(&mut self, tick: u64) {
        match tick % 6 {
            0 => self.pr43 = true,
            1 => self.v3_ready = false,
            2 => self.v3_ready = true,
            3 => self.pr44 = true,
            4 => self.pr44 = false,
            _ => self.pr43 = false,
        }
    }

    pub fn pr43_ready(self) -> bool {
        self.pr43 && self.v3_ready
    }
}

pub struct SoakWorld {
    pub env: Env,
    routes: PathBuf,
    _http: Vec<HttpBackend>,
    _grpc: Vec<GrpcBackend>,
}

/// Pod `pod`'s address at `port`.
pub fn port_addr(env: &Env, pod: usize, port: u16) -> SocketAddr {
    env.topo.pods[pod].addr4(port)
}

impl SoakWorld {
    pub fn new(bins: Bins) -> anyhow::Result<Self> {
        let env = Env::new("shunt-soak", 4, bins).ok_or_else(|| anyhow::anyhow!("no kernel"))?;
        let names = ["reviews-v1", "reviews-v2", "reviews-v3"];
        let mut http = Vec::new();
        let mut grpc = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let pod = &env.topo.pods[i + 1];
            http.push(HttpBackend::start(&pod.netns, name, pod.addr4(HTTP_PORT))?);
            grpc.push(GrpcBackend::start(&pod.netns, name, pod.addr4(GRPC_PORT))?);
        }
        let routes = env.run.path.join("routes.yaml");
        let w = Self {
            env,
            routes,
            _http: http,
            _grpc: grpc,
        };
        w.write_routes(Churn::default())?;
        Ok(w)
    }

    /// The routes file: `reviews` forked under `pr-42` always, under `pr-43` when `churn.pr43`
    /// (its sandbox `reviews-v3` ready when `churn.v3_ready`), and under `pr-44` (a fork with no
    /// sandbox pod at all) when `churn.pr44`. Replaced atomically.
    pub fn write_routes(&self, churn: Churn) -> anyhow::Result<()> {
        let Churn {
            pr43,
            v3_ready,
            pr44,
        } = churn;
        let ip = |i: usize| self.env.topo.pods[i].ip4;
        let ports = format!("{{ http: {HTTP_PORT}, grpc: {GRPC_PORT} }}");
        let mut yaml = format!(
            r#"services:
  - name: reviews
    namespace: shop
    addresses: [{SERVICE_VIP}]
    ports:
      - {{ name: http, port: 9080, targetPort: http }}
      - {{ name: grpc, port: 9085, targetPort: grpc }}
    endpoints:
      - {{ ip: {v1}, ports: {ports} }}
pods:
  - {{ name: reviews-v2, namespace: shop, ips: [{v2}], labels: {{ shunt.dev/sandbox: pr-42 }}, ports: {ports} }}
  - {{ name: reviews-v3, namespace: shop, ips: [{v3}], ready: {v3_ready}, labels: {{ shunt.dev/sandbox: pr-43 }}, ports: {ports} }}
routes:
  - name: pr-42
    namespace: shop
    spec: {{ routingKey: pr-42, forks: [{{ service: reviews, to: {{ selector: {{ shunt.dev/sandbox: pr-42 }} }} }}] }}
"#,
            v1 = ip(1),
            v2 = ip(2),
            v3 = ip(3),
        );
        if pr44 {
            yaml.push_str(
                "  - name: pr-44\n    namespace: shop\n    spec: { routingKey: pr-44, forks: [{ service: reviews, to: { selector: { shunt.dev/sandbox: pr-44 } } }] }\n",
            );
        }
        if pr43 {
            yaml.push_str(
                "  - name: pr-43\n    namespace: shop\n    spec: { routingKey: pr-43, forks: [{ service: reviews, to: { selector: { shunt.dev/sandbox: pr-43 } } }] }\n",
            );
        }
        let tmp = self.routes.with_extension("tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &self.routes)?;
        Ok(())
    }

    /// Starts an agent and waits until it runs: its own log says so. (`/readyz` cannot tell:
    /// while an old agent shares the port, it may be the one answering.)
    pub fn start_agent(&self) -> AgentProc {
        let args = [
            "--routes",
            &self.routes.display().to_string(),
            "--routes-poll-interval",
            "100ms",
            "--shutdown-grace",
            "3s",
            // The decision log is a ring of fixed size (8 MiB by default) that takes minutes to
            // fill at this rate, longer than an agent lives between restarts here: a small one
            // fills in seconds, so RSS growth after that is growth the ring does not explain.
            "--decision-log-bytes",
            "1048576",
        ]
        .map(String::from);
        let agent = self.env.start_agent(&args, None);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !agent.log_text().contains("shunt running") {
            assert!(
                Instant::now() < deadline,
                "agent not running:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    /// A restart the way the DaemonSet does it (the new agent beside the old one, then SIGTERM
    /// to the old), or a crash (SIGKILL, then a new agent at once). Returns the running agent.
    pub fn fault(&self, mut old: AgentProc, kind: FaultKind) -> anyhow::Result<AgentProc> {
        Ok(match kind {
            FaultKind::Restart => {
                let new = self.start_agent();
                old.child.signal(libc::SIGTERM);
                old.child.wait_timeout(Duration::from_secs(15))?;
                new
            }
            FaultKind::Kill => {
                old.kill();
                self.start_agent()
            }
        })
    }
}

pub fn pid(agent: &AgentProc) -> i32 {
    agent.child.pid()
}

/// The agent's resident set (VmRSS), in KiB.
pub fn rss_kib(agent: &AgentProc) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid(agent))).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
