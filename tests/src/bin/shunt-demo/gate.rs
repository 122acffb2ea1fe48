//! One way out, whatever happens: the end of the demo, an error, or a signal.
//!
//! Every step that creates something runs under [`step`]; leaving the process runs under the same
//! lock ([`finish`]), after the current step and instead of any later one. So teardown, which
//! finds everything by name, never races a namespace or process being created. SIGINT, SIGTERM
//! and SIGHUP are blocked in every thread and taken by one thread with `sigwait`, which then tears
//! down and exits. Child processes start with an empty signal mask and in their own process
//! group (`cluster::in_own_group`), so Ctrl-C in the terminal reaches only this process.
use std::{
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::{progress, teardown};

static GATE: Mutex<()> = Mutex::new(());
static SIGNALLED: AtomicBool = AtomicBool::new(false);

fn lock() -> MutexGuard<'static, ()> {
    GATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a step that creates state, never concurrently with teardown.
pub fn step<T>(f: impl FnOnce() -> T) -> T {
    let _g = lock();
    f()
}

/// Runs `last` (normally a teardown) after the current step, then exits with its code. Whoever
/// calls this first wins; a later caller blocks until the process exits.
pub fn finish(last: impl FnOnce() -> i32) -> ! {
    // Held until the process is gone: no step may start after the teardown.
    let _g = lock();
    std::process::exit(last())
}

/// After an error: if a signal caused it (Ctrl-C also reaches `ip` commands in the foreground),
/// let the signal thread report and tear down instead.
pub fn wait_if_signalled() {
    if SIGNALLED.load(Ordering::SeqCst) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this (the only) thread and starts the thread that waits
/// for them. Call before starting any other thread.
pub fn install_signal_handler() {
    // SAFETY: plain libc signal-set calls on a local, zero-initialised sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid, initialised signal set; `sig` a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        SIGNALLED.store(true, Ordering::SeqCst);
        let name = match sig {
            libc::SIGINT => "interrupted",
            libc::SIGTERM => "terminated",
            _ => "hung up",
        };
        eprintln!();
        progress(&format!("{name}: tearing the mini-cluster down"));
        finish(|| {
            eprintln!("{}", teardown::down());
            128 + sig
        })
    });
}
