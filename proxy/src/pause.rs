//! Pause: new requests are held (not refused, not failed) until resumed,
//! then routed by the snapshot of that moment (a flip made while paused
//! answers every held request). Past the pause's `max`, or beyond its
//! limit of held requests, a request gets 503 with `Retry-After`. Waiting
//! is a tokio [`Notify`], never a poll.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// `Retry-After` on a request a pause could not hold (past `max`, or full).
pub const PAUSE_RETRY_AFTER: u64 = 5;

/// One pause, shared by every snapshot published while it lasts.
#[derive(Debug)]
pub struct Pause {
    deadline: Instant,
    max_held: usize,
    held: AtomicUsize,
    total: AtomicU64,
    refused: AtomicU64,
    resumed: AtomicBool,
    notify: Notify,
}

/// How a held request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Resumed: route it with the table as it is now.
    Resumed,
    /// Not resumed within the pause's `max`: 503.
    Expired,
    /// The limit of held requests was reached: 503 at once.
    Full,
}

/// Decrements the held count when a held request stops waiting.
struct Holding<'a>(&'a AtomicUsize);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pause {
    /// A pause holding at most `max_held` requests, each at most until `max` from now.
    pub fn new(max: Duration, max_held: usize) -> Arc<Self> {
        Arc::new(Self {
            deadline: Instant::now() + max,
            max_held,
            held: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            resumed: AtomicBool::new(false),
            notify: Notify::new(),
        })
    }

    /// Releases every held request (call after publishing the table they are to see).
    pub fn resume(&self) {
        self.resumed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Time left before held requests are answered 503.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Requests held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Requests held in all, and refused (past `max` or beyond the limit), so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.total.load(Ordering::Relaxed), self.refused.load(Ordering::Relaxed))
    }

    /// Holds the calling request until resumed, expired or refused.
    pub(crate) async fn hold(&self) -> Held {
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max_held {
            self.held.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Held::Full;
        }
        let _holding = Holding(&self.held);
        self.total.fetch_add(1, Ordering::Relaxed);
        loop {
            // registered before the flag is read: a resume in between still wakes it
            let resumed = self.notify.notified();
            if self.resumed.load(Ordering::Acquire) {
                return Held::Resumed;
            }
            tokio::select! {
                _ = resumed => {}
                _ = tokio::time::sleep_until(self.deadline) => {
                    if self.resumed.load(Ordering::Acquire) {
                        return Held::Resumed;
                    }
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Held::Expired;
                }
            }
        }
    }
}

/// Paths a pause never holds: ACME challenges and health probes (a load
/// balancer's check must not time out while canopy holds traffic).
pub(crate) fn exempt(path: &str) -> bool {
    path.starts_with(crate::front::ACME_CHALLENGE_PREFIX) || matches!(path, "/health" | "/healthz" | "/livez" | "/readyz")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn held_until_resumed_expired_or_full() {
        let p = Pause::new(Duration::from_secs(30), 2);
        let (a, b) = (p.clone(), p.clone());
        let first = tokio::spawn(async move { a.hold().await });
        let second = tokio::spawn(async move { b.hold().await });
        while p.held() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(p.hold().await, Held::Full, "a third request is beyond the limit");
        p.resume();
        assert_eq!((first.await.unwrap(), second.await.unwrap()), (Held::Resumed, Held::Resumed));
        assert_eq!((p.held(), p.counts()), (0, (2, 1)));
        assert_eq!(p.hold().await, Held::Resumed, "after the resume nothing waits");
        let short = Pause::new(Duration::from_millis(20), 10);
        assert_eq!(short.hold().await, Held::Expired);
    }
}
