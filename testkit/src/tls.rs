//! TLS test parts: self-signed certificates made on the fly, configs with a
//! TLS listener, HTTPS/HTTP/2 clients that trust exactly the test's
//! certificates and report which one the server presented.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::load::Target;

/// A certificate and its key, PEM and DER.
#[derive(Clone)]
pub struct TestCert {
    /// PEM certificate.
    pub pem: String,
    /// PEM private key.
    pub key: String,
    /// DER certificate (what a client is served).
    pub der: Vec<u8>,
}

/// A fresh self-signed certificate (ECDSA P-256) for `names`.
pub fn cert(names: &[&str]) -> TestCert {
    let c = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    TestCert { pem: c.cert.pem(), key: c.signing_key.serialize_pem(), der: c.cert.der().to_vec() }
}

impl TestCert {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`, each atomically
    /// (temp file, rename), the key last.
    pub fn write(&self, dir: &Path, stem: &str) {
        for (ext, text) in [("pem", &self.pem), ("key", &self.key)] {
            let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(format!("{stem}.{ext}"))).unwrap();
        }
    }
}

/// The shared test config (see [`crate::config`]) with a TLS listener on
/// `{tls_port}`, h2c on the plaintext one, `client-timeout` 2s, and `tls`
/// appended (a `[tls]` section and its certificates).
pub fn tls_config(tls: &str) -> String {
    crate::configs::config("", "").replace(
        "listen = \"127.0.0.1:{proxy_port}\"",
        "listen = \"127.0.0.1:{proxy_port}\"\nlisten-tls = \"127.0.0.1:{tls_port}\"\nh2c = true\nclient-timeout = \"2s\"",
    ) + tls
}

/// A client builder for `https://{name}:port` reaching `tls` whatever
/// `name` resolves to, trusting only `roots`, recording the served
/// certificate ([`served`]).
pub fn https(name: &str, tls: SocketAddr, roots: &[&TestCert]) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(false).tls_info(true).no_proxy().resolve(name, tls);
    for r in roots {
        b = b.add_root_certificate(reqwest::Certificate::from_der(&r.der).unwrap());
    }
    b
}

/// The DER certificate the server presented for this response.
pub fn served(r: &reqwest::Response) -> Vec<u8> {
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().expect("client built with tls_info");
    info.peer_certificate().expect("a server certificate").to_vec()
}

/// A load target: `https://{name}:port` over HTTP/2 (ALPN), one long-lived
/// connection per client loop.
pub fn h2_target(name: &str, tls: SocketAddr, roots: Vec<TestCert>) -> Target {
    let name = name.to_string();
    Target {
        base: format!("https://{name}:{}", tls.port()),
        builder: Arc::new(move || https(&name, tls, &roots.iter().collect::<Vec<_>>()).http2_prior_knowledge()),
    }
}

/// As [`h2_target`] but HTTP/1.1 over TLS.
pub fn h1_tls_target(name: &str, tls: SocketAddr, roots: Vec<TestCert>) -> Target {
    let name = name.to_string();
    Target {
        base: format!("https://{name}:{}", tls.port()),
        builder: Arc::new(move || https(&name, tls, &roots.iter().collect::<Vec<_>>()).http1_only()),
    }
}

/// The value of one sample of `/metrics` text, e.g.
/// `canopy_tls_handshakes_total{result="ok"}`; 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' '))).map_or(0.0, |v| v.trim().parse().unwrap())
}
