//! What in-flight sandbox-bound requests may hold in memory: per request (the body kept to send
//! again to the fallback), per client connection and in total.
//!
//! Only sandbox-bound requests are charged. A sandbox may be silent (a breakpoint, a crash
//! loop), and every request waiting on it holds its kept body and its stream; baseline requests
//! keep no body and wait as long as they would on a direct connection, so they are never
//! refused for memory the sandboxes took.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// Default `--max-request-buffer`: the body kept for a fallback.
pub const DEFAULT_REQUEST_BUFFER: usize = 64 * 1024;
/// Default `--max-connection-buffer`.
pub const DEFAULT_CONNECTION_BUFFER: usize = 4 * 1024 * 1024;
/// Default `--max-buffered-bytes` (the agent's memory limit is 512 MiB, 60 MiB of it BPF maps).
pub const DEFAULT_TOTAL_BUFFER: usize = 128 * 1024 * 1024;
/// What one in-flight sandbox-bound request costs beyond its head and kept body: its stream,
/// its upstream request and connection state (measured at ~10 KiB; rounded up).
pub const REQUEST_OVERHEAD: usize = 16 * 1024;

/// A byte budget shared by whoever holds a [`Charge`] on it.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes currently charged.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget, or nothing if they do not fit.
    fn take(&self, bytes: usize) -> bool {
        self.used
            .try_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Why a request could not be charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("the connection's buffer budget (--max-connection-buffer) is spent")]
    Connection,
    #[error("the proxy's buffer budget (--max-buffered-bytes) is spent")]
    Total,
}

/// Bytes charged to a connection's budget and the total one; given back on drop.
#[derive(Debug)]
pub struct Charge {
    bytes: usize,
    connection: Option<Arc<ByteBudget>>,
    total: Arc<ByteBudget>,
}

impl Charge {
    /// Charges `bytes` to `connection` (if any) and `total`, both or neither.
    pub fn take(
        bytes: usize,
        connection: Option<&Arc<ByteBudget>>,
        total: &Arc<ByteBudget>,
    ) -> Result<Self, OverBudget> {
        if let Some(c) = connection
            && !c.take(bytes)
        {
            return Err(OverBudget::Connection);
        }
        if !total.take(bytes) {
            if let Some(c) = connection {
                c.give_back(bytes);
            }
            return Err(OverBudget::Total);
        }
        Ok(Self {
            bytes,
            connection: connection.cloned(),
            total: total.clone(),
        })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(c) = &self.connection {
            c.give_back(self.bytes);
        }
        self.total.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_both_budgets_or_neither() {
        let total = ByteBudget::new(100);
        let conn = ByteBudget::new(60);
        let a = Charge::take(50, Some(&conn), &total).expect("fits");
        assert_eq!(
            Charge::take(20, Some(&conn), &total).unwrap_err(),
            OverBudget::Connection
        );
        let other = ByteBudget::new(60);
        let b = Charge::take(40, Some(&other), &total).expect("fits");
        assert_eq!(
            Charge::take(20, Some(&other), &total).unwrap_err(),
            OverBudget::Total
        );
        // The refused charge gave back what it took from the connection.
        assert_eq!(other.used(), 40);
        drop(a);
        drop(b);
        assert_eq!((total.used(), conn.used(), other.used()), (0, 0, 0));
        let _c = Charge::take(100, None, &total).expect("the whole budget");
    }
}
