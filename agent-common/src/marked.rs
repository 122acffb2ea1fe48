//! `MARKED`: marked sources, whose every TCP connection goes to the node proxy so it can add
//! their routing key to requests that carry none (sandbox pods, `shunt test` runners).
//!
//! Key: the cgroup v2 id of a pod-level cgroup (or a `shunt test` child cgroup). connect4/6 look
//! up the caller's ancestors at the levels [`ProxyMapConfig::marked_levels`] names, and not at
//! all while it is 0 (the map is empty), so unmarked sources pay nothing until something is
//! marked, and one lookup per marked level after.
//!
//! Value: the routing key itself, not an id into a second map. The programs never read it (they
//! record the matched cgroup id with the original destination); it is there so the map says
//! what it marks on its own (`bpftool map dump`, a restarted agent's reconcile), at a cost of
//! 68 bytes for each of the few marked sources, instead of a second map to keep in step.
//!
//! [`ProxyMapConfig::marked_levels`]: crate::config::ProxyMapConfig::marked_levels

pub const MAP_NAME: &str = "MARKED_V1";
pub const DEFAULT_MAX_ENTRIES: u32 = 1_024;

/// Longest routing key (as `RoutingKey::MAX_LEN` in the agent).
pub const KEY_MAX: usize = 64;

/// Deepest cgroup level that can be marked. Pod-level cgroups sit at levels 2 to 4 on a node
/// (a few more inside a nested cluster such as kind); connect4/6 unroll one probe per level, so
/// the verifier (which, without CAP_PERFMON, also walks mispredicted branches) never meets a
/// loop.
pub const MAX_LEVEL: u32 = 15;

/// The routing key of a marked source: `len` bytes of `key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkedKey {
    pub len: u32,
    pub key: [u8; KEY_MAX],
}

impl Default for MarkedKey {
    fn default() -> Self {
        Self {
            len: 0,
            key: [0; KEY_MAX],
        }
    }
}

impl MarkedKey {
    /// `None` when `key` is longer than [`KEY_MAX`].
    pub fn new(key: &[u8]) -> Option<Self> {
        if key.len() > KEY_MAX {
            return None;
        }
        let mut out = Self {
            len: key.len() as u32,
            ..Self::default()
        };
        out.key[..key.len()].copy_from_slice(key);
        Some(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.key[..(self.len as usize).min(KEY_MAX)]
    }
}

const _: () = assert!(core::mem::size_of::<MarkedKey>() == 68);

#[cfg(feature = "user")]
// SAFETY: repr(C), a u32 and a byte array, no implicit padding (size assert).
unsafe impl aya::Pod for MarkedKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_round_trips_and_an_overlong_one_is_refused() {
        let k = MarkedKey::new(b"pr-42").unwrap();
        assert_eq!(k.as_bytes(), b"pr-42");
        assert!(MarkedKey::new(&[b'a'; KEY_MAX]).is_some());
        assert!(MarkedKey::new(&[b'a'; KEY_MAX + 1]).is_none());
    }
}
