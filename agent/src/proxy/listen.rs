//! Every listening socket of `shunt run` (the proxy's, IPv4 and IPv6, and the admin and debug
//! listeners) is bound here, in one way: with `SO_REUSEPORT` and a backlog sized by a flag.
//!
//! `SO_REUSEPORT` lets a new agent bind the same ports while the old one still serves, which a
//! restart with no gap needs (see [`crate::handover`]): the kernel spreads new connections over
//! both, and when the old agent closes its listener the connections still queued on it move to the
//! new one (`net.ipv4.tcp_migrate_req`). Only sockets of the same user may join a reuseport group,
//! so another user's process cannot steal the proxy's connections this way.
//!
//! Each group also gets a one-instruction classic BPF program, "pick the socket at index 1": the
//! kernel keeps a group's sockets in join order, so with two agents (the DaemonSet surges one pod
//! at a time) every new connection goes to the newer one the moment it listens, and the old
//! agent's queue only holds what it accepted before. With one agent the index is out of range and
//! the kernel picks by hash, i.e. the only socket. This matters where the agent may not set
//! `tcp_migrate_req` (a container's read-only `/proc/sys`): nothing new is queued on the listener
//! that is about to close.
use std::{net::SocketAddr, os::fd::AsRawFd as _};

use tokio::net::{TcpListener, TcpSocket};

/// The listen backlog when no flag says otherwise. The kernel caps it at `net.core.somaxconn`
/// (4096 by default since Linux 5.4), so this asks for what the node allows. 128, the old value,
/// is a few milliseconds of connects from a busy node: a burst beyond it is dropped SYNs and
/// clients retrying after a second.
pub const DEFAULT_BACKLOG: u32 = 4096;

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding {flag} {addr}")]
pub struct BindError {
    pub flag: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` with `SO_REUSEADDR` (a restart never waits for TIME_WAIT) and `SO_REUSEPORT` (a
/// successor binds beside us), and listens with `backlog`. `flag` names the setting in errors.
pub fn bind(addr: SocketAddr, backlog: u32, flag: &'static str) -> Result<TcpListener, BindError> {
    let err = |source| BindError { flag, addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.set_reuseport(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let listener = socket.listen(backlog).map_err(err)?;
    prefer_the_newer_agent(&listener).map_err(err)?;
    Ok(listener)
}

/// Attaches the group's selection program: `ret #1`, the second socket to join (see the module
/// doc). A newer agent attaching the same program replaces ours with an identical one.
fn prefer_the_newer_agent(listener: &TcpListener) -> std::io::Result<()> {
    const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let mut program = [libc::sock_filter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k: 1,
    }];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: a valid listening socket, and a pointer to a `sock_fprog` (and the filter it points
    // to) that outlive the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
#[path = "listen_tests.rs"]
mod tests;
