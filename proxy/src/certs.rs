//! Server certificates: PEM files checked and loaded (chain, key, the two
//! matching, validity), and the SNI table a TLS handshake picks from: the
//! exact name, then a wildcard (`*.example.com` for `a.example.com`), then
//! the default. The table is one `ArcSwap`, replaced whole by reloads and
//! ACME renewals; a handshake loads it once.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate cannot be served. Names the file (or source) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM `CERTIFICATE` block, or one that does not parse.
    #[error("{file}: {reason}")]
    BadCertificate {
        /// Where the certificate came from.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file holds no usable private key.
    #[error("{file}: {reason}")]
    BadKey {
        /// Where the key came from.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("{key} is not the private key of the certificate in {cert}")]
    Mismatch {
        /// The certificate's source.
        cert: String,
        /// The key's source.
        key: String,
    },
    /// The certificate's validity ended.
    #[error("{file}: certificate expired {ago} ago (not after {not_after})")]
    Expired {
        /// Where the certificate came from.
        file: String,
        /// Its `notAfter`, RFC 3339.
        not_after: String,
        /// How long ago.
        ago: String,
    },
}

/// One loaded certificate chain with its key, ready for handshakes.
#[derive(Clone)]
pub struct Certificate {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    source: String,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("not_after", &humantime::format_rfc3339_seconds(self.not_after))
            .field("source", &self.source)
            .finish()
    }
}

impl Certificate {
    /// Loads and checks a PEM chain (leaf first) and its PEM private key
    /// (PKCS#8, PKCS#1 or SEC1) from files. Refuses an unreadable file, no
    /// certificate, no key, a key that is not the certificate's, and an
    /// expired certificate, naming the file.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, CertError> {
        let read = |p: &Path| std::fs::read(p).map_err(|source| CertError::Read { path: p.to_path_buf(), source });
        let (chain, pem_key) = (read(cert)?, read(key)?);
        Self::from_pem(&cert.display().to_string(), &key.display().to_string(), &chain, &pem_key)
    }

    /// As [`Self::from_files`], from PEM bytes; `cert_source` and `key_source`
    /// name them in errors and on the status page.
    pub fn from_pem(cert_source: &str, key_source: &str, chain: &[u8], key: &[u8]) -> Result<Self, CertError> {
        let bad_cert = |reason: String| CertError::BadCertificate { file: cert_source.to_string(), reason };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<_, _>>()
            .map_err(|e| bad_cert(format!("not a PEM certificate chain: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(bad_cert("no PEM CERTIFICATE block found".into()));
        };
        let (names, not_before, not_after) = leaf_facts(leaf).map_err(bad_cert)?;
        let now = SystemTime::now();
        if let Ok(ago) = now.duration_since(not_after) {
            return Err(CertError::Expired {
                file: cert_source.to_string(),
                not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
                ago: humantime::format_duration(Duration::from_secs(ago.as_secs())).to_string(),
            });
        }
        let bad_key = |reason: String| CertError::BadKey { file: key_source.to_string(), reason };
        let der = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad_key(format!("no PEM private key found ({e})")))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| bad_key(format!("unsupported private key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|_| CertError::Mismatch { cert: cert_source.to_string(), key: key_source.to_string() })?;
        Ok(Self { key: Arc::new(certified), names, not_before, not_after, source: cert_source.to_string() })
    }

    /// The DNS names the certificate is for (subject alternative names,
    /// lower case; the subject's common name when it has none).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Where it came from (the certificate file, or `acme:<name>`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A hash of the leaf certificate: tells a changed file from the same one.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.leaf_der().hash(&mut h);
        h.finish()
    }

    /// The leaf certificate, DER (to compare what a client was served).
    pub fn leaf_der(&self) -> &[u8] {
        self.key.cert.first().map_or(&[], |c| c.as_ref())
    }
}

/// Names (SANs, else CN), notBefore and notAfter of a DER certificate.
fn leaf_facts(der: &[u8]) -> Result<(Vec<String>, SystemTime, SystemTime), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase));
    }
    let time = |t: ASN1Time| SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
    Ok((names, time(cert.validity().not_before), time(cert.validity().not_after)))
}

/// Certificates by SNI name, built whole and swapped in at once.
#[derive(Debug, Default)]
pub struct SniTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    certificates: Vec<Certificate>,
}

impl SniTable {
    /// A table over `certificates`; their names index them, the first one
    /// with a name wins when two claim it. `default` (an index) answers
    /// clients that send no SNI or a name no certificate has; `None` leaves
    /// such handshakes without a certificate (they fail).
    pub fn new(certificates: Vec<Certificate>, default: Option<usize>) -> Self {
        let mut table = SniTable { default: default.and_then(|i| certificates.get(i)).map(|c| c.key.clone()), ..Self::default() };
        for c in &certificates {
            for name in &c.names {
                let slot = match name.strip_prefix("*.") {
                    Some(parent) => table.wildcard.entry(parent.to_string()),
                    None => table.exact.entry(name.clone()),
                };
                slot.or_insert_with(|| c.key.clone());
            }
        }
        table.certificates = certificates;
        table
    }

    /// The certificate for a handshake naming `sni` (any case).
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else { return self.default.clone() };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(k) = self.exact.get(name) {
            return Some(k.clone());
        }
        // a wildcard covers exactly one label
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        self.default.clone()
    }

    /// Every certificate in the table, in the order given.
    pub fn certificates(&self) -> &[Certificate] {
        &self.certificates
    }
}

/// The live SNI table plus the two sources it is built from: certificates
/// from files (replaced whole by a reload) and ACME certificates (replaced
/// one name set at a time by renewals). Files come first, so a file's
/// certificate wins over an ACME one for the same name.
#[derive(Debug, Default)]
pub struct CertStore {
    live: ArcSwap<SniTable>,
    sources: Mutex<Sources>,
}

#[derive(Debug, Default)]
struct Sources {
    files: Vec<Certificate>,
    default: Option<usize>,
    acme: Vec<Certificate>,
}

impl CertStore {
    /// An empty store (no certificate: handshakes fail until one is set).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces the certificates from files (start-up, `canopy tls reload`,
    /// a changed file, a config reload). `default` indexes `files`; without
    /// one the first certificate (files first, then ACME) is the default.
    pub fn set_files(&self, files: Vec<Certificate>, default: Option<usize>) {
        let mut s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        s.files = files;
        s.default = default;
        self.publish(&s);
    }

    /// Serves `cert` for its names from now on, replacing every earlier ACME
    /// certificate that shares a name with it.
    pub fn set_acme(&self, cert: Certificate) {
        let mut s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        // replaces any earlier one sharing a name (a CA may list the SANs of
        // a renewal in another order)
        s.acme.retain(|c| !c.names.iter().any(|n| cert.names.contains(n)));
        s.acme.push(cert);
        self.publish(&s);
    }

    fn publish(&self, s: &Sources) {
        let all: Vec<Certificate> = s.files.iter().chain(&s.acme).cloned().collect();
        let default = if all.is_empty() { None } else { Some(s.default.unwrap_or(0)) };
        self.live.store(Arc::new(SniTable::new(all, default)));
    }

    /// The live table (one load per handshake).
    pub fn load(&self) -> Arc<SniTable> {
        self.live.load_full()
    }

    /// The rustls resolver over this store.
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver(self.clone()))
    }
}

/// rustls' hook into the store: picks per SNI at each handshake.
#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.live.load().pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Certificate {
        let c = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        Certificate::from_pem("c.pem", "k.pem", c.cert.pem().as_bytes(), c.signing_key.serialize_pem().as_bytes()).unwrap()
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let (a, w, d) = (cert(&["shop.test"]), cert(&["*.shop.test"]), cert(&["fallback.test"]));
        let table = SniTable::new(vec![d.clone(), a.clone(), w.clone()], Some(0));
        let leaf = |k: Option<Arc<CertifiedKey>>| k.unwrap().cert[0].as_ref().to_vec();
        assert_eq!(leaf(table.pick(Some("shop.test"))), a.leaf_der());
        assert_eq!(leaf(table.pick(Some("SHOP.test"))), a.leaf_der());
        assert_eq!(leaf(table.pick(Some("www.shop.test"))), w.leaf_der());
        // one label only
        assert_eq!(leaf(table.pick(Some("a.b.shop.test"))), d.leaf_der());
        assert_eq!(leaf(table.pick(Some("other.test"))), d.leaf_der());
        assert_eq!(leaf(table.pick(None)), d.leaf_der());
        assert!(SniTable::new(vec![a], None).pick(Some("other.test")).is_none());
    }

    #[test]
    fn mismatched_key_and_garbage_are_refused_with_the_file() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_string()]).unwrap();
        let e = Certificate::from_pem("a.pem", "b.key", a.cert.pem().as_bytes(), b.signing_key.serialize_pem().as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), "b.key is not the private key of the certificate in a.pem");
        let e = Certificate::from_pem("x.pem", "k", b"hello", b"").unwrap_err();
        assert_eq!(e.to_string(), "x.pem: no PEM CERTIFICATE block found");
        let e = Certificate::from_pem("a.pem", "k.pem", a.cert.pem().as_bytes(), b"nope").unwrap_err();
        assert!(e.to_string().starts_with("k.pem: no PEM private key found"), "{e}");
    }

    #[test]
    fn expired_certificate_is_refused() {
        let mut params = rcgen::CertificateParams::new(vec!["old.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let c = params.self_signed(&key).unwrap();
        let e = Certificate::from_pem("old.pem", "old.key", c.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("old.pem: certificate expired "), "{e}");
        assert!(e.to_string().ends_with("(not after 2021-01-01T00:00:00Z)"), "{e}");
    }

    #[test]
    fn acme_certificates_replace_their_own_name_set_and_files_win() {
        let store = CertStore::new();
        let file = cert(&["shop.test"]);
        store.set_files(vec![file.clone()], None);
        store.set_acme(cert(&["shop.test", "www.shop.test"]));
        let second = cert(&["shop.test", "www.shop.test"]);
        store.set_acme(second.clone());
        let t = store.load();
        assert_eq!(t.certificates().len(), 2);
        assert_eq!(t.pick(Some("shop.test")).unwrap().cert[0].as_ref(), file.leaf_der());
        assert_eq!(t.pick(Some("www.shop.test")).unwrap().cert[0].as_ref(), second.leaf_der());
        // a renewal whose CA lists the same names in another order (pebble
        // does at times) replaces it too, though its first name differs
        let reordered = cert(&["www.shop.test", "shop.test"]);
        assert_eq!(reordered.names(), ["www.shop.test", "shop.test"], "the names in the certificate's own order");
        store.set_acme(reordered.clone());
        let t = store.load();
        assert_eq!(t.certificates().len(), 2, "the earlier ACME certificate stayed beside its renewal");
        assert_eq!(t.pick(Some("www.shop.test")).unwrap().cert[0].as_ref(), reordered.leaf_der());
        assert_eq!(t.pick(Some("shop.test")).unwrap().cert[0].as_ref(), file.leaf_der());
        // and so does one that shares a single name with it
        let overlapping = cert(&["www.shop.test", "m.shop.test"]);
        store.set_acme(overlapping.clone());
        let t = store.load();
        assert_eq!(t.certificates().len(), 2);
        assert_eq!(t.pick(Some("www.shop.test")).unwrap().cert[0].as_ref(), overlapping.leaf_der());
    }
}
