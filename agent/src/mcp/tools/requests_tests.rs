//! send_test_request's pure parts: the baggage it sends and the hop tree it reads back.
use super::*;

#[test]
fn key_is_added_to_baggage_replacing_an_old_one() {
    assert_eq!(with_key(None, "pr-1"), "sd-routing-key=pr-1");
    assert_eq!(
        with_key(Some("a=1, sd-routing-key=old ,b=2"), "pr-1"),
        "a=1,b=2,sd-routing-key=pr-1"
    );
}

fn decision(
    time: u64,
    latency_us: u64,
    client: &str,
    key: Option<&str>,
    service: &str,
    upstream: &str,
) -> DecisionInfo {
    DecisionInfo {
        time,
        client: client.into(),
        client_owner: None,
        original_dst: "10.96.0.1:80".into(),
        protocol: "http1".into(),
        method: Some("GET".into()),
        path: Some("/".into()),
        service: Some(service.into()),
        key: key.map(str::to_string),
        key_injected: false,
        decision: "baseline".into(),
        reason: if key.is_some() {
            "key_not_forked"
        } else {
            "no_key"
        }
        .into(),
        route: None,
        upstream: Some(upstream.into()),
        upstream_owner: None,
        status: Some(200),
        latency_us,
        agent: None,
    }
}

#[test]
fn hops_follow_upstreams_in_time_and_flag_a_lost_key() {
    // client → frontend (10.0.0.2) → reviews (10.0.0.3) → ratings; reviews drops the key.
    // Logged innermost first; another request from the frontend pod, later, is ignored.
    let ds = vec![
        decision(
            1_000,
            2_000,
            "10.0.0.3:5000",
            None,
            "shop/ratings",
            "10.0.0.4:80",
        ),
        decision(
            1_001,
            5_000,
            "10.0.0.2:4000",
            Some("k"),
            "shop/reviews",
            "10.0.0.3:80",
        ),
        decision(
            1_002,
            8_000,
            "10.0.0.1:3000",
            Some("k"),
            "shop/frontend",
            "10.0.0.2:80",
        ),
        decision(
            1_500,
            1_000,
            "10.0.0.2:4001",
            Some("k"),
            "shop/reviews",
            "10.0.0.3:80",
        ),
    ];
    let (hops, hints) = hop_tree(&ds, "10.0.0.1:3000", Some("k"));
    let got: Vec<(usize, Option<usize>, &str, bool)> = hops
        .iter()
        .map(|h| {
            (
                h.hop,
                h.parent,
                h.service.as_deref().unwrap_or(""),
                h.key_lost,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, None, "shop/frontend", false),
            (2, Some(1), "shop/reviews", false),
            (3, Some(2), "shop/ratings", true),
        ]
    );
    assert_eq!(hops[0].from, "10.0.0.1");
    assert!(
        hints
            .iter()
            .any(|h| h
                .starts_with("hop 3: 10.0.0.3:5000 called shop/ratings without the routing key")),
        "{hints:?}"
    );
    assert!(hop_tree(&ds, "10.0.0.9:1", None).0.is_empty());
}

#[test]
fn hops_show_where_shunt_added_the_key() {
    // client → reviews sandbox (10.0.0.3) → ratings: the sandbox dropped the key, Shunt added
    // it back (the decision log says so), so the chain is not broken.
    let mut inner = decision(
        1_000,
        2_000,
        "10.0.0.3:5000",
        Some("k"),
        "shop/ratings",
        "10.0.0.4:80",
    );
    inner.key_injected = true;
    let outer = decision(
        1_001,
        5_000,
        "10.0.0.1:3000",
        Some("k"),
        "shop/reviews",
        "10.0.0.3:80",
    );
    let (hops, hints) = hop_tree(&[inner, outer], "10.0.0.1:3000", Some("k"));
    let got: Vec<(usize, bool, bool)> = hops
        .iter()
        .map(|h| (h.hop, h.key_lost, h.key_injected))
        .collect();
    assert_eq!(got, [(1, false, false), (2, false, true)]);
    assert!(
        hops[1].summary.contains("[key added by Shunt]"),
        "{}",
        hops[1].summary
    );
    assert!(
        hints
            .iter()
            .any(|h| h.starts_with("hop 2: 10.0.0.3:5000 sent no routing key; Shunt added \"k\"")),
        "{hints:?}"
    );
}

#[test]
fn decision_records_without_key_injected_read_as_not_injected() {
    // Agents older than key injection do not write the field.
    let d: DecisionInfo = serde_json::from_value(serde_json::json!({
        "time": 1, "client": "10.0.0.1:1", "original_dst": "10.96.0.1:80", "protocol": "http1",
        "method": "GET", "path": "/", "service": "shop/reviews", "key": "k",
        "decision": "sandbox", "reason": "key_matched", "route": null, "upstream": null,
        "status": 200, "latency_us": 1,
    }))
    .expect("parses");
    assert!(!d.key_injected);
    let d: DecisionInfo = serde_json::from_value(serde_json::json!({
        "time": 1, "client": "10.0.0.1:1", "original_dst": "10.96.0.1:80", "protocol": "http1",
        "method": "GET", "path": "/", "service": "shop/reviews", "key": "k",
        "key_injected": true,
        "decision": "sandbox", "reason": "key_matched", "route": null, "upstream": null,
        "status": 200, "latency_us": 1,
    }))
    .expect("parses");
    assert!(d.key_injected);
}
