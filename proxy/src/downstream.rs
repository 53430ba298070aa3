//! The downstream side of the proxy service: pingora's `HttpProxy` wrapped so
//! that every client connection gets canopy's idle timeout and a total
//! deadline for sending its request head (slowloris protection).
//!
//! pingora 0.9 only has a per-read timeout while reading a request head
//! (hard-coded 60 s), so a client dripping one byte at a time holds its
//! connection forever. Here the whole wait for a head — idle keep-alive time
//! included — is bounded: if `request_filter` has not seen the request when
//! the deadline passes, the connection is dropped.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::prelude::fast_timeout::fast_sleep;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

tokio::task_local! {
    /// Set by the proxy once a request head has been read on this connection task.
    static HEAD_SEEN: Cell<bool>;
}

/// Called from `request_filter`: the request head of the current request is in.
pub(crate) fn mark_head_seen() {
    let _ = HEAD_SEEN.try_with(|seen| seen.set(true));
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
        // pingora's coarse timer wheel (10 ms buckets, shared by every timer
        // due in the same bucket) instead of a tokio timer per request: this
        // runs for every request on a keep-alive connection.
        let deadline = self.head_deadline;
        HEAD_SEEN
            .scope(Cell::new(false), async move {
                let work = self.inner.process_new_http(session, shutdown);
                tokio::pin!(work);
                tokio::select! {
                    biased;
                    done = &mut work => done,
                    () = fast_sleep(deadline) => {
                        if HEAD_SEEN.with(Cell::get) {
                            work.await
                        } else {
                            log::debug!("request head not complete within {deadline:?}; closing");
                            None // dropping the session closes the connection
                        }
                    }
                }
            })
            .await
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
