//! Reading a SandboxRoute's status back: the inverse of [`super::status::desired_status`], for
//! the clients (`shunt mcp --kube`) that show what the agents reported.
//!
//! Reasons are spelled by [`RouteReason::as_str`] on both sides, so parsing goes through that same
//! table.
use kube::ResourceExt as _;

use super::crd::{self, SandboxRoute};
use crate::routes::{ForkStatus, RouteReason, RouteStatus};

/// The reason the status writer spelled `s`, if this version knows it.
pub fn parse_reason(s: &str) -> Option<RouteReason> {
    RouteReason::parse(s)
}

/// A reason as read from a status: one this version does not know (a newer agent wrote it) can
/// only be read as "not ready".
fn reason_or_not_ready(s: &str) -> RouteReason {
    parse_reason(s).unwrap_or(RouteReason::NoReadyEndpoints)
}

/// The status the agents wrote on a SandboxRoute, if any.
pub fn route_status(r: &SandboxRoute) -> Option<RouteStatus> {
    let status = r.status.as_ref()?;
    let cond = status.conditions.iter().find(|c| c.type_ == crd::READY)?;
    Some(RouteStatus {
        namespace: r.namespace().unwrap_or_default(),
        name: r.name_any(),
        observed_generation: status.observed_generation.unwrap_or(0),
        ready: cond.status == "True",
        reason: reason_or_not_ready(&cond.reason),
        message: cond.message.clone(),
        applied: cond.status == "True",
        forks: status
            .forks
            .iter()
            .map(|f| ForkStatus {
                service: f.service.clone(),
                reason: reason_or_not_ready(&f.reason),
                message: f.message.clone(),
                ready_endpoints: f.ready_endpoints as usize,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "node")]
    use crate::kube::status::desired_status;

    #[test]
    fn every_reason_round_trips() {
        for r in RouteReason::ALL {
            // Exhaustive on purpose: a new variant must be added here and to RouteReason::ALL.
            match r {
                RouteReason::EndpointsReady
                | RouteReason::ServiceNotFound
                | RouteReason::PortNotFound
                | RouteReason::NoReadyEndpoints
                | RouteReason::DuplicateKey
                | RouteReason::Expired
                | RouteReason::CrossNamespace
                | RouteReason::ForeignEndpoints
                | RouteReason::InvalidKey
                | RouteReason::InvalidSelector
                | RouteReason::InvalidTarget
                | RouteReason::NotAppliedOnNodes => {}
            }
            assert_eq!(parse_reason(r.as_str()), Some(r));
        }
        assert_eq!(parse_reason("SomethingNew"), None);
        assert_eq!(
            reason_or_not_ready("SomethingNew"),
            RouteReason::NoReadyEndpoints
        );
    }

    #[cfg(feature = "node")]
    #[test]
    fn reads_back_what_the_writer_writes() {
        let written = RouteStatus {
            namespace: "shop".into(),
            name: "pr-42".into(),
            observed_generation: 3,
            ready: false,
            reason: RouteReason::PortNotFound,
            message: "m".into(),
            applied: false,
            forks: vec![ForkStatus {
                service: "reviews".into(),
                reason: RouteReason::PortNotFound,
                message: "no port grpc".into(),
                ready_endpoints: 2,
            }],
        };
        let mut obj = SandboxRoute::new(
            "pr-42",
            crd::SandboxRouteSpec {
                routing_key: "pr-42".into(),
                forks: Vec::new(),
                fallback: crd::Fallback::Baseline,
                expires_at: None,
                inject_key: true,
            },
        );
        obj.metadata.namespace = Some("shop".into());
        assert_eq!(route_status(&obj), None, "no status yet");
        obj.status = Some(desired_status(
            &written,
            None,
            &[],
            jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(route_status(&obj), Some(written));
    }
}
