//! One thread per pod network namespace: it enters the namespace once and then makes sockets
//! there on request, so no thread of the runtime ever changes namespace and no request pays for
//! a `setns`. The thread holds the namespace open until its handle is dropped.
use std::{
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::mpsc,
};

use tokio::sync::oneshot;

/// A socket request: the address family, and where to send the socket.
struct Request {
    v6: bool,
    reply: oneshot::Sender<io::Result<OwnedFd>>,
}

/// The handle of a thread inside one network namespace. Dropping it ends the thread.
#[derive(Debug)]
pub struct NetnsThread {
    requests: mpsc::Sender<Request>,
}

/// Small: the thread only calls `socket()`. But its first allocation (Rust's thread start makes
/// one) sets up the allocator's cache for the thread, deep in jemalloc: 64 KiB overflowed there
/// in a debug build (a SIGSEGV in the guard page, with no message, in `shunt-demo --check` about
/// one run in six). Only the pages touched are resident.
const STACK_BYTES: usize = 256 * 1024;

impl NetnsThread {
    /// Starts a thread that enters the namespace `ns` (an open nsfs file) and stays there.
    /// Fails when the thread cannot enter it (`setns`: EPERM without CAP_SYS_ADMIN, EINVAL for
    /// a file that is no network namespace).
    pub fn enter(ns: File) -> io::Result<Self> {
        let (requests, incoming) = mpsc::channel::<Request>();
        let (entered_tx, entered) = mpsc::sync_channel::<io::Result<()>>(1);
        std::thread::Builder::new()
            .name("shunt-netns".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                // SAFETY: a valid open fd; setns changes only this thread's namespace.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                drop(ns);
                if r != 0 {
                    let _ = entered_tx.send(Err(io::Error::last_os_error()));
                    return;
                }
                let _ = entered_tx.send(Ok(()));
                for req in incoming {
                    let _ = req.reply.send(new_socket(req.v6));
                }
            })?;
        entered
            .recv()
            .map_err(|_| io::Error::other("the namespace thread ended before entering"))??;
        Ok(Self { requests })
    }

    /// A new socket made inside the namespace.
    pub async fn socket(&self, v6: bool) -> io::Result<OwnedFd> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request { v6, reply })
            .map_err(|_| io::Error::other("the namespace thread has ended"))?;
        rx.await
            .map_err(|_| io::Error::other("the namespace thread has ended"))?
    }
}

fn new_socket(v6: bool) -> io::Result<OwnedFd> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
