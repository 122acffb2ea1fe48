//! The service graph at `/topology`: connections counted by the capture programs (every
//! connection opened in the captured cgroup, steered or not), with addresses resolved to
//! Services and pods through the route table. An unknown address stays an address.
use std::collections::BTreeMap;
#[cfg(feature = "node")]
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[cfg(feature = "node")]
use crate::{capture::Flow, routes::RouteTable};

/// One edge of the graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// The destination port dialled.
    pub port: u16,
    pub connections: u64,
    pub last_seen_unix_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub edges: Vec<Edge>,
}

#[cfg(feature = "node")]
fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Builds the graph from raw flows, merging flows between the same two names and port.
#[cfg(feature = "node")]
pub fn build(flows: &[Flow], table: &RouteTable) -> Topology {
    let mono_now = monotonic_now_ns();
    let wall_now = SystemTime::now();
    let name_dst = |f: &Flow| -> String {
        match table.service_for(f.dst) {
            Some((svc, _)) => format!("{}/{}", svc.namespace, svc.name),
            None => table
                .owner_of(f.dst.ip())
                .map_or_else(|| f.dst.ip().to_string(), str::to_string),
        }
    };
    let mut merged: BTreeMap<(String, String, u16), (u64, u64)> = BTreeMap::new();
    for f in flows {
        let from = table
            .owner_of(f.src)
            .map_or_else(|| f.src.to_string(), str::to_string);
        let e = merged.entry((from, name_dst(f), f.dst.port())).or_default();
        e.0 += f.connections;
        e.1 = e.1.max(f.last_seen_ns);
    }
    let edges = merged
        .into_iter()
        .map(|((from, to, port), (connections, last_ns))| {
            let age = Duration::from_nanos(mono_now.saturating_sub(last_ns));
            let last = wall_now.checked_sub(age).unwrap_or(UNIX_EPOCH);
            Edge {
                from,
                to,
                port,
                connections,
                last_seen_unix_ms: last
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            }
        })
        .collect();
    Topology { edges }
}

impl Topology {
    /// One graph from several agents' edges: edges between the same names and port add up.
    pub fn merged(edges: Vec<Edge>) -> Self {
        let mut by: BTreeMap<(String, String, u16), Edge> = BTreeMap::new();
        for e in edges {
            match by.entry((e.from.clone(), e.to.clone(), e.port)) {
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let m = o.get_mut();
                    m.connections += e.connections;
                    m.last_seen_unix_ms = m.last_seen_unix_ms.max(e.last_seen_unix_ms);
                }
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(e);
                }
            }
        }
        Self {
            edges: by.into_values().collect(),
        }
    }

    /// Keeps the edges with an end in namespace `ns` (named `ns/...`): a namespace's callers
    /// and callees, and nothing between other namespaces or host processes.
    pub fn keep_namespace(&mut self, ns: &str) {
        let prefix = format!("{ns}/");
        self.edges
            .retain(|e| e.from.starts_with(&prefix) || e.to.starts_with(&prefix));
    }

    /// A tree: each source, then what it called.
    pub fn render_tree(&self) -> String {
        let mut by_from: BTreeMap<&str, Vec<&Edge>> = BTreeMap::new();
        for e in &self.edges {
            by_from.entry(&e.from).or_default().push(e);
        }
        let mut out = String::new();
        for (from, edges) in by_from {
            out.push_str(from);
            out.push('\n');
            for (i, e) in edges.iter().enumerate() {
                let branch = if i + 1 == edges.len() {
                    "└─▶"
                } else {
                    "├─▶"
                };
                out.push_str(&format!(
                    "  {branch} {} :{}  ({} connection{})\n",
                    e.to,
                    e.port,
                    e.connections,
                    if e.connections == 1 { "" } else { "s" }
                ));
            }
        }
        out
    }

    /// A Mermaid flowchart.
    pub fn render_mermaid(&self) -> String {
        let id = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect()
        };
        let mut out = String::from("graph LR\n");
        for e in &self.edges {
            out.push_str(&format!(
                "  {}[\"{}\"] -->|\"{} × :{}\"| {}[\"{}\"]\n",
                id(&e.from),
                e.from,
                e.connections,
                e.port,
                id(&e.to),
                e.to
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: &str, to: &str, n: u64) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            port: 9080,
            connections: n,
            last_seen_unix_ms: 0,
        }
    }

    #[test]
    fn tree_groups_edges_by_source() {
        let t = Topology {
            edges: vec![
                edge("shop/frontend", "shop/reviews", 3),
                edge("shop/frontend", "shop/ratings", 1),
            ],
        };
        let tree = t.render_tree();
        assert!(tree.starts_with("shop/frontend\n"), "{tree}");
        assert!(
            tree.contains("├─▶ shop/reviews :9080  (3 connections)"),
            "{tree}"
        );
        assert!(
            tree.contains("└─▶ shop/ratings :9080  (1 connection)"),
            "{tree}"
        );
    }

    #[test]
    fn mermaid_has_one_arrow_per_edge() {
        let t = Topology {
            edges: vec![edge("shop/frontend", "shop/reviews", 3)],
        };
        let m = t.render_mermaid();
        assert!(m.starts_with("graph LR\n"));
        assert!(
            m.contains(
                "shop_frontend[\"shop/frontend\"] -->|\"3 × :9080\"| shop_reviews[\"shop/reviews\"]"
            ),
            "{m}"
        );
    }

    #[test]
    fn keep_namespace_keeps_edges_touching_it() {
        let mut t = Topology {
            edges: vec![
                edge("10.0.0.1", "shop/reviews", 1),
                edge("bank/teller", "bank/ledger", 1),
                edge("shop/frontend", "10.0.0.9", 1),
                edge("shopping/x", "bank/ledger", 1),
            ],
        };
        t.keep_namespace("shop");
        let kept: Vec<_> = t
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str()))
            .collect();
        assert_eq!(
            kept,
            [("10.0.0.1", "shop/reviews"), ("shop/frontend", "10.0.0.9")]
        );
    }

    #[cfg(feature = "node")]
    #[test]
    fn unknown_addresses_stay_addresses_and_flows_merge() {
        let flows = vec![
            Flow {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2:80".parse().unwrap(),
                connections: 2,
                last_seen_ns: 5,
            },
            Flow {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2:80".parse().unwrap(),
                connections: 3,
                last_seen_ns: 9,
            },
        ];
        let t = build(&flows, &RouteTable::default());
        assert_eq!(t.edges.len(), 1);
        assert_eq!(t.edges[0].from, "10.0.0.1");
        assert_eq!(t.edges[0].to, "10.0.0.2");
        assert_eq!(t.edges[0].connections, 5);
    }
}
