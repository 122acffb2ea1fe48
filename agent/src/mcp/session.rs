//! What one MCP session created, so it can be removed with the session: its sandboxes and its
//! routes, each unless created with `keep: true`.
//!
//! Lifetime: everything the session creates expires `--session-ttl` after its last renewal; the
//! session renews every third of that while it lives, and deletes its things when it ends
//! (stdin EOF, SIGINT, SIGTERM, SIGHUP). After a SIGKILL, expiry does: the agent ignores an
//! expired route, and the next session (or `cargo xtask demo --down`) removes expired sandboxes.
use std::{collections::BTreeMap, sync::Mutex, time::Duration};

/// Pod label carrying the session id.
pub const SESSION_LABEL: &str = "shunt.dev/session";

pub struct Session {
    pub id: String,
    pub ttl: Duration,
    /// Live sandboxes this session may have.
    pub max_sandboxes: usize,
    owned: Mutex<Owned>,
}

#[derive(Default, Clone)]
pub struct Owned {
    /// Sandbox name → keep.
    pub sandboxes: BTreeMap<String, bool>,
    /// Route `namespace/name` → keep.
    pub routes: BTreeMap<String, bool>,
    /// Routes created with their own `ttl`: deleted with the session, never renewed.
    pub fixed_ttl: std::collections::BTreeSet<String>,
}

impl Session {
    pub fn new(ttl: Duration, max_sandboxes: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Session {
            id: format!("mcp-{:x}-{:06x}", std::process::id(), nanos & 0xff_ffff),
            ttl,
            max_sandboxes,
            owned: Mutex::new(Owned::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Owned) -> T) -> T {
        let mut g = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    pub fn snapshot(&self) -> Owned {
        self.with(|o| o.clone())
    }

    pub fn add_sandbox(&self, name: &str, keep: bool) {
        self.with(|o| o.sandboxes.insert(name.to_string(), keep));
    }

    pub fn remove_sandbox(&self, name: &str) {
        self.with(|o| o.sandboxes.remove(name));
    }

    pub fn owns_sandbox(&self, name: &str) -> bool {
        self.with(|o| o.sandboxes.contains_key(name))
    }

    pub fn add_route(&self, id: &str, keep: bool) {
        self.with(|o| o.routes.insert(id.to_string(), keep));
    }

    pub fn remove_route(&self, id: &str) {
        self.with(|o| {
            o.routes.remove(id);
            o.fixed_ttl.remove(id);
        });
    }

    pub fn add_route_with_ttl(&self, id: &str) {
        self.with(|o| {
            o.routes.insert(id.to_string(), false);
            o.fixed_ttl.insert(id.to_string());
        });
    }

    pub fn owns_route(&self, id: &str) -> bool {
        self.with(|o| o.routes.contains_key(id))
    }

    /// Expiry for a new (or renewed) thing, unix ms; None when kept.
    pub fn expiry(&self, keep: bool) -> Option<u64> {
        (!keep).then(|| crate::sandbox::local::now_ms() + self.ttl.as_millis() as u64)
    }

    /// How often to renew: a third of the TTL.
    pub fn renew_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }
}
