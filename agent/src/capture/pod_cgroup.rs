//! A local pod's own cgroup directory, from its UID. Kubelet names it after the UID under the
//! pods' cgroup, at a depth that varies with the pod's QoS class (Guaranteed pods sit directly
//! under it, Burstable and BestEffort one level down) and with the cgroup driver:
//!
//! | driver   | Guaranteed                               | Burstable                                                               |
//! |----------|------------------------------------------|-------------------------------------------------------------------------|
//! | cgroupfs | `kubepods/pod<uid>`                      | `kubepods/burstable/pod<uid>`                                           |
//! | systemd  | `kubepods.slice/kubepods-pod<u_i_d>.slice` | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<u_i_d>.slice` |
//!
//! (systemd spells the UID's dashes as underscores.) Source-marking (the pod's cgroup id) and
//! source identity (a process of the pod, hence its network namespace) both start here.
use std::path::{Path, PathBuf};

/// The QoS sub-slices kubelet creates under the pods' cgroup; Guaranteed pods have none.
const QOS_CLASSES: [Option<&str>; 3] = [None, Some("burstable"), Some("besteffort")];

/// Finds a pod's cgroup directory by its UID. Behind a trait so the kube side can be tested
/// without a kubelet.
pub trait PodCgroups: Send + Sync + 'static {
    fn pod_dir(&self, uid: &str) -> Option<PathBuf>;
}

/// Kubelet's layout under the pods' cgroup (`kubepods` or `kubepods.slice`, as `--cgroup auto`
/// found it), with either cgroup driver.
#[derive(Clone, Debug)]
pub struct KubeletPodCgroups {
    pods_cgroup: PathBuf,
}

impl KubeletPodCgroups {
    pub fn new(pods_cgroup: impl Into<PathBuf>) -> Self {
        Self {
            pods_cgroup: pods_cgroup.into(),
        }
    }

    /// Every place the pod's directory may be, for both drivers and every QoS class.
    pub fn candidates(&self, uid: &str) -> Vec<PathBuf> {
        candidates(&self.pods_cgroup, uid)
    }
}

impl PodCgroups for KubeletPodCgroups {
    fn pod_dir(&self, uid: &str) -> Option<PathBuf> {
        if uid.is_empty() || uid.contains('/') || uid.contains("..") {
            return None;
        }
        self.candidates(uid).into_iter().find(|p| p.is_dir())
    }
}

fn candidates(pods_cgroup: &Path, uid: &str) -> Vec<PathBuf> {
    let systemd = pods_cgroup
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".slice"));
    QOS_CLASSES
        .iter()
        .map(|qos| {
            if systemd {
                // The slice's own prefix (`kubepods`, or `kubelet-kubepods` under a cgroupRoot).
                let prefix = pods_cgroup
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".slice"))
                    .unwrap_or("kubepods");
                let uid = uid.replace('-', "_");
                match qos {
                    None => pods_cgroup.join(format!("{prefix}-pod{uid}.slice")),
                    Some(q) => pods_cgroup
                        .join(format!("{prefix}-{q}.slice"))
                        .join(format!("{prefix}-{q}-pod{uid}.slice")),
                }
            } else {
                match qos {
                    None => pods_cgroup.join(format!("pod{uid}")),
                    Some(q) => pods_cgroup.join(q).join(format!("pod{uid}")),
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_driver_paths_cover_every_qos_class() {
        let c = KubeletPodCgroups::new("/sys/fs/cgroup/kubepods").candidates("1-2");
        assert_eq!(
            c,
            [
                PathBuf::from("/sys/fs/cgroup/kubepods/pod1-2"),
                PathBuf::from("/sys/fs/cgroup/kubepods/burstable/pod1-2"),
                PathBuf::from("/sys/fs/cgroup/kubepods/besteffort/pod1-2"),
            ]
        );
    }

    #[test]
    fn systemd_driver_paths_use_underscored_uids_and_the_slice_prefix() {
        let c = KubeletPodCgroups::new("/c/kubelet.slice/kubelet-kubepods.slice").candidates("a-b");
        assert_eq!(
            c,
            [
                PathBuf::from(
                    "/c/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-poda_b.slice"
                ),
                PathBuf::from(
                    "/c/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-poda_b.slice"
                ),
                PathBuf::from(
                    "/c/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-poda_b.slice"
                ),
            ]
        );
    }

    #[test]
    fn finds_an_existing_burstable_pod_and_refuses_path_tricks() {
        let root = std::env::temp_dir().join(format!("shunt-podcg-{}", std::process::id()));
        let dir =
            root.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podx_y.slice");
        std::fs::create_dir_all(&dir).unwrap();
        let cg = KubeletPodCgroups::new(root.join("kubepods.slice"));
        assert_eq!(cg.pod_dir("x-y"), Some(dir));
        assert_eq!(cg.pod_dir("../x"), None);
        assert_eq!(cg.pod_dir("nope"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
