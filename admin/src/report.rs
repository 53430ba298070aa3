//! Validation reports: what each check of each service said about a release.

use canopy_proxy::{ReleaseName, ServiceName};
use serde::{Deserialize, Serialize};

/// The outcome of one check against one target (a backend or, for commands, the service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckResult {
    /// The service checked.
    pub service: ServiceName,
    /// The check's name (from config, e.g. `http /health`).
    pub check: String,
    /// `http`, `graphql`, `smoke` or `command`.
    pub kind: String,
    /// The backend address checked (none for commands).
    #[serde(default)]
    pub target: Option<String>,
    /// Whether it passed.
    pub passed: bool,
    /// Attempts made (1 + retries used).
    pub attempts: u32,
    /// Time spent, retries included.
    pub duration_ms: f64,
    /// Why it failed (or a short note when it passed).
    #[serde(default)]
    pub reason: String,
    /// Captured output of a command check (truncated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// The validation of one release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The release validated.
    pub release: ReleaseName,
    /// True only if every check passed (and there was at least one target).
    pub passed: bool,
    /// `full`, `quick` (rollback re-check) or `watch` (the background quick
    /// check of the warm previous release).
    pub mode: String,
    /// When it finished (Unix ms).
    pub at: u64,
    /// Wall time of the whole validation.
    pub duration_ms: f64,
    /// Every check result.
    pub checks: Vec<CheckResult>,
}

impl Report {
    /// One line naming the failed checks, e.g. `server/graphql /shop-api: errors in response`.
    pub fn summary(&self) -> String {
        if self.passed {
            return format!("{} checks passed", self.checks.len());
        }
        let failed: Vec<String> =
            self.checks.iter().filter(|c| !c.passed).map(|c| format!("{}/{}: {}", c.service, c.check, c.reason)).collect();
        format!("{} of {} checks failed: {}", failed.len(), self.checks.len(), failed.join("; "))
    }
}
