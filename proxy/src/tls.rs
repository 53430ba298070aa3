//! TLS termination for the proxy's TLS listeners: the rustls server config
//! (certificates per SNI from the [`CertStore`], ALPN h2 and http/1.1,
//! stateless session tickets), the handshake under its own deadline, and
//! the handshake counters.
//!
//! The handshake runs in canopy's connection task (the listener is plain
//! TCP to pingora), so its deadline, its result and the protocol chosen
//! are canopy's: a client that never finishes its handshake is cut off at
//! `handshake_timeout`, not after pingora's fixed 60 s.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use rustls::server::ServerConfig;

use crate::certs::CertStore;

/// How a TLS listener terminates: from `[tls]` in proxy.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// Offer HTTP/2 by ALPN (besides http/1.1).
    pub h2: bool,
    /// Longest a client may take to complete its handshake.
    pub handshake_timeout: Duration,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self { h2: true, handshake_timeout: Duration::from_secs(10) }
    }
}

/// Outcomes of handshakes, as `canopy_tls_handshakes_total{result}`.
#[derive(Debug, Default)]
pub struct HandshakeCounts {
    ok: AtomicU64,
    failed: AtomicU64,
    timeout: AtomicU64,
}

impl HandshakeCounts {
    /// `(result label, count)` for each outcome.
    pub fn snapshot(&self) -> [(&'static str, u64); 3] {
        [("ok", self.ok.load(Relaxed)), ("error", self.failed.load(Relaxed)), ("timeout", self.timeout.load(Relaxed))]
    }
}

/// Terminates TLS on accepted connections.
pub struct TlsTerminator {
    acceptor: Acceptor,
    timeout: Duration,
    counts: Arc<HandshakeCounts>,
}

impl TlsTerminator {
    /// A terminator picking certificates from `certs` at each handshake.
    pub fn new(certs: &Arc<CertStore>, options: &TlsOptions, counts: Arc<HandshakeCounts>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(certs.resolver());
        // TLS 1.2: the server's order of suites (strongest first) decides,
        // not the client's (testssl.sh: "server cipher order")
        config.ignore_client_order = true;
        config.alpn_protocols = if options.h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
        // resumption without a server-side cache: tickets sealed with keys
        // that rotate every 6 hours (rustls' recommended ticketer)
        match rustls::crypto::ring::Ticketer::new() {
            Ok(t) => config.ticketer = t,
            Err(e) => log::warn!("TLS session tickets off: {e}"),
        }
        Self { acceptor: Acceptor::from_server_config(Arc::new(config)), timeout: options.handshake_timeout, counts }
    }

    /// Completes the server handshake on `stream` within the deadline;
    /// `None` (connection dropped, counted) when it fails or times out.
    pub(crate) async fn handshake(&self, stream: Stream) -> Option<Stream> {
        // pingora hands the app the accepted TCP stream boxed; the TLS
        // stream wraps the concrete one, like pingora's own listener does
        let Ok(tcp) = stream.into_any().downcast::<L4Stream>() else {
            log::error!("TLS listener got a connection that is not TCP; closing");
            return None;
        };
        match tokio::time::timeout(self.timeout, self.acceptor.tls_handshake(*tcp)).await {
            Ok(Ok(tls)) => {
                self.counts.ok.fetch_add(1, Relaxed);
                Some(Box::new(tls))
            }
            Ok(Err(e)) => {
                self.counts.failed.fetch_add(1, Relaxed);
                log::debug!("TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                self.counts.timeout.fetch_add(1, Relaxed);
                log::debug!("TLS handshake not complete in {:?}; closing", self.timeout);
                None
            }
        }
    }
}
