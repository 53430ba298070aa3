//! CertStatus: what the status page shows per certificate, and the pure rules for the next attempt.

use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::certificate::CertInfo;

/// The state of one certificate (one set of names), as
/// [`AcmeManager::status`](crate::AcmeManager::status) reports it. Times
/// serialise as RFC 3339 strings (UTC, whole seconds), or `null`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CertStatus {
    /// The names of the certificate, primary first, as configured.
    pub names: Vec<String>,
    /// When the installed certificate expires; `None` while none is installed.
    #[serde(serialize_with = "rfc3339")]
    pub not_after: Option<SystemTime>,
    /// When the installed certificate is due for renewal: two thirds of its
    /// lifetime; `None` while none is installed.
    #[serde(serialize_with = "rfc3339")]
    pub renew_at: Option<SystemTime>,
    /// When the installed certificate was obtained: by this process, or (for
    /// one installed from the cache at start) when its cache file was written.
    #[serde(serialize_with = "rfc3339")]
    pub last_renewal: Option<SystemTime>,
    /// Why the last attempt failed; `None` after a success. A certificate that
    /// was installed but could not be written to the cache also shows here.
    pub last_error: Option<String>,
    /// When the manager will next try to obtain a certificate: the renewal
    /// time, or after a failure the retry time. `None` before start-up.
    #[serde(serialize_with = "rfc3339")]
    pub next_attempt: Option<SystemTime>,
}

impl CertStatus {
    /// Nothing known yet: no certificate, no attempt planned.
    pub(crate) fn new(names: Vec<String>) -> Self {
        Self { names, not_after: None, renew_at: None, last_renewal: None, last_error: None, next_attempt: None }
    }

    /// A certificate was installed (`obtained` is when it was issued or
    /// cached). The next attempt is at its renewal time, but not before
    /// `earliest`: `now` for one from the cache (so a stale one is replaced at
    /// once), `now + retry` for a fresh one (so a CA that hands out nearly
    /// expired certificates is not asked again in a loop).
    pub(crate) fn installed(&mut self, cert: &CertInfo, obtained: SystemTime, earliest: SystemTime) {
        let renew_at = cert.renew_at();
        self.not_after = Some(cert.not_after);
        self.renew_at = Some(renew_at);
        self.last_renewal = Some(obtained);
        self.last_error = None;
        self.next_attempt = Some(renew_at.max(earliest));
    }

    /// An attempt failed: whatever is installed stays; try again after `retry`.
    pub(crate) fn failed(&mut self, reason: String, now: SystemTime, retry: Duration) {
        self.last_error = Some(reason);
        self.next_attempt = Some(now + retry);
    }

    /// Whether an attempt is due at `now` (always, before the first one is planned).
    pub(crate) fn due(&self, now: SystemTime) -> bool {
        self.next_attempt.is_none_or(|at| at <= now)
    }
}

fn rfc3339<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(hours: u64) -> SystemTime {
        UNIX_EPOCH + HOUR * 1000 + HOUR * hours as u32
    }

    fn cert(from: u64, to: u64) -> CertInfo {
        CertInfo { not_before: at(from), not_after: at(to), names: vec!["shop.example".into()] }
    }

    #[test]
    fn a_fresh_certificate_is_renewed_at_two_thirds() {
        let mut s = CertStatus::new(vec!["shop.example".into()]);
        assert!(s.due(at(0)), "nothing installed: due at once");
        s.installed(&cert(0, 90), at(0), at(0) + HOUR);
        assert_eq!(s.renew_at, Some(at(60)));
        assert_eq!(s.next_attempt, Some(at(60)));
        assert!(!s.due(at(59)));
        assert!(s.due(at(60)));
    }

    #[test]
    fn a_stale_cached_certificate_is_renewed_now_but_a_fresh_one_not_in_a_loop() {
        let mut s = CertStatus::new(vec!["shop.example".into()]);
        s.installed(&cert(0, 90), at(0), at(70));
        assert_eq!(s.next_attempt, Some(at(70)));
        s.installed(&cert(0, 3), at(5), at(6));
        assert_eq!(s.renew_at, Some(at(2)));
        assert_eq!(s.next_attempt, Some(at(6)), "a renewal time already past waits for the retry floor");
    }

    #[test]
    fn a_failure_keeps_the_certificate_and_retries_later() {
        let mut s = CertStatus::new(vec!["shop.example".into()]);
        s.installed(&cert(0, 90), at(0), at(0));
        s.failed("CA unreachable".into(), at(60), HOUR);
        assert_eq!(s.not_after, Some(at(90)));
        assert_eq!(s.last_error.as_deref(), Some("CA unreachable"));
        assert_eq!(s.next_attempt, Some(at(61)));
        s.installed(&cert(61, 151), at(61), at(62));
        assert_eq!(s.last_error, None);
    }

    #[test]
    fn serialises_times_as_rfc3339() {
        let mut s = CertStatus::new(vec!["shop.example".into()]);
        s.installed(&CertInfo { not_before: UNIX_EPOCH, not_after: UNIX_EPOCH + HOUR * 3, names: vec![] }, UNIX_EPOCH, UNIX_EPOCH);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({
                "names": ["shop.example"],
                "not_after": "1970-01-01T03:00:00Z",
                "renew_at": "1970-01-01T02:00:00Z",
                "last_renewal": "1970-01-01T00:00:00Z",
                "last_error": null,
                "next_attempt": "1970-01-01T02:00:00Z",
            })
        );
    }
}
