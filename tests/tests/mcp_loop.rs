//! The coding agent's whole loop through `shunt mcp` alone, with no Kubernetes: the official
//! Python MCP SDK plays the agent against a netns mini-cluster (the real agent, real eBPF
//! capture, `demo-app` pods each in its own child of the captured cgroup). It forks `reviews`
//! with a build that fails, reads the 500 and the sandbox's log line in the hops, replaces it
//! with the fixed build, gets a 200, compares with baseline, and ends the session: everything
//! the session created is gone, what it created with `keep` remains.
use std::{
    fs,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use agent::sandbox::local::PodRecord;
use serde_json::{Value, json};
use tests::{
    bins,
    harness::Env,
    mcp_driver::{err, mcp_client_with, ok, python_with_mcp},
    mcp_world::{
        POD_PORT, SandboxSweep, netns_exists, node_mcp_server, routes_yaml, start_apps, vip, wait,
    },
};

fn served_path(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut b = body;
    while let Some(pod) = b["pod"].as_str() {
        out.push(pod.to_string());
        b = &b["downstream"];
    }
    out
}

fn hop<'a>(result: &'a Value, service: &str) -> &'a Value {
    result["hops"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["service"] == service))
        .unwrap_or_else(|| panic!("no hop to {service}: {result:#}"))
}

#[test]
fn agent_fixes_a_broken_sandbox_through_mcp_and_the_session_cleans_up() {
    let test = "agent_fixes_a_broken_sandbox_through_mcp_and_the_session_cleans_up";
    let Some(env) = Env::new(test, 4, bins!()) else {
        return;
    };
    let Some(python) = python_with_mcp(test) else {
        return;
    };
    let _sweep = SandboxSweep(&env);
    let routes = env.run.path.join("routes.yaml");
    fs::write(&routes, routes_yaml(&env)).expect("routes file");
    let _apps = start_apps(&env, std::path::Path::new(env!("CARGO_BIN_EXE_demo-app")));
    let agent = env.start_agent(
        &[
            "--routes".into(),
            routes.display().to_string(),
            "--routes-poll-interval".into(),
            "100ms".into(),
        ],
        None,
    );
    let dir = env.run.path.display().to_string();
    let server = node_mcp_server(
        &env,
        &routes,
        &["--cluster-dir", &dir, "--max-sandboxes-per-session", "2"],
    );
    let cfg = json!({
        "demo_app": env!("CARGO_BIN_EXE_demo-app"),
        "ratings_url": format!("http://{}/", vip("ratings")),
    })
    .to_string();
    let o = mcp_client_with(&python, "loop", &server, &[("SHUNT_LOOP", &cfg)]);
    let ctx = || format!("agent log:\n{}", agent.log_text());
    let sbx_netns = |name: &str| format!("shunt-{}-sbx-{name}", env.id);

    // 1-2. The services; the broken build runs as a new pod, Ready, in its own namespace and
    // its own child of the captured cgroup.
    ok(&o, "list_services");
    let broken = ok(&o, "create_broken");
    assert_eq!(broken["applied"], true, "{broken:#}\n{}", ctx());
    let sb = &broken["sandbox"];
    assert_eq!(sb["ready"], true, "{sb:#}");
    assert_eq!(sb["phase"], "Running");
    assert_eq!(sb["owned_by_this_session"], true);
    assert_eq!(sb["route"], "shop/pr-42");
    assert!(sb["expires_unix_ms"].as_u64().is_some(), "{sb:#}");
    assert_eq!(ok(&o, "get_broken")["ready"], true);

    // 3. The keyed request: the 500 at the sandbox, with the line it logged while serving it.
    let keyed = ok(&o, "keyed_broken");
    assert_eq!(keyed["response"]["status"], 502, "{keyed:#}\n{}", ctx());
    let h = hop(keyed, "shop/reviews");
    assert_eq!(h["decision"], "sandbox", "{h:#}");
    assert_eq!(h["upstream_owner"], "shop/reviews-broken");
    assert_eq!(h["status"], 500);
    assert_eq!(h["logs"]["pod"], "reviews-broken", "{h:#}");
    let lines = h["logs"]["lines"].as_array().expect("hop log lines");
    assert_eq!(lines.len(), 1, "one request, one line: {h:#}");
    assert!(
        lines[0]
            .as_str()
            .is_some_and(|l| l.contains("-> 500: ERROR ratings client: nil pointer in stars()")),
        "{h:#}"
    );
    let front = hop(keyed, "shop/frontend");
    assert_eq!(front["logs"]["pod"], "frontend-v1");
    assert!(
        front["logs"]["lines"][0]
            .as_str()
            .is_some_and(|l| l.ends_with("-> 502")),
        "{front:#}"
    );
    // get_logs: by sandbox with grep, since the request (the start-up line is older), and a
    // service's baseline pods.
    let logs = ok(&o, "logs_broken");
    let all: Vec<&str> = logs["pods"][0]["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !all.is_empty() && all.iter().all(|l| l.contains("ERROR")),
        "{logs:#}"
    );
    let since = ok(&o, "logs_broken_since");
    let since_lines = since["pods"][0]["lines"].as_array().expect("lines");
    assert_eq!(since_lines.len(), 1, "{since:#}");
    assert!(!since_lines[0].as_str().unwrap_or("").contains("listening"));
    let base = ok(&o, "logs_baseline");
    assert_eq!(base["pods"][0]["pod"], "reviews-v1", "{base:#}");
    assert!(ok(&o, "delete_broken")["route_updated"] == true);

    // 4-5. The fixed build: 200, through it, on to the baseline ratings.
    assert_eq!(ok(&o, "create_fixed")["sandbox"]["ready"], true);
    let fixed = ok(&o, "keyed_fixed");
    assert_eq!(fixed["response"]["status"], 200, "{fixed:#}");
    assert_eq!(
        served_path(&fixed["response"]["body_json"]),
        ["frontend-v1", "reviews-fixed", "ratings-v1"]
    );
    assert_eq!(
        hop(fixed, "shop/reviews")["upstream_owner"],
        "shop/reviews-fixed"
    );

    // 6. Only the intended difference: who served reviews.
    let cmp = ok(&o, "compare");
    assert_eq!(cmp["identical"], false);
    let paths: Vec<&str> = cmp["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        ["body.downstream.pod", "body.downstream.version"],
        "{cmp:#}"
    );
    assert_eq!(cmp["differences"][0]["keyed"], "reviews-fixed");
    assert_eq!(cmp["differences"][0]["baseline"], "reviews-v1");
    let hd = cmp["hop_differences"].as_array().expect("hop differences");
    assert_eq!(hd.len(), 1, "{cmp:#}");
    assert!(
        hd[0].as_str().is_some_and(
            |d| d.contains("shop/reviews") && d.contains("keyed shop/reviews-fixed (200)")
        ),
        "{hd:?}"
    );
    let same = ok(&o, "compare_identical");
    assert_eq!(same["identical"], true, "{same:#}");
    assert!(
        same["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("identical") && !s.contains('\n'))
    );
    assert!(same.get("keyed").is_none());

    // The limit, and what is not this session's.
    assert_eq!(ok(&o, "create_kept")["sandbox"]["keep"], true);
    ok(&o, "create_route_kept");
    ok(&o, "create_route_session");
    let e = err(&o, "create_over_limit", "sandbox_limit");
    assert_eq!(
        e["details"]["delete_one_of"],
        json!(["ratings-kept", "reviews-fixed"]),
        "{e:#}"
    );
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("limit")),
        "{e:#}"
    );
    err(&o, "delete_persons_route", "not_owned");
    assert_eq!(
        ok(&o, "list_sandboxes")["sandboxes"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // 7. The session ended (stdin EOF): what it made is gone, what it kept remains.
    let keys = || -> Vec<String> {
        let text = fs::read_to_string(&routes).expect("routes file");
        let state = agent::routes::file::parse_routes(&text, "routes.yaml").expect("valid file");
        state
            .routes
            .iter()
            .map(|r| r.spec.routing_key.clone())
            .collect()
    };
    wait(Duration::from_secs(10), "the session's cleanup", || {
        !keys().contains(&"pr-42".to_string())
    });
    assert_eq!(keys(), ["pr-person", "pr-kept", "pr-kept-route"]);
    let text = fs::read_to_string(&routes).expect("routes file");
    let state = agent::routes::file::parse_routes(&text, "routes.yaml").expect("valid");
    let pods: Vec<&str> = state.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pods, ["ratings-kept"]);
    assert!(state.pods[0].labels.contains_key("shunt.dev/session"));
    for gone in ["reviews-broken", "reviews-fixed"] {
        assert!(
            PodRecord::find(&env.run.path, gone).is_none(),
            "{gone} record"
        );
        assert!(!netns_exists(&sbx_netns(gone)), "{gone} netns");
        assert!(
            !env.cgroup.path().join(format!("sandbox-{gone}")).exists(),
            "{gone} cgroup"
        );
    }
    let kept = PodRecord::find(&env.run.path, "ratings-kept").expect("kept record");
    assert!(netns_exists(&sbx_netns("ratings-kept")));
    let addr = SocketAddr::new(kept.ips[0], POD_PORT);
    assert!(
        env.node()
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
            .unwrap_or(false),
        "the kept sandbox still serves"
    );
}
