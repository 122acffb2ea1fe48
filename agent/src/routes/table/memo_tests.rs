//! [`RouteTable::compute_with`]: what it reuses, and that it never changes the result.
use std::sync::Arc;

use super::*;

/// What a computation gives, in a comparable form.
fn outcome(
    t: &RouteTable,
    st: &[RouteStatus],
) -> (Vec<RouteStatus>, Vec<RouteView>, BTreeMap<SocketAddr, u32>) {
    (st.to_vec(), t.routes().to_vec(), t.steered().clone())
}

/// `base` with its routes shared (as the kube source shares unchanged routes) and `f` applied.
fn next(base: &Arc<ClusterState>, f: impl FnOnce(&mut ClusterState)) -> Arc<ClusterState> {
    let mut s = (**base).clone();
    f(&mut s);
    Arc::new(s)
}

#[test]
fn the_memo_never_changes_what_a_computation_gives() {
    let mut memo = ResolveMemo::default();
    let s1 = Arc::new({
        let mut s = state();
        s.routes.push(Arc::new(route(
            "pr-7",
            "pr-7",
            vec![selector_fork("ratings", "pr-7")],
        )));
        s
    });
    let steps: Vec<(&str, Arc<ClusterState>)> = {
        let s2 = next(&s1, |s| {
            s.routes.push(Arc::new(route(
                "pr-9",
                "pr-9",
                vec![selector_fork("reviews", "pr-9")],
            )))
        });
        let s3 = next(&s2, |s| s.pods[0].ready = false);
        let s4 = next(&s3, |s| {
            s.pods
                .push(sandbox_pod("reviews-pr-9", "10.2.0.9", "pr-9", 8080));
            s.services[0].endpoints.pop();
        });
        let s5 = next(&s4, |s| {
            s.routes.remove(0);
        });
        let s6 = next(&s5, |s| {
            Arc::make_mut(&mut s.routes[0]).spec.forks[0].service = "reviews".into();
        });
        vec![
            ("first", s1.clone()),
            ("a route added", s2),
            ("a sandbox pod not ready", s3),
            ("a pod added, an endpoint gone", s4),
            ("a route deleted", s5),
            ("a route edited", s6),
        ]
    };
    for (what, s) in steps {
        let (fresh, fresh_st) = RouteTable::compute(&s, now());
        let (with, with_st) = RouteTable::compute_with(&s, now(), &mut memo);
        assert_eq!(
            outcome(&with, &with_st),
            outcome(&fresh, &fresh_st),
            "{what}"
        );
    }
}

#[test]
fn an_unchanged_route_is_resolved_once_while_only_routes_change() {
    let mut memo = ResolveMemo::default();
    let s1 = Arc::new(state());
    RouteTable::compute_with(&s1, now(), &mut memo);
    let first = memo.resolved_for(&s1.routes[0]).expect("resolved");

    // Another route: the first one's forks are reused as they were.
    let s2 = next(&s1, |s| {
        s.routes.push(Arc::new(route(
            "pr-7",
            "pr-7",
            vec![selector_fork("ratings", "pr-7")],
        )))
    });
    RouteTable::compute_with(&s2, now(), &mut memo);
    let again = memo.resolved_for(&s2.routes[0]).expect("resolved");
    assert!(Arc::ptr_eq(&first, &again), "reused");

    // The sandbox pod goes unready: resolved anew, and the status says so.
    let s3 = next(&s2, |s| s.pods[0].ready = false);
    let (_, st) = RouteTable::compute_with(&s3, now(), &mut memo);
    let anew = memo.resolved_for(&s3.routes[0]).expect("resolved");
    assert!(!Arc::ptr_eq(&again, &anew), "resolved anew");
    assert_eq!(st[0].reason, RouteReason::NoReadyEndpoints);
}
