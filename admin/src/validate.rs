//! Validation of a release: every check of every service, concurrently, each
//! with its timeout, retries and interval, gathered into a [`Report`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_proxy::{Release, ServiceName, Topology};

use crate::checks::{run_once, Check, CheckKind};
use crate::report::{CheckResult, Report};

/// Upper bound for one attempt in quick mode (rollback re-check).
const QUICK_TIMEOUT: Duration = Duration::from_secs(2);

/// How thoroughly to validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every check with its retries (before a switch, and `check`).
    Full,
    /// Only `http` checks, one attempt each, short timeout (before a rollback:
    /// the previous release was healthy minutes ago, is it still up?).
    Quick,
}

/// Runs checks; holds the HTTP client (connection pool) and the configured checks.
pub struct Validator {
    client: reqwest::Client,
    checks: Arc<Vec<Vec<Check>>>,
}

impl Validator {
    /// `checks[i]` are the checks of the topology's service `i`.
    pub fn new(checks: Vec<Vec<Check>>) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("canopy-validator/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("building the check HTTP client");
        Self { client, checks: Arc::new(checks) }
    }

    /// The configured checks per service.
    pub fn checks(&self) -> &[Vec<Check>] {
        &self.checks
    }

    /// Validates `release`: resolution of every service's backends, then every
    /// check (per backend for HTTP kinds, once per service for commands).
    pub async fn validate(&self, topology: &Topology, release: &Release, mode: Mode, now_ms: u64) -> Report {
        self.validate_services(topology, release, mode, now_ms, |_| true).await
    }

    /// [`Self::validate`] for the services whose topology index `include`
    /// accepts (the warm watch leaves out the containers canopy stopped).
    pub async fn validate_services(
        &self,
        topology: &Topology,
        release: &Release,
        mode: Mode,
        now_ms: u64,
        include: impl Fn(usize) -> bool,
    ) -> Report {
        let started = Instant::now();
        let mut results = Vec::new();
        let mut jobs = Vec::new();
        for (i, svc) in topology.services().iter().enumerate().filter(|(i, _)| include(*i)) {
            let backends = release.backends(i);
            for err in backends.unresolved() {
                results.push(resolution_failure(&svc.name, err.to_string()));
            }
            if backends.addrs().is_empty() && backends.unresolved().is_empty() {
                results.push(resolution_failure(&svc.name, "no backends".into()));
            }
            for check in &self.checks[i] {
                if mode == Mode::Quick && !matches!(check.kind, CheckKind::Http { .. }) {
                    continue;
                }
                if check.per_service() {
                    jobs.push(self.run(check, release, &svc.name, None, mode));
                } else {
                    for addr in backends.addrs() {
                        jobs.push(self.run(check, release, &svc.name, Some(*addr), mode));
                    }
                }
            }
        }
        results.extend(futures_util::future::join_all(jobs).await);
        let passed = results.iter().all(|r| r.passed);
        Report {
            release: release.name().clone(),
            passed,
            mode: if mode == Mode::Full { "full" } else { "quick" }.into(),
            at: now_ms,
            duration_ms: ms(started.elapsed()),
            checks: results,
        }
    }

    async fn run(&self, check: &Check, release: &Release, service: &ServiceName, target: Option<SocketAddr>, mode: Mode) -> CheckResult {
        let started = Instant::now();
        let (tries, timeout) = match mode {
            Mode::Full => (1 + check.retries, check.timeout),
            Mode::Quick => (1, check.timeout.min(QUICK_TIMEOUT)),
        };
        let mut attempts = 0;
        let last = loop {
            attempts += 1;
            let a = run_once(&self.client, check, release.name(), service, target, timeout).await;
            if a.passed || attempts >= tries {
                break a;
            }
            tokio::time::sleep(check.interval).await;
        };
        CheckResult {
            service: service.clone(),
            check: check.name.clone(),
            kind: check.kind_name().into(),
            target: target.map(|t| t.to_string()),
            passed: last.passed,
            attempts,
            duration_ms: ms(started.elapsed()),
            reason: last.reason,
            output: last.output,
        }
    }
}

fn resolution_failure(service: &ServiceName, reason: String) -> CheckResult {
    CheckResult {
        service: service.clone(),
        check: "backends resolve".into(),
        kind: "resolve".into(),
        target: None,
        passed: false,
        attempts: 1,
        duration_ms: 0.0,
        reason,
        output: None,
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
