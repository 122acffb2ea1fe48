//! The capture maps' hygiene: original destinations are recorded only for connections that are
//! redirected and read once, and the pinned maps follow the agent across other map sizes and
//! other map-ABI versions.
use std::{net::SocketAddr, path::Path};

use agent::handover::SUCCESSOR_DIR;

use agent_common::{
    MAP_NAMES, flows,
    flows::{FlowCounters, FlowKey},
    orig,
    orig::OrigDst,
    steered,
};
use aya::maps::{HashMap, Map, MapData, PerCpuHashMap};
use tests::{
    backends::Backend,
    bins,
    harness::{ClientLine, Env, PROXY_PORT},
    netns::PROXY4,
};

const PORT: u16 = 8080;

fn steer_flags(dsts: &[SocketAddr]) -> Vec<String> {
    dsts.iter()
        .flat_map(|d| ["--steer".to_string(), d.to_string()])
        .collect()
}

fn tcp(env: &Env, args: &[&str]) -> ClientLine {
    let mut lines = env.client(0, true, args);
    assert_eq!(lines.len(), 1);
    lines.remove(0)
}

fn pinned(bpffs: &Path, name: &str) -> Map {
    let data = MapData::from_pin(bpffs.join(name)).unwrap_or_else(|e| panic!("pin {name}: {e}"));
    Map::from_map_data(data).unwrap()
}

fn max_entries(bpffs: &Path, name: &str) -> u32 {
    MapData::from_pin(bpffs.join(name))
        .and_then(|m| m.info())
        .unwrap_or_else(|e| panic!("pin {name}: {e}"))
        .max_entries()
}

fn entry_count(bpffs: &Path, name: &str) -> usize {
    match name {
        orig::COOKIE_MAP_NAME => HashMap::<_, u64, OrigDst>::try_from(pinned(bpffs, name))
            .unwrap()
            .keys()
            .count(),
        orig::DST_MAP_NAME => {
            HashMap::<_, agent_common::Endpoint, OrigDst>::try_from(pinned(bpffs, name))
                .unwrap()
                .keys()
                .count()
        }
        _ => panic!("no entry count for {name}"),
    }
}

/// Connections FLOWS has counted from `src` to `dst`.
fn flow_connections(bpffs: &Path, src: std::net::IpAddr, dst: SocketAddr) -> u64 {
    let map = PerCpuHashMap::<_, FlowKey, FlowCounters>::try_from(pinned(bpffs, flows::MAP_NAME))
        .unwrap();
    let d = agent_common::Endpoint::from_socket_addr(dst);
    let key = FlowKey {
        src: agent_common::NetAddr::from_ip(src),
        dst: d.addr,
        dst_port_be: d.port_be,
        _pad: 0,
    };
    map.get(&key, 0)
        .map(|per_cpu| per_cpu.iter().map(|c| c.connections).sum())
        .unwrap_or(0)
}

/// The files a bpffs mount makes itself (`maps.debug`, `progs.debug`): names with a dot, which
/// bpffs refuses for pins.
fn is_bpffs_own(name: &str) -> bool {
    name.contains('.')
}

/// Pod 0 the client, pod 1 a TCP backend on `PORT` (its address returned), alive with the guard.
fn client_and_backend(test: &str) -> Option<(Env, SocketAddr, Backend)> {
    let env = Env::new(test, 2, bins!())?;
    let pod = &env.topo.pods[1];
    let dst = pod.addr4(PORT);
    let backend = Backend::tcp(&pod.netns, "b", dst).unwrap();
    Some((env, dst, backend))
}

#[test]
fn ipv6_connect_without_proxy_addr6_writes_no_map_entries() {
    let Some(env) = Env::new(
        "ipv6_connect_without_proxy_addr6_writes_no_map_entries",
        2,
        bins!(),
    ) else {
        return;
    };
    let pod = &env.topo.pods[1];
    let dst6 = pod.addr6(PORT);
    let _b = Backend::tcp(&pod.netns, "b6", dst6).unwrap();
    // The standard flags without --proxy-addr6: IPv6 destinations have no proxy.
    let mut args = env.agent_args();
    let i = args.iter().position(|a| a == "--proxy-addr6").unwrap();
    args.drain(i..i + 2);
    args.extend(steer_flags(&[dst6]));
    let agent = env.start_agent_wrapped(&[], &args, None);

    for _ in 0..3 {
        let line = tcp(&env, &["tcp", &dst6.to_string()]);
        assert_eq!(
            line.reply().peer.ip(),
            std::net::IpAddr::from(env.topo.pods[0].ip6),
            "went direct: no IPv6 proxy"
        );
        assert_eq!(line.peername, Some(dst6), "the socket's peer is untouched");
    }
    assert_eq!(
        agent.metric("shunt_capture_events_total{event=\"no_proxy_for_family\"}"),
        3.0
    );
    let bpffs = env.run.bpffs();
    assert_eq!(
        entry_count(&bpffs, orig::COOKIE_MAP_NAME),
        0,
        "ORIG_COOKIE holds records of connections that were never redirected"
    );
    assert_eq!(
        entry_count(&bpffs, orig::DST_MAP_NAME),
        0,
        "ORIG_DST holds records of connections that were never redirected"
    );
}

#[test]
fn stale_orig_dst_entry_is_never_used() {
    let Some((env, dst, _b)) = client_and_backend("stale_orig_dst_entry_is_never_used") else {
        return;
    };
    let pod = &env.topo.pods[1];
    let agent = env.start_agent(&steer_flags(&[dst]), None);
    // Both connections use this client port and end with a reset: no TIME_WAIT on either side,
    // so the second may reuse the exact endpoint pair at once.
    let from = "40123";

    // A steered connection: recorded by capture, resolved by the proxy.
    let first = tcp(
        &env,
        &["tcp", &dst.to_string(), "1", "--from-port", from, "--reset"],
    );
    assert_eq!(first.reply().peer.ip(), pod.node_ip4, "through the proxy");
    assert_eq!(first.reply().local, dst);
    let client = first.local.expect("the client endpoint");
    assert_eq!(client.port().to_string(), from);

    // The same client endpoint now reaches the proxy without being redirected: it dials the
    // proxy's address itself, so capture records nothing for it. The earlier connection's
    // destination must not answer for it: the proxy closes it.
    let proxy = SocketAddr::from((PROXY4, PROXY_PORT));
    let second = tcp(
        &env,
        &[
            "tcp",
            &proxy.to_string(),
            "1",
            "--from-port",
            from,
            "--reset",
        ],
    );
    assert_eq!(second.local, None, "no exchange happened");
    assert!(
        second.reply.is_none(),
        "the proxy relayed an unrecorded connection to {:?} with a stale entry",
        second.reply
    );
    assert_eq!(
        agent.metric("shunt_proxy_connections_accepted_total"),
        2.0,
        "both reached the proxy"
    );
    assert_eq!(agent.metric("shunt_proxy_orig_dst_misses_total"), 1.0);
    let (_, orig) = agent::capture::open_pinned(&env.run.bpffs()).unwrap();
    assert_eq!(orig.get(client), None, "read once, then gone");
}

#[test]
fn restart_with_different_map_sizes_keeps_routes_and_traffic() {
    let Some((env, dst, _b)) =
        client_and_backend("restart_with_different_map_sizes_keeps_routes_and_traffic")
    else {
        return;
    };
    let pod = &env.topo.pods[1];
    let client_ip = std::net::IpAddr::from(env.topo.pods[0].ip4);
    let bpffs = env.run.bpffs();
    let sized = |steered: u32, orig: u32, flows: u32| {
        let mut args = steer_flags(&[dst]);
        args.extend([
            "--steered-max-entries".to_string(),
            steered.to_string(),
            "--orig-max-entries".into(),
            orig.to_string(),
            "--flows-max-entries".into(),
            flows.to_string(),
        ]);
        args
    };
    let sizes = |bpffs: &Path| {
        [
            steered::MAP_NAME,
            orig::COOKIE_MAP_NAME,
            orig::DST_MAP_NAME,
            flows::MAP_NAME,
        ]
        .map(|n| max_entries(bpffs, n))
    };

    let mut first = env.start_agent(&sized(1024, 2048, 512), None);
    assert_eq!(sizes(&bpffs), [1024, 2048, 2048, 512]);
    let tcp_dst = |env: &Env| tcp(env, &["tcp", &dst.to_string()]);
    assert_eq!(tcp_dst(&env).reply().peer.ip(), pod.node_ip4);
    assert_eq!(flow_connections(&bpffs, client_ip, dst), 1);
    // A crash (or a rollout's SIGKILL): the pins outlive it with their old sizes.
    first.kill();

    // Larger, then smaller: each restart recreates the pinned maps at the new size.
    for (round, (s, o, f)) in [(4096, 8192, 2048), (16, 64, 16)].into_iter().enumerate() {
        let mut agent = env.start_agent(&sized(s, o, f), None);
        assert_eq!(sizes(&bpffs), [s, o, o, f], "round {round}");
        assert!(
            agent.log_text().contains("pinned map resized"),
            "round {round}:\n{}",
            agent.log_text()
        );
        // The route and the service graph's history were carried into the new maps...
        let (steered_map, _) = agent::capture::open_pinned(&bpffs).unwrap();
        assert_eq!(steered_map.entries(), vec![(dst, 0)], "round {round}");
        assert_eq!(
            flow_connections(&bpffs, client_ip, dst),
            round as u64 + 1,
            "round {round}: the flows counted before the restart"
        );
        // ...and the programs use them: the steered destination still goes through the proxy.
        let line = tcp_dst(&env);
        assert_eq!(line.reply().peer.ip(), pod.node_ip4, "round {round}");
        assert_eq!(line.reply().local, dst);
        assert_eq!(
            line.peername,
            Some(dst),
            "getpeername restored, round {round}"
        );
        assert_eq!(flow_connections(&bpffs, client_ip, dst), round as u64 + 2);
        assert_eq!(agent.metric("shunt_proxy_orig_dst_misses_total"), 0.0);
        agent.kill();
    }
    // No staging pin is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&bpffs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !MAP_NAMES.contains(&n.as_str()) && !is_bpffs_own(n) && n != SUCCESSOR_DIR)
        .collect();
    assert_eq!(leftovers, Vec::<String>::new(), "pins other than the maps");
}

#[test]
fn pins_of_other_map_versions_are_removed_once_the_new_ones_are_in_use() {
    let Some((env, dst, _b)) =
        client_and_backend("pins_of_other_map_versions_are_removed_once_the_new_ones_are_in_use")
    else {
        return;
    };
    let pod = &env.topo.pods[1];
    let bpffs = env.run.bpffs();
    tests::kube_world::mount_bpffs(&bpffs).unwrap();
    // What an agent of an older map ABI (and one of a newer) left pinned, beside a pin of
    // someone else's that only looks versioned.
    let version = |name: &str, v: &str| format!("{}_{v}", name.rsplit_once('_').unwrap().0);
    let mut other_versions: Vec<String> = MAP_NAMES.iter().map(|n| version(n, "V0")).collect();
    other_versions.push(version(steered::MAP_NAME, "V2"));
    let foreign = "SOMEONE_ELSES_V0".to_string();
    for name in other_versions.iter().chain([&foreign]) {
        HashMap::<MapData, u32, u32>::create(4, 0)
            .unwrap()
            .pin(bpffs.join(name))
            .unwrap_or_else(|e| panic!("pinning {name}: {e}"));
    }

    let agent = env.start_agent(&steer_flags(&[dst]), None);
    let line = tcp(&env, &["tcp", &dst.to_string()]);
    assert_eq!(
        line.reply().peer.ip(),
        pod.node_ip4,
        "the new maps are in use"
    );
    let mut left: Vec<String> = std::fs::read_dir(&bpffs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !is_bpffs_own(n))
        .collect();
    left.sort();
    let mut want: Vec<String> = MAP_NAMES.iter().map(|n| n.to_string()).collect();
    want.push(foreign);
    // The ready agent's successor mark (a directory: see agent::handover).
    want.push(SUCCESSOR_DIR.to_string());
    want.sort();
    assert_eq!(
        left, want,
        "other versions removed, the current ones and others' kept"
    );
    assert!(
        agent
            .log_text()
            .contains("removed the pin of another map version"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn count_flows_false_counts_no_connection_and_still_steers() {
    let Some(env) = Env::new(
        "count_flows_false_counts_no_connection_and_still_steers",
        3,
        bins!(),
    ) else {
        return;
    };
    let steered_pod = &env.topo.pods[1];
    let steered_dst = steered_pod.addr4(PORT);
    let direct_dst = env.topo.pods[2].addr4(PORT);
    let _b1 = Backend::tcp(&steered_pod.netns, "steered", steered_dst).unwrap();
    let _b2 = Backend::tcp(&env.topo.pods[2].netns, "direct", direct_dst).unwrap();
    let client_ip = std::net::IpAddr::from(env.topo.pods[0].ip4);
    let bpffs = env.run.bpffs();
    let connect_both = |env: &Env| {
        let steered = tcp(env, &["tcp", &steered_dst.to_string()]);
        assert_eq!(
            steered.reply().peer.ip(),
            steered_pod.node_ip4,
            "through the proxy"
        );
        assert_eq!(steered.peername, Some(steered_dst), "getpeername restored");
        let direct = tcp(env, &["tcp", &direct_dst.to_string()]);
        assert_eq!(
            direct.reply().peer.ip(),
            std::net::IpAddr::from(env.topo.pods[0].ip4)
        );
    };

    let mut args = steer_flags(&[steered_dst]);
    args.extend(["--count-flows".to_string(), "false".into()]);
    let mut off = env.start_agent(&args, None);
    connect_both(&env);
    assert_eq!(flow_connections(&bpffs, client_ip, steered_dst), 0);
    assert_eq!(flow_connections(&bpffs, client_ip, direct_dst), 0);
    assert_eq!(off.metric("shunt_proxy_orig_dst_misses_total"), 0.0);
    off.kill();

    // The default counts both, by the destination the application dialled.
    let mut on = env.start_agent(&steer_flags(&[steered_dst]), None);
    connect_both(&env);
    assert_eq!(flow_connections(&bpffs, client_ip, steered_dst), 1);
    assert_eq!(flow_connections(&bpffs, client_ip, direct_dst), 1);
    on.kill();
}

/// `PROXY_CFG`'s flags, as the agent wrote them.
fn proxy_cfg_flags(bpffs: &Path) -> u32 {
    let cfg = aya::maps::Array::<_, agent_common::config::ProxyMapConfig>::try_from(pinned(
        bpffs,
        agent_common::config::MAP_NAME,
    ))
    .unwrap();
    cfg.get(&0, 0).unwrap().flags
}

/// Every source FLOWS has counted a connection from to `dst`.
fn flow_sources(bpffs: &Path, dst: SocketAddr) -> Vec<std::net::IpAddr> {
    let map = PerCpuHashMap::<_, FlowKey, FlowCounters>::try_from(pinned(bpffs, flows::MAP_NAME))
        .unwrap();
    let d = agent_common::Endpoint::from_socket_addr(dst);
    map.keys()
        .map(Result::unwrap)
        .filter(|k| k.dst == d.addr && k.dst_port_be == d.port_be)
        .map(|k| k.src.to_ip())
        .collect()
}

#[test]
fn flow_counting_skips_the_agent_check_only_for_an_agent_outside_capture() {
    use agent_common::config::FLAG_AGENT_UNCAPTURED;
    let Some((env, dst, _b)) =
        client_and_backend("flow_counting_skips_the_agent_check_only_for_an_agent_outside_capture")
    else {
        return;
    };
    let pod = &env.topo.pods[1];
    let client_ip = std::net::IpAddr::from(env.topo.pods[0].ip4);
    let bpffs = env.run.bpffs();
    let relayed = |env: &Env| {
        let line = tcp(env, &["tcp", &dst.to_string()]);
        assert_eq!(line.reply().peer.ip(), pod.node_ip4, "through the proxy");
    };

    // Outside the captured cgroup (the runner's own): none of the agent's sockets reach the
    // programs, so counting skips the comparison.
    let mut outside = env.start_agent(&steer_flags(&[dst]), None);
    assert_ne!(proxy_cfg_flags(&bpffs) & FLAG_AGENT_UNCAPTURED, 0);
    relayed(&env);
    assert_eq!(flow_sources(&bpffs, dst), vec![client_ip]);
    outside.kill();

    // Inside it, as a DaemonSet pod runs: the comparison stays, and the proxy's own upstream
    // connect to the same destination is not counted.
    let agent_cg = env.cgroup.child("agent").unwrap();
    let mut inside = env.start_agent(&steer_flags(&[dst]), Some(&agent_cg));
    assert_eq!(proxy_cfg_flags(&bpffs) & FLAG_AGENT_UNCAPTURED, 0);
    relayed(&env);
    assert_eq!(
        inside.metric("shunt_proxy_connections_accepted_total"),
        1.0,
        "no loop"
    );
    assert_eq!(flow_sources(&bpffs, dst), vec![client_ip]);
    assert_eq!(flow_connections(&bpffs, client_ip, dst), 2);
    inside.kill();
}
