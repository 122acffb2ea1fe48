//! Capture: the real agent, real eBPF programs on a test cgroup, clients in pod namespaces.
//!
//! Topology: pod 0 is the client, pod 1 (and more) hold backends. A connection that went through
//! the proxy reaches the backend from the node's address on the backend's link; a direct one
//! arrives from the client pod's own address.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tests::{
    backends::Backend,
    bins,
    harness::{ClientLine, Env},
};

const PORT: u16 = 8080;

fn steer_flags(dsts: &[SocketAddr]) -> Vec<String> {
    dsts.iter()
        .flat_map(|d| ["--steer".to_string(), d.to_string()])
        .collect()
}

fn tcp(env: &Env, captured: bool, dst: SocketAddr) -> ClientLine {
    let mut lines = env.client(0, captured, &["tcp", &dst.to_string()]);
    assert_eq!(lines.len(), 1);
    lines.remove(0)
}

#[test]
fn steered_connection_reaches_proxy_with_original_destination() {
    let Some(env) = Env::new(
        "steered_connection_reaches_proxy_with_original_destination",
        2,
        bins!(),
    ) else {
        return;
    };
    let backend = &env.topo.pods[1];
    let dst4 = backend.addr4(PORT);
    let dst6 = backend.addr6(PORT);
    let _b4 = Backend::tcp(&backend.netns, "b4", dst4).unwrap();
    let _b6 = Backend::tcp(&backend.netns, "b6", dst6).unwrap();
    let agent = env.start_agent(&steer_flags(&[dst4, dst6]), None);

    for (dst, node_ip) in [
        (dst4, std::net::IpAddr::from(backend.node_ip4)),
        (dst6, std::net::IpAddr::from(backend.node_ip6)),
    ] {
        let line = tcp(&env, true, dst);
        let reply = line.reply();
        // The proxy resolved the original destination: the right backend answered on it...
        assert_eq!(reply.local, dst, "answered on the original destination");
        // ...and the connection came from the node (the proxy), not the client pod.
        assert_eq!(
            reply.peer.ip(),
            node_ip,
            "{dst}: expected the proxy's upstream, got {reply:?}"
        );
    }
    assert!(agent.metric("shunt_capture_events_total{event=\"steered\"}") >= 2.0);
    assert!(agent.metric("shunt_proxy_connections_accepted_total") >= 2.0);
}

#[test]
fn bytes_relay_to_original_destination_both_ways() {
    let Some(env) = Env::new("bytes_relay_to_original_destination_both_ways", 2, bins!()) else {
        return;
    };
    let dst = env.topo.pods[1].addr4(PORT);
    let _b = Backend::tcp(&env.topo.pods[1].netns, "b", dst).unwrap();
    let _agent = env.start_agent(&steer_flags(&[dst]), None);
    // Several request/response exchanges, each on its own connection, all relayed intact.
    let lines = env.client(0, true, &["tcp", &dst.to_string(), "5"]);
    assert_eq!(lines.len(), 5);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(
            l.reply().got,
            format!("hello {i}"),
            "client→backend bytes intact"
        );
        assert_eq!(l.reply().server, "b", "backend→client bytes intact");
    }
}

#[test]
fn unsteered_destination_is_untouched() {
    let Some(env) = Env::new("unsteered_destination_is_untouched", 2, bins!()) else {
        return;
    };
    let pod = &env.topo.pods[1];
    let steered = pod.addr4(PORT);
    let other = pod.addr4(PORT + 1);
    let _b1 = Backend::tcp(&pod.netns, "steered", steered).unwrap();
    let _b2 = Backend::tcp(&pod.netns, "other", other).unwrap();
    let agent = env.start_agent(&steer_flags(&[steered]), None);
    let line = tcp(&env, true, other);
    assert_eq!(
        line.reply().peer.ip(),
        env.topo.pods[0].ip4,
        "came straight from the client"
    );
    assert_eq!(
        agent.metric("shunt_proxy_connections_accepted_total"),
        0.0,
        "proxy saw nothing"
    );
}

#[test]
fn process_outside_cgroup_is_untouched() {
    let Some(env) = Env::new("process_outside_cgroup_is_untouched", 2, bins!()) else {
        return;
    };
    let dst = env.topo.pods[1].addr4(PORT);
    let _b = Backend::tcp(&env.topo.pods[1].netns, "b", dst).unwrap();
    let agent = env.start_agent(&steer_flags(&[dst]), None);
    let line = tcp(&env, false, dst);
    assert_eq!(line.reply().peer.ip(), env.topo.pods[0].ip4);
    assert_eq!(agent.metric("shunt_proxy_connections_accepted_total"), 0.0);
}

#[test]
fn agent_own_sockets_are_not_captured() {
    let Some(env) = Env::new("agent_own_sockets_are_not_captured", 2, bins!()) else {
        return;
    };
    let dst = env.topo.pods[1].addr4(PORT);
    let _b = Backend::tcp(&env.topo.pods[1].netns, "b", dst).unwrap();
    // The agent runs inside the captured cgroup, like a DaemonSet pod under the node's root
    // cgroup: its upstream connect to the steered destination must not loop back to itself.
    let agent_cg = env.cgroup.child("agent").unwrap();
    let agent = env.start_agent(&steer_flags(&[dst]), Some(&agent_cg));
    let line = tcp(&env, true, dst);
    assert_eq!(
        line.reply().peer.ip(),
        env.topo.pods[1].node_ip4,
        "relayed once, by the proxy"
    );
    assert_eq!(
        agent.metric("shunt_proxy_connections_accepted_total"),
        1.0,
        "no loop"
    );
    assert!(agent.metric("shunt_capture_events_total{event=\"exempt_agent_cgroup\"}") >= 1.0);
}

#[test]
fn udp_connect_is_untouched() {
    let Some(env) = Env::new("udp_connect_is_untouched", 2, bins!()) else {
        return;
    };
    let dst = env.topo.pods[1].addr4(PORT);
    let _u = Backend::udp(&env.topo.pods[1].netns, "udp", dst).unwrap();
    let agent = env.start_agent(&steer_flags(&[dst]), None);
    let line = env.client(0, true, &["udp", &dst.to_string()]).remove(0);
    assert_eq!(line.peername, Some(dst));
    assert_eq!(
        line.reply().peer.ip(),
        env.topo.pods[0].ip4,
        "datagram went direct"
    );
    assert_eq!(
        agent.metric("shunt_capture_events_total{event=\"steered\"}"),
        0.0
    );
}

#[test]
fn v4_mapped_connect6_is_steered() {
    let Some(env) = Env::new("v4_mapped_connect6_is_steered", 2, bins!()) else {
        return;
    };
    let pod = &env.topo.pods[1];
    let dst = pod.addr4(PORT);
    let _b = Backend::tcp(&pod.netns, "b", dst).unwrap();
    let _agent = env.start_agent(&steer_flags(&[dst]), None);
    // An AF_INET6 socket dialling ::ffff:a.b.c.d: only connect6 runs for it.
    let mapped: SocketAddr = format!("[::ffff:{}]:{PORT}", pod.ip4).parse().unwrap();
    let line = tcp(&env, true, mapped);
    assert_eq!(
        line.reply().peer.ip(),
        pod.node_ip4,
        "went through the proxy"
    );
    assert_eq!(line.reply().local, dst);
    assert_eq!(
        line.peername,
        Some(mapped),
        "getpeername6 restores the v4-mapped form"
    );
}

#[test]
fn getpeername_reports_original_destination() {
    let Some(env) = Env::new("getpeername_reports_original_destination", 2, bins!()) else {
        return;
    };
    let pod = &env.topo.pods[1];
    let (dst4, dst6) = (pod.addr4(PORT), pod.addr6(PORT));
    let _b4 = Backend::tcp(&pod.netns, "b4", dst4).unwrap();
    let _b6 = Backend::tcp(&pod.netns, "b6", dst6).unwrap();
    let agent = env.start_agent(&steer_flags(&[dst4, dst6]), None);
    for dst in [dst4, dst6] {
        let line = tcp(&env, true, dst);
        assert_ne!(
            line.reply().peer.ip(),
            env.topo.pods[0].ip4,
            "{dst} was steered"
        );
        assert_eq!(line.peername, Some(dst), "the app sees what it dialled");
    }
    assert!(agent.metric("shunt_capture_events_total{event=\"peername_restored\"}") >= 2.0);
}

#[test]
fn agent_exit_fails_open() {
    let Some(env) = Env::new("agent_exit_fails_open", 2, bins!()) else {
        return;
    };
    let dst = env.topo.pods[1].addr4(PORT);
    let _b = Backend::tcp(&env.topo.pods[1].netns, "b", dst).unwrap();
    let mut agent = env.start_agent(&steer_flags(&[dst]), None);
    assert_eq!(
        tcp(&env, true, dst).reply().peer.ip(),
        env.topo.pods[1].node_ip4
    );
    // A crash: no chance to clear STEERED, but the links die with the process.
    agent.kill();
    let line = tcp(&env, true, dst);
    assert_eq!(
        line.reply().peer.ip(),
        env.topo.pods[0].ip4,
        "new connections go direct"
    );
}

#[test]
fn restart_reuses_pinned_maps() {
    let Some(env) = Env::new("restart_reuses_pinned_maps", 2, bins!()) else {
        return;
    };
    let pod = &env.topo.pods[1];
    let (a, b) = (pod.addr4(PORT), pod.addr4(PORT + 1));
    let _ba = Backend::tcp(&pod.netns, "a", a).unwrap();
    let _bb = Backend::tcp(&pod.netns, "b", b).unwrap();
    let mut first = env.start_agent(&steer_flags(&[a]), None);
    let line = tcp(&env, true, a);
    let client = line.local.expect("client endpoint");
    first.kill();

    // The pins outlive the agent: the steered set is still there. The original destination is
    // not: the proxy took it out of ORIG_DST when it accepted the connection (read once).
    let (steered, orig) = agent::capture::open_pinned(&env.run.bpffs()).unwrap();
    assert_eq!(steered.entries(), vec![(a, 0)]);
    assert_eq!(orig.get(client), None, "the proxy consumed its entry");
    drop((steered, orig));

    // A new agent resumes them and applies its own steered set as a diff.
    let _second = env.start_agent(&steer_flags(&[b]), None);
    let (steered, orig) = agent::capture::open_pinned(&env.run.bpffs()).unwrap();
    assert_eq!(
        steered.entries(),
        vec![(b, 0)],
        "stale entry collected, new one added"
    );
    assert_eq!(
        orig.get(client),
        None,
        "a consumed original destination never comes back"
    );
    assert_eq!(tcp(&env, true, b).reply().peer.ip(), pod.node_ip4);
    assert_eq!(tcp(&env, true, a).reply().peer.ip(), env.topo.pods[0].ip4);
}

#[test]
fn steer_and_unsteer_while_connections_flow() {
    let Some(env) = Env::new("steer_and_unsteer_while_connections_flow", 2, bins!()) else {
        return;
    };
    let dst = env.topo.pods[1].addr4(PORT);
    let _b = Backend::tcp(&env.topo.pods[1].netns, "b", dst).unwrap();
    let _agent = env.start_agent(&[], None);
    let (mut steered, _) = agent::capture::open_pinned(&env.run.bpffs()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toggler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut flips = 0u32;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                if flips.is_multiple_of(2) {
                    steered.steer(dst, 7).unwrap();
                } else {
                    steered.unsteer(dst).unwrap();
                }
                flips += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            flips
        })
    };
    let lines = env.client(0, true, &["tcp", &dst.to_string(), "300"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = toggler.join().unwrap();
    assert!(
        flips > 10,
        "the steered set changed while connections flowed ({flips} flips)"
    );
    let (mut via_proxy, mut direct) = (0, 0);
    for (i, l) in lines.iter().enumerate() {
        let r = l.reply();
        assert_eq!(
            r.got,
            format!("hello {i}"),
            "every connection completed intact"
        );
        if r.peer.ip() == env.topo.pods[0].ip4 {
            direct += 1
        } else {
            via_proxy += 1
        }
    }
    assert_eq!(lines.len(), 300);
    assert!(
        via_proxy > 0 && direct > 0,
        "both paths used: proxy {via_proxy}, direct {direct}"
    );
}

#[test]
fn thousand_parallel_steered_connections_resolve_their_original_destination() {
    let Some(env) = Env::new("thousand_parallel_steered_connections", 2, bins!()) else {
        return;
    };
    let pod = &env.topo.pods[1];
    let dsts: Vec<SocketAddr> = (0..4).map(|i| pod.addr4(PORT + i)).collect();
    let _backends: Vec<_> = dsts
        .iter()
        .map(|d| Backend::tcp(&pod.netns, &d.port().to_string(), *d).unwrap())
        .collect();
    let agent = env.start_agent(&steer_flags(&dsts), None);
    // One client holding 1,000 connections open at once, spread over four destinations.
    let list = dsts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let lines = env.client(0, true, &["tcp", &list, "1000", "--parallel"]);
    assert_eq!(lines.len(), 1000);
    let mut total = 0;
    for (i, l) in lines.iter().enumerate() {
        let r = l.reply();
        assert_eq!(
            r.local,
            dsts[i % dsts.len()],
            "resolved the right original destination"
        );
        assert_eq!(r.peer.ip(), pod.node_ip4, "through the proxy");
        assert_eq!(r.got, format!("hello {i}"));
        total += 1;
    }
    assert_eq!(total, 1000);
    assert_eq!(agent.metric("shunt_proxy_orig_dst_misses_total"), 0.0);
}

/// A route change at 10,000 steered destinations, on the real pinned `STEERED`: the incremental
/// apply (what route sync does per change) against a reconcile (what every apply did before:
/// a walk of the whole kernel map). Prints both times.
#[test]
fn apply_at_10000_routes_touches_only_the_changed_entries() {
    use agent::sync::{ApplyMode, Steering};
    let Some(env) = Env::new(
        "apply_at_10000_routes_touches_only_the_changed_entries",
        1,
        bins!(),
    ) else {
        return;
    };
    let _agent = env.start_agent(&[], None);
    let (steered, _) = agent::capture::open_pinned(&env.run.bpffs()).unwrap();
    let metrics = agent::metrics::Metrics::unregistered();
    let steering = Steering::new(steered);
    let addr = |i: u32| SocketAddr::new(std::net::Ipv4Addr::from(0x0a60_0000 + i).into(), 80);
    let mut desired: std::collections::BTreeMap<_, _> = (0..10_000).map(|i| (addr(i), i)).collect();
    steering.apply(desired.clone(), ApplyMode::Reconcile, &metrics);
    assert_eq!(steering.entries().len(), 10_000);

    let mut timed = |mode: ApplyMode, step: u32| {
        desired.remove(&addr(step));
        desired.insert(addr(20_000 + step), 1);
        let next = desired.clone();
        let t0 = Instant::now();
        let r = steering.apply(next, mode, &metrics).expect("not suspended");
        let took = t0.elapsed();
        assert_eq!((r.added, r.removed, r.failed.len()), (1, 1, 0), "{mode:?}");
        took
    };
    // Best of five each, interleaved.
    let (mut reconcile, mut incremental) = (Duration::MAX, Duration::MAX);
    for step in 0..5 {
        reconcile = reconcile.min(timed(ApplyMode::Reconcile, step * 2));
        incremental = incremental.min(timed(ApplyMode::Incremental, step * 2 + 1));
    }
    let kernel: std::collections::BTreeMap<_, _> = steering.entries().into_iter().collect();
    assert_eq!(kernel, desired, "the kernel map is exactly the desired set");
    eprintln!(
        "apply of a one-route change at 10,000 steered destinations: \
         reconcile (whole-map walk, the old apply) {reconcile:?}, incremental {incremental:?}"
    );
    // The in-memory diff of two 10,000-entry sets remains (a debug build makes it slow); the
    // kernel walk of 20,000 syscalls is gone. The unit test counts the syscalls exactly.
    assert!(
        incremental * 3 < reconcile,
        "incremental {incremental:?} vs reconcile {reconcile:?}"
    );
}
