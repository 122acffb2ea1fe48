use std::net::SocketAddr;

use super::*;

#[tokio::test]
async fn a_second_agent_binds_the_same_port_beside_the_first() {
    let first = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 16, "--proxy-addr").unwrap();
    let addr = first.local_addr().unwrap();
    let second = bind(addr, 16, "--proxy-addr").unwrap();
    assert_eq!(second.local_addr().unwrap(), addr);
}

#[tokio::test]
async fn a_port_held_without_reuseport_is_an_error_naming_the_flag() {
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = plain.local_addr().unwrap();
    let e = bind(addr, 16, "--admin-addr").unwrap_err();
    assert!(
        e.to_string().starts_with("binding --admin-addr 127.0.0.1:"),
        "{e}"
    );
    assert_eq!(e.source.kind(), std::io::ErrorKind::AddrInUse);
}

#[tokio::test]
async fn new_connections_go_to_the_newer_listener() {
    let older = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 64, "--proxy-addr").unwrap();
    let addr = older.local_addr().unwrap();
    let newer = bind(addr, 64, "--proxy-addr").unwrap();
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..20 {
        tokio::time::timeout(std::time::Duration::from_secs(2), newer.accept())
            .await
            .expect("every connection is queued on the newer listener")
            .unwrap();
    }
    let none = tokio::time::timeout(std::time::Duration::from_millis(100), older.accept()).await;
    assert!(none.is_err(), "the older listener got none");
}
