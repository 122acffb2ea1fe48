//! Network-namespace topologies: a "node" namespace and N "pod" namespaces, each pod joined to the
//! node by a veth pair, with IPv4 and IPv6 addresses and routes. Namespaces are configured with
//! `ip -n` and entered with `setns()`; never `ip netns exec`, which remounts /sys and hides the
//! cgroup and bpffs mounts. Every name carries a unique id, so tests run in parallel; dropping the
//! topology deletes it, even on panic.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    process::Command,
};

use anyhow::{Context as _, bail};

/// Where the node proxy listens in every topology: an address on the node's loopback, reachable
/// from every pod through its default route.
pub const PROXY4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const PROXY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 5, 0xff, 0, 0, 0, 0, 1);

/// A network namespace made by this test.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Opens the namespace file, for `setns()`.
    pub fn open(&self) -> anyhow::Result<File> {
        File::open(self.path()).with_context(|| format!("opening {}", self.path()))
    }

    /// Runs `f` on a fresh thread that has entered this namespace. Sockets created there stay in
    /// the namespace, so this is how in-process servers bind inside a pod.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let ns = self.open()?;
        std::thread::spawn(move || {
            // SAFETY: a valid namespace fd; setns affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::anyhow!(
                    "setns: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Sets a sysctl inside the namespace (nsenter, which keeps /sys and /proc as they are).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        sh(
            "nsenter",
            &[
                &format!("--net={}", self.path()),
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ],
        )
    }

    fn create(name: String) -> anyhow::Result<Self> {
        sh("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// One pod: its namespace and addresses.
pub struct Pod {
    pub netns: Netns,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// The node's address on this pod's link (the source of proxied upstream connections).
    pub node_ip4: Ipv4Addr,
    pub node_ip6: Ipv6Addr,
}

impl Pod {
    pub fn addr4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip4), port)
    }
    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip6), port)
    }
}

/// A node namespace plus pods.
pub struct Topology {
    pub id: String,
    // Pods are declared before the node so they are dropped first.
    pub pods: Vec<Pod>,
    pub node: Netns,
}

impl Topology {
    /// Creates a node and `pods` pod namespaces. Pod i has 198.18.i.2/24 and fd00:5:i::2/64; the
    /// node has .1 on each link and the proxy addresses on its loopback.
    pub fn new(id: &str, pods: usize) -> anyhow::Result<Self> {
        if pods > 200 {
            bail!("at most 200 pods");
        }
        let node = Netns::create(format!("shunt-{id}-node"))?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        node.ip(&["addr", "add", &format!("{PROXY4}/32"), "dev", "lo"])?;
        node.ip(&[
            "addr",
            "add",
            &format!("{PROXY6}/128"),
            "dev",
            "lo",
            "nodad",
        ])?;
        let mut topo = Self {
            id: id.to_string(),
            pods: Vec::new(),
            node,
        };
        for i in 0..pods {
            let i8 = u8::try_from(i + 1)?;
            let netns = Netns::create(format!("shunt-{id}-p{i}"))?;
            // Interface names only need to be unique inside this topology's node namespace.
            let host_if = &format!("veth{i}");
            sh(
                "ip",
                &[
                    "-n",
                    &topo.node.name,
                    "link",
                    "add",
                    host_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &netns.name,
                ],
            )?;
            let node_ip4 = Ipv4Addr::new(198, 18, i8, 1);
            let ip4 = Ipv4Addr::new(198, 18, i8, 2);
            let node_ip6 = Ipv6Addr::new(0xfd00, 5, u16::from(i8), 0, 0, 0, 0, 1);
            let ip6 = Ipv6Addr::new(0xfd00, 5, u16::from(i8), 0, 0, 0, 0, 2);
            topo.node
                .ip(&["addr", "add", &format!("{node_ip4}/24"), "dev", host_if])?;
            topo.node.ip(&[
                "addr",
                "add",
                &format!("{node_ip6}/64"),
                "dev",
                host_if,
                "nodad",
            ])?;
            topo.node.ip(&["link", "set", host_if, "up"])?;
            netns.ip(&["addr", "add", &format!("{ip4}/24"), "dev", "eth0"])?;
            netns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
            netns.ip(&["link", "set", "eth0", "up"])?;
            netns.ip(&["route", "add", "default", "via", &node_ip4.to_string()])?;
            netns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &node_ip6.to_string(),
            ])?;
            topo.pods.push(Pod {
                netns,
                ip4,
                ip6,
                node_ip4,
                node_ip6,
            });
        }
        Ok(topo)
    }
}

/// Runs a command, failing with its stderr.
pub fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
