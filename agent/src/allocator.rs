//! The node agent's memory allocator: jemalloc.
//!
//! Every route change builds a new cluster view, route table and status list and drops the old
//! ones, from whichever thread of the blocking pool computed them. glibc's allocator keeps what
//! each thread freed in that thread's arena, and only the top of each heap shrinks: at 10,000
//! routes the agent's resident memory was about twice its live data, and freeing a large table
//! took a good part of the time of computing it. jemalloc returns freed pages in a background
//! thread, off the proxy's and route sync's paths.
//!
//! The binaries that run the agent (`shunt`, and `shunt-under-test` in the tests crate) install
//! it with [`crate::global_allocator!`]. Without the `node` feature (the client build) the macro
//! installs nothing.

/// jemalloc's options, read before `main`. `_RJEM_MALLOC_CONF` in the environment overrides
/// them (jemalloc reads it after these), e.g. for a profile.
/// - `background_thread`: a jemalloc thread returns freed pages, not the thread that frees.
/// - `dirty_decay_ms` is left at jemalloc's 10 s: freed pages the proxy will need again are not
///   returned and faulted back in every second (at 1 s, the proxy's CPU per request rose by up
///   to a tenth in `cargo xtask bench --before`). Route sync returns a dropped table's pages
///   itself once it has been idle for a moment ([`release_free_memory`]).
/// - `muzzy_decay_ms:0`: no second, lazily-freed stage (its pages would still count as resident
///   until the kernel needs them).
/// - `narenas:1`: one arena, so what one blocking-pool thread frees is reused by the next one
///   instead of sitting in an arena of its own (each thread's small-object cache still spares
///   the proxy's threads the arena's lock). At 10,000 routes this is about 12 MB less resident
///   than two arenas.
#[cfg(feature = "node")]
pub const MALLOC_CONF: &std::ffi::CStr = c"background_thread:true,muzzy_decay_ms:0,narenas:1";

/// jemalloc's `malloc_conf` symbol wants a pointer to the options' first byte.
#[cfg(feature = "node")]
pub const MALLOC_CONF_PTR: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer into a 'static C string literal, never null.
    Some(unsafe { &*MALLOC_CONF.as_ptr() });

#[cfg(feature = "node")]
pub use tikv_jemallocator::Jemalloc;

/// Installs jemalloc with [`MALLOC_CONF`] as the binary's global allocator (the `node` feature;
/// nothing without it). Call once, at the top level of a binary crate.
#[cfg(feature = "node")]
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static GLOBAL_ALLOCATOR: $crate::allocator::Jemalloc = $crate::allocator::Jemalloc;
        // The name jemalloc reads its compiled-in options from (tikv-jemalloc-sys prefixes its
        // symbols with `_rjem_`).
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static MALLOC_CONF: Option<&'static ::std::ffi::c_char> =
            $crate::allocator::MALLOC_CONF_PTR;
    };
}

/// Installs nothing: the client build keeps the system allocator.
#[cfg(not(feature = "node"))]
#[macro_export]
macro_rules! global_allocator {
    () => {};
}

/// Returns the free pages of every jemalloc arena to the system now, rather than after
/// [`MALLOC_CONF`]'s decay time (route sync calls it once it has been idle a while). A no-op
/// where jemalloc is not the allocator, as it then holds no pages.
#[cfg(feature = "node")]
pub fn release_free_memory() {
    // `MALLCTL_ARENAS_ALL`: every arena.
    const PURGE_ALL: &std::ffi::CStr = c"arena.4096.purge";
    // SAFETY: a documented mallctl name that takes no input and gives no output.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        tracing::debug!(rc, "jemalloc: purging the arenas failed");
    }
}
