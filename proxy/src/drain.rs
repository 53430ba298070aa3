//! Draining the proxy's client connections at shutdown or at a hand-over to
//! a new process, without cutting a request: once draining, every response
//! says `Connection: close`, and a keep-alive connection waits at most
//! [`SHUTDOWN_LINGER`] for its client's next request before closing. The
//! process exits when no client connection is left (or the grace ends).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How long a keep-alive connection still waits for its client's next request
/// once draining has begun (a busy client has it on the way; it is answered
/// with `Connection: close`); then the connection closes.
pub const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

/// Whether the proxy is draining, and how many client connections are open.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    connections: AtomicUsize,
}

impl Drain {
    /// From now on responses close their connections. Called when shutdown
    /// or a hand-over begins, before the listeners stop.
    pub fn start(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether [`Self::start`] was called; read once per request.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Client connections open now (HTTP/1 connections of the proxy listener).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a connection until the returned guard is dropped.
    pub(crate) fn enter(&self) -> OpenConnection<'_> {
        self.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }
}

/// One open client connection, counted by [`Drain`] while it lives.
pub(crate) struct OpenConnection<'a>(&'a Drain);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
