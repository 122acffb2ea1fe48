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
