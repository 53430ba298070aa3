//! HTTP/2 client connections (h2 by ALPN over TLS, or h2c with prior
//! knowledge): pingora's h2 accept loop with canopy's protections. Each
//! stream is one request through the proxy, routed when it arrives (a flip
//! applies to the next stream, not the next connection).
//!
//! - The connection preface must arrive within the head deadline.
//! - While no stream is in flight the connection has the head deadline for
//!   its next complete request head (HEADERS and any CONTINUATION), then it
//!   is closed: an idle or slowloris-style connection (a header block
//!   dripped a byte at a time, or nothing at all) is cut off like its
//!   HTTP/1 counterpart. The h2 codec holds an incomplete header block
//!   back, so it never counts as a stream in flight.
//! - Header lists are limited to 64 KiB and streams to 100 at once
//!   (pingora's defaults); `Transfer-Encoding` and contradicting lengths are
//!   stream errors in the h2 codec itself.
//! - When the proxy drains, the connection sends GOAWAY, lets its streams
//!   finish and gets [`SHUTDOWN_LINGER`] for streams already on the way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{handshake, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use crate::drain::{Drain, SHUTDOWN_LINGER};

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams in flight on one connection.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by a stream's task while it runs.
struct InFlight(Arc<Active>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Active {
    fn start(self: &Arc<Self>) -> InFlight {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once no stream has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
        tokio::time::sleep(idle).await;
    }
}

/// Serves one HTTP/2 connection until it closes, is idle past
/// `head_deadline` or the proxy has drained it.
pub(crate) async fn serve<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    drain: &Drain,
    head_deadline: Duration,
) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let mut conn = match tokio::time::timeout(head_deadline, handshake(stream, None)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            log::debug!("h2 handshake failed: {e}");
            return;
        }
        Err(_) => {
            log::debug!("h2 preface not received in time; closing");
            return;
        }
    };
    let active = Arc::new(Active::default());
    let mut watch = shutdown.clone();
    let mut stopping = *watch.borrow() || drain.is_draining();
    if stopping {
        conn.graceful_shutdown();
    }
    loop {
        let idle = if stopping { SHUTDOWN_LINGER } else { head_deadline };
        let accepted = tokio::select! {
            biased;
            _ = watch.changed(), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
                continue;
            }
            accepted = HttpSession::from_h2_conn(&mut conn, digest.clone()) => accepted,
            _ = active.idle_for(idle) => {
                log::debug!("h2 connection without a request for {idle:?}; closing");
                return;
            }
        };
        match accepted {
            Err(e) => {
                log::debug!("h2 connection ended: {e}");
                return;
            }
            Ok(None) => return,
            Ok(Some(H2Accept::Rejected)) => continue,
            Ok(Some(H2Accept::Session(session))) => {
                let (app, shutdown, guard) = (app.clone(), shutdown.clone(), active.start());
                tokio::spawn(async move {
                    let _guard = guard;
                    app.process_new_http(ServerSession::new_http2(session), &shutdown).await;
                });
            }
        }
        if !stopping && drain.is_draining() {
            stopping = true;
            conn.graceful_shutdown();
        }
    }
}
