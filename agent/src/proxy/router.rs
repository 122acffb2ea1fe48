//! The route decision for one request, made against an immutable [`RouteTable`] snapshot.
use std::net::SocketAddr;

use super::decision::{Decision, DecisionKind, Reason};
use crate::routes::{Fallback, RouteTable, RoutingKey};

impl RouteTable {
    /// Where a request to `dst` carrying `key` goes, and why.
    ///
    /// `dst` identifies the service: a ClusterIP or any baseline endpoint, and its port. The
    /// baseline choice for a service address is one of its ready endpoints (round-robin), so
    /// routing works with no kube-proxy on the path; a request addressed to an endpoint stays on
    /// that endpoint.
    pub fn decide(&self, dst: SocketAddr, key: Option<&RoutingKey>, invalid_key: bool) -> Decision {
        let Some((svc, port)) = self.service_for(dst) else {
            return Decision {
                kind: DecisionKind::Passthrough,
                reason: Reason::UnknownService,
                upstream: Some(dst),
                service: None,
                route: None,
                fallback: None,
            };
        };
        let service = Some(svc.label.clone());
        let baseline = if self.baseline(svc.id, port.port).contains(&dst) {
            dst
        } else {
            self.pick_baseline(svc.id, port.port).unwrap_or(dst)
        };
        let to_baseline = |reason, route: Option<&std::sync::Arc<str>>| Decision {
            kind: DecisionKind::Baseline,
            reason,
            upstream: Some(baseline),
            service: service.clone(),
            route: route.cloned(),
            fallback: None,
        };
        let Some(key) = key else {
            return to_baseline(
                if invalid_key {
                    Reason::InvalidKey
                } else {
                    Reason::NoKey
                },
                None,
            );
        };
        let Some(fork) = self.fork(svc.id, key).filter(|f| f.covers(port.port)) else {
            return to_baseline(Reason::KeyNotForked, None);
        };
        match (fork.pick_sandbox(port.port), fork.fallback()) {
            (Some(ep), fallback) => Decision {
                kind: DecisionKind::Sandbox,
                reason: Reason::KeyMatched,
                upstream: Some(ep),
                service,
                route: Some(fork.route().clone()),
                fallback: (fallback == Fallback::Baseline).then_some(baseline),
            },
            (None, Fallback::Baseline) => to_baseline(Reason::NoReadySandbox, Some(fork.route())),
            (None, Fallback::Reject) => Decision {
                kind: DecisionKind::Reject,
                reason: Reason::NoReadySandbox,
                upstream: None,
                service,
                route: Some(fork.route().clone()),
                fallback: None,
            },
        }
    }
}
