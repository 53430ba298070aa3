//! The proxy's side for tests: an HTTP server on 127.0.0.1 answering the
//! challenge tokens the manager sets, and a record of installed certificates.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use canopy_acme::AcmeSink;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// One `install` call.
#[derive(Clone, Debug)]
pub struct Installed {
    pub names: Vec<String>,
    pub chain_pem: String,
    pub key_pem: String,
    /// When the sink received it.
    pub at: SystemTime,
}

impl Installed {
    /// The certificates of the chain, as DER, leaf first.
    pub fn chain_der(&self) -> Vec<Vec<u8>> {
        Pem::iter_from_buffer(self.chain_pem.as_bytes()).map(|p| p.unwrap().contents).collect()
    }

    /// The leaf's serial number (hex).
    pub fn serial(&self) -> String {
        leaf(self, |cert| cert.raw_serial_as_string())
    }

    /// The leaf's DNS subject alternative names.
    pub fn sans(&self) -> Vec<String> {
        leaf(self, |cert| {
            let san = cert.subject_alternative_name().unwrap().expect("a SAN extension");
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        })
    }

    /// The leaf's validity (not before, not after), in Unix seconds.
    pub fn validity(&self) -> (i64, i64) {
        leaf(self, |cert| (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
    }
}

fn leaf<T>(installed: &Installed, f: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> T) -> T {
    let der = installed.chain_der().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    f(&cert)
}

/// The test proxy.
pub struct TestSink {
    /// The port its challenge server listens on (pebble's `httpPort`).
    pub port: u16,
    challenges: Mutex<HashMap<String, String>>,
    answering: AtomicBool,
    refusal: Mutex<Option<String>>,
    installs: tokio::sync::watch::Sender<Vec<Installed>>,
}

impl TestSink {
    /// Binds 127.0.0.1:0 and serves challenges on it.
    pub async fn start() -> Arc<Self> {
        let listener = canopy_testkit::ports::tokio_listener().await;
        let sink = Arc::new(Self {
            port: listener.local_addr().unwrap().port(),
            challenges: Mutex::new(HashMap::new()),
            answering: AtomicBool::new(true),
            refusal: Mutex::new(None),
            installs: tokio::sync::watch::Sender::new(Vec::new()),
        });
        let server = Arc::downgrade(&sink);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let Some(sink) = server.upgrade() else { return };
                let service = hyper::service::service_fn(move |req| {
                    let sink = sink.clone();
                    async move { Ok::<_, Infallible>(sink.answer(&req)) }
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service));
            }
        });
        sink
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let token = req.uri().path().strip_prefix("/.well-known/acme-challenge/");
        let key_authorization = token.and_then(|t| self.challenges.lock().unwrap().get(t).cloned());
        match key_authorization {
            Some(body) if self.answering.load(Ordering::SeqCst) => Response::new(Full::new(Bytes::from(body))),
            _ => {
                let mut rsp = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                *rsp.status_mut() = StatusCode::NOT_FOUND;
                rsp
            }
        }
    }

    /// Whether the challenge server answers tokens (else 404 for all).
    pub fn set_answering(&self, answering: bool) {
        self.answering.store(answering, Ordering::SeqCst);
    }

    /// Makes `install` refuse with this reason (or accept, with `None`).
    pub fn set_refusal(&self, reason: Option<&str>) {
        *self.refusal.lock().unwrap() = reason.map(str::to_string);
    }

    /// The tokens currently answered.
    pub fn open_challenges(&self) -> usize {
        self.challenges.lock().unwrap().len()
    }

    /// Every accepted install so far, oldest first.
    pub fn installs(&self) -> Vec<Installed> {
        self.installs.borrow().clone()
    }

    /// Waits until at least `count` certificates were installed.
    pub async fn wait_installs(&self, count: usize, within: Duration, context: impl Fn() -> String) -> Vec<Installed> {
        let mut rx = self.installs.subscribe();
        let reached = tokio::time::timeout(within, rx.wait_for(|v| v.len() >= count)).await.is_ok_and(|r| r.is_ok());
        assert!(reached, "{} certificate(s) installed after {within:?}, expected {count}\n{}", self.installs().len(), context());
        self.installs()
    }
}

impl AcmeSink for TestSink {
    fn set_challenge(&self, token: &str, key_authorization: &str) {
        self.challenges.lock().unwrap().insert(token.to_string(), key_authorization.to_string());
    }

    fn clear_challenge(&self, token: &str) {
        self.challenges.lock().unwrap().remove(token);
    }

    fn install(&self, names: &[String], chain_pem: &str, key_pem: &str) -> Result<(), String> {
        if let Some(reason) = self.refusal.lock().unwrap().clone() {
            return Err(reason);
        }
        let installed = Installed { names: names.to_vec(), chain_pem: chain_pem.into(), key_pem: key_pem.into(), at: SystemTime::now() };
        self.installs.send_modify(|v| v.push(installed));
        Ok(())
    }
}
