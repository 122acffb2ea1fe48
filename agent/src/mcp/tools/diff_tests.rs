use std::collections::BTreeMap;

use serde_json::json;

use super::*;

fn h(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn identical_responses_have_no_difference_despite_volatile_fields() {
    let a = json!({"pod": "x", "request_id": "1", "meta": {"traceId": "a", "date": "d1"}});
    let b = json!({"pod": "x", "request_id": "2", "meta": {"traceId": "b", "date": "d2"}});
    let ha = h(&[
        ("date", "Mon"),
        ("x-request-id", "1"),
        ("content-type", "json"),
    ]);
    let hb = h(&[
        ("date", "Tue"),
        ("x-request-id", "2"),
        ("content-type", "json"),
    ]);
    let d = diff_responses((200, &ha, "", Some(&a)), (200, &hb, "", Some(&b)), &[]);
    assert!(
        d.is_empty(),
        "{:?}",
        d.iter().map(|d| &d.path).collect::<Vec<_>>()
    );
}

#[test]
fn reports_status_header_and_nested_body_paths() {
    let a = json!({"down": {"pod": "reviews-v2", "items": [1, 2]}, "baggage": "k"});
    let b = json!({"down": {"pod": "reviews-v1", "items": [1]}, "baggage": null});
    let ha = h(&[("x-version", "2")]);
    let hb = h(&[]);
    let d = diff_responses((500, &ha, "", Some(&a)), (200, &hb, "", Some(&b)), &[]);
    let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "status",
            "header.x-version",
            "body.baggage",
            "body.down.items.1",
            "body.down.pod"
        ]
    );
    assert_eq!(d[3].keyed, Some(json!(2)));
    assert_eq!(d[3].baseline, None);
}

#[test]
fn ignore_paths_take_wildcards_and_any_depth() {
    let a = json!({"baggage": "k", "down": {"baggage": "k", "pod": "v2", "n": [{"id": 1}]}});
    let b = json!({"baggage": null, "down": {"baggage": null, "pod": "v1", "n": [{"id": 2}]}});
    let e = BTreeMap::new();
    let ignore = ["**.baggage".to_string(), "down.n.*.id".to_string()];
    let d = diff_responses((200, &e, "", Some(&a)), (200, &e, "", Some(&b)), &ignore);
    let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["body.down.pod"]);
}

#[test]
fn non_json_bodies_compare_as_text() {
    let e = BTreeMap::new();
    assert!(diff_responses((200, &e, "a", None), (200, &e, "a", None), &[]).is_empty());
    let d = diff_responses((200, &e, "a", None), (200, &e, "b", None), &[]);
    assert_eq!(d[0].path, "body");
}
