//! Stable Service ids: what `STEERED` stores, so they must not shift between tables.
use std::collections::HashSet;

/// FNV-1a (32 bit) of `namespace/name`: the id a Service gets unless it collides.
///
/// Ids are derived from the name rather than numbered in order so they do not shift when other
/// Services come and go: they are stored in the `STEERED` BPF map and in `ORIG_DST` entries that
/// outlive a table, and a pinned map survives an agent restart.
pub fn service_id(namespace: &str, name: &str) -> u32 {
    fnv1a(&[namespace.as_bytes(), b"/", name.as_bytes()])
}

fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Ids for a set of Services, visited in (namespace, name) order.
///
/// Collisions: 0 is reserved ("no service"), and two names can hash alike (for a few thousand
/// Services the odds are around n²/2³³, about 1 in 2000 at n = 4000). The first name in
/// (namespace, name) order keeps its plain hash; a later one takes the FNV-1a of
/// `namespace/name#1`, `#2`, ... until free. So only a colliding pair can ever be affected, and
/// the result depends only on the set of names, never on input order.
pub(super) fn assign_ids<'a>(names: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<u32> {
    let mut used = HashSet::new();
    let mut out = Vec::new();
    for (ns, name) in names {
        let mut id = service_id(ns, name);
        let mut attempt = 0u32;
        while id == 0 || used.contains(&id) {
            attempt += 1;
            let suffix = format!("#{attempt}");
            id = fnv1a(&[ns.as_bytes(), b"/", name.as_bytes(), suffix.as_bytes()]);
        }
        used.insert(id);
        out.push(id);
    }
    out
}
