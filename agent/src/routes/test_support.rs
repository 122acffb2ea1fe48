//! Parsers shared by the routes tests: literals in, typed values out (a typo is a panic).
use std::net::{IpAddr, SocketAddr};

use super::RoutingKey;

pub fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

pub fn key(s: &str) -> RoutingKey {
    RoutingKey::parse(s).expect("key")
}

/// The `targetRef` the EndpointSlice controller writes for a pod of `shop` at `addr`: a Pod of
/// the Service's own namespace, so the address is the Service's to steer.
pub fn shop_pod(addr: &str) -> Option<crate::routes::ObjectRef> {
    Some(crate::routes::ObjectRef {
        kind: "Pod".into(),
        namespace: "shop".into(),
        name: format!("pod-{}", addr.replace([':', '.'], "-")),
    })
}
