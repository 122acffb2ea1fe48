//! Source identity fixtures: the routes-file world with its client pods listed as node pods
//! (each naming its network namespace), a NetworkPolicy stand-in (an nftables rule in a
//! backend's namespace), and a client call that reports a refusal instead of failing.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{
    harness::Env,
    netns::{Netns, Topology, sh},
    process::spawn_in,
    routes_fixture::{RoutesSpec, routes_yaml},
};

/// A node pod entry: (pod index, namespace, name).
pub type NodePodSpec<'a> = (usize, &'a str, &'a str);

/// The routes file's `nodePods:` section: each pod with its address and network namespace.
pub fn node_pods_yaml(topo: &Topology, pods: &[NodePodSpec]) -> String {
    let mut s = String::from("nodePods:\n");
    for (i, ns, name) in pods {
        let p = &topo.pods[*i];
        s.push_str(&format!(
            "  - {{ name: {name}, namespace: {ns}, uid: uid-{name}, ips: [{}, {}], netns: {} }}\n",
            p.ip4,
            p.ip6,
            p.netns.path()
        ));
    }
    s
}

/// The standard routes file with `node_pods`; `forks: false` drops every route (no Service is
/// forked, so nothing is steered and clients go direct, as without Shunt).
pub fn routes_with_node_pods(
    topo: &Topology,
    spec: &RoutesSpec,
    forks: bool,
    node_pods: &[NodePodSpec],
) -> String {
    let mut yaml = routes_yaml(topo, spec);
    if !forks {
        let cut = yaml.find("\nroutes:\n").expect("the fixture has routes");
        yaml.truncate(cut + 1);
        yaml.push_str("routes: []\n");
    }
    yaml.push_str(&node_pods_yaml(topo, node_pods));
    yaml
}

/// Whether `nft` (the nftables package) is here for [`admit_only`]. Like the other kernel-test
/// prerequisites, its absence is a skip, or a failure with `SHUNT_REQUIRE_KERNEL_TESTS=1`.
pub fn nft_available(test: &str) -> bool {
    if crate::kernel::which("nft").is_some() {
        return true;
    }
    if std::env::var("SHUNT_REQUIRE_KERNEL_TESTS").as_deref() == Ok("1") {
        panic!("{test}: kernel tests are required but `nft` (nftables) is not installed");
    }
    eprintln!("SKIPPED {test}: `nft` (nftables) is not installed");
    false
}

/// A NetworkPolicy stand-in in `netns`: TCP to `port` is accepted only from `allowed`; any other
/// source gets a reset (a `reject`, so a refusal is quick and unambiguous).
pub fn admit_only(netns: &Netns, allowed: Ipv4Addr, port: u16, scratch: &std::path::Path) {
    let rules = format!(
        "table inet shunt_test_policy {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\ttcp dport {port} ip saddr != {allowed} reject with tcp reset\n\
         \t\ttcp dport {port} meta nfproto ipv6 reject with tcp reset\n\
         \t}}\n\
         }}\n"
    );
    let file = scratch.join(format!("policy-{}.nft", netns.name));
    std::fs::write(&file, rules).expect("writing the nft rules");
    sh(
        "nsenter",
        &[
            &format!("--net={}", netns.path()),
            "nft",
            "-f",
            &file.display().to_string(),
        ],
    )
    .expect("loading the nftables rule (is `nft` installed?)");
}

/// What one HTTP request from a pod got.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Served by this backend, which saw the request come from this address.
    Served { by: String, peer: IpAddr },
    /// Not served: the connection was refused or reset, or the proxy answered an error.
    Refused,
}

/// One HTTP/1.1 (or h2c with `h2`) request from pod `pod` (captured) to `dst`, with `headers`.
pub fn call(env: &Env, pod: usize, dst: SocketAddr, h2: bool, headers: Value) -> Outcome {
    let reqs = serde_json::json!([{ "path": "/", "headers": headers }]).to_string();
    let dst = dst.to_string();
    let mut args = vec!["http", dst.as_str()];
    if h2 {
        args.push("--h2");
    }
    args.push(&reqs);
    let mut cmd = Command::new(&env.bins.netpeer);
    cmd.args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = spawn_in(
        "netpeer",
        cmd,
        Some(&env.topo.pods[pod].netns),
        Some(env.cgroup.path()),
    )
    .expect("spawning netpeer");
    let (status, out, _err) = child
        .output_timeout(Duration::from_secs(30))
        .expect("netpeer finished in time");
    if !status.success() {
        // The connection itself was refused (direct to a pod whose policy refuses us).
        return Outcome::Refused;
    }
    let line: Value = out
        .lines()
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    match (line["status"].as_u64(), line["served_by"].as_str()) {
        (Some(200), Some(by)) => Outcome::Served {
            by: by.to_string(),
            peer: line["served"]["peer"]
                .as_str()
                .and_then(|p| p.parse::<SocketAddr>().ok())
                .map(|a| a.ip())
                .unwrap_or_else(|| panic!("no peer in {line}")),
        },
        _ => Outcome::Refused,
    }
}
