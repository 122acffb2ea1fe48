//! Which namespace a client address is in, and what happens when it cannot be entered.
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use super::*;
use crate::capture::PodCgroups;

fn pod(name: &str, ip: &str, netns: Option<&str>) -> NodePod {
    NodePod {
        namespace: "shop".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        ips: vec![ip.parse().expect("ip")],
        labels: BTreeMap::new(),
        netns: netns.map(PathBuf::from),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn pods(cgroups: Option<Arc<dyn PodCgroups>>) -> (PodNetns, Arc<Metrics>) {
    let metrics = Metrics::unregistered();
    (PodNetns::new(cgroups, metrics.clone()), metrics)
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("shunt-netns-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_client_that_is_no_pod_of_this_node_stays_on_the_node() {
    let (p, metrics) = pods(None);
    p.set_pods(&[pod("a", "10.0.0.1", Some("/proc/self/ns/net"))]);
    assert_eq!(p.source_for(ip("10.0.0.2")), UpstreamSource::Node);
    assert_eq!(metrics.source_netns_fallbacks(), 0);
}

#[test]
fn a_pod_in_the_agents_own_namespace_is_host_network_and_stays_on_the_node() {
    let (p, metrics) = pods(None);
    p.set_pods(&[pod("host", "10.0.0.1", Some("/proc/self/ns/net"))]);
    assert_eq!(p.source_for(ip("10.0.0.1")), UpstreamSource::Node);
    assert_eq!(p.entered(), 0, "no thread for the node's own namespace");
    assert_eq!(metrics.source_netns_fallbacks(), 0);
}

#[test]
fn an_address_several_pods_share_is_host_network_and_stays_on_the_node() {
    let (p, _) = pods(None);
    p.set_pods(&[
        pod("a", "192.168.0.10", Some("/nonexistent/a")),
        pod("b", "192.168.0.10", Some("/nonexistent/b")),
    ]);
    assert_eq!(p.source_for(ip("192.168.0.10")), UpstreamSource::Node);
}

#[test]
fn a_pod_with_no_way_to_find_its_namespace_stays_on_the_node() {
    // A routes-file node pod without `netns:`, and no cgroup lookup.
    let (p, metrics) = pods(None);
    p.set_pods(&[pod("a", "10.0.0.1", None)]);
    assert_eq!(p.source_for(ip("10.0.0.1")), UpstreamSource::Node);
    assert_eq!(metrics.source_netns_fallbacks(), 0);
}

#[test]
fn a_namespace_that_cannot_be_entered_falls_back_to_the_node_and_is_counted() {
    let scratch = Scratch::new("not-a-netns");
    let file = scratch.0.join("plain-file");
    std::fs::write(&file, b"not a namespace").expect("write");
    let (p, metrics) = pods(None);
    p.set_pods(&[
        pod("plain", "10.0.0.1", Some(file.to_str().expect("utf-8"))),
        pod(
            "gone",
            "10.0.0.2",
            Some("/run/netns/shunt-no-such-namespace"),
        ),
    ]);
    // setns on a file that is no namespace: EINVAL.
    assert_eq!(p.source_for(ip("10.0.0.1")), UpstreamSource::NodeFallback);
    // A namespace file that is gone: ENOENT.
    assert_eq!(p.source_for(ip("10.0.0.2")), UpstreamSource::NodeFallback);
    // Each connection is counted; the failure is remembered, not retried per connection.
    assert_eq!(p.source_for(ip("10.0.0.1")), UpstreamSource::NodeFallback);
    assert_eq!(metrics.source_netns_fallbacks(), 3);
    assert_eq!(p.entered(), 0);
}

/// Finds pod cgroups in a directory tree named after UIDs.
struct Dirs(PathBuf);

impl PodCgroups for Dirs {
    fn pod_dir(&self, uid: &str) -> Option<PathBuf> {
        let d = self.0.join(uid);
        d.is_dir().then_some(d)
    }
}

#[test]
fn a_pods_namespace_is_found_through_a_process_in_its_cgroup() {
    // The pod's own cgroup holds no process (or one of another PID namespace: 0); its
    // container's does: this test process, whose namespace is the agent's own.
    let scratch = Scratch::new("cgroup");
    let container = scratch.0.join("uid-a").join("container-1");
    std::fs::create_dir_all(&container).expect("dirs");
    std::fs::write(scratch.0.join("uid-a/cgroup.procs"), "0\n").expect("procs");
    std::fs::write(
        container.join("cgroup.procs"),
        format!("{}\n", std::process::id()),
    )
    .expect("procs");
    let found = locate::pod_netns(&scratch.0.join("uid-a"), std::path::Path::new("/proc"))
        .expect("a process of the pod");
    assert_eq!(
        NetnsId::of(&found).expect("stat"),
        NetnsId::own().expect("own")
    );

    let (p, metrics) = pods(Some(Arc::new(Dirs(scratch.0.clone()))));
    let p = p.with_proc_root(std::path::Path::new("/proc"));
    p.set_pods(&[pod("a", "10.0.0.1", None), pod("b", "10.0.0.2", None)]);
    // Same namespace as the agent: a hostNetwork pod.
    assert_eq!(p.source_for(ip("10.0.0.1")), UpstreamSource::Node);
    // No cgroup for b's UID: counted as a fallback.
    assert_eq!(p.source_for(ip("10.0.0.2")), UpstreamSource::NodeFallback);
    assert_eq!(metrics.source_netns_fallbacks(), 1);
}

#[test]
fn a_cgroup_with_no_visible_process_names_hostpid() {
    let scratch = Scratch::new("empty");
    std::fs::write(scratch.0.join("cgroup.procs"), "0\n0\n").expect("procs");
    let e = locate::pod_netns(&scratch.0, std::path::Path::new("/proc")).expect_err("none");
    assert!(e.to_string().contains("hostPID"), "{e}");
}

/// Root only (CAP_SYS_ADMIN): a thread of its own in a new network namespace, whose lo is down.
#[test]
fn sockets_are_made_inside_the_pods_namespace_and_the_thread_ends_with_the_pod() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: not root");
        return;
    }
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    // Holds a new namespace open through a thread that unshared it.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let path = format!("/proc/self/task/{}/ns/net", unsafe { libc::gettid() });
        tx.send(path).expect("send");
        let _ = done_rx.recv();
    });
    let path = rx.recv().expect("path");
    let ns_id = NetnsId::of(&std::fs::File::open(&path).expect("open")).expect("stat");
    assert_ne!(Some(ns_id), NetnsId::own().ok());
    let (p, metrics) = pods(None);
    p.set_pods(&[pod("a", "10.0.0.1", Some(&path))]);
    let source = p.source_for(ip("10.0.0.1"));
    assert_eq!(source, UpstreamSource::Pod(ns_id));
    assert_eq!(p.entered(), 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let fd = rt
        .block_on(p.socket(ns_id, false))
        .expect("a socket in the pod's namespace");
    // The socket's own namespace (SIOCGSKNS) is the pod's.
    // SAFETY: ioctl on an fd we own; returns a new fd.
    let sk_ns = unsafe { libc::ioctl(fd.as_raw_fd(), 0x894C) };
    assert!(sk_ns >= 0, "SIOCGSKNS: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd nobody else owns.
    let sk_ns = unsafe { std::fs::File::from_raw_fd(sk_ns) };
    assert_eq!(NetnsId::of(&sk_ns).expect("stat"), ns_id);
    assert_eq!(metrics.source_netns_fallbacks(), 0);
    // The pod leaves: its thread ends, and a later socket request falls back.
    p.set_pods(&[]);
    assert_eq!(p.entered(), 0);
    assert!(rt.block_on(p.socket(ns_id, false)).is_none());
    assert_eq!(metrics.source_netns_fallbacks(), 1);
    done_tx.send(()).expect("done");
    holder.join().expect("holder");
}
