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
}
