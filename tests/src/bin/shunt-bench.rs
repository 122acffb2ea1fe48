//! First proxy benchmark: direct vs through the proxy (baseline route) vs steered to a sandbox,
//! between network namespaces, 1 KiB responses, closed-loop load. Prints added latency
//! percentiles and requests/s as ratios to direct.
//!
//! Run: `cargo build --release -p tests && sudo target/release/shunt-bench [--secs 5] [--reps 3]`
use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use tests::{
    harness::{Bins, Env},
    http_backend::HttpBackend,
    routes_fixture::{POD_PORT, RoutesSpec, routes_yaml},
};

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let secs = arg("--secs", 5.0);
    let reps = arg("--reps", 3.0) as usize;
    let dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let bins = Bins {
        agent: dir.join("shunt-under-test"),
        netpeer: dir.join("netpeer"),
    };
    let env = Env::new("shunt-bench", 5, bins)
        .ok_or_else(|| anyhow::anyhow!("needs root, cgroup v2 and BTF"))?;
    let _b1 = HttpBackend::start(
        &env.topo.pods[1].netns,
        "reviews-v1",
        env.topo.pods[1].addr4(POD_PORT),
    )?;
    let _b2 = HttpBackend::start(
        &env.topo.pods[2].netns,
        "reviews-v2",
        env.topo.pods[2].addr4(POD_PORT),
    )?;
    let routes = env.run.path.join("routes.yaml");
    std::fs::write(&routes, routes_yaml(&env.topo, &RoutesSpec::default()))?;
    let dst = env.topo.pods[1].addr4(POD_PORT).to_string();
    let secs_s = secs.to_string();

    // (scenario, connections) -> samples
    let mut results: Vec<(String, usize, Vec<Value>)> = Vec::new();
    for conns in [1usize, 16] {
        for scenario in ["direct", "proxy-baseline", "steered-sandbox"] {
            results.push((scenario.to_string(), conns, Vec::new()));
        }
    }
    for rep in 0..reps {
        for conns in [1usize, 16] {
            let c = conns.to_string();
            // Interleaved: each repetition measures every scenario.
            let direct = env.peer(0, &["load", &dst, &c, &secs_s]);
            let agent = env.start_agent(&["--routes".into(), routes.display().to_string()], None);
            let base = env.peer(0, &["load", &dst, &c, &secs_s]);
            let steer = env.peer(
                0,
                &["load", &dst, &c, &secs_s, "baggage:sd-routing-key=pr-42"],
            );
            drop(agent);
            std::thread::sleep(Duration::from_millis(200));
            for (name, v) in [
                ("direct", direct),
                ("proxy-baseline", base),
                ("steered-sandbox", steer),
            ] {
                if let Some(slot) = results
                    .iter_mut()
                    .find(|(s, n, _)| s == name && *n == conns)
                {
                    slot.2.push(v[0].clone());
                }
            }
            eprintln!("rep {} conns {conns} done", rep + 1);
        }
    }
    let median = |xs: &[Value], k: &str| -> f64 {
        let mut v: Vec<f64> = xs.iter().filter_map(|x| x[k].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() { 0.0 } else { v[v.len() / 2] }
    };
    println!(
        "| scenario | conns | req/s | ratio to direct | p50 µs | p90 µs | p99 µs | added p50/p90/p99 µs | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, conns, xs) in &results {
        let direct = &results
            .iter()
            .find(|(s, n, _)| s == "direct" && n == conns)
            .expect("direct")
            .2;
        let (rps, d_rps) = (median(xs, "rps"), median(direct, "rps"));
        let p = |k| median(xs, k);
        let dp = |k| median(direct, k);
        let errors: f64 = xs.iter().filter_map(|x| x["errors"].as_f64()).sum();
        println!(
            "| {name} | {conns} | {rps:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:+.0}/{:+.0}/{:+.0} | {errors} |",
            rps / d_rps,
            p("p50_us"),
            p("p90_us"),
            p("p99_us"),
            p("p50_us") - dp("p50_us"),
            p("p90_us") - dp("p90_us"),
            p("p99_us") - dp("p99_us"),
        );
    }
    Ok(())
}
