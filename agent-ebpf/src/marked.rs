//! Marked sources (`MARKED`): is the caller inside a marked pod-level cgroup, and which one.
//! Kept apart from connect4/6 so the connect hooks call one function.
use agent_common::Endpoint;
use aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id;

use crate::maps::MARKED;

/// The id of the marked cgroup the caller runs under, or 0. `levels` is
/// `ProxyMapConfig::marked_levels`: only the levels holding a marked source are looked up, and
/// nothing at all while it is 0 (`MARKED` is empty).
///
/// A loopback destination is never taken: it names the caller's own network namespace, which
/// the proxy (in the node's) cannot reach.
#[inline(always)]
pub fn marked_source(levels: u32, dst: &Endpoint) -> u64 {
    if levels == 0 || is_loopback(dst) {
        return 0;
    }
    // One probe per level, unrolled: a loop, even a bounded one, is explored by the verifier
    // once per iteration and mispredicted branch, which the DaemonSet's capabilities (no
    // CAP_PERFMON) make too many.
    macro_rules! probe {
        ($($level:literal),*) => {$(
            if levels & (1 << $level) != 0 {
                // SAFETY: a helper with no pointer arguments.
                let id = unsafe { bpf_get_current_ancestor_cgroup_id($level) };
                if id == 0 {
                    // The caller's cgroup is above this level: no deeper ancestor either.
                    return 0;
                }
                if unsafe { MARKED.get(&id) }.is_some() {
                    return id;
                }
            }
        )*};
    }
    probe!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    0
}

/// 127.0.0.0/8 (plain or v4-mapped) and `::1`.
#[inline(always)]
fn is_loopback(dst: &Endpoint) -> bool {
    let a = &dst.addr;
    if a.is_v4_mapped() {
        // Network order: the first octet is the lowest byte on little-endian.
        return a.ip4_be().to_ne_bytes()[0] == 127;
    }
    a.words[0] == 0
        && a.words[1] == 0
        && a.words[2] == 0
        && a.words[3] == u32::from_ne_bytes([0, 0, 0, 1])
}

// `probe!` above lists levels 1 to MAX_LEVEL.
const _: () = assert!(agent_common::marked::MAX_LEVEL == 15);
