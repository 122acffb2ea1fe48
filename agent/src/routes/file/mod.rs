//! The routes file: a YAML [`ClusterState`] for running without a cluster. The watcher that
//! hot-reloads it is the routes-file source in `crate::sync::file_source`.
//!
//! ```yaml
//! services:
//!   - name: reviews
//!     namespace: shop            # default: "default"
//!     addresses: [10.96.0.7]     # ClusterIPs
//!     ports: [{ name: http, port: 9080, targetPort: http }]   # targetPort: number or name
//!     endpoints: [{ ip: 198.18.2.2, ports: { http: 9080 } }] # ready: true by default
//!     # an endpoint may also say nodeName: node-a, targetRef: { kind: Pod, namespace: shop, name: reviews-v1 }
//!     alwaysSteer: false         # true: steer the addresses even without forks (no kube-proxy)
//!     sessionAffinity: ClientIP  # and sessionAffinityConfig: { clientIP: { timeoutSeconds: N } }
//!     internalTrafficPolicy: Local   # needs `node`; endpoints then say nodeName: ...
//! pods:
//!   - { name: reviews-v2, namespace: shop, ips: [198.18.3.2], ports: { http: 9080 },
//!       labels: { app: reviews-v2, shunt.dev/sandbox: pr-42 } }
//! node: node-a                   # the node the agent runs on
//! nodePods:                      # the pods of that node (uid, ips, labels)
//!   - { name: reviews-v1, namespace: shop, uid: 7f3c, ips: [198.18.2.2], labels: { app: reviews } }
//! sources:                      # marked sources: requests without a key get this one
//!   - { cgroup: /sys/fs/cgroup/shunt/sandbox-reviews-v2, key: pr-42, origin: pod shop/reviews-v2 }
//! routes:
//!   - name: pr-42
//!     namespace: shop
//!     spec: { routingKey: pr-42, fallback: Baseline,
//!             forks: [ { service: reviews, to: { selector: { app: reviews-v2, shunt.dev/sandbox: pr-42 } } } ] }
//! ```
//!
//! The file is validated as a whole and errors point at a line: a file is edited by hand, and a
//! typo should be reported where it is rather than show up later as a route that does nothing.
//! So this is stricter than the route computation: unknown fields, spec errors that the
//! computation would turn into a status (bad key, bad selector, cross-namespace target), and
//! ambiguities (duplicate names, two routes with one key) reject the file. Problems that depend
//! on the cluster (a missing Service, no ready pod) are left to the route statuses.
//!
//! The node's operator writes the file, so an endpoint without a `targetRef` is its Service's own
//! ([`EndpointTrust::Operator`](crate::routes::EndpointTrust)); one with a `targetRef` must
//! still be a Pod of the Service's namespace that agrees with `pods`/`nodePods`, as from the
//! Kubernetes source, or its route says `ForeignEndpoints`.
mod convert;
mod raw;
mod sources;

use std::path::{Path, PathBuf};

use serde_saphyr::Location;

use super::ClusterState;
use raw::RawFile;

/// Namespace of objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One problem in a routes file, at a line and column (1-based; 0 when unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: u64,
    pub column: u64,
    /// Where in the document, e.g. `routes[0].spec.routingKey` (empty for syntax errors).
    pub path: String,
    pub message: String,
}

/// Why a routes file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum RoutesFileError {
    /// The file could not be read. The message is the path alone: the cause is the source, so
    /// display this with an error-chain renderer (`{:#}` on an `anyhow::Error`) to show both.
    #[error("{}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, each rendered as `file:line:column: path: message`.
    #[error("{}", render(file, diagnostics))]
    Invalid {
        file: String,
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(file: &str, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(file);
        if d.line > 0 {
            out.push_str(&format!(":{}:{}", d.line, d.column));
        }
        out.push_str(": ");
        if !d.path.is_empty() {
            out.push_str(&d.path);
            out.push_str(": ");
        }
        out.push_str(&d.message);
    }
    out
}

/// Parses and validates a routes file. `file_name` prefixes diagnostics.
pub fn parse_routes(text: &str, file_name: &str) -> Result<ClusterState, RoutesFileError> {
    let invalid = |diagnostics| RoutesFileError::Invalid {
        file: file_name.to_owned(),
        diagnostics,
    };
    // An empty file (or one holding only comments) is an empty cluster, not an error.
    let raw: Option<RawFile> = serde_saphyr::from_str(text).map_err(|e| {
        let e = e.without_snippet();
        let loc = e.location().unwrap_or(Location::UNKNOWN);
        let mut message = e.to_string();
        // The crate appends the location in prose; we print it as `file:line:col` instead.
        let suffix = format!(" at line {}, column {}", loc.line(), loc.column());
        if let Some(m) = message.strip_suffix(&suffix) {
            message = m.to_owned();
        }
        invalid(vec![Diagnostic {
            line: loc.line(),
            column: loc.column(),
            path: String::new(),
            message,
        }])
    })?;
    let (state, mut diagnostics) = convert::to_cluster_state(&raw.unwrap_or_default());
    if diagnostics.is_empty() {
        Ok(state)
    } else {
        diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(invalid(diagnostics))
    }
}

/// Reads, parses and validates a routes file.
pub fn load_routes(path: &Path) -> Result<ClusterState, RoutesFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| RoutesFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_routes(&text, &path.display().to_string())
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
