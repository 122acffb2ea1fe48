//! run_tests' init container (`shunt mcp --internal-wait-marked`): waits until the node's agent
//! has marked this pod, so the test command never starts with connections that bypass Shunt.
//!
//! Why a probe from inside the pod rather than asking the agent: the pod has no API token and
//! cannot reach the agent's debug listener (loopback of the node), and "the agent says it wrote
//! the map" is weaker than "this pod's connections are now captured". Every container of a pod
//! shares the pod's cgroup, which is what `MARKED` holds, so what the init container sees is
//! what the test container gets.
//!
//! The probe: listen on an ephemeral port, connect to the pod's own IP on it and send an HTTP
//! request without a key. Unmarked, the connection arrives directly, from the pod's own address.
//! Marked, every TCP connection of the pod goes through the node's proxy: it arrives from the
//! node (the agent runs with hostNetwork), and, where the proxy parses it as HTTP, carrying the
//! key Shunt added. Either sign means marked. Nothing else steers that connection: an ephemeral
//! port of a new pod is never a Service's endpoint.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// The key to wait for.
pub const KEY_ENV: &str = "SHUNT_INJECT_KEY";
/// The pod's own IP (downward API `status.podIP`).
pub const POD_IP_ENV: &str = "POD_IP";
/// How long to wait, in seconds.
pub const TIMEOUT_ENV: &str = "SHUNT_MARK_TIMEOUT_S";

const STEP: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(250);
const MAX_HEAD: usize = 16 * 1024;

/// What one probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Arrived directly from the pod's own address, without the key.
    Direct,
    /// Arrived through the proxy (`from` is not the pod) and/or with the key added.
    Marked { from: IpAddr, key_added: bool },
}

/// `shunt mcp --internal-wait-marked`: exits 0 once marked, 1 with a message on timeout.
pub fn child_main() -> anyhow::Result<()> {
    let key = std::env::var(KEY_ENV).with_context(|| format!("{KEY_ENV} is not set"))?;
    let pod_ip: IpAddr = std::env::var(POD_IP_ENV)
        .with_context(|| format!("{POD_IP_ENV} is not set"))?
        .parse()
        .with_context(|| format!("{POD_IP_ENV} is not an IP address"))?;
    let timeout = std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(120), Duration::from_secs);
    let started = Instant::now();
    let probe = wait_marked(pod_ip, &key, timeout)?;
    println!(
        "marked after {} ms: {probe:?}; starting the test command",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Probes until marked or `timeout`.
pub fn wait_marked(pod_ip: IpAddr, key: &str, timeout: Duration) -> anyhow::Result<Probe> {
    let any = match pod_ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let listener = TcpListener::bind(SocketAddr::new(any, 0)).context("listening for the probe")?;
    listener.set_nonblocking(true)?;
    let target = SocketAddr::new(pod_ip, listener.local_addr()?.port());
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe_once(&listener, target, key) {
            Ok(p @ Probe::Marked { .. }) => return Ok(p),
            Ok(Probe::Direct) => "connections still go direct (not marked yet)".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            anyhow::bail!(
                "this pod was not marked with key {key:?} within {}s ({last}): the node's agent \
                 marks a pod labelled shunt.dev/inject-key only when a SandboxRoute with that key \
                 exists in the pod's namespace, and only where a Shunt agent runs",
                timeout.as_secs()
            );
        }
        std::thread::sleep(RETRY);
    }
}

/// One probe: a keyless request to `target` (this pod), read back on `listener`.
pub fn probe_once(listener: &TcpListener, target: SocketAddr, key: &str) -> anyhow::Result<Probe> {
    let mut out = TcpStream::connect_timeout(&target, STEP).context("connecting to the pod")?;
    out.set_write_timeout(Some(STEP))?;
    out.write_all(
        b"GET /shunt-mark-probe HTTP/1.1\r\nHost: shunt-mark-probe\r\nConnection: close\r\n\r\n",
    )?;
    let until = Instant::now() + STEP;
    let (mut conn, from) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("accepting the probe"),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(STEP))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = conn.read(&mut buf).context("reading the probe")?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    // Answer, so a proxy in between completes the exchange cleanly.
    let _ = conn
        .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let key_added = carries_key(&head, key);
    let direct = from.ip().to_canonical() == target.ip().to_canonical();
    Ok(if direct && !key_added {
        Probe::Direct
    } else {
        Probe::Marked {
            from: from.ip(),
            key_added,
        }
    })
}

/// Whether a request head has a `baggage` header whose `sd-routing-key` member is `key`.
fn carries_key(head: &[u8], key: &str) -> bool {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("baggage"))
        .flat_map(|(_, v)| v.split(','))
        .filter_map(|m| crate::routes::key::key_member_value(m.as_bytes()))
        .any(|v| v == key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_found_among_other_baggage_members() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nBaggage: a=1, sd-routing-key=pr-42;p=1\r\n\r\n";
        assert!(carries_key(head, "pr-42"));
        assert!(!carries_key(head, "pr-4"));
        assert!(!carries_key(
            b"GET / HTTP/1.1\r\nx-baggage: sd-routing-key=pr-42\r\n\r\n",
            "pr-42"
        ));
    }

    #[test]
    fn an_unmarked_pod_probes_direct_and_times_out_with_the_reason() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let target = l.local_addr().expect("addr");
        assert_eq!(
            probe_once(&l, target, "pr-42").expect("probe"),
            Probe::Direct
        );
        let e = wait_marked("127.0.0.1".parse().unwrap(), "pr-42", Duration::ZERO)
            .expect_err("never marked");
        assert!(
            format!("{e:#}").contains("not marked with key \"pr-42\""),
            "{e:#}"
        );
    }
}
