//! Test client run inside a pod namespace (and usually the captured cgroup). Prints one JSON line
//! per connection: what getpeername() said and what the backend answered.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use serde_json::json;
use tests::backends::Reply;

mod churn;
mod grpc;
mod hold;
mod http;
mod load;
mod mixed;

const TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: netpeer tcp ADDR[,ADDR...] [COUNT] [--parallel] [--from-port P] [--reset] \
                 | udp ADDR \
                 | http ADDR [--h2] [--concurrent] REQUESTS_JSON | ws ADDR HEADERS_JSON MESSAGE \
                 | raw ADDR SEND [--stall-ms N] \
                 | hold ADDR COUNT HOLD_MS [--send TEXT] [--expect PREFIX] \
                 | churn ADDR SECS [HEADER:VALUE] [--workers N] [--pause-ms N] \
                 | mixed HTTP_ADDR GRPC_ADDR SECS RPS KEYS EXPECTS";
    let mode = args.get(1).ok_or_else(|| anyhow::anyhow!(usage))?;
    let addrs: Vec<SocketAddr> = args
        .get(2)
        .ok_or_else(|| anyhow::anyhow!(usage))?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let addr = addrs[0];
    match mode.as_str() {
        "tcp" => {
            let count: usize = args.get(3).map(|c| c.parse()).transpose()?.unwrap_or(1);
            let from_port: Option<u16> = args
                .iter()
                .position(|a| a == "--from-port")
                .and_then(|i| args.get(i + 1))
                .map(|v| v.parse())
                .transpose()?;
            let reset = args.iter().any(|a| a == "--reset");
            if args.iter().any(|a| a == "--parallel") {
                parallel(&addrs, count)
            } else {
                for i in 0..count {
                    let line = match tcp_once(addr, i, from_port, reset) {
                        Ok(v) => v,
                        Err(e) => json!({ "error": e.to_string() }),
                    };
                    println!("{line}");
                }
                Ok(())
            }
        }
        "http" => http::run(addr, &args[3..]),
        "ws" => http::websocket(addr, &args[3..]),
        "grpc" => grpc::run(addr, &args[3..]),
        "load" => load::run(addr, &args[3..]),
        "churn" => churn::run(addr, &args[3..]),
        "mixed" => mixed::run(addr, &args[3..]),
        "raw" => raw(addr, &args[3..]),
        "hold" => hold::run(addr, &args[3..]),
        "udp" => {
            let sock = UdpSocket::bind(if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?;
            sock.connect(addr)?;
            sock.set_read_timeout(Some(TIMEOUT))?;
            sock.send(b"udp hello\n")?;
            let mut buf = [0u8; 2048];
            let n = sock.recv(&mut buf)?;
            let reply: Reply = serde_json::from_slice(&buf[..n])?;
            println!(
                "{}",
                json!({ "peername": sock.peer_addr()?, "reply": reply })
            );
            Ok(())
        }
        _ => anyhow::bail!(usage),
    }
}

/// Sends raw bytes, optionally stalls, and prints whatever comes back until the server closes
/// (or 10 s pass).
fn raw(addr: SocketAddr, args: &[String]) -> anyhow::Result<()> {
    use std::io::Read as _;
    let send = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("raw: what to send"))?;
    let send = send.replace("\\r", "\r").replace("\\n", "\n");
    let stall: u64 = args
        .iter()
        .position(|a| a == "--stall-ms")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(0);
    let until_line = args.iter().any(|a| a == "--until-line");
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(send.as_bytes())?;
    std::thread::sleep(Duration::from_millis(stall));
    if args.iter().any(|a| a == "--reset") {
        tests::process::set_linger_zero(&conn);
        drop(conn);
        println!("{}", json!({ "reset": true }));
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let result = if until_line {
        let mut line = String::new();
        let r = BufReader::new(&conn).read_line(&mut line).map(|_| ());
        buf = line.into_bytes();
        r
    } else {
        conn.read_to_end(&mut buf).map(|_| ())
    };
    println!(
        "{}",
        json!({
            "response": String::from_utf8_lossy(&buf),
            "closed": result.is_ok(),
            "after_ms": started.elapsed().as_millis() as u64,
        })
    );
    Ok(())
}

/// One exchange on a new connection, from local port `from_port` when given (SO_REUSEADDR), and
/// closed with a reset when `reset` (no TIME_WAIT: the same endpoint pair can connect again at
/// once).
fn tcp_once(
    addr: SocketAddr,
    i: usize,
    from_port: Option<u16>,
    reset: bool,
) -> anyhow::Result<serde_json::Value> {
    let conn = match from_port {
        None => TcpStream::connect_timeout(&addr, TIMEOUT)?,
        Some(port) => {
            use socket2::{Domain, Socket, Type};
            let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            sock.set_reuse_address(true)?;
            let local = match addr {
                SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
                SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], port)),
            };
            sock.bind(&local.into())?;
            sock.connect_timeout(&addr.into(), TIMEOUT)?;
            sock.into()
        }
    };
    if reset {
        tests::process::set_linger_zero(&conn);
    }
    exchange(conn, i)
}

fn exchange(conn: TcpStream, i: usize) -> anyhow::Result<serde_json::Value> {
    conn.set_read_timeout(Some(TIMEOUT))?;
    let peername = conn.peer_addr()?;
    let local = conn.local_addr()?;
    let mut w = conn.try_clone()?;
    w.write_all(format!("hello {i}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    let reply: Reply =
        serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("bad reply {line:?}: {e}"))?;
    Ok(json!({ "peername": peername, "local": local, "reply": reply }))
}

/// Opens every connection first (connection i to `addrs[i % len]`), then talks on all of them at
/// once.
fn parallel(addrs: &[SocketAddr], count: usize) -> anyhow::Result<()> {
    let conns: Vec<_> = (0..count)
        .map(|i| TcpStream::connect_timeout(&addrs[i % addrs.len()], TIMEOUT))
        .collect();
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            std::thread::spawn(move || {
                match c.map_err(anyhow::Error::from).and_then(|c| exchange(c, i)) {
                    Ok(v) => v,
                    Err(e) => json!({ "error": e.to_string() }),
                }
            })
        })
        .collect();
    for h in handles {
        let v = h
            .join()
            .unwrap_or_else(|_| json!({ "error": "thread panicked" }));
        println!("{v}");
    }
    Ok(())
}
