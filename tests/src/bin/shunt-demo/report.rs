//! The requests the demo sends, the path each one took, the agent's decision log, and `--check`.
use serde_json::Value;

use crate::cluster::{Cluster, DROP_KEY, PODS, PodSpec, SANDBOX_KEY};

/// Label, routing key (None: no key). `pr-7` has no fork anywhere; `pr-43`'s reviews sandbox
/// drops the key, and Shunt carries it on to its ratings sandbox.
const REQUESTS: [(&str, Option<&str>); 7] = [
    ("(none)", None),
    ("(none)", None),
    (SANDBOX_KEY, Some(SANDBOX_KEY)),
    (SANDBOX_KEY, Some(SANDBOX_KEY)),
    ("pr-7", Some("pr-7")),
    ("pr-7", Some("pr-7")),
    (DROP_KEY, Some(DROP_KEY)),
];

/// One hop of a request's path, as the app that served it reported.
pub struct Hop {
    pub pod: Option<&'static PodSpec>,
    pub service: String,
    pub version: String,
    /// The `baggage` header the hop received.
    pub baggage: Option<String>,
}

pub struct Row {
    pub label: &'static str,
    pub key: Option<&'static str>,
    pub hops: Vec<Hop>,
    /// Where the chain broke, if it did.
    pub error: Option<String>,
}

impl Row {
    fn pods(&self) -> Vec<&str> {
        self.hops
            .iter()
            .map(|h| h.pod.map_or("?", |p| p.name))
            .collect()
    }
}

pub fn send_all(cluster: &Cluster) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (label, key) in REQUESTS {
        let baggage = key.map(|k| format!("sd-routing-key={k}"));
        let headers: Vec<(&str, &str)> = baggage.iter().map(|b| ("baggage", b.as_str())).collect();
        let (hops, error) = match cluster.client_get(&headers) {
            Ok(answer) => walk(&answer),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        };
        rows.push(Row {
            label,
            key,
            hops,
            error,
        });
    }
    Ok(rows)
}

/// Follows the nested `downstream` answers.
fn walk(answer: &Value) -> (Vec<Hop>, Option<String>) {
    let mut hops = Vec::new();
    let mut at = answer;
    loop {
        let (Some(service), Some(pod)) = (at["service"].as_str(), at["pod"].as_str()) else {
            return (hops, Some(short_error(at)));
        };
        hops.push(Hop {
            pod: PODS.iter().find(|p| p.name == pod),
            service: service.to_string(),
            version: at["version"].as_str().unwrap_or("?").to_string(),
            baggage: at["baggage"].as_str().map(str::to_string),
        });
        match at.get("downstream") {
            Some(next) => at = next,
            None => return (hops, None),
        }
    }
}

fn short_error(v: &Value) -> String {
    match v.get("error").and_then(Value::as_str) {
        Some(e) => e.to_string(),
        None => v.to_string(),
    }
}

/// `frontend`, `reviews v2 (sandbox)`, `ratings v1 (baseline)`: the version only where the
/// service has more than one; the role after the first hop; whether the hop drops the key, and
/// whether Shunt added it back (the caller dropped it, yet the hop received it).
fn hop_text(hop: &Hop, prev: Option<&Hop>) -> String {
    let first = prev.is_none();
    let versions = PODS.iter().filter(|p| p.service == hop.service).count();
    let mut s = hop.service.clone();
    if versions > 1 {
        s.push(' ');
        s.push_str(&hop.version);
    }
    if !first {
        let role = match hop.pod.and_then(|p| p.sandbox) {
            Some(_) => "sandbox",
            None => "baseline",
        };
        let drops = hop.pod.is_some_and(|p| p.drops_key);
        let added =
            prev.is_some_and(|p| p.pod.is_some_and(|p| p.drops_key)) && hop.baggage.is_some();
        s.push_str(&match (drops, added) {
            (true, _) => format!(" ({role}, drops the key)"),
            (false, true) => format!(" ({role}, key added by Shunt)"),
            (false, false) => format!(" ({role})"),
        });
    }
    s
}

pub fn print_paths(rows: &[Row]) {
    println!(
        "key      path (client → frontend → reviews → ratings, each call via its virtual address)"
    );
    for row in rows {
        let mut parts: Vec<String> = row
            .hops
            .iter()
            .enumerate()
            .map(|(i, h)| hop_text(h, i.checked_sub(1).map(|p| &row.hops[p])))
            .collect();
        if let Some(e) = &row.error {
            parts.push(format!("✗ {e}"));
        }
        println!("{:<8} {}", row.label, parts.join(" → "));
    }
}

pub fn print_decisions(cluster: &Cluster, key: &str, decisions: &[Value]) {
    println!(
        "the agent's decisions for {key} (GET /decisions?key={key} on the node), in call order:"
    );
    if decisions.is_empty() {
        println!("  (none)");
    }
    // Logged as each call completes (innermost first); shown in call order, by start time.
    let mut decisions: Vec<&Value> = decisions.iter().collect();
    decisions.sort_by_key(|d| {
        let done_us = d["time"].as_u64().unwrap_or(0) * 1000;
        done_us.saturating_sub(d["latency_us"].as_u64().unwrap_or(0))
    });
    for d in decisions {
        let s = |k: &str| d[k].as_str().unwrap_or("-").to_string();
        let upstream = d["upstream"].as_str().map_or("-".to_string(), |u| {
            let pod = u
                .parse::<std::net::SocketAddr>()
                .ok()
                .and_then(|a| cluster.pod_at(a.ip()));
            match pod {
                Some(p) => format!("{} ({u})", p.name),
                None => u.to_string(),
            }
        });
        let mut route = d["route"]
            .as_str()
            .map(|r| format!("  route {r}"))
            .unwrap_or_default();
        if d["key_injected"] == true {
            route.push_str("  (key added by Shunt)");
        }
        println!(
            "  {:<14} {:<9} {:<15} → {upstream}{route}",
            s("service"),
            s("decision"),
            s("reason"),
        );
    }
}

/// `--check`: keyed requests went through the sandbox and then baseline ratings, with the key
/// propagated to every hop; unkeyed requests never reached the sandbox; the key without a fork
/// stayed on baseline; the agent logged a `key_matched` sandbox decision for reviews. With key
/// injection (`injection`), the `pr-43` request went through the reviews sandbox that drops the
/// key to the ratings sandbox, the key added by Shunt (`dropped`: the decisions for `pr-43`).
pub fn check(rows: &[Row], decisions: &[Value], injection: bool, dropped: &[Value]) -> bool {
    let baseline = ["frontend-v1", "reviews-v1", "ratings-v1"];
    let sandboxed = ["frontend-v1", "reviews-v2", "ratings-v1"];
    let mut results: Vec<(String, bool)> = Vec::new();
    let of = |key: Option<&'static str>| rows.iter().filter(move |r| r.key == key);
    let keyed_ok = of(Some(SANDBOX_KEY)).count() > 0
        && of(Some(SANDBOX_KEY)).all(|r| {
            r.error.is_none()
                && r.pods() == sandboxed
                && r.hops
                    .iter()
                    .all(|h| h.baggage.as_deref() == Some("sd-routing-key=pr-42"))
        });
    results.push((
        format!(
            "{SANDBOX_KEY} requests went frontend → reviews v2 (sandbox) → ratings v1 (baseline), \
             carrying the key at every hop"
        ),
        keyed_ok,
    ));
    let unkeyed_ok =
        of(None).count() > 0 && of(None).all(|r| r.error.is_none() && r.pods() == baseline);
    results.push((
        "requests without a key stayed on baseline and never reached a sandbox".into(),
        unkeyed_ok,
    ));
    let unforked_ok = of(Some("pr-7")).count() > 0
        && of(Some("pr-7")).all(|r| r.error.is_none() && r.pods() == baseline);
    results.push((
        "requests with key pr-7 (no fork) stayed on baseline".into(),
        unforked_ok,
    ));
    let logged = decisions.iter().any(|d| {
        d["service"] == "shop/reviews" && d["decision"] == "sandbox" && d["reason"] == "key_matched"
    }) && decisions
        .iter()
        .filter(|d| d["decision"] == "sandbox")
        .all(|d| d["service"] == "shop/reviews");
    results.push((
        "the agent logged reviews → sandbox (key_matched), and no other sandbox decision".into(),
        logged,
    ));
    let carried = ["frontend-v1", "reviews-v3", "ratings-v2"];
    let carried_ok = of(Some(DROP_KEY)).count() > 0
        && of(Some(DROP_KEY)).all(|r| {
            r.error.is_none()
                && r.pods() == carried
                && r.hops.last().and_then(|h| h.baggage.as_deref()) == Some("sd-routing-key=pr-43")
        })
        && dropped.iter().any(|d| {
            d["service"] == "shop/ratings"
                && d["decision"] == "sandbox"
                && d["key_injected"] == true
        });
    let what = format!(
        "{DROP_KEY} went frontend → reviews v3 (sandbox, drops the key) → ratings v2 (sandbox): \
         Shunt added the key the sandbox dropped"
    );
    if injection {
        results.push((what.clone(), carried_ok));
    }
    for (what, ok) in &results {
        println!("check {}: {what}", if *ok { "ok  " } else { "FAIL" });
    }
    if !injection {
        println!(
            "check skip: {what} (this agent's routes file has no `sources:`: no key injection)"
        );
    }
    results.iter().all(|(_, ok)| *ok)
}
