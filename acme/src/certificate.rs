//! Certificate inspection: validity, names and key match of a PEM chain, and when to renew it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::PublicKeyData;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// What the manager needs to know about a certificate chain's leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CertInfo {
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// The DNS names of the subject alternative name extension, lowercased.
    pub(crate) names: Vec<String>,
}

impl CertInfo {
    /// Parses the leaf (first PEM block) of `chain_pem` and checks that
    /// `key_pem` is its private key. The error is a sentence for an operator.
    pub(crate) fn inspect(chain_pem: &str, key_pem: &str) -> Result<Self, String> {
        let leaf = Pem::iter_from_buffer(chain_pem.as_bytes())
            .next()
            .ok_or("no PEM certificate in the chain")?
            .map_err(|e| format!("the chain is not PEM: {e}"))?;
        if leaf.label != "CERTIFICATE" {
            return Err(format!("the chain starts with a `{}` PEM block, not a CERTIFICATE", leaf.label));
        }
        let cert = leaf.parse_x509().map_err(|e| format!("the leaf certificate does not parse: {e}"))?;
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| format!("the private key does not parse: {e}"))?;
        if key.der_bytes() != cert.public_key().subject_public_key.data.as_ref() {
            return Err("the private key does not belong to the certificate".to_string());
        }
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(format!("the subject alternative names do not parse: {e}")),
        };
        let time = |t: &x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
            } else {
                UNIX_EPOCH
            }
        };
        Ok(Self { not_before: time(&cert.validity().not_before), not_after: time(&cert.validity().not_after), names })
    }

    /// Whether every one of `names` is among the certificate's names.
    pub(crate) fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|name| self.names.iter().any(|have| have.eq_ignore_ascii_case(name)))
    }

    /// When to renew: two thirds of the way from `not_before` to `not_after`.
    pub(crate) fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + lifetime * 2 / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(names: &[&str], days: u64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let start = rcgen::date_time_ymd(2030, 1, 1);
        params.not_before = start;
        params.not_after = start + Duration::from_secs(days * 86400);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn renews_at_two_thirds_of_the_lifetime() {
        let (chain, key) = make(&["shop.example", "www.shop.example"], 90);
        let info = CertInfo::inspect(&chain, &key).unwrap();
        assert_eq!(info.not_after.duration_since(info.not_before).unwrap(), Duration::from_secs(90 * 86400));
        assert_eq!(info.renew_at().duration_since(info.not_before).unwrap(), Duration::from_secs(60 * 86400));
    }

    #[test]
    fn covers_its_names_in_any_case() {
        let (chain, key) = make(&["shop.example", "www.shop.example"], 90);
        let info = CertInfo::inspect(&chain, &key).unwrap();
        assert_eq!(info.names, ["shop.example", "www.shop.example"]);
        assert!(info.covers(&["WWW.shop.example".into(), "shop.example".into()]));
        assert!(!info.covers(&["shop.example".into(), "api.shop.example".into()]));
    }

    #[test]
    fn rejects_a_foreign_key_and_garbage() {
        let (chain, _) = make(&["shop.example"], 90);
        let (_, other_key) = make(&["shop.example"], 90);
        assert_eq!(CertInfo::inspect(&chain, &other_key).unwrap_err(), "the private key does not belong to the certificate");
        assert_eq!(CertInfo::inspect("", &other_key).unwrap_err(), "no PEM certificate in the chain");
        assert_eq!(
            CertInfo::inspect(&other_key, &other_key).unwrap_err(),
            "the chain starts with a `PRIVATE KEY` PEM block, not a CERTIFICATE"
        );
    }
}
