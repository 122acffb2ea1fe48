//! A `shunt mcp` session ended by SIGINT, SIGTERM or SIGHUP deletes the sandboxes it created;
//! one killed with SIGKILL leaves them to expire, and the next session removes them.
use std::{fs, time::Duration};

use agent::sandbox::local::PodRecord;
use serde_json::json;
use tests::{
    bins,
    harness::Env,
    mcp_world::{RawSession, SandboxSweep, netns_exists, node_mcp_server, routes_yaml, start_apps},
};

#[test]
fn session_end_by_signal_deletes_its_sandboxes_and_a_killed_sessions_expire() {
    let test = "session_end_by_signal_deletes_its_sandboxes_and_a_killed_sessions_expire";
    let Some(env) = Env::new(test, 4, bins!()) else {
        return;
    };
    let _sweep = SandboxSweep(&env);
    let routes = env.run.path.join("routes.yaml");
    fs::write(&routes, routes_yaml(&env)).expect("routes file");
    let _apps = start_apps(&env, std::path::Path::new(env!("CARGO_BIN_EXE_demo-app")));
    let _agent = env.start_agent(
        &[
            "--routes".into(),
            routes.display().to_string(),
            "--routes-poll-interval".into(),
            "100ms".into(),
        ],
        None,
    );
    let server = |ttl: &str| -> Vec<String> {
        let dir = env.run.path.display().to_string();
        node_mcp_server(
            &env,
            &routes,
            &["--cluster-dir", &dir, "--session-ttl", ttl],
        )
    };
    let create = |s: &mut RawSession, name: &str, key: &str| {
        let r = s.tool(
            "create_sandbox",
            json!({
                "name": name, "service": "ratings", "key": key,
                "command": env!("CARGO_BIN_EXE_demo-app"),
                "args": ["serve", "--service", "ratings", "--version", "v2", "--pod", name,
                         "--listen", "$(POD_IP):$(PORT)"],
            }),
        );
        assert_eq!(r["sandbox"]["ready"], true, "{r:#}");
    };
    let keys = || -> Vec<String> {
        let text = fs::read_to_string(&routes).expect("routes file");
        agent::routes::file::parse_routes(&text, "routes.yaml")
            .expect("valid file")
            .routes
            .iter()
            .map(|r| r.spec.routing_key.clone())
            .collect()
    };
    let gone = |name: &str| {
        PodRecord::find(&env.run.path, name).is_none()
            && !netns_exists(&format!("shunt-{}-sbx-{name}", env.id))
            && !env.cgroup.path().join(format!("sandbox-{name}")).exists()
    };
    for (sig, name) in [
        (libc::SIGINT, "sig-int"),
        (libc::SIGTERM, "sig-term"),
        (libc::SIGHUP, "sig-hup"),
    ] {
        let mut s = RawSession::start(&server("10m"));
        create(&mut s, name, name);
        assert!(keys().contains(&name.to_string()));
        s.end_with(sig);
        assert!(gone(name), "signal {sig}: {name} is left");
        assert_eq!(keys(), ["pr-person"], "signal {sig}");
    }
    // SIGKILL: nothing runs the cleanup; the route carries its expiry and the next session
    // removes the expired sandbox.
    let mut s = RawSession::start(&server("1s"));
    create(&mut s, "sig-kill", "sig-kill");
    let expires = PodRecord::find(&env.run.path, "sig-kill")
        .and_then(|r| r.sandbox)
        .and_then(|s| s.expires_unix_ms)
        .expect("an expiry");
    s.end_with(libc::SIGKILL);
    assert!(!gone("sig-kill"), "nothing cleaned up after SIGKILL");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(agent::sandbox::local::now_ms() > expires);
    let mut next = RawSession::start(&server("10m"));
    let listed = next.tool("list_sandboxes", json!({}));
    assert_eq!(listed["sandboxes"], json!([]), "{listed:#}");
    assert!(gone("sig-kill"));
    assert_eq!(keys(), ["pr-person"]);
    next.end_with(libc::SIGTERM);
}
