//! Restarts with no gap: a new agent beside the old one on the same bpffs directory and cgroup
//! (as a DaemonSet's surge pod is), the old one terminated under load.
//! Real agents, real eBPF capture, real sockets, between network namespaces.
use std::time::Duration;

use serde_json::{Value, json};
use tests::{
    bins,
    routes_fixture::RoutesSpec,
    routing_world::{World, keyed, reviews, served_by},
};

#[test]
fn rolling_restart_under_load_sends_no_connection_direct() {
    let Some(w) = World::new(
        "rolling_restart_under_load_sends_no_connection_direct",
        bins!(),
        RoutesSpec::default(),
    ) else {
        return;
    };
    let mut old = w.agent(&["--shutdown-grace", "5s"]);
    // Keyed requests, each on a new connection, from four workers, across the whole handover.
    let load = w.env.peer_in_background(
        0,
        &[
            "churn",
            &reviews().to_string(),
            "6",
            "baggage:sd-routing-key=pr-42",
            "--workers",
            "4",
            "--pause-ms",
            "2",
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    // The successor binds the same ports and attaches to the same cgroup and pins. `/readyz`
    // may be answered by the old agent (the port is shared): its own log tells it runs.
    let new = w.agent(&[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !new.log_text().contains("shunt running") {
        assert!(std::time::Instant::now() < deadline, "{}", new.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let status = old.terminate(Duration::from_secs(15));
    assert!(status.success(), "the old agent exits cleanly: {status}");
    let old_log = old.log_text();
    assert!(
        old_log.contains("handing over"),
        "the old agent saw its successor:\n{old_log}"
    );

    let lines: Vec<Value> = tests::harness::netpeer_lines(&load.join().unwrap());
    assert!(
        lines.len() > 200,
        "enough load: {} connections",
        lines.len()
    );
    let node_ip = w.env.topo.pods[2].node_ip4.to_string();
    let wrong: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["status"] != 200
                || l["served_by"] != "reviews-v2"
                || !l["peer"].as_str().unwrap_or("").starts_with(&node_ip)
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} connections failed or went direct (baseline), e.g. {:?}",
        wrong.len(),
        lines.len(),
        wrong.iter().take(5).collect::<Vec<_>>()
    );

    // The successor alone steers now.
    let after = w.http(reviews(), &[], json!([keyed("pr-42")]));
    assert_eq!(served_by(&after[0]), "reviews-v2", "{}", after[0]);
    assert!(
        new.metric("shunt_proxy_connections_accepted_total") as usize > lines.len() / 4,
        "the successor took over the load"
    );
}
