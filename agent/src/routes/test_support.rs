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
