//! Who may carry a routing key: the query parameter only when the operator enables it, and no
//! key at all from the clients whose keys are stripped at the edge. Real agent, real capture,
//! between network namespaces.
use serde_json::{Value, json};
use tests::{
    bins,
    routes_fixture::RoutesSpec,
    routing_world::{World, keyed, reviews, served_by},
};

fn world(test: &str) -> Option<World> {
    World::new(test, bins!(), RoutesSpec::default())
}

/// The last decision the agent logged.
fn last_decision(agent: &tests::harness::AgentProc) -> Value {
    let (_, body) = agent.debug_get("/decisions").unwrap();
    let decisions: Vec<Value> = serde_json::from_str(&body).unwrap();
    decisions.last().cloned().expect("a decision")
}

#[test]
fn query_parameter_key_is_ignored_unless_enabled() {
    let Some(w) = world("query_parameter_key_is_ignored_unless_enabled") else {
        return;
    };
    let link = json!([{ "path": "/p?sd-routing-key=pr-42&a=1" }]);
    {
        let agent = w.agent(&[]);
        let lines = w.http(reviews(), &[], link.clone());
        assert_eq!(served_by(&lines[0]), "reviews-v1", "{}", lines[0]);
        // Not a key: the URL goes on exactly as sent, and no baggage is made up.
        assert_eq!(
            lines[0]["served"]["query"], "sd-routing-key=pr-42&a=1",
            "{}",
            lines[0]
        );
        assert!(
            lines[0]["served"]["headers"]["baggage"].is_null(),
            "{}",
            lines[0]
        );
        let d = last_decision(&agent);
        assert_eq!(
            (d["decision"].as_str(), d["reason"].as_str()),
            (Some("baseline"), Some("no_key")),
            "{d}"
        );
    }
    let _agent = w.agent(&["--key-from-query"]);
    let lines = w.http(reviews(), &[], link);
    assert_eq!(served_by(&lines[0]), "reviews-v2", "{}", lines[0]);
    assert_eq!(lines[0]["served"]["query"], "a=1", "{}", lines[0]);
    assert_eq!(
        lines[0]["served"]["headers"]["baggage"], "sd-routing-key=pr-42",
        "{}",
        lines[0]
    );
}

#[test]
fn keys_from_stripped_sources_are_removed() {
    let Some(w) = world("keys_from_stripped_sources_are_removed") else {
        return;
    };
    // Pod 0 is the edge (say, the ingress controller); pod 4 is an ordinary client.
    let edge = format!("{}/32", w.env.topo.pods[0].ip4);
    let agent = w.agent(&[
        "--strip-keys-from",
        &edge,
        "--key-header",
        "x-route-key",
        "--key-from-query",
    ]);
    let every_form = json!([
        { "path": "/a", "headers": { "baggage": "sd-routing-key=pr-42,other=1" } },
        { "path": "/b", "headers": { "tracestate": "vendor=x,sd-routing-key=pr-42" } },
        { "path": "/c", "headers": { "uberctx-sd-routing-key": "pr-42" } },
        { "path": "/d", "headers": { "ot-baggage-sd-routing-key": "pr-42" } },
        { "path": "/e", "headers": { "x-route-key": "pr-42" } },
        { "path": "/f?sd-routing-key=pr-42" },
    ]);
    for h2 in [false, true] {
        let flags: &[&str] = if h2 { &["--h2"] } else { &[] };
        let lines = w.http(reviews(), flags, every_form.clone());
        assert_eq!(lines.len(), 6);
        for l in &lines {
            assert_eq!(served_by(l), "reviews-v1", "h2 {h2}: {l}");
            let seen = l["served"].to_string();
            assert!(
                !seen.contains("pr-42"),
                "h2 {h2}: the backend saw the key: {l}"
            );
            let d = last_decision(&agent);
            assert_eq!(d["reason"], "no_key", "h2 {h2}: decided as keyed: {d}");
        }
        // The other members stay, as sent.
        assert_eq!(
            lines[0]["served"]["headers"]["baggage"], "other=1",
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[1]["served"]["headers"]["tracestate"], "vendor=x",
            "{}",
            lines[1]
        );
        assert!(lines[5]["served"]["query"].is_null(), "{}", lines[5]);
    }
    // Another client keeps its keys.
    let dst = reviews().to_string();
    let reqs = json!([keyed("pr-42")]).to_string();
    let lines = w.env.peer(4, &["http", &dst, &reqs]);
    assert_eq!(served_by(&lines[0]), "reviews-v2", "{}", lines[0]);
}
