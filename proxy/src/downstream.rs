//! The downstream side of the proxy service: pingora's `HttpProxy` wrapped so
//! that every client connection gets a total deadline for sending each
//! request head, idle keep-alive time included (slowloris protection).
//!
//! pingora 0.9 only has a per-read timeout while reading a request head
//! (hard-coded 60 s), so a client dripping one byte at a time holds its
//! connection forever. Here the whole wait for a head is bounded: if
//! `request_filter` has not seen the request when the deadline passes, the
//! connection is dropped.
//!
//! The wrapper is a [`ServerApp`]: it runs pingora's HTTP/1 keep-alive loop
//! itself (the loop of pingora's blanket `ServerApp` for HTTP apps), so the
//! deadline is one tokio timer per connection, pushed forward for each
//! request (an atomic store while it is armed), instead of a timer
//! registration and a task-local scope per request.
//!
//! At shutdown (SIGTERM, or after handing the sockets to a new process) a
//! keep-alive connection is not cut while its client may be sending the next
//! request: the loop counts as one open connection in the table's
//! [`Drain`](crate::Drain), and once the server shuts down each connection
//! waits at most [`SHUTDOWN_LINGER`] for its next request head (answered,
//! like every request while draining, with `Connection: close`) before it
//! closes. pingora's own shutdown, which drops a connection waiting for its
//! next request at once (while its client may be sending one), is not used.
//!
//! On a TLS listener the wrapper completes the handshake first (under its
//! own deadline, see [`TlsTerminator`]); then HTTP/1.1 takes the same loop
//! as plaintext and h2 (by ALPN, or h2c with prior knowledge where enabled)
//! takes [`crate::h2`]'s loop, with the same head deadline and drain.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::time::{Instant, Sleep};

use crate::drain::SHUTDOWN_LINGER;
use crate::table::ReleaseTable;
use crate::tls::TlsTerminator;

tokio::task_local! {
    /// Set by the proxy once a request head has been read on this connection task.
    static HEAD_SEEN: Cell<bool>;
}

/// Called from `request_filter`: the request head of the current request is in.
pub(crate) fn mark_head_seen() {
    let _ = HEAD_SEEN.try_with(|seen| seen.set(true));
}

/// Wraps an HTTP app (pingora's `HttpProxy`) with the client head deadline
/// and the graceful drain of its connections.
pub struct ClientTimeouts<A> {
    inner: Arc<A>,
    head_deadline: Duration,
    table: Arc<ReleaseTable>,
    tls: Option<Arc<TlsTerminator>>,
    h2c: bool,
}

impl<A> ClientTimeouts<A> {
    /// `head_deadline`: longest wait for a complete request head on a
    /// connection, counted from when the connection (or its previous
    /// response) is ready for the next request. Connections are counted in
    /// `table`'s [`Drain`](crate::Drain).
    pub fn new(inner: A, head_deadline: Duration, table: Arc<ReleaseTable>) -> Self {
        Self { inner: Arc::new(inner), head_deadline, table, tls: None, h2c: false }
    }

    /// Connections are TLS: each is handshaken by `tls` before HTTP.
    pub fn with_tls(mut self, tls: Arc<TlsTerminator>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Plaintext connections that open with the HTTP/2 preface speak h2c
    /// (prior knowledge, RFC 9113 §3.3); others HTTP/1.
    pub fn with_h2c(mut self, h2c: bool) -> Self {
        self.h2c = h2c;
        self
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> ClientTimeouts<A> {
    /// pingora's HTTP/1 keep-alive loop, each request raced against the deadline.
    async fn serve_http1(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let mut deadline = pin!(tokio::time::sleep(self.head_deadline));
        // one registration for the connection's life, not one per request
        let seen = *shutdown.borrow();
        let mut watch = shutdown.clone();
        let mut stopping = Stopping { seen, changed: pin!(watch.changed()) };
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            HEAD_SEEN.with(|seen| seen.set(false));
            // a shutdown that began while a request was being served (the
            // watch is polled only while waiting for a head; draining starts first)
            stopping.seen |= self.table.drain().is_draining();
            if stopping.seen {
                // the next head has SHUTDOWN_LINGER at most
                stopping.linger(deadline.as_mut());
            }
            // between requests the connection holds no request state: the
            // session, its buffers and the proxy's request future are made
            // once the next request's first bytes are in (a pipelined
            // request's bytes already are)
            let pipelined = settings.as_ref().is_some_and(HttpPersistentSettings::has_pipelined_prefix);
            if !pipelined && !idle_until_readable(&mut stream, deadline.as_mut(), &mut stopping).await {
                log::debug!("no request head in time; closing");
                return;
            }
            let Some(reused) = self.one_request(stream, settings.take(), first, shutdown, deadline.as_mut(), &mut stopping).await else {
                return;
            };
            first = false;
            (stream, settings) = reused.consume();
            // while the timer is armed and not yet due this only stores the new time
            let wait = if stopping.seen { SHUTDOWN_LINGER } else { self.head_deadline };
            deadline.as_mut().reset(Instant::now() + wait);
        }
    }

    /// The HTTP/1 session for the next request on `stream`, with the
    /// settings the previous one passed on (`first`: the connection's own).
    fn session(&self, stream: Stream, settings: Option<HttpPersistentSettings>, first: bool, shutdown: &ShutdownWatch) -> ServerSession {
        let mut session = ServerSession::new_http1(stream);
        match settings {
            Some(settings) => settings.apply_to_session(&mut session),
            None if first => {
                // requests a client pipelines are answered in order (RFC
                // 9112 §9.3.2) instead of closing after the first; the
                // persistent settings carry this and the bytes already
                // read over to each next request
                session.set_pipelining_enabled(true);
                // pingora's own per-read keep-alive timer is not armed
                // (`Some(0)`: keep-alive without a timeout): the deadline
                // bounds the whole wait
                session.set_keepalive(if *shutdown.borrow() { None } else { Some(0) });
                session.set_keepalive_reuses_remaining(self.inner.server_options().and_then(|o| o.keepalive_request_limit));
            }
            None => {}
        }
        session
    }

    /// One request on the connection; `None` when the connection ends,
    /// including when its head missed the deadline (or, once the server is
    /// stopping, [`SHUTDOWN_LINGER`]).
    async fn one_request(
        &self,
        stream: Stream,
        settings: Option<HttpPersistentSettings>,
        first: bool,
        shutdown: &ShutdownWatch,
        mut deadline: Pin<&mut Sleep>,
        stopping: &mut Stopping<'_>,
    ) -> Option<pingora::apps::ReusedHttpStream> {
        // the session is made and handed over before the first await, so
        // it takes no room in this future (nor in the connection's)
        let mut work = self.inner.process_new_http(self.session(stream, settings, first, shutdown), shutdown);
        poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(done);
            }
            // once the head is in, the rest of the request has no deadline here
            if HEAD_SEEN.with(Cell::get) {
                return Poll::Pending;
            }
            if stopping.poll_deadline(cx, deadline.as_mut()).is_ready() {
                log::debug!("request head not complete in time; closing");
                return Poll::Ready(None); // dropping the session closes the connection
            }
            Poll::Pending
        })
        .await
    }
}

/// Waits until `stream` has bytes to read (or its client closed it), within
/// the head deadline; `false` when the deadline passed first. Nothing is
/// read: the stream's first poll peeks (one `recv` with `MSG_PEEK`, which also
/// clears a readiness left over from the previous request), later polls only
/// ask the reactor, so a keep-alive request costs the same system calls as
/// when pingora's read waited.
async fn idle_until_readable(stream: &mut Stream, mut deadline: Pin<&mut Sleep>, stopping: &mut Stopping<'_>) -> bool {
    let mut peek = true;
    poll_fn(|cx| {
        // an error or end of stream is left to the session's read to report
        if stream.poll_readable(cx, std::mem::take(&mut peek)).is_ready() {
            return Poll::Ready(true);
        }
        stopping.poll_deadline(cx, deadline.as_mut()).map(|()| false)
    })
    .await
}

impl<A> ClientTimeouts<A> {
    /// Whether the connection speaks HTTP/2: h2 chosen by ALPN, or (with
    /// h2c) a plaintext connection whose first bytes are the preface.
    /// `None` when the client sends nothing in time or goes away.
    async fn speaks_h2(&self, stream: &mut Stream) -> Option<bool> {
        if self.tls.is_some() {
            return Some(matches!(stream.selected_alpn_proto(), Some(ALPN::H2)));
        }
        if !self.h2c {
            return Some(false);
        }
        // peeked in steps (the bytes stay unread), so a short HTTP/1 request
        // is told apart at its first byte instead of waiting for 24 bytes:
        // `P` then `PRI` (no HTTP/1 method) then the whole preface
        let preface = crate::h2::PREFACE;
        let mut buf = [0u8; crate::h2::PREFACE.len()];
        for len in [1, 3, preface.len()] {
            let peek = stream.try_peek(&mut buf[..len]);
            let peeked = tokio::time::timeout(self.head_deadline, peek).await.ok()?.ok()?;
            if !peeked || buf[..len] != preface[..len] {
                return Some(false);
            }
        }
        Some(true)
    }
}

/// Whether the server has begun to shut down, as one connection learns it.
struct Stopping<'a> {
    seen: bool,
    /// Resolves when the shutdown watch changes (or its sender is gone).
    changed: Pin<&'a mut (dyn Future<Output = Result<(), tokio::sync::watch::error::RecvError>> + Send)>,
}

impl Stopping<'_> {
    /// Brings `deadline` forward to [`SHUTDOWN_LINGER`] from now, if that is sooner.
    fn linger(&self, mut deadline: Pin<&mut Sleep>) {
        let linger = Instant::now() + SHUTDOWN_LINGER;
        if linger < deadline.deadline() {
            deadline.as_mut().reset(linger);
        }
    }

    /// Ready once `deadline` has passed; learns of a shutdown on the way
    /// (the server stops while this connection waits for a head: the
    /// deadline becomes [`SHUTDOWN_LINGER`] at most).
    fn poll_deadline(&mut self, cx: &mut Context<'_>, mut deadline: Pin<&mut Sleep>) -> Poll<()> {
        if !self.seen && self.changed.as_mut().poll(cx).is_ready() {
            self.seen = true;
            self.linger(deadline.as_mut());
        }
        deadline.poll(cx)
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ClientTimeouts<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let _open = self.table.drain().enter();
        // the TLS handshake's and the h2 loop's state are boxed, so that the
        // future of every connection (plaintext HTTP/1 included) stays small;
        // pingora's own listener future had the same problem, see
        // vendor/pingora-core/README.canopy.md
        let mut stream = match &self.tls {
            Some(tls) => Box::pin(tls.handshake(stream)).await?,
            None => stream,
        };
        if self.speaks_h2(&mut stream).await? {
            Box::pin(crate::h2::serve(&self.inner, stream, shutdown, self.table.drain(), self.head_deadline)).await;
        } else {
            HEAD_SEEN.scope(Cell::new(false), self.serve_http1(stream, shutdown)).await;
        }
        None
    }

    /// Called once the listeners are closed: pingora's `http_cleanup` (which
    /// drops connections waiting for a request) only once every connection
    /// has drained by itself.
    async fn cleanup(&self) {
        while self.table.drain().connections() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.inner.http_cleanup().await
    }
}
