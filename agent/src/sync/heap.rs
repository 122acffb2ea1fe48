//! Keeping the agent's resident memory close to its live data.
//!
//! Every apply builds a whole new cluster view, route table and status list, then drops the old
//! ones. glibc's allocator keeps what was freed in the arena of the thread that allocated it
//! (the blocking-pool thread that computed, the runtime thread that converted), and only the top
//! of each heap shrinks by itself: at 10,000 routes the agent's resident memory grew by several
//! times the live data.

/// Arenas glibc may create in all. By default it makes one per thread that meets contention, up
/// to eight per core, and a block freed in one arena is reused only by that arena's threads: the
/// blocking-pool threads that computed successive tables each kept a heap of their own, mostly
/// free. Two arenas still spare the proxy's threads most lock contention with route sync.
const ARENA_MAX: i32 = 2;

/// Caps the number of malloc arenas (see [`ARENA_MAX`]). Threads that have not allocated yet
/// (the blocking pool starts its threads on demand) share the capped set.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; it takes the arenas' own locks.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Returns the free pages of every arena to the system.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes the arenas' own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
