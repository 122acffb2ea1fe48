//! Who gets a connection slot: per-client limits, so one pod's connections (idle or tunnelled)
//! cannot fill the proxy's cap for everyone, and a reserve file descriptor, so running out of
//! descriptors answers the waiting client instead of leaving it in the accept queue.
use std::{
    collections::HashMap,
    fs::File,
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Connections open per client address.
#[derive(Debug)]
pub struct ClientSlots {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its client's count; given back on drop (when the connection's
/// task ends, upgraded tunnels included).
#[derive(Debug)]
pub struct ClientSlot {
    slots: Arc<ClientSlots>,
    client: IpAddr,
}

impl ClientSlots {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `client`, or `None` if it has `limit` open already.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(client).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            slots: self.clone(),
            client,
        })
    }

    /// Connections open from `client`.
    pub fn open(&self, client: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&client).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                // Forget the client: the map holds only clients with open connections.
                open.remove(&self.client);
            }
        }
    }
}

/// One descriptor kept open so that, when `accept` fails for lack of descriptors, closing it
/// lets the proxy take the waiting connection, answer it and close it (then take the reserve
/// again), instead of leaving it to hang in the accept queue.
#[derive(Debug)]
pub struct FdReserve(Option<File>);

impl FdReserve {
    pub fn new() -> Self {
        let mut r = Self(None);
        r.rearm();
        r
    }

    /// Closes the reserve descriptor; `false` if there was none to give.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes a reserve descriptor again if there is none (and one is free).
    pub fn rearm(&mut self) -> bool {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
        self.0.is_some()
    }
}

impl Default for FdReserve {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an `accept` error means the process (or the system) is out of file descriptors.
pub fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Closes an accepted connection with a RST (SO_LINGER 0): the client learns at once that it
/// was refused, and no TIME_WAIT is left behind.
pub fn reset(stream: tokio::net::TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_limit_is_refused_until_one_closes() {
        let slots = ClientSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.admit(a).expect("first");
        let _second = slots.admit(a).expect("second");
        assert!(slots.admit(a).is_none(), "third from the same client");
        // Another client is not affected.
        let _other = slots.admit(b).expect("another client");
        drop(first);
        assert!(slots.admit(a).is_some(), "a slot was given back");
    }

    #[test]
    fn closed_clients_are_forgotten() {
        let slots = ClientSlots::new(1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        drop(slots.admit(a));
        assert_eq!(slots.open(a), 0);
        assert!(slots.open.lock().unwrap().is_empty());
    }

    #[test]
    fn the_reserve_is_given_and_taken_again() {
        let mut r = FdReserve::new();
        assert!(r.release());
        assert!(!r.release(), "nothing left to give");
        assert!(r.rearm());
        assert!(out_of_fds(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(!out_of_fds(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
