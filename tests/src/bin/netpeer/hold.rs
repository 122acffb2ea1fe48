//! `hold ADDR COUNT HOLD_MS [--send TEXT] [--expect PREFIX]`: opens COUNT connections one after
//! the other, optionally sends TEXT on each and waits for an answer starting with PREFIX (a
//! websocket handshake, say), keeps them all open for HOLD_MS, and prints one JSON line: how
//! many connected, got the expected answer, and were still open (not reset or closed by the
//! other end) just before letting go.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::json;

pub fn run(addr: SocketAddr, args: &[String]) -> anyhow::Result<()> {
    let count: usize = args.first().map(|c| c.parse()).transpose()?.unwrap_or(1);
    let hold = Duration::from_millis(args.get(1).map(|c| c.parse()).transpose()?.unwrap_or(0));
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.replace("\\r", "\r").replace("\\n", "\n"))
    };
    let send = flag("--send");
    let expect = flag("--expect");
    let mut conns = Vec::new();
    let (mut connect_failed, mut answered) = (0, 0);
    for _ in 0..count {
        let mut c = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(c) => c,
            Err(_) => {
                connect_failed += 1;
                continue;
            }
        };
        if let Some(text) = &send {
            let _ = c.write_all(text.as_bytes());
        }
        if let Some(prefix) = &expect {
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = vec![0u8; prefix.len()];
            if c.read_exact(&mut buf).is_ok() && buf == prefix.as_bytes() {
                answered += 1;
            }
            // Drop the rest of the answer's head.
            c.set_read_timeout(Some(Duration::from_millis(100)))?;
            let mut rest = [0u8; 1024];
            let _ = c.read(&mut rest);
        }
        conns.push(c);
    }
    // Let refusals (resets) arrive, then look at each connection without blocking.
    std::thread::sleep(Duration::from_millis(300));
    let open_now = |conns: &[TcpStream]| {
        conns
            .iter()
            .filter(|c| {
                let _ = c.set_nonblocking(true);
                let mut b = [0u8; 1];
                matches!(c.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
            })
            .count()
    };
    let open_at_start = open_now(&conns);
    std::thread::sleep(hold.saturating_sub(Duration::from_millis(300)));
    let open_at_end = open_now(&conns);
    println!(
        "{}",
        json!({
            "connected": conns.len(),
            "connect_failed": connect_failed,
            "answered": answered,
            "open": open_at_start,
            "open_at_end": open_at_end,
        })
    );
    Ok(())
}
