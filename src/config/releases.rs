//! `[releases]` (address template, validation window, preview, retirement)
//! and the `[[release]]` seeds registered on first start.

use std::collections::BTreeMap;
use std::time::Duration;

use canopy_admin::{CanarySettings, GuardSettings, Seed};
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
/// `live-check-interval` when unset.
const LIVE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest `warm-check-interval` and `live-check-interval`.
const CHECK_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// The shortest guard `interval`.
const GUARD_INTERVAL_MIN: Duration = Duration::from_millis(100);
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
    migrate: Option<Spanned<Vec<String>>>,
    resolve_interval: Option<Dur>,
    warm_check_interval: Option<Spanned<Dur>>,
    live_check_interval: Option<Spanned<Dur>>,
    #[serde(default)]
    require_rollback_ready: bool,
    guard: Option<Spanned<FileGuard>>,
    canary: Option<Spanned<FileCanary>>,
}

/// `[releases.guard]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileGuard {
    enabled: Option<bool>,
    interval: Option<Spanned<Dur>>,
    window: Option<Spanned<Dur>>,
    baseline: Option<Dur>,
    min_requests: Option<u64>,
    failure_limit: Option<Spanned<u32>>,
    max_error_ratio: Option<Spanned<f64>>,
    max_latency_ratio: Option<Spanned<f64>>,
    latency_quantile: Option<Spanned<f64>>,
    latency_floor: Option<Dur>,
}

/// `[releases.canary]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileCanary {
    steps: Option<Spanned<Vec<f64>>>,
    step_duration: Option<Spanned<Dur>>,
}

/// One `[[release]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileRelease {
    name: Spanned<ReleaseName>,
    backends: BTreeMap<Spanned<ServiceName>, Vec<Endpoint>>,
}

/// The `[releases]` settings a reload applies in place.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseSettings {
    /// Whether `x-canopy-release` request headers select registered releases.
    pub preview: bool,
    /// How long the previous release stays warm after a flip.
    pub validation_window: Duration,
    /// How long a retirement waits for in-flight requests before running hooks anyway.
    pub drain_timeout: Duration,
    /// Commands run (argv, `{release}` substituted) after a release is drained.
    pub retire_hooks: Vec<Vec<String>>,
    /// Limit for each retire hook (and for the migrate command).
    pub hook_timeout: Duration,
    /// The command a paused switch or deploy runs before validating (argv,
    /// `{release}` substituted; empty: none).
    pub migrate: Vec<String>,
    /// How often the warm previous release is quick-checked in the background.
    pub warm_check_interval: Duration,
    /// Refuse a switch whose candidate broke the live release.
    pub require_rollback_ready: bool,
    /// `[releases.guard]`.
    pub guard: GuardSettings,
    /// `[releases.canary]`.
    pub canary: CanarySettings,
    /// How often the live release is quick-checked in the background (its alert).
    pub live_check_interval: Duration,
}

/// Checks the reloadable `[releases]` settings.
pub(super) fn settings(cx: &Ctx<'_>, r: &FileReleases) -> Result<ReleaseSettings, ConfigError> {
    for h in &r.retire_hooks {
        if h.get_ref().first().is_none_or(|a| a.is_empty()) {
            return Err(cx.err(h.span(), "a retire hook needs a program (argv[0])"));
        }
    }
    let interval = |key: &str, set: &Option<Spanned<Dur>>, default: Duration| match set {
        Some(d) if d.get_ref().0 < CHECK_INTERVAL_MIN => Err(cx.err(d.span(), format!("{key} must be at least 100ms"))),
        Some(d) => Ok(d.get_ref().0),
        None => Ok(default),
    };
    if let Some(m) = &r.migrate {
        if m.get_ref().first().is_none_or(|a| a.is_empty()) {
            return Err(cx.err(m.span(), "migrate needs a program (argv[0])"));
        }
    }
    let warm_check_interval = interval("warm-check-interval", &r.warm_check_interval, WARM_CHECK_INTERVAL)?;
    let live_check_interval = interval("live-check-interval", &r.live_check_interval, LIVE_CHECK_INTERVAL)?;
    Ok(ReleaseSettings {
        preview: r.preview,
        validation_window: or(r.validation_window, VALIDATION_WINDOW),
        drain_timeout: or(r.drain_timeout, DRAIN_TIMEOUT),
        retire_hooks: r.retire_hooks.iter().map(|h| h.get_ref().clone()).collect(),
        hook_timeout: or(r.hook_timeout, HOOK_TIMEOUT),
        migrate: r.migrate.as_ref().map(|m| m.get_ref().clone()).unwrap_or_default(),
        warm_check_interval,
        require_rollback_ready: r.require_rollback_ready,
        guard: match &r.guard {
            Some(g) => guard(cx, g.get_ref())?,
            None => GuardSettings::default(),
        },
        canary: match &r.canary {
            Some(c) => canary(cx, c.get_ref())?,
            None => CanarySettings::default(),
        },
        live_check_interval,
    })
}

/// Checks `[releases.guard]`; unset keys take [`GuardSettings::default`]'s values.
fn guard(cx: &Ctx<'_>, g: &FileGuard) -> Result<GuardSettings, ConfigError> {
    let d = GuardSettings::default();
    let interval = match &g.interval {
        Some(i) if i.get_ref().0 < GUARD_INTERVAL_MIN => return Err(cx.err(i.span(), "interval must be at least 100ms")),
        Some(i) => i.get_ref().0,
        None => d.interval,
    };
    let window = match &g.window {
        Some(w) if w.get_ref().0 < interval => return Err(cx.err(w.span(), "window must be at least the interval")),
        Some(w) => w.get_ref().0,
        None => d.window.max(interval),
    };
    let ratio = |v: &Option<Spanned<f64>>, default: f64, ok: fn(f64) -> bool, rule: &str| match v {
        Some(x) if !ok(*x.get_ref()) => Err(cx.err(x.span(), rule.to_string())),
        Some(x) => Ok(*x.get_ref()),
        None => Ok(default),
    };
    let failure_limit = match &g.failure_limit {
        Some(n) if *n.get_ref() == 0 => return Err(cx.err(n.span(), "failure-limit must be at least 1")),
        Some(n) => *n.get_ref(),
        None => d.failure_limit,
    };
    Ok(GuardSettings {
        enabled: g.enabled.unwrap_or(d.enabled),
        interval,
        window,
        baseline: or(g.baseline, d.baseline),
        min_requests: g.min_requests.unwrap_or(d.min_requests),
        failure_limit,
        max_error_ratio: ratio(
            &g.max_error_ratio,
            d.max_error_ratio,
            |x| x > 0.0 && x < 1.0,
            "max-error-ratio must be above 0 and below 1 (0.05 is 5%)",
        )?,
        max_latency_ratio: ratio(
            &g.max_latency_ratio,
            d.max_latency_ratio,
            |x| x > 1.0,
            "max-latency-ratio must be above 1 (2.0: twice as slow)",
        )?,
        latency_quantile: ratio(
            &g.latency_quantile,
            d.latency_quantile,
            |x| x > 0.0 && x < 1.0,
            "latency-quantile must be above 0 and below 1 (0.99: p99)",
        )?,
        latency_floor: or(g.latency_floor, d.latency_floor),
    })
}

/// Checks `[releases.canary]`.
fn canary(cx: &Ctx<'_>, c: &FileCanary) -> Result<CanarySettings, ConfigError> {
    let d = CanarySettings::default();
    let steps = match &c.steps {
        Some(s) => {
            let list = s.get_ref();
            if list.is_empty() || list.iter().any(|p| !(*p > 0.0 && *p < 100.0)) || list.windows(2).any(|w| w[1] <= w[0]) {
                return Err(cx.err(
                    s.span(),
                    "steps must be rising percentages above 0 and below 100, e.g. [5, 25, 50] (the last passing step ends in the switch)",
                ));
            }
            list.clone()
        }
        None => d.steps,
    };
    let step_duration = match &c.step_duration {
        Some(s) if s.get_ref().0 < Duration::from_secs(1) => return Err(cx.err(s.span(), "step-duration must be at least 1s")),
        Some(s) => s.get_ref().0,
        None => d.step_duration,
    };
    Ok(CanarySettings { steps, step_duration })
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
