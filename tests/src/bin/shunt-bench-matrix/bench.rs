//! The bench world (namespaces, backends, the agent, HAProxy, nginx) and one run of a scenario at
//! a point.
use super::*;

pub struct Bench {
    // Drop order: HAProxy, nginx and the backends, then the world they live in.
    pub(crate) haproxy: PeerProxy,
    pub(crate) nginx: PeerProxy,
    pub(crate) _backends: Vec<ChildGuard>,
    pub(crate) env: Env,
    /// Where the load runs: the captured cgroup, or a child of it (`SHUNT_BENCH_MARKED_IN_USE`).
    pub(crate) client_cgroup: PathBuf,
    /// The CPU list the proxy under test (agent or HAProxy) is pinned to (`taskset -c`).
    pub(crate) proxy_cpu: String,
    pub(crate) routes: PathBuf,
    /// The same routes without `nodePods[].netns`, which the `--before` build may not know.
    pub(crate) routes_before: PathBuf,
    pub records: Vec<Record>,
    /// The largest VmHWM of any agent process, KiB.
    pub agent_hwm_kib: u64,
    /// Thread names of the agent (the run that had the most).
    pub agent_threads: Vec<String>,
    /// The capture hooks' kernel run time over B's new-connection runs.
    pub hook_cost: hookcost::HookCostMeter,
    /// The same with `--count-flows false`.
    pub hook_cost_no_flows: hookcost::HookCostMeter,
    /// The same with the `--before` build.
    pub hook_cost_before: hookcost::HookCostMeter,
    /// The earlier build for C′ and D′ (`--before`).
    pub(crate) before: Option<PathBuf>,
}

impl Bench {
    /// Where the client connects for `s` over `proto` (nginx has one listener per protocol).
    pub(crate) fn addr_for(&self, s: Scenario, proto: Proto) -> SocketAddr {
        match (s, proto) {
            (Scenario::F, Proto::H1) => SocketAddr::from((PROXY4, NGINX_PORT)),
            (Scenario::F, Proto::H2c) => SocketAddr::from((PROXY4, NGINX_H2C_PORT)),
            _ => self.addr(s),
        }
    }

    pub(crate) fn addr(&self, s: Scenario) -> SocketAddr {
        match s {
            Scenario::F => SocketAddr::from((PROXY4, NGINX_PORT)),
            Scenario::A | Scenario::B => self.env.topo.pods[1].addr4(UNSTEERED_PORT),
            Scenario::C | Scenario::D | Scenario::CBefore | Scenario::DBefore => {
                SocketAddr::from((VIP, SERVICE_PORT))
            }
            Scenario::E => SocketAddr::from((PROXY4, HAPROXY_PORT)),
        }
    }

    /// Requests counted so far by the baseline and the sandbox backend.
    pub(crate) fn counts(&self) -> anyhow::Result<[u64; 2]> {
        let mut out = [0; 2];
        for (i, slot) in out.iter_mut().enumerate() {
            let addr = self.env.topo.pods[i + 1].addr4(POD_PORT);
            let (status, body) = self.env.topo.pods[i + 1]
                .netns
                .run(move || http_get(addr, "/stats"))??;
            if status != 200 {
                bail!("backend {addr} /stats: {status}");
            }
            let v: serde_json::Value = serde_json::from_str(&body)?;
            *slot = v["requests"].as_u64().context("requests")?;
        }
        Ok(out)
    }

    pub(crate) fn start_agent(&self) -> AgentProc {
        self.start_agent_with(&[])
    }

    /// The agent under test with `extra` flags after the usual ones.
    pub(crate) fn start_agent_with(&self, extra: &[&str]) -> AgentProc {
        let mut args = self.env.agent_args();
        args.extend([
            "--routes".into(),
            self.routes.display().to_string(),
            "--worker-threads".into(),
            "1".into(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        // `env` and `taskset` exec: the pid is the agent's. Info logging: the harness's debug
        // filter would also turn on hyper's and h2's debug logs.
        let wrapper: Vec<String> = ["env", "SHUNT_LOG=info", "taskset", "-c", &self.proxy_cpu]
            .map(String::from)
            .to_vec();
        self.env.start_agent_wrapped(&wrapper, &args, None)
    }

    /// A few requests for scenario `s` with netpeer (HTTP/1.1 and h2c), checking `x-served-by`
    /// per request: unkeyed → baseline, keyed → sandbox (or baseline only, for `unsteered`).
    pub(crate) fn sample_routing(&self, s: Scenario, keyed_to_sandbox: bool) -> anyhow::Result<()> {
        let reqs = r#"[{"path":"/bytes/16"},{"path":"/bytes/16","headers":{"baggage":"sd-routing-key=pr-42"}},{"path":"/bytes/16"}]"#;
        let want = [
            "baseline",
            if keyed_to_sandbox {
                "sandbox"
            } else {
                "baseline"
            },
            "baseline",
        ];
        for h2 in [false, true] {
            let addr = self.addr_for(s, if h2 { Proto::H2c } else { Proto::H1 });
            let a = addr.to_string();
            let mut args = vec!["http", a.as_str(), reqs];
            if h2 {
                args.push("--h2");
            }
            let lines = self.env.peer(0, &args);
            let got: Vec<&str> = lines
                .iter()
                .map(|l| l["served_by"].as_str().unwrap_or("?"))
                .collect();
            if got != want {
                bail!(
                    "routing sample through {addr} (h2: {h2}): served by {got:?}, want {want:?}: {lines:?}"
                );
            }
        }
        Ok(())
    }

    pub(crate) fn run_one(
        &mut self,
        s: Scenario,
        point: &Point,
        rep: usize,
        proxy_pid: Option<i32>,
    ) -> anyhow::Result<()> {
        if STOP.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let before = self.counts()?;
        let cpu0 = proxy_pid.and_then(procstat::cpu_seconds);
        let started = Instant::now();
        let target = Target {
            netns: &self.env.topo.pods[0].netns,
            cgroup: &self.client_cgroup,
            addr: self.addr_for(s, point.shape.proto),
            header: s.keyed().then_some(KEY_HEADER),
            scratch: &self.env.run.path,
        };
        let load = load::run(&target, &point.shape)
            .with_context(|| format!("{} at {}", s.label(), point.key()))?;
        let wall_s = started.elapsed().as_secs_f64();
        let cpu1 = proxy_pid.and_then(procstat::cpu_seconds);
        let after = self.counts()?;
        let delta = [after[0] - before[0], after[1] - before[1]];
        let (served_expected, served_wrong) = if s.keyed() {
            (delta[1], delta[0])
        } else {
            (delta[0], delta[1])
        };
        let rec = Record {
            scenario: s,
            point: point.key(),
            group: point.group,
            shape: point.shape.clone(),
            rep,
            proxy_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
            wall_s,
            served_expected,
            served_wrong,
            load,
        };
        eprintln!(
            "  {:<30} {:>8.0} req/s  p50 {:>6.0}  p90 {:>6.0}  p99 {:>7.0}  p99.9 {:>7.0} µs{}{}{}",
            s.label(),
            rec.load.rps,
            rec.load.p50_us,
            rec.load.p90_us,
            rec.load.p99_us,
            rec.load.p999_us,
            rec.vcpu_per_krps()
                .map(|v| format!("  {v:.3} vCPU/krps"))
                .unwrap_or_default(),
            if rec.load.errors + rec.load.non2xx > 0 {
                format!(
                    "  errors {} non-2xx {} {:?}",
                    rec.load.errors, rec.load.non2xx, rec.load.error_kinds
                )
            } else {
                String::new()
            },
            if rec.routing_ok() {
                String::new()
            } else {
                format!(
                    "  ROUTING: expected backend served {}, other backend {}",
                    rec.served_expected, rec.served_wrong
                )
            },
        );
        self.records.push(rec);
        Ok(())
    }

    /// Runs `scenarios` (in A B C D E order) at `point`: A with no agent, then the agent started
    /// for B, C and D, stopped again, then E. With `--before`, the earlier build runs C′ and D′
    /// beside C and D: before them in odd repetitions, after them in even ones, so neither build
    /// always runs on a machine the other just warmed.
    pub(crate) fn run_point(
        &mut self,
        point: &Point,
        rep: usize,
        reps: usize,
        scenarios: &[Scenario],
    ) -> anyhow::Result<()> {
        eprintln!("[rep {}/{reps}] {}", rep + 1, point.key());
        if scenarios.contains(&Scenario::A) {
            self.run_one(Scenario::A, point, rep, None)?;
        }
        let with_before =
            self.before.is_some() && scenarios.iter().any(|s| s.counterpart().is_some());
        if with_before && rep % 2 == 1 {
            self.run_before_build(point, rep, scenarios)?;
        }
        if scenarios.iter().any(|s| s.uses_agent()) {
            let mut agent = self.start_agent();
            let pid = agent.child.pid();
            self.sample_routing(Scenario::C, true)?;
            self.sample_routing(Scenario::B, false)?;
            // C and D measure upstream connections made in the client pod's namespace: the
            // agent must have entered it, not fallen back to the node.
            let fallbacks = agent.metric("shunt_source_netns_fallbacks_total");
            if fallbacks != 0.0 {
                bail!(
                    "the agent could not enter the client pod's namespace ({fallbacks} fallbacks):\n{}",
                    agent.log_text()
                );
            }
            for s in [Scenario::B, Scenario::C, Scenario::D] {
                if scenarios.contains(&s) {
                    // B's new connections: the hooks' own kernel run time, per connect().
                    let stats = if s == Scenario::B && point.group == Group::NewConn {
                        match agent::capture::run_stats::enable() {
                            Ok(guard) => Some((guard, hookcost::snapshot(pid))),
                            Err(e) => {
                                eprintln!("  (no BPF run-time statistics: {e})");
                                None
                            }
                        }
                    } else {
                        None
                    };
                    self.run_one(s, point, rep, Some(pid))?;
                    if let Some((_guard, before)) = stats {
                        let after = hookcost::snapshot(pid);
                        self.hook_cost.add(&before, &after);
                    }
                }
            }
            self.note_agent(pid);
            agent.terminate(Duration::from_secs(10));
            if scenarios.contains(&Scenario::B) && point.group == Group::NewConn {
                self.hook_cost_variant(point, rep, hookcost::Variant::NoFlows)?;
                self.hook_cost_variant(point, rep, hookcost::Variant::Before)?;
            }
        }
        if with_before && rep.is_multiple_of(2) {
            self.run_before_build(point, rep, scenarios)?;
        }
        if scenarios.contains(&Scenario::E) {
            let pid = self.haproxy.pid();
            self.run_one(Scenario::E, point, rep, Some(pid))?;
        }
        if scenarios.contains(&Scenario::F) {
            let pid = self.nginx.pid();
            self.run_one(Scenario::F, point, rep, Some(pid))?;
        }
        Ok(())
    }

    /// C′ and D′: the `--before` build, started like the agent under test.
    pub(crate) fn run_before_build(
        &mut self,
        point: &Point,
        rep: usize,
        scenarios: &[Scenario],
    ) -> anyhow::Result<()> {
        let Some(before) = self.before.clone() else {
            return Ok(());
        };
        let current = std::mem::replace(&mut self.env.bins.agent, before);
        let routes = std::mem::replace(&mut self.routes, self.routes_before.clone());
        let mut agent = self.start_agent();
        self.env.bins.agent = current;
        self.routes = routes;
        let pid = agent.child.pid();
        self.sample_routing(Scenario::CBefore, true)?;
        for s in [Scenario::C, Scenario::D] {
            if scenarios.contains(&s) {
                let b = s.counterpart().expect("C and D have a before counterpart");
                self.run_one(b, point, rep, Some(pid))?;
            }
        }
        agent.terminate(Duration::from_secs(10));
        Ok(())
    }

    /// The agent's peak memory and thread names (the run that had the most).
    pub(crate) fn note_agent(&mut self, pid: i32) {
        self.agent_hwm_kib = self
            .agent_hwm_kib
            .max(procstat::vm_hwm_kib(pid).unwrap_or(0));
        let names = procstat::thread_names(pid);
        if names.len() > self.agent_threads.len() {
            self.agent_threads = names;
        }
    }
}
