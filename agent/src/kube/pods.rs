//! Reading a pod's progress while waiting for it: which containers are stuck and whether that
//! will fix itself. Shared by `shunt sandbox create` (waiting for the sandbox pods) and `shunt
//! mcp`'s request pod.
use k8s_openapi::api::core::v1::PodStatus;

/// Waiting reasons of a container whose image will not come: give up and say so.
pub const IMAGE_ERRORS: [&str; 3] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];

/// Waiting reasons of a container that will not start as configured.
pub const START_ERRORS: [&str; 3] = [
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "RunContainerError",
];

/// The waiting containers (init containers too) of a pod: `(reason, "reason: message")`, the
/// message on one line.
pub fn waiting_containers(status: &PodStatus) -> Vec<(String, String)> {
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .filter_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = w.reason.clone().unwrap_or_default();
            let detail = match w.message.as_deref() {
                Some(m) if !m.is_empty() => format!("{reason}: {}", m.replace('\n', " ")),
                _ => reason.clone(),
            };
            Some((reason, detail))
        })
        .collect()
}

/// What a pod's waiting containers say about whether it will start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// A container's image cannot be pulled ([`IMAGE_ERRORS`]): its detail.
    ImageUnpullable(String),
    /// A container will not start as configured ([`START_ERRORS`]): its detail.
    WontStart(String),
    /// Still starting: the last waiting container's detail.
    Starting(String),
}

/// The verdict of a pod's waiting containers ([`waiting_containers`]): the first that cannot
/// pull or cannot start, else the last one's detail; `None` when no container waits.
pub fn waiting_verdict(status: &PodStatus) -> Option<Waiting> {
    let mut last = None;
    for (reason, detail) in waiting_containers(status) {
        if IMAGE_ERRORS.contains(&reason.as_str()) {
            return Some(Waiting::ImageUnpullable(detail));
        }
        if START_ERRORS.contains(&reason.as_str()) {
            return Some(Waiting::WontStart(detail));
        }
        last = Some(Waiting::Starting(detail));
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn waiting_containers_name_their_reason_on_one_line() {
        let status: PodStatus = serde_json::from_value(json!({
            "containerStatuses": [
                { "name": "a", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                  "state": { "waiting": { "reason": "ErrImagePull", "message": "no\nsuch image" } } },
                { "name": "b", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                  "state": { "running": {} } },
            ],
            "initContainerStatuses": [
                { "name": "init", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                  "state": { "waiting": { "reason": "PodInitializing" } } },
            ],
        }))
        .expect("status");
        assert_eq!(
            waiting_containers(&status),
            [
                ("ErrImagePull".into(), "ErrImagePull: no such image".into()),
                ("PodInitializing".into(), "PodInitializing".into()),
            ]
        );
        assert!(IMAGE_ERRORS.contains(&"ErrImagePull"));
    }

    #[test]
    fn a_pull_or_start_failure_decides_over_a_container_still_starting() {
        let status = |reasons: &[&str]| -> PodStatus {
            let statuses: Vec<_> = reasons
                .iter()
                .map(|r| {
                    json!({ "name": r, "image": "i", "imageID": "", "ready": false,
                                 "restartCount": 0, "state": { "waiting": { "reason": r } } })
                })
                .collect();
            serde_json::from_value(json!({ "containerStatuses": statuses })).expect("status")
        };
        assert_eq!(waiting_verdict(&status(&[])), None);
        assert_eq!(
            waiting_verdict(&status(&["ContainerCreating", "PodInitializing"])),
            Some(Waiting::Starting("PodInitializing".into()))
        );
        assert_eq!(
            waiting_verdict(&status(&["ContainerCreating", "ImagePullBackOff"])),
            Some(Waiting::ImageUnpullable("ImagePullBackOff".into()))
        );
        assert_eq!(
            waiting_verdict(&status(&["CrashLoopBackOff", "ErrImagePull"])),
            Some(Waiting::WontStart("CrashLoopBackOff".into()))
        );
    }
}
