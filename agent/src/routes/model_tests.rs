//! Tests of the route spec's static checks and its serde shape.
use super::*;

fn spec(key: &str, to: ForkTarget) -> SandboxRouteSpec {
    SandboxRouteSpec {
        routing_key: key.into(),
        forks: vec![ForkSpec {
            service: "reviews".into(),
            to,
            ports: None,
        }],
        fallback: Fallback::Baseline,
        expires_at: None,
        inject_key: true,
    }
}

fn selector(pairs: &[(&str, &str)]) -> ForkTarget {
    ForkTarget {
        selector: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        service: None,
    }
}

fn reasons(s: &SandboxRouteSpec, ns: &str) -> Vec<(SpecField, RouteReason)> {
    s.problems(ns)
        .into_iter()
        .map(|p| (p.field, p.reason))
        .collect()
}

#[test]
fn valid_spec_has_no_problems() {
    let s = spec("pr-42", selector(&[(SANDBOX_LABEL, "pr-42"), ("app", "r")]));
    assert!(s.problems("shop").is_empty());
}

#[test]
fn selector_without_sandbox_label_is_invalid() {
    let s = spec("pr-42", selector(&[("app", "reviews")]));
    assert_eq!(
        reasons(&s, "shop"),
        [(SpecField::ForkSelector(0), RouteReason::InvalidSelector)]
    );
}

#[test]
fn empty_selector_is_invalid() {
    let s = spec("pr-42", selector(&[]));
    assert_eq!(
        reasons(&s, "shop"),
        [(SpecField::ForkSelector(0), RouteReason::InvalidSelector)]
    );
}

#[test]
fn invalid_key_is_reported_with_the_syntax() {
    let s = spec("bad key!", selector(&[(SANDBOX_LABEL, "x")]));
    let p = s.problems("shop");
    assert_eq!(p[0].reason, RouteReason::InvalidKey);
    assert!(
        p[0].message
            .starts_with("\"bad key!\" is not a valid routing key ([A-Za-z0-9._-]{1,64})"),
        "{}",
        p[0].message
    );
}

#[test]
fn target_in_other_namespace_is_cross_namespace() {
    let to = ForkTarget {
        selector: None,
        service: Some("other/reviews-pr".into()),
    };
    assert_eq!(
        reasons(&spec("k", to), "shop"),
        [(SpecField::ForkTargetService(0), RouteReason::CrossNamespace)]
    );
    let mut s = spec("k", selector(&[(SANDBOX_LABEL, "x")]));
    s.forks[0].service = "other/reviews".into();
    assert_eq!(
        reasons(&s, "shop"),
        [(SpecField::ForkService(0), RouteReason::CrossNamespace)]
    );
}

#[test]
fn own_namespace_may_be_spelled_out() {
    let to = ForkTarget {
        selector: None,
        service: Some("shop/reviews-pr".into()),
    };
    assert!(spec("k", to).problems("shop").is_empty());
}

#[test]
fn target_needs_exactly_one_of_selector_or_service() {
    assert_eq!(
        reasons(&spec("k", ForkTarget::default()), "shop"),
        [(SpecField::ForkTo(0), RouteReason::InvalidTarget)]
    );
    let mut both = selector(&[(SANDBOX_LABEL, "x")]);
    both.service = Some("reviews-pr".into());
    assert_eq!(
        reasons(&spec("k", both), "shop"),
        [(SpecField::ForkTo(0), RouteReason::InvalidTarget)]
    );
}

#[test]
fn fork_to_itself_is_invalid() {
    let to = ForkTarget {
        selector: None,
        service: Some("reviews".into()),
    };
    assert_eq!(
        reasons(&spec("k", to), "shop"),
        [(SpecField::ForkTargetService(0), RouteReason::InvalidTarget)]
    );
}

#[test]
fn spec_serde_is_camel_case_and_defaults_fallback() {
    let s: SandboxRouteSpec = serde_json::from_str(
        r#"{"routingKey":"pr-1","forks":[{"service":"a","to":{"service":"b"},"ports":[80,"http"]}],"expiresAt":"2030-01-01T00:00:00Z"}"#,
    )
    .expect("parse");
    assert_eq!(s.fallback, Fallback::Baseline);
    assert_eq!(
        s.forks[0].ports,
        Some(vec![PortRef::Number(80), PortRef::Name("http".into())])
    );
    let back = serde_json::to_value(&s).expect("ser");
    assert_eq!(back["routingKey"], "pr-1");
    assert_eq!(back["expiresAt"], "2030-01-01T00:00:00Z");
    assert_eq!(back["fallback"], "Baseline");
    assert_eq!(back["forks"][0]["ports"][1], "http");
}

#[test]
fn port_zero_and_out_of_range_are_rejected() {
    assert!(serde_json::from_str::<TargetPort>("0").is_err());
    assert!(serde_json::from_str::<TargetPort>("70000").is_err());
    assert!(serde_json::from_str::<TargetPort>("\"\"").is_err());
    assert_eq!(
        serde_json::from_str::<TargetPort>("8080").ok(),
        Some(TargetPort::Number(8080))
    );
}
