//! A sandbox pod's network: a network namespace of its own, joined to the node's by a veth pair
//! on a /24 of its own (198.18.N.0/24, N from 100 up, the first the node does not use), like
//! the mini-cluster's other pods. Configured with `ip` (iproute2), entered by path with
//! `nsenter`; never `ip netns exec`, which remounts /sys and hides the cgroup mount.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use super::LocalError;

/// Subnets (third octet) sandboxes may take.
const SUBNETS: std::ops::RangeInclusive<u8> = 100..=250;

pub fn pod_ip(subnet: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, subnet, 2)
}

fn gateway(subnet: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, subnet, 1)
}

/// The node-side interface name (at most 15 bytes; unique in the node namespace).
pub fn host_if(subnet: u8) -> String {
    format!("sbx{subnet}")
}

fn run(cmd: &mut Command) -> Result<String, LocalError> {
    let what = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| LocalError::Command {
        what: what.clone(),
        message: source.to_string(),
    })?;
    if !out.status.success() {
        return Err(LocalError::Command {
            what,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS` inside the namespace at `netns`.
fn ip_in(netns: &Path, args: &[&str]) -> Result<String, LocalError> {
    run(Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("ip")
        .args(args))
}

/// The first free subnet: not configured in the node namespace and not in `taken`.
pub fn free_subnet(node: &Path, taken: &[u8]) -> Result<u8, LocalError> {
    let addrs = ip_in(node, &["-o", "-4", "addr", "show"])?;
    SUBNETS
        .clone()
        .find(|n| !taken.contains(n) && !addrs.contains(&format!(" 198.18.{n}.")))
        .ok_or(LocalError::NoSubnet)
}

/// Creates `/run/netns/NAME` and wires it to the node on `subnet`. On failure, removes what it
/// made.
pub fn create(node: &Path, name: &str, subnet: u8) -> Result<PathBuf, LocalError> {
    run(Command::new("ip").args(["netns", "add", name]))?;
    let path = PathBuf::from(format!("/run/netns/{name}"));
    let made = (|| {
        let pod = path.display().to_string();
        let hif = host_if(subnet);
        ip_in(&path, &["link", "set", "lo", "up"])?;
        ip_in(
            node,
            &[
                "link", "add", &hif, "type", "veth", "peer", "name", "eth0", "netns", &pod,
            ],
        )?;
        ip_in(
            node,
            &[
                "addr",
                "add",
                &format!("{}/24", gateway(subnet)),
                "dev",
                &hif,
            ],
        )?;
        ip_in(node, &["link", "set", &hif, "up"])?;
        ip_in(
            &path,
            &[
                "addr",
                "add",
                &format!("{}/24", pod_ip(subnet)),
                "dev",
                "eth0",
            ],
        )?;
        ip_in(&path, &["link", "set", "eth0", "up"])?;
        ip_in(
            &path,
            &[
                "route",
                "add",
                "default",
                "via",
                &gateway(subnet).to_string(),
            ],
        )?;
        Ok(())
    })();
    if let Err(e) = made {
        delete(name);
        return Err(e);
    }
    Ok(path)
}

/// Deletes the namespace (its veth pair goes with it).
pub fn delete(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Runs `f` on a thread inside the namespace at `netns`.
pub fn run_in<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LocalError> {
    let ns = std::fs::File::open(netns).map_err(|e| LocalError::Command {
        what: format!("opening {}", netns.display()),
        message: e.to_string(),
    })?;
    std::thread::spawn(move || {
        // Affects only this new thread.
        if let Err(e) = crate::placement::enter_netns(&ns) {
            return Err(LocalError::Command {
                what: "setns".into(),
                message: e.to_string(),
            });
        }
        Ok(f())
    })
    .join()
    .map_err(|_| LocalError::Command {
        what: "a namespace thread".into(),
        message: "panicked".into(),
    })?
}
