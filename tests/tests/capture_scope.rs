//! What capture covers on a node: only the pods. `--cgroup auto` finds the pods' cgroup under
//! the node's cgroup root; the kubelet, the runtime and every other host process beside it keep
//! their own traffic, and with no pods' cgroup the agent refuses to start rather than capture the
//! root.
//!
//! The test's cgroup stands for the node's cgroup root, with a miniature systemd-driver layout
//! under it.
use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use tests::{
    backends::Backend,
    bins,
    harness::{ClientLine, Env},
    process::spawn_in,
};

const PORT: u16 = 8080;

/// The harness's agent flags with `--cgroup auto --cgroup-root <the test's cgroup>`.
fn auto_args(env: &Env, extra: &[String]) -> Vec<String> {
    let mut args = env.agent_args();
    let i = args.iter().position(|a| a == "--cgroup").unwrap();
    args[i + 1] = "auto".into();
    args.extend([
        "--cgroup-root".to_string(),
        env.cgroup.path().display().to_string(),
    ]);
    args.extend_from_slice(extra);
    args
}

/// One TCP exchange from pod `pod`'s namespace by a process in `cgroup`.
fn tcp_from(env: &Env, pod: usize, cgroup: &Path, dst: SocketAddr) -> ClientLine {
    let mut cmd = Command::new(&env.bins.netpeer);
    cmd.args(["tcp", &dst.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn_in(
        "netpeer",
        cmd,
        Some(&env.topo.pods[pod].netns),
        Some(cgroup),
    )
    .expect("spawning netpeer");
    let (status, out, err) = child
        .output_timeout(Duration::from_secs(30))
        .expect("netpeer finished in time");
    assert!(status.success(), "netpeer failed: {err}");
    serde_json::from_str(out.lines().next().expect("one line")).expect("a client line")
}

#[test]
fn node_processes_outside_kubepods_are_never_captured() {
    let Some(env) = Env::new(
        "node_processes_outside_kubepods_are_never_captured",
        2,
        bins!(),
    ) else {
        return;
    };
    let backend = &env.topo.pods[1];
    let dst = backend.addr4(PORT);
    let _b = Backend::tcp(&backend.netns, "b", dst).unwrap();
    let pod_cgroup = env
        .cgroup
        .descendant("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice")
        .unwrap();
    let kubelet_cgroup = env
        .cgroup
        .descendant("system.slice/kubelet.service")
        .unwrap();
    let agent = env.start_agent_wrapped(
        &[],
        &auto_args(&env, &["--steer".into(), dst.to_string()]),
        None,
    );
    let client_ip = env.topo.pods[0].ip4;

    // The kubelet (or any host process beside the pods) dialling a steered address goes direct.
    let host = tcp_from(&env, 0, &kubelet_cgroup, dst);
    assert_eq!(
        host.reply().peer.ip(),
        client_ip,
        "a process in system.slice/kubelet.service was captured"
    );
    // So does a process in the root cgroup itself.
    let root = tcp_from(&env, 0, env.cgroup.path(), dst);
    assert_eq!(
        root.reply().peer.ip(),
        client_ip,
        "a process in the root cgroup was captured"
    );
    assert_eq!(
        agent.metric("shunt_proxy_connections_accepted_total"),
        0.0,
        "the proxy saw no host connection"
    );

    // A pod's process is captured: its connection arrives from the node, through the proxy.
    let pod = tcp_from(&env, 0, &pod_cgroup, dst);
    assert_eq!(
        pod.reply().peer.ip(),
        backend.node_ip4,
        "the pod was not captured"
    );
    assert_eq!(pod.reply().local, dst, "the original destination answered");
    assert_eq!(agent.metric("shunt_proxy_connections_accepted_total"), 1.0);
    let pods_cgroup = env.cgroup.path().join("kubepods.slice");
    assert!(
        agent
            .log_text()
            .contains(&pods_cgroup.display().to_string()),
        "the agent names the cgroup it found:\n{}",
        agent.log_text()
    );
}

#[test]
fn cgroup_auto_without_a_pods_cgroup_exits_naming_the_fix() {
    let Some(env) = Env::new(
        "cgroup_auto_without_a_pods_cgroup_exits_naming_the_fix",
        1,
        bins!(),
    ) else {
        return;
    };
    // A node tree with host services but no pods' cgroup.
    env.cgroup
        .descendant("system.slice/kubelet.service")
        .unwrap();
    let mut cmd = Command::new(&env.bins.agent);
    cmd.args(auto_args(&env, &[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn_in("agent", cmd, Some(env.node()), None).expect("spawning the agent");
    let (status, _, err) = child
        .output_timeout(Duration::from_secs(30))
        .expect("the agent exits by itself");
    assert!(
        !status.success(),
        "the agent started without a pods' cgroup:\n{err}"
    );
    assert!(
        err.contains("--cgroup auto") && err.contains("pass --cgroup PATH"),
        "the error names the fix:\n{err}"
    );
    // Nothing was attached anywhere: no pin was made.
    assert!(
        !env.run
            .bpffs()
            .join(agent_common::steered::MAP_NAME)
            .exists(),
        "maps were created before the cgroup was known"
    );
}
