//! The `checks = [...]` entries of a `[[service]]`: one table type for every
//! kind, each kind taking only its own fields.

use std::time::Duration;

use canopy_admin::{Check, CheckKind, SmokeRequest};
use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Ctx};
use super::value::{or, Dur};

/// `timeout` of one attempt when unset.
const TIMEOUT: Duration = Duration::from_secs(5);
/// `retries` when unset: extra attempts after a failure.
const RETRIES: u32 = 2;
/// `interval` between attempts when unset.
const INTERVAL: Duration = Duration::from_secs(1);
/// `expect-status` of http checks and smoke requests when unset.
const EXPECT_STATUS: u16 = 200;
/// `method` of a smoke request when unset.
const METHOD: &str = "GET";

/// The kinds of check, as written in `kind`.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum FileCheckKind {
    Http,
    Graphql,
    Smoke,
    Command,
}

impl FileCheckKind {
    /// As written in `kind`.
    pub fn name(self) -> &'static str {
        match self {
            FileCheckKind::Http => "http",
            FileCheckKind::Graphql => "graphql",
            FileCheckKind::Smoke => "smoke",
            FileCheckKind::Command => "command",
        }
    }

    /// The fields this kind takes besides `kind`, `name`, `timeout`,
    /// `retries` and `interval`; the other kinds' fields are refused.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            FileCheckKind::Http => &["path", "expect-status", "expect-body"],
            FileCheckKind::Graphql => &["path", "query"],
            FileCheckKind::Smoke => &["requests"],
            FileCheckKind::Command => &["argv"],
        }
    }
}

/// One check as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileCheck {
    kind: FileCheckKind,
    name: Option<String>,
    path: Option<String>,
    expect_status: Option<u16>,
    expect_body: Option<String>,
    query: Option<String>,
    requests: Option<Vec<FileSmokeRequest>>,
    argv: Option<Vec<String>>,
    timeout: Option<Dur>,
    retries: Option<u32>,
    interval: Option<Dur>,
}

/// One request of a smoke check as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSmokeRequest {
    method: Option<String>,
    path: String,
    body: Option<String>,
    expect_status: Option<u16>,
    expect_body: Option<String>,
}

/// Converts one `checks = [...]` entry, refusing fields that do not apply to its kind.
pub(super) fn check(cx: &Ctx<'_>, c: &Spanned<FileCheck>) -> Result<Check, ConfigError> {
    let f = c.get_ref();
    let err = |m: String| cx.err(c.span(), m);
    let kind_name = f.kind.name();
    let allowed = f.kind.fields();
    let present = [
        ("path", f.path.is_some()),
        ("expect-status", f.expect_status.is_some()),
        ("expect-body", f.expect_body.is_some()),
        ("query", f.query.is_some()),
        ("requests", f.requests.is_some()),
        ("argv", f.argv.is_some()),
    ];
    if let Some((k, _)) = present.iter().find(|(k, p)| *p && !allowed.contains(k)) {
        return Err(err(format!("`{k}` does not apply to {kind_name} checks (they take: {})", allowed.join(", "))));
    }
    let need = |v: &Option<String>, k: &str| v.clone().ok_or_else(|| err(format!("{kind_name} checks need `{k}`")));
    let kind = match f.kind {
        FileCheckKind::Http => CheckKind::Http {
            path: need(&f.path, "path")?,
            expect_status: f.expect_status.unwrap_or(EXPECT_STATUS),
            expect_body: f.expect_body.clone(),
        },
        FileCheckKind::Graphql => CheckKind::Graphql { path: need(&f.path, "path")?, query: need(&f.query, "query")? },
        FileCheckKind::Smoke => {
            let mut requests = Vec::new();
            for r in f.requests.as_deref().unwrap_or_default() {
                let method = r.method.as_deref().unwrap_or(METHOD);
                let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    .map_err(|_| err(format!("invalid HTTP method `{method}`")))?;
                requests.push(SmokeRequest {
                    method,
                    path: r.path.clone(),
                    body: r.body.clone(),
                    expect_status: r.expect_status.unwrap_or(EXPECT_STATUS),
                    expect_body: r.expect_body.clone(),
                });
            }
            CheckKind::Smoke { requests }
        }
        FileCheckKind::Command => CheckKind::Command { argv: f.argv.clone().unwrap_or_default() },
    };
    let check = Check {
        name: f.name.clone().unwrap_or_else(|| Check::default_name(&kind)),
        kind,
        timeout: or(f.timeout, TIMEOUT),
        retries: f.retries.unwrap_or(RETRIES),
        interval: or(f.interval, INTERVAL),
    };
    check.validate().map_err(|e| err(e.to_string()))?;
    Ok(check)
}
