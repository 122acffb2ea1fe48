//! The command line parses as documented: `run` (and its environment variables), `mcp`,
//! `sandbox`.
#[cfg(feature = "node")]
use std::{path::PathBuf, time::Duration};

use super::*;
#[cfg(feature = "node")]
use crate::capture::CgroupSelector;

/// `shunt run ARGS...`, parsed.
#[cfg(feature = "node")]
fn run_config(args: &[&str]) -> RunConfig {
    let cli = Cli::try_parse_from(["shunt", "run"].iter().chain(args).copied()).expect("parses");
    let Command::Run(cfg) = cli.command else {
        panic!("expected run");
    };
    *cfg
}

#[cfg(feature = "node")]
#[test]
fn run_flags_parse() {
    let args = run_config(&[
        "--cgroup",
        "/sys/fs/cgroup",
        "--proxy-addr",
        "10.0.0.1:15001",
        "--proxy-addr6",
        "[fd00::1]:15001",
        "--steer",
        "10.96.0.7:9080",
        "--steer",
        "[fd00::7]:80",
    ]);
    assert_eq!(args.steer.len(), 2);
    assert_eq!(args.bpffs_dir, PathBuf::from("/sys/fs/bpf/shunt"));
    assert!(!args.kube);
}

#[cfg(feature = "node")]
#[test]
fn kube_flags_parse_and_conflict_with_routes() {
    let base = [
        "shunt",
        "run",
        "--cgroup",
        "/sys/fs/cgroup",
        "--proxy-addr",
        "10.0.0.1:15001",
    ];
    let cli = Cli::try_parse_from(base.iter().copied().chain([
        "--kube",
        "--kubeconfig",
        "/k",
        "--node-name",
        "n1",
        "--lease-duration",
        "3s",
    ]))
    .expect("parses");
    let Command::Run(args) = cli.command else {
        panic!("expected run");
    };
    assert!(args.kube);
    assert_eq!(args.kubeconfig, Some(PathBuf::from("/k")));
    assert_eq!(args.node_name.as_deref(), Some("n1"));
    assert_eq!(args.lease_namespace, "shunt-system");
    assert_eq!(args.lease_duration, Duration::from_secs(3));
    assert_eq!(args.kube_debounce, Duration::from_millis(50));
    assert!(Cli::try_parse_from(base.iter().copied().chain(["--kube", "--routes", "/r"])).is_err());
    assert!(
        Cli::try_parse_from(base.iter().copied().chain(["--kubeconfig", "/k"])).is_err(),
        "--kubeconfig needs --kube"
    );
    assert!(matches!(
        Cli::try_parse_from(["shunt", "crd"])
            .expect("parses")
            .command,
        Command::Crd
    ));
}

#[cfg(feature = "node")]
/// The child half of [`run_flags_read_the_environment`]: run only in a process whose
/// environment that test set up (changing this process's environment would race other tests).
#[test]
#[ignore = "run by run_flags_read_the_environment in a child process"]
fn run_flags_from_the_environment_child() {
    let args = run_config(&["--cgroup", "/sys/fs/cgroup", "--max-headers", "7"]);
    // From the environment.
    assert_eq!(args.proxy_addr, "10.0.0.9:15001".parse().unwrap());
    assert_eq!(args.node_name.as_deref(), Some("node-from-env"));
    assert_eq!(args.idle_timeout, Duration::from_secs(90));
    assert_eq!(args.steer.len(), 2);
    assert_eq!(args.key_header, ["x-a", "x-b"]);
    // The command line wins over SHUNT_MAX_HEADERS.
    assert_eq!(args.max_headers, 7);
}

#[cfg(feature = "node")]
#[test]
fn run_flags_read_the_environment() {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "cli::tests::run_flags_from_the_environment_child",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env("SHUNT_PROXY_ADDR", "10.0.0.9:15001")
        .env("NODE_NAME", "node-from-env")
        .env("SHUNT_IDLE_TIMEOUT", "90s")
        .env("SHUNT_STEER", "10.96.0.7:9080,[fd00::7]:80")
        .env("SHUNT_KEY_HEADER", "x-a,x-b")
        .env("SHUNT_MAX_HEADERS", "99")
        .output()
        .expect("runs the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(feature = "node")]
#[test]
fn run_flags_parse_into_the_run_config() {
    let args = run_config(&[
        "--cgroup",
        "/c",
        "--proxy-addr",
        "10.0.0.1:15001",
        "--key-header",
        "x-k",
        "--shutdown-grace",
        "3s",
    ]);
    let cfg = args;
    assert_eq!(cfg.cgroup, Some(CgroupSelector::Path(PathBuf::from("/c"))));
    assert_eq!(cfg.key_header, ["x-k"]);
    assert_eq!(cfg.shutdown_grace, Duration::from_secs(3));
    assert_eq!(cfg.max_headers, 128);
}

#[cfg(feature = "node")]
#[test]
fn cgroup_is_auto_with_kube_and_required_without() {
    let kube = run_config(&["--kube", "--proxy-addr", "10.0.0.1:15001"]);
    assert_eq!(kube.cgroup, None);
    assert_eq!(kube.cgroup_selector(), CgroupSelector::Auto);
    assert_eq!(kube.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
    let auto = run_config(&[
        "--cgroup",
        "auto",
        "--cgroup-root",
        "/host/cgroup",
        "--proxy-addr",
        "10.0.0.1:15001",
    ]);
    assert_eq!(auto.cgroup_selector(), CgroupSelector::Auto);
    assert_eq!(auto.cgroup_root, PathBuf::from("/host/cgroup"));
    let err = Cli::try_parse_from(["shunt", "run", "--proxy-addr", "10.0.0.1:15001"])
        .expect_err("--cgroup is required without --kube");
    assert!(err.to_string().contains("--cgroup"), "{err}");
}

fn parse(args: &[&str]) -> Result<Command, clap::Error> {
    Cli::try_parse_from(std::iter::once("shunt").chain(args.iter().copied())).map(|c| c.command)
}

#[test]
fn mcp_flags_parse() {
    let Ok(Command::Mcp(a)) = parse(&[
        "mcp",
        "--routes",
        "/r.yaml",
        "--debug-netns",
        "/run/netns/n",
        "--client-netns",
        "/run/netns/p0",
        "--client-cgroup",
        "/sys/fs/cgroup/x",
    ]) else {
        panic!("expected mcp");
    };
    assert_eq!(a.debug_addr.to_string(), "127.0.0.1:9465");
    assert!(!a.kube && !a.internal_request);
    assert_eq!(a.agents.agent_namespace, "shunt-system");
    assert!(parse(&["mcp", "--routes", "/r", "--kube"]).is_err());
    assert!(
        parse(&["mcp", "--kubeconfig", "/k"]).is_err(),
        "--kubeconfig needs --kube"
    );
    assert!(parse(&["mcp", "--kube", "--kubeconfig", "/k", "--namespace", "shop"]).is_ok());
    let Ok(Command::Mcp(k)) = parse(&["mcp", "--kube", "--request-image", "shunt:1"]) else {
        panic!("expected mcp --kube");
    };
    assert_eq!(k.request_image.as_deref(), Some("shunt:1"));
    assert_eq!(k.request_pod_timeout, std::time::Duration::from_secs(60));
    assert!(
        parse(&["mcp", "--request-image", "x"]).is_err(),
        "--request-image needs --kube"
    );
}

#[test]
fn sandbox_flags_parse() {
    let Ok(Command::Sandbox(s)) = parse(&[
        "sandbox",
        "create",
        "--fork",
        "deployment/reviews",
        "--image",
        "r:2",
        "--env",
        "A=1",
        "--env",
        "B=2",
        "--ttl",
        "2h",
        "-n",
        "shop",
    ]) else {
        panic!("expected sandbox");
    };
    let crate::sandbox::SandboxCommand::Create(c) = s.command else {
        panic!("expected create");
    };
    assert_eq!(c.env, ["A=1", "B=2"]);
    assert_eq!(c.ttl, Some(std::time::Duration::from_secs(7200)));
    assert_eq!(c.kube.namespace.as_deref(), Some("shop"));
    assert!(
        parse(&["sandbox", "create", "--fork", "deployment/x"]).is_err(),
        "--image"
    );
    assert!(parse(&["sandbox", "delete", "pr-1", "--kubeconfig", "/k"]).is_ok());
    assert!(parse(&["sandbox", "list", "-A"]).is_ok());
}

#[cfg(feature = "node")]
#[test]
fn strip_keys_from_namespace_needs_kube_and_namespace_names() {
    let base = [
        "--cgroup",
        "/sys/fs/cgroup",
        "--proxy-addr",
        "10.0.0.1:15001",
    ];
    let with = |extra: &[&str]| {
        Cli::try_parse_from(["shunt", "run"].iter().chain(&base).chain(extra).copied())
    };
    let args = run_config(
        &[
            &base[..],
            &[
                "--kube",
                "--strip-keys-from-namespace",
                "ingress-nginx,edge",
                "--strip-keys-from-namespace",
                "lb",
            ],
        ]
        .concat(),
    );
    assert_eq!(
        args.strip_keys_from_namespace,
        ["ingress-nginx", "edge", "lb"]
    );
    assert!(
        with(&["--strip-keys-from-namespace", "lb"]).is_err(),
        "needs --kube"
    );
    for bad in ["Ingress", "a/b", "-x", ""] {
        assert!(
            with(&["--kube", "--strip-keys-from-namespace", bad]).is_err(),
            "{bad:?} accepted"
        );
    }
}
