//! The downstream side of the proxy service: pingora's `HttpProxy` wrapped so
//! that every client connection gets canopy's idle timeout and a total
//! deadline for sending its request head (slowloris protection).
//!
//! pingora 0.9 only has a per-read timeout while reading a request head
//! (hard-coded 60 s), so a client dripping one byte at a time holds its
//! connection forever. Here the whole wait for a head — idle keep-alive time
//! included — is bounded: if `request_filter` has not seen the request when
//! the deadline passes, the connection is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

tokio::task_local! {
    /// Set by the proxy once a request head has been read on this connection task.
    static HEAD_SEEN: Arc<AtomicBool>;
}

/// Called from `request_filter`: the request head of the current request is in.
pub(crate) fn mark_head_seen() {
    let _ = HEAD_SEEN.try_with(|seen| seen.store(true, Ordering::Relaxed));
}

/// Wraps an HTTP app (pingora's `HttpProxy`) with the client timeouts.
pub struct ClientTimeouts<A> {
    inner: Arc<A>,
    head_deadline: Duration,
}

impl<A> ClientTimeouts<A> {
    /// `head_deadline`: longest wait for a complete request head on a
    /// connection, counted from when the connection (or its previous
    /// response) is ready for the next request. Also the per-read limit.
    pub fn new(inner: A, head_deadline: Duration) -> Self {
        Self { inner: Arc::new(inner), head_deadline }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for ClientTimeouts<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !*shutdown.borrow() {
            // pingora's per-read timeout for the head (and keep-alive idle), in whole seconds
            session.set_keepalive(Some(self.head_deadline.as_secs().max(1)));
        }
        let seen = Arc::new(AtomicBool::new(false));
        let work = HEAD_SEEN.scope(seen.clone(), self.inner.process_new_http(session, shutdown));
        tokio::pin!(work);
        tokio::select! {
            done = &mut work => done,
            _ = tokio::time::sleep(self.head_deadline) => {
                if seen.load(Ordering::Relaxed) {
                    work.await
                } else {
                    log::debug!("request head not complete within {:?}; closing", self.head_deadline);
                    None // dropping the session closes the connection
                }
            }
        }
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}
