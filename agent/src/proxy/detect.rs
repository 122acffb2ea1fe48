//! Protocol detection by peeking at the first bytes of a connection, without consuming them.
//!
//! A server-speaks-first protocol (SMTP, MySQL, ...) sends nothing from the client, so detection
//! gives up after a short timeout and treats the connection as opaque.
use std::time::Duration;

use tokio::net::TcpStream;

/// The HTTP/2 connection preface a prior-knowledge (h2c) client sends first.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
    Tls,
    /// Anything else, or nothing within the timeout.
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2c => "h2c",
            Self::Tls => "tls",
            Self::Opaque => "opaque",
        }
    }
}

/// Classifies what the bytes seen so far say. `None`: not enough bytes to tell yet.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    // TLS record: handshake (0x16), version 3.x.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Protocol::H2c)
        } else {
            None
        };
    }
    // HTTP/1.x request line: a method token (uppercase letters, at most 16) then a space.
    for (i, b) in buf.iter().enumerate().take(17) {
        match b {
            b'A'..=b'Z' | b'-' | b'_' => continue,
            b' ' if i > 0 => return Some(Protocol::Http1),
            _ => return Some(Protocol::Opaque),
        }
    }
    if buf.len() >= 17 {
        Some(Protocol::Opaque)
    } else {
        None
    }
}

/// Peeks until the protocol is known or `timeout` passes (then: opaque).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Protocol {
    let mut buf = [0u8; 32];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_len = usize::MAX;
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Protocol::Opaque,
            Ok(Ok(n)) => n,
        };
        if let Some(p) = classify(&buf[..n]) {
            return p;
        }
        if n == buf.len() {
            return Protocol::Opaque;
        }
        // peek returns at once while the same bytes sit in the buffer: wait for more.
        if n == last_len {
            if tokio::time::Instant::now() >= deadline {
                return Protocol::Opaque;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        last_len = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines_are_http1() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(classify(b"GE"), None);
    }

    #[test]
    fn h2_preface_is_h2c_only_when_complete() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::H2c));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
    }

    #[test]
    fn tls_client_hello_is_tls() {
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(Protocol::Tls)
        );
    }

    #[test]
    fn other_bytes_are_opaque() {
        assert_eq!(classify(b"\x00\x01binary"), Some(Protocol::Opaque));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Protocol::Opaque));
    }
}
