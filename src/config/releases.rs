//! `[releases]` (address template, validation window, preview, retirement)
//! and the `[[release]]` seeds registered on first start.

use std::collections::BTreeMap;
use std::time::Duration;

use canopy_admin::Seed;
use canopy_proxy::{Endpoint, ReleaseName, ServiceName, Topology};
use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Ctx};
use super::value::{or, Dur};

/// `validation-window` when unset.
const VALIDATION_WINDOW: Duration = Duration::from_secs(600);
/// `drain-timeout` when unset.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// `hook-timeout` when unset.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// `warm-check-interval` when unset.
const WARM_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest `warm-check-interval`.
const WARM_CHECK_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// `resolve-interval` when unset.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// `[releases]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileReleases {
    pub address_template: Spanned<String>,
    initial: Option<ReleaseName>,
    validation_window: Option<Dur>,
    #[serde(default)]
    preview: bool,
    drain_timeout: Option<Dur>,
    #[serde(default)]
    retire_hooks: Vec<Spanned<Vec<String>>>,
    hook_timeout: Option<Dur>,
    resolve_interval: Option<Dur>,
    warm_check_interval: Option<Spanned<Dur>>,
}

/// One `[[release]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileRelease {
    name: Spanned<ReleaseName>,
    backends: BTreeMap<Spanned<ServiceName>, Vec<Endpoint>>,
}

/// The `[releases]` settings a reload applies in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSettings {
    /// Whether `x-canopy-release` request headers select registered releases.
    pub preview: bool,
    /// How long the previous release stays warm after a flip.
    pub validation_window: Duration,
    /// How long a retirement waits for in-flight requests before running hooks anyway.
    pub drain_timeout: Duration,
    /// Commands run (argv, `{release}` substituted) after a release is drained.
    pub retire_hooks: Vec<Vec<String>>,
    /// Limit for each retire hook.
    pub hook_timeout: Duration,
    /// How often the warm previous release is quick-checked in the background.
    pub warm_check_interval: Duration,
}

/// Checks the reloadable `[releases]` settings.
pub(super) fn settings(cx: &Ctx<'_>, r: &FileReleases) -> Result<ReleaseSettings, ConfigError> {
    for h in &r.retire_hooks {
        if h.get_ref().first().is_none_or(|a| a.is_empty()) {
            return Err(cx.err(h.span(), "a retire hook needs a program (argv[0])"));
        }
    }
    let warm_check_interval = match &r.warm_check_interval {
        Some(d) if d.get_ref().0 < WARM_CHECK_INTERVAL_MIN => {
            return Err(cx.err(d.span(), "warm-check-interval must be at least 100ms"));
        }
        Some(d) => d.get_ref().0,
        None => WARM_CHECK_INTERVAL,
    };
    Ok(ReleaseSettings {
        preview: r.preview,
        validation_window: or(r.validation_window, VALIDATION_WINDOW),
        drain_timeout: or(r.drain_timeout, DRAIN_TIMEOUT),
        retire_hooks: r.retire_hooks.iter().map(|h| h.get_ref().clone()).collect(),
        hook_timeout: or(r.hook_timeout, HOOK_TIMEOUT),
        warm_check_interval,
    })
}

/// How often registered releases' backends are resolved again.
pub(super) fn resolve_interval(r: &FileReleases) -> Duration {
    or(r.resolve_interval, RESOLVE_INTERVAL)
}

/// `initial` and the `[[release]]` seeds, checked against the services.
pub(super) fn seed(cx: &Ctx<'_>, r: &FileReleases, seeds: &[FileRelease], topology: &Topology) -> Result<Seed, ConfigError> {
    let mut seed = Seed { initial: r.initial.clone(), releases: BTreeMap::new() };
    for r in seeds {
        if seed.releases.contains_key(r.name.get_ref()) {
            return Err(cx.err(r.name.span(), format!("release `{}` is listed twice", r.name.get_ref())));
        }
        let mut backends = BTreeMap::new();
        for (svc, list) in &r.backends {
            if topology.service_index(svc.get_ref()).is_none() {
                return Err(cx.err(svc.span(), format!("unknown service `{}` in release backends", svc.get_ref())));
            }
            if list.is_empty() {
                return Err(cx.err(svc.span(), format!("service `{}` has an empty backend list", svc.get_ref())));
            }
            backends.insert(svc.get_ref().clone(), list.clone());
        }
        seed.releases.insert(r.name.get_ref().clone(), backends);
    }
    Ok(seed)
}
