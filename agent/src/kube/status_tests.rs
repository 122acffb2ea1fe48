use super::*;
use crate::routes::ForkStatus;

fn st(ready: bool, reason: RouteReason) -> RouteStatus {
    RouteStatus {
        namespace: "shop".into(),
        name: "pr-42".into(),
        observed_generation: 2,
        ready,
        reason,
        message: "m".into(),
        applied: ready,
        forks: vec![ForkStatus {
            service: "reviews".into(),
            reason,
            message: String::new(),
            ready_endpoints: 3,
        }],
    }
}

#[test]
fn transition_time_kept_unless_status_flips() {
    let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let t1: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
    let first = desired_status(&st(true, RouteReason::EndpointsReady), None, &[], t0);
    assert_eq!(first.conditions[0].last_transition_time, Some(t0));
    assert_eq!(first.conditions[0].status, "True");
    assert_eq!(first.observed_generation, Some(2));
    assert_eq!(first.forks[0].ready_endpoints, 3);
    // Same status later: identical, so nothing is written.
    let again = desired_status(
        &st(true, RouteReason::EndpointsReady),
        Some(&first),
        &[],
        t1,
    );
    assert_eq!(again, first);
    // Reason changes within False keep the time; a flip takes the new time.
    let down = desired_status(
        &st(false, RouteReason::NoReadyEndpoints),
        Some(&first),
        &[],
        t1,
    );
    assert_eq!(down.conditions[0].last_transition_time, Some(t1));
    assert_eq!(down.conditions[0].reason, "NoReadyEndpoints");
    let other = desired_status(
        &st(false, RouteReason::ServiceNotFound),
        Some(&down),
        &[],
        t0,
    );
    assert_eq!(other.conditions[0].last_transition_time, Some(t1));
}

#[test]
fn a_cached_status_says_what_its_whole_status_said_and_keeps_what_the_writers_read() {
    let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let t1: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
    let mut whole = desired_status(&st(true, RouteReason::EndpointsReady), None, &[], t0);
    whole.nodes = vec![crd::NodeStatus {
        name: "node-b".into(),
        reason: "SteeredMapFull".into(),
        message: String::new(),
    }];
    let cached = whole.cached();
    assert!(cached.forks.is_empty() && cached.conditions[0].message.is_empty());
    assert!(cached.says(&whole));
    // The same status computed again, against the cached form: nothing to write.
    let again = desired_status(
        &st(true, RouteReason::EndpointsReady),
        Some(&cached),
        &[],
        t1,
    );
    assert!(
        cached.says(&again),
        "the transition time and nodes are kept"
    );
    // Any change a whole comparison would see, the cached form sees too.
    let mut other = whole.clone();
    other.conditions[0].message.push('!');
    assert!(!cached.says(&other));
    let mut other = whole.clone();
    other.forks[0].ready_endpoints += 1;
    assert!(!cached.says(&other));
    let down = desired_status(
        &st(false, RouteReason::NoReadyEndpoints),
        Some(&cached),
        &[],
        t1,
    );
    assert!(!cached.says(&down));
    assert_eq!(down.conditions[0].last_transition_time, Some(t1));
    assert_eq!(down.nodes, whole.nodes);
}

#[test]
fn status_json_shape() {
    let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let s = desired_status(&st(false, RouteReason::DuplicateKey), None, &[], t0);
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(
        v,
        json!({
            "observedGeneration": 2,
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "DuplicateKey", "message": "m",
                "observedGeneration": 2, "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
            "forks": [{ "service": "reviews", "reason": "DuplicateKey", "readyEndpoints": 3 }],
        })
    );
}

#[test]
fn nodes_that_do_not_apply_a_ready_route_make_it_not_ready_and_are_named() {
    let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let mut current = desired_status(&st(true, RouteReason::EndpointsReady), None, &[], t0);
    current.nodes = vec![crd::NodeStatus {
        name: "node-b".into(),
        reason: "SteeredMapFull".into(),
        message: "1 destination(s) not steered".into(),
    }];
    let unready = UnreadyAgents::from([("node-a".into(), "agent pod x not Ready".into())]);
    let not_applied = nodes_not_applied(Some(&current), &unready);
    assert_eq!(
        not_applied,
        [
            ("node-a".to_string(), "agent pod x not Ready".to_string()),
            (
                "node-b".to_string(),
                "SteeredMapFull: 1 destination(s) not steered".to_string()
            ),
        ]
    );
    let want = desired_status(
        &st(true, RouteReason::EndpointsReady),
        Some(&current),
        &not_applied,
        t0,
    );
    let cond = &want.conditions[0];
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "NotAppliedOnNodes")
    );
    assert_eq!(
        cond.message,
        "m; not applied on 2 node(s): node-a (agent pod x not Ready), \
         node-b (SteeredMapFull: 1 destination(s) not steered)"
    );
    // The agents' entries are kept, and never part of the leader's patch.
    assert_eq!(want.nodes, current.nodes);
    assert!(status_patch(&want)["status"].get("nodes").is_none());
    // A route that is not applied at all is not about nodes.
    let mut dup = st(false, RouteReason::DuplicateKey);
    dup.applied = false;
    let want = desired_status(&dup, Some(&current), &not_applied, t0);
    assert_eq!(want.conditions[0].message, "m");
}

#[test]
fn ready_message_names_ten_nodes_and_counts_the_rest() {
    let nodes: Vec<(String, String)> = (0..13)
        .map(|i| (format!("n{i:02}"), "why".to_string()))
        .collect();
    let msg = nodes_message(&nodes);
    assert!(
        msg.starts_with("not applied on 13 node(s): n00 (why), "),
        "{msg}"
    );
    assert!(msg.contains("n09 (why)") && !msg.contains("n10"), "{msg}");
    assert!(msg.ends_with(" ...and 3 more"), "{msg}");
}
