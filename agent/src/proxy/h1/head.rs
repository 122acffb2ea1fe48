//! Request and response heads, parsed in place with httparse. The proxy learns what it must
//! (framing, connection options, the key) and rewrites only hop-by-hop headers and the key's
//! query parameter; every other byte goes on as received: header-name case, order, repeated
//! headers, `Host`.
//!
//! Requests are parsed as a strict server would: anything another parser on the path could
//! read differently (request smuggling) is refused before a byte of it is forwarded.
use std::{borrow::Cow, io::IoSlice, mem::MaybeUninit, ops::Range};

use super::body::Framing;
use crate::proxy::{
    key::{Extracted, HeadRewrite, KeyExtractor},
    key_strip::HeaderFate,
};

/// Headers parsed without a heap allocation; a higher `--max-headers` uses the heap.
const STACK_HEADERS: usize = 128;

/// Why a request head is refused, and the status a strict server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("header block over the size limit")]
    TooLarge,
    #[error("more headers than allowed")]
    TooManyHeaders,
    #[error("malformed head: {0}")]
    Malformed(&'static str),
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            Self::TooLarge | Self::TooManyHeaders => 431,
            Self::Malformed(_) => 400,
        }
    }
}

/// One piece of a head as forwarded: bytes of the read buffer, or bytes the proxy wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Buf(Range<usize>),
    Owned(Vec<u8>),
    Static(&'static [u8]),
}

/// The pieces of a head; adjacent buffer ranges are merged, so a head with nothing to rewrite
/// is one piece.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pieces(pub Vec<Piece>);

impl Pieces {
    fn push_buf(&mut self, r: Range<usize>) {
        if let Some(Piece::Buf(last)) = self.0.last_mut()
            && last.end == r.start
        {
            last.end = r.end;
            return;
        }
        self.0.push(Piece::Buf(r));
    }

    pub fn push(&mut self, p: Piece) {
        match p {
            Piece::Buf(r) => self.push_buf(r),
            p => self.0.push(p),
        }
    }

    /// The pieces as slices over `buf`, then `tail` (a body prefix), for one `writev`.
    pub fn slices<'a>(&'a self, buf: &'a [u8], tail: &'a [u8]) -> Vec<IoSlice<'a>> {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for p in &self.0 {
            out.push(IoSlice::new(match p {
                Piece::Buf(r) => &buf[r.clone()],
                Piece::Owned(v) => v,
                Piece::Static(s) => s,
            }));
        }
        if !tail.is_empty() {
            out.push(IoSlice::new(tail));
        }
        out
    }
}

/// What the `Connection` header and its friends say.
#[derive(Debug, Default)]
struct ConnectionOptions<'b> {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// Other options: names of further hop-by-hop headers.
    listed: Vec<&'b [u8]>,
}

impl<'b> ConnectionOptions<'b> {
    fn add(&mut self, value: &'b [u8]) {
        for token in value.split(|c| *c == b',') {
            let token = crate::routes::key::trim_ows(token);
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if !token.is_empty() {
                self.listed.push(token);
            }
        }
    }

    /// Whether a header is hop-by-hop (RFC 9110 §7.6.1), so not forwarded. Transfer-Encoding
    /// is not among them here: bodies are relayed in their coding, so it stays true.
    fn is_hop_by_hop(&self, name: &str) -> bool {
        let n = name.as_bytes();
        ["connection", "keep-alive", "proxy-connection", "upgrade"]
            .iter()
            .any(|h| n.eq_ignore_ascii_case(h.as_bytes()))
            || self.listed.iter().any(|l| n.eq_ignore_ascii_case(l))
    }
}

/// A request head, parsed in the client connection's read buffer.
#[derive(Debug)]
pub struct RequestHead {
    /// Length of the head in the buffer (the body, if any, follows).
    pub len: usize,
    pub method: http::Method,
    /// The path of the target (no query: it may hold secrets), for the decision log.
    pub path: Box<str>,
    pub http10: bool,
    pub framing: Framing,
    /// The client wants the connection closed after this exchange.
    pub close: bool,
    /// A websocket-style upgrade or CONNECT: the head goes on whole and the connection becomes
    /// a tunnel if the upstream agrees.
    pub upgrade: bool,
    pub extracted: Extracted,
    /// The head as it goes upstream.
    pub out: Pieces,
}

impl RequestHead {
    /// The key was added by the proxy for a marked source.
    pub fn key_injected(&self) -> bool {
        self.extracted.source == crate::proxy::key::KeySource::Injected
    }
}

/// The path of a request target, without query.
fn target_path(target: &str) -> Box<str> {
    let path = absolute_form_path(target);
    let path = path
        .as_deref()
        .or_else(|| other_scheme_path(target))
        .unwrap_or(target);
    // No `#`: a target with a fragment is refused before this is read.
    path.split('?').next().unwrap_or("").into()
}

/// The path of an absolute-form target of another scheme (`h2://host/p`). Such a target goes
/// upstream unchanged; only the logged path comes from here, read as `http::Uri` reads it (an
/// empty path is `/`), so it is the same before and after a query key is moved to baggage.
fn other_scheme_path(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    let mut chars = scheme.bytes();
    let valid = chars.next()?.is_ascii_alphabetic()
        && chars.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    valid.then(|| match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        _ => "/",
    })
}

/// The origin form of an absolute-form target (`http://host/path?q` → `/path?q`); `None` for
/// other forms. An empty path is `/` (RFC 9112, 3.2.1): `http://host?q` → `/?q`, never `?q`,
/// which is no request target at all.
fn absolute_form_path(target: &str) -> Option<Cow<'_, str>> {
    let rest = absolute_form_rest(target)?;
    Some(match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Cow::Borrowed(&rest[i..]),
        Some(i) => Cow::Owned(format!("/{}", &rest[i..])),
        None => Cow::Borrowed("/"),
    })
}

/// What follows `http://` or `https://` in an absolute-form target.
fn absolute_form_rest(target: &str) -> Option<&str> {
    target
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &target[7..])
        .or_else(|| {
            target
                .get(..8)
                .filter(|s| s.eq_ignore_ascii_case("https://"))
                .map(|_| &target[8..])
        })
}

/// Limits of a request head.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete.
/// `strip`: the client's routing keys are removed ([`KeyExtractor::strips`]).
pub fn parse_request(
    buf: &[u8],
    limits: HeadLimits,
    keys: &KeyExtractor,
    strip: bool,
) -> Result<Option<RequestHead>, HeadError> {
    parse_request_injecting(buf, limits, keys, strip, None)
}

/// [`parse_request`] for a marked source's connection: a request without a key gets `inject`
/// as a baggage member ([`key_inject`](crate::proxy::key_inject)).
pub fn parse_request_injecting(
    buf: &[u8],
    limits: HeadLimits,
    keys: &KeyExtractor,
    strip: bool,
    inject: Option<&crate::routes::RoutingKey>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap;
    let storage: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap = Vec::with_capacity(limits.max_headers);
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, storage) {
        Ok(httparse::Status::Complete(len)) if len > limits.max_bytes => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_bytes => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("request line or header syntax")),
    };
    let head = &buf[..len];
    if has_bare_lf(head) {
        return Err(HeadError::Malformed("line ending without CR"));
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    // A fragment is no part of any request target (RFC 9112 3.2). Readers split it off at
    // different places: `http::Uri` drops `#f?k=v` whole, a path split at `?` keeps `?k=v` as a
    // query, so the proxy and the next hop would read different keys. Refused, as HAProxy does.
    if target.contains('#') {
        return Err(HeadError::Malformed("fragment in request target"));
    }
    // An http(s) URI that is invalid (an empty host must be rejected, RFC 9110 4.2.1; a host
    // `http::Uri` cannot read) is refused: its query goes unread here, yet in origin form the
    // next hop would read a key from it.
    if absolute_form_rest(target).is_some()
        && target
            .parse::<http::Uri>()
            .map_or(true, |u| u.host().is_none_or(str::is_empty))
    {
        return Err(HeadError::Malformed(
            "absolute-form target that is no valid URI",
        ));
    }
    // Any other target must be one of RFC 9112's forms (3.2): origin (`/p`), absolute with a
    // valid scheme, asterisk (`*`), or authority for CONNECT. Anything else (`2http://h?q`)
    // has no path the proxy and the next hop would read alike, so it is refused.
    if !(target.starts_with('/')
        || target == "*"
        || method == "CONNECT"
        || other_scheme_path(target).is_some())
    {
        return Err(HeadError::Malformed("request target of no known form"));
    }
    let method =
        http::Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed("method"))?;
    let http10 = version == 0;
    let headers = &*req.headers;

    let mut conn = ConnectionOptions::default();
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(HeadError::Malformed("repeated Content-Length"));
            }
            length = Some(parse_length(h.value).ok_or(HeadError::Malformed("Content-Length"))?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = Some(final_coding_is_chunked(h.value, chunked)?);
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn.add(h.value);
        }
    }
    let framing = match (length, chunked) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (_, Some(_)) if http10 => {
            return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
        }
        (_, Some(false)) => {
            return Err(HeadError::Malformed(
                "Transfer-Encoding not ending in chunked",
            ));
        }
        (_, Some(true)) => Framing::Chunked,
        (Some(n), None) => Framing::Length(n),
        (None, None) => Framing::Empty,
    };
    let upgrade = method == http::Method::CONNECT || conn.upgrade;
    let (mut extracted, mut rewrite) = keys.normalize_raw(headers, target, strip);
    crate::proxy::key_inject::inject_raw(inject, headers, &mut extracted, &mut rewrite);

    let offset = |s: &str| s.as_ptr() as usize - buf.as_ptr() as usize;
    let path = target_path(target);
    let line_ends: Vec<usize> = headers
        .iter()
        .map(|h| offset(h.name))
        .chain([len - 2])
        .collect();
    let mut out = Pieces::default();
    let request_line = 0..line_ends[0];
    let origin_target = rewrite
        .as_ref()
        .and_then(|r| r.target.as_deref())
        .map(Cow::Borrowed)
        .or_else(|| absolute_form_path(target));
    match origin_target {
        Some(t) => out.push(Piece::Owned(
            format!("{method} {t} HTTP/1.{}\r\n", if http10 { 0 } else { 1 }).into_bytes(),
        )),
        None => out.push(Piece::Buf(request_line)),
    }
    for (i, h) in headers.iter().enumerate() {
        let line = line_ends[i]..line_ends[i + 1];
        if !upgrade && conn.is_hop_by_hop(h.name) {
            continue;
        }
        match rewrite.as_ref().and_then(|r| r.fates.get(i)) {
            None | Some(HeaderFate::Keep) => out.push(Piece::Buf(line)),
            Some(HeaderFate::Drop) => {}
            Some(HeaderFate::Replace(value)) => {
                // The name as the client spelled it, the value without the key member.
                let mut l = h.name.as_bytes().to_vec();
                l.extend_from_slice(b": ");
                l.extend_from_slice(value);
                l.extend_from_slice(b"\r\n");
                out.push(Piece::Owned(l));
            }
        }
    }
    if let Some(HeadRewrite { append_baggage, .. }) = &rewrite {
        for v in append_baggage {
            let mut line = b"baggage: ".to_vec();
            line.extend_from_slice(v.as_bytes());
            line.extend_from_slice(b"\r\n");
            out.push(Piece::Owned(line));
        }
    }
    out.push(Piece::Buf(len - 2..len));
    Ok(Some(RequestHead {
        len,
        method,
        path,
        http10,
        framing,
        // HTTP/1.0 clients get one exchange per connection: close is their default, and
        // keeping theirs open would need a header the proxy does not add.
        close: conn.close || http10,
        upgrade,
        extracted,
        out,
    }))
}

/// A Content-Length value: digits only, no sign, no list, no overflow.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether the last transfer coding (across repeated headers, `before` being the verdict so
/// far) is `chunked`. Chunked applied twice is refused (RFC 9112 §7).
fn final_coding_is_chunked(value: &[u8], before: Option<bool>) -> Result<bool, HeadError> {
    let mut last = before;
    for coding in value.split(|c| *c == b',') {
        let coding = crate::routes::key::trim_ows(coding);
        if coding.is_empty() {
            continue;
        }
        let is_chunked = coding.eq_ignore_ascii_case(b"chunked");
        if is_chunked && last == Some(true) {
            return Err(HeadError::Malformed("chunked applied twice"));
        }
        last = Some(is_chunked);
    }
    last.ok_or(HeadError::Malformed("empty Transfer-Encoding"))
}

/// Whether a line of `head` ends in LF alone.
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// A response head, parsed in the upstream connection's read buffer.
#[derive(Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The upstream will close the connection after this response.
    pub close: bool,
    /// The upstream said so with `Connection: close`, which passes to the client as it is (the
    /// proxy closes the client connection too).
    has_close_line: bool,
    /// The head as it goes to the client, without its final empty line (see
    /// [`ResponseHead::finish`]).
    pub out: Pieces,
}

impl ResponseHead {
    /// An interim (1xx) response other than 101: relayed, and the final one follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// Ends the head; `close` tells the client the proxy closes the connection after it.
    pub fn finish(&mut self, close: bool) {
        if close && !self.has_close_line {
            self.out.push(Piece::Static(b"connection: close\r\n"));
        }
        self.out.push(Piece::Buf(self.len - 2..self.len));
    }
}

/// What the request said that the response's framing depends on.
#[derive(Clone, Copy, Debug)]
pub struct RequestKind {
    pub head: bool,
    pub connect: bool,
    /// Hop-by-hop headers pass as received (an upgrade's response).
    pub upgrade: bool,
}

/// Parses the response head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_response(
    buf: &[u8],
    limits: HeadLimits,
    req: RequestKind,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut stack);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_bytes => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("status line or header syntax")),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(HeadError::Malformed("incomplete status line"));
    };
    if has_bare_lf(&buf[..len]) {
        return Err(HeadError::Malformed("line ending without CR"));
    }
    let headers = &*resp.headers;
    let mut conn = ConnectionOptions::default();
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).ok_or(HeadError::Malformed("Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Malformed("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = Some(final_coding_is_chunked(h.value, chunked)?);
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn.add(h.value);
        }
    }
    let no_body = req.head
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || (req.connect && (200..300).contains(&status));
    let framing = match (no_body, chunked, length) {
        (true, _, _) => Framing::Empty,
        (false, Some(true), _) => Framing::Chunked,
        (false, Some(false), _) => Framing::UntilClose,
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::UntilClose,
    };
    let close = conn.close || (version == 0 && !conn.keep_alive) || framing == Framing::UntilClose;
    let offset = |s: &str| s.as_ptr() as usize - buf.as_ptr() as usize;
    let line_ends: Vec<usize> = headers
        .iter()
        .map(|h| offset(h.name))
        .chain([len - 2])
        .collect();
    let mut out = Pieces::default();
    out.push(Piece::Buf(0..line_ends[0]));
    let keep_all = req.upgrade && (status == 101 || req.connect);
    for (i, h) in headers.iter().enumerate() {
        let close_line = conn.close && h.name.eq_ignore_ascii_case("connection");
        if keep_all || close_line || !conn.is_hop_by_hop(h.name) {
            out.push(Piece::Buf(line_ends[i]..line_ends[i + 1]));
        }
    }
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        close,
        has_close_line: conn.close,
        out,
    }))
}

/// A response the proxy writes itself (errors, Reject): plain text, marked `x-shunt-error`.
pub fn local_response(status: u16, text: &str, close: bool, head_request: bool) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         x-shunt-error: 1\r\ncontent-length: {}\r\n{}\r\n",
        text.len(),
        if close { "connection: close\r\n" } else { "" },
    )
    .into_bytes();
    if !head_request {
        out.extend_from_slice(text.as_bytes());
    }
    out
}

/// The answer to a head refused before routing: no body, and the connection closes.
pub fn refusal(status: u16) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("HTTP/1.1 {status} {reason}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        .into_bytes()
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
