//! The routing key: the opaque token a request carries to pick its sandbox, and how it is
//! spelled in W3C baggage.
//!
//! Only std here: the proxy's header handling builds on these helpers, and so does a client (the
//! MCP server's test requests) that must not need the proxy.
use std::{borrow::Borrow, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A validated routing key: 1 to 64 characters from `[A-Za-z0-9._-]`.
///
/// The alphabet is deliberately narrow: keys travel in baggage, tracestate, custom headers and
/// query strings, and this set needs no escaping in any of them, so a key reads the same
/// everywhere and can be logged and put in metrics labels without sanitising.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoutingKey(Box<str>);

/// Why a string is not a [`RoutingKey`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("routing key is empty")]
    Empty,
    #[error(
        "routing key is {len} bytes long; at most {} are allowed",
        RoutingKey::MAX_LEN
    )]
    TooLong { len: usize },
    #[error("routing key has {ch:?} at byte {at}; only [A-Za-z0-9._-] is allowed")]
    InvalidChar { ch: char, at: usize },
}

impl RoutingKey {
    /// The longest key accepted, in bytes (all accepted characters are one byte).
    pub const MAX_LEN: usize = 64;
    /// The accepted syntax, for messages.
    pub const SYNTAX: &'static str = "[A-Za-z0-9._-]{1,64}";

    /// Validates `s` as a routing key.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        Self::check(s.as_bytes())?;
        Ok(Self(s.into()))
    }

    /// Validates raw bytes (from a header) without first requiring UTF-8: every accepted byte is
    /// ASCII, so a valid key is valid UTF-8 by construction.
    pub fn parse_bytes(b: &[u8]) -> Result<Self, KeyError> {
        Self::check(b)?;
        // `check` accepted only ASCII, so this cannot fail; stay panic-free regardless.
        std::str::from_utf8(b)
            .map(|s| Self(s.into()))
            .map_err(|_| KeyError::InvalidChar {
                ch: '\u{FFFD}',
                at: 0,
            })
    }

    fn check(b: &[u8]) -> Result<(), KeyError> {
        if b.is_empty() {
            return Err(KeyError::Empty);
        }
        if let Some(at) = b.iter().position(|c| !is_key_byte(*c)) {
            // Report the character, decoded if possible, so messages point at the culprit.
            let ch = b[at..]
                .utf8_chunks()
                .next()
                .and_then(|c| c.valid().chars().next())
                .unwrap_or('\u{FFFD}');
            return Err(KeyError::InvalidChar { ch, at });
        }
        if b.len() > Self::MAX_LEN {
            return Err(KeyError::TooLong { len: b.len() });
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `c` may appear in a routing key.
pub fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')
}

impl fmt::Display for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for RoutingKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for RoutingKey {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        Self::check(s.as_bytes())?;
        Ok(Self(s.into_boxed_str()))
    }
}

impl From<RoutingKey> for String {
    fn from(k: RoutingKey) -> String {
        k.0.into()
    }
}

impl AsRef<str> for RoutingKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by `RoutingKey` be queried with a `&str`.
impl Borrow<str> for RoutingKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The baggage and tracestate member name, and the query parameter name, that carry the key.
pub const MEMBER: &str = "sd-routing-key";

/// Optional whitespace (space and tab) trimmed from both ends, as HTTP and W3C lists allow.
pub fn trim_ows(b: &[u8]) -> &[u8] {
    let is_ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !is_ows(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !is_ows(c)).map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

/// `key = value` split at the first `=`, both sides trimmed; `None` for a member without `=`.
pub fn split_member(member: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = member.iter().position(|c| *c == b'=')?;
    Some((trim_ows(&member[..eq]), trim_ows(&member[eq + 1..])))
}

/// The raw (still percent-encoded) value of one baggage list member, if it is [`MEMBER`].
pub fn key_member_value(member: &[u8]) -> Option<&[u8]> {
    // Properties (`;prop=x`) qualify a member; they are not part of its value.
    let kv = member.split(|c| *c == b';').next().unwrap_or_default();
    let (k, v) = split_member(kv)?;
    (k == MEMBER.as_bytes()).then_some(v)
}

/// One baggage value without its [`MEMBER`] members; the others keep their bytes and order.
/// `None` when it has no such member (the value is fine as it is); empty when nothing else was
/// in it. The result is trimmed, so removing a leading member leaves no leading space.
pub fn strip_key_members(value: &[u8]) -> Option<Vec<u8>> {
    strip_members(value, |m| key_member_value(m).is_some())
}

/// One comma-separated list value (baggage, tracestate) without the members `is_ours` picks;
/// the others keep their bytes and order. `None` when none is picked; trimmed, as
/// [`strip_key_members`].
pub fn strip_members(value: &[u8], is_ours: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    if !value.split(|c| *c == b',').any(&is_ours) {
        return None;
    }
    let kept: Vec<&[u8]> = value
        .split(|c| *c == b',')
        .filter(|m| !is_ours(m))
        .collect();
    Some(trim_ows(&kept.join(&b","[..])).to_vec())
}

/// The baggage member that carries `key`. Keys need no percent-encoding (see [`RoutingKey`]),
/// so it is written as is.
pub fn key_member(key: &str) -> String {
    format!("{MEMBER}={key}")
}

/// `baggage` with `key` as its one [`MEMBER`]: any other is removed and `MEMBER=key` is
/// appended, so downstream services see a single, consistent key.
pub fn baggage_with_key(baggage: Option<&str>, key: &str) -> String {
    let rest = baggage.map_or_else(Vec::new, |b| {
        strip_key_members(b.as_bytes()).unwrap_or_else(|| trim_ows(b.as_bytes()).to_vec())
    });
    let member = key_member(key);
    if rest.is_empty() {
        return member;
    }
    // Only whole members, split at an ASCII comma, were removed: still valid UTF-8.
    let mut out = String::from_utf8_lossy(&rest).into_owned();
    out.push(',');
    out.push_str(&member);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_alphabet() {
        let k = RoutingKey::parse("pr-42_v1.2-ABCxyz09").expect("valid");
        assert_eq!(k.as_str(), "pr-42_v1.2-ABCxyz09");
    }

    #[test]
    fn sixty_four_chars_is_the_limit() {
        assert!(RoutingKey::parse(&"a".repeat(64)).is_ok());
        assert_eq!(
            RoutingKey::parse(&"a".repeat(65)),
            Err(KeyError::TooLong { len: 65 })
        );
    }

    #[test]
    fn empty_key_is_rejected() {
        assert_eq!(RoutingKey::parse(""), Err(KeyError::Empty));
    }

    #[test]
    fn invalid_character_is_reported_with_position() {
        assert_eq!(
            RoutingKey::parse("bad key!"),
            Err(KeyError::InvalidChar { ch: ' ', at: 3 })
        );
        assert_eq!(
            RoutingKey::parse("pr/1"),
            Err(KeyError::InvalidChar { ch: '/', at: 2 })
        );
        assert_eq!(
            RoutingKey::parse("ké"),
            Err(KeyError::InvalidChar { ch: 'é', at: 1 })
        );
    }

    #[test]
    fn non_utf8_bytes_are_rejected_without_panicking() {
        assert!(matches!(
            RoutingKey::parse_bytes(b"ab\xffcd"),
            Err(KeyError::InvalidChar { at: 2, .. })
        ));
        assert_eq!(
            RoutingKey::parse_bytes(b"pr-1").map(|k| k.to_string()),
            Ok("pr-1".into())
        );
    }

    #[test]
    fn baggage_with_key_replaces_every_other_key_member() {
        assert_eq!(baggage_with_key(None, "pr-1"), "sd-routing-key=pr-1");
        assert_eq!(baggage_with_key(Some(" "), "pr-1"), "sd-routing-key=pr-1");
        assert_eq!(
            baggage_with_key(Some("sd-routing-key=old;p, a=1"), "pr-1"),
            "a=1,sd-routing-key=pr-1"
        );
        assert_eq!(
            baggage_with_key(Some("a=1"), "pr-1"),
            "a=1,sd-routing-key=pr-1"
        );
    }

    #[test]
    fn strip_key_members_leaves_values_without_one_alone() {
        assert_eq!(strip_key_members(b"a=1,sd-routing-keyX=2"), None);
        assert_eq!(
            strip_key_members(b"a=1, sd-routing-key = k ;p").as_deref(),
            Some(&b"a=1"[..])
        );
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let k: RoutingKey = serde_json::from_str("\"pr-7\"").expect("valid");
        assert_eq!(serde_json::to_string(&k).expect("ser"), "\"pr-7\"");
        assert!(serde_json::from_str::<RoutingKey>("\"no way\"").is_err());
    }
}
