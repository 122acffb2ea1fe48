//! The decision log: bounded in bytes, paths cut, reads filtered and paged.
use super::*;

fn record(key: Option<&str>) -> DecisionRecord {
    DecisionRecord {
        time: SystemTime::now(),
        client: ClientAddr::from_peer("10.0.0.1:1234".parse().expect("addr")),
        original_dst: OrigDstAddr("10.96.0.7:80".parse().expect("addr")),
        protocol: "http1",
        method: None,
        path: None,
        service: None,
        key: key.map(|k| RoutingKey::parse(k).expect("valid key")),
        decision: DecisionKind::Baseline,
        reason: DecisionReason::NoKey,
        route: None,
        upstream: None,
        source: Default::default(),
        status: Some(200),
        latency_us: 1,
        key_injected: false,
        marked_source: None,
    }
}

fn all() -> DecisionQuery<'static> {
    DecisionQuery::default()
}

#[test]
fn ring_keeps_only_the_newest_entries() {
    let log = DecisionLog::new(2 * record(Some("a")).cost());
    log.push(record(Some("a")));
    log.push(record(Some("b")));
    log.push(record(Some("c")));
    let keys: Vec<_> = log
        .page(&all())
        .into_iter()
        .filter_map(|r| r.key.map(|k| k.as_str().to_string()))
        .collect();
    assert_eq!(keys, ["b", "c"]);
}

#[test]
fn query_filters_by_key() {
    let log = DecisionLog::new(DEFAULT_LOG_BYTES);
    log.push(record(Some("a")));
    log.push(record(None));
    log.push(record(Some("a")));
    let q = DecisionQuery {
        key: Some("a"),
        ..all()
    };
    assert_eq!(log.page(&q).len(), 2);
}

#[test]
fn long_paths_are_cut_and_the_log_stays_within_its_bytes() {
    let capacity = 64 * 1024;
    let log = DecisionLog::new(capacity);
    for i in 0..1000 {
        let mut r = record(Some("a"));
        r.path = Some(format!("/{i}/{}", "é".repeat(30_000)).into_boxed_str());
        log.push(r);
    }
    assert!(log.bytes() <= capacity, "{}", log.bytes());
    let page = log.page(&all());
    assert!(page.len() > 50, "{}", page.len());
    let p = page[0].path.as_deref().expect("path");
    assert!(p.len() <= MAX_PATH_BYTES + '…'.len_utf8(), "{}", p.len());
    assert!(p.ends_with('…'));
    // The newest survive.
    assert!(
        page.last()
            .and_then(|r| r.path.as_deref())
            .is_some_and(|p| p.starts_with("/999/"))
    );
}

#[test]
fn query_pages_the_newest_and_filters_by_namespace() {
    let log = DecisionLog::new(DEFAULT_LOG_BYTES);
    for (i, svc) in [
        "shop/reviews",
        "bank/ledger",
        "shop/ratings",
        "shop/reviews",
    ]
    .iter()
    .enumerate()
    {
        let mut r = record(Some("a"));
        r.service = Some(std::sync::Arc::from(*svc));
        r.latency_us = i as u64;
        log.push(r);
    }
    log.push(record(Some("a")));
    let shop = log.page(&DecisionQuery {
        namespace: Some("shop"),
        limit: Some(2),
        ..all()
    });
    let got: Vec<_> = shop.iter().map(|r| r.latency_us).collect();
    assert_eq!(got, [2, 3]);
    let bank = log.page(&DecisionQuery {
        namespace: Some("bank"),
        ..all()
    });
    assert_eq!(bank.len(), 1);
    assert_eq!(bank[0].namespace(), Some("bank"));
}

#[test]
fn a_zero_sized_log_keeps_nothing() {
    let log = DecisionLog::new(0);
    log.push(record(None));
    assert!(log.page(&all()).is_empty());
}
