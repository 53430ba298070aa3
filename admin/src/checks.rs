//! Validation checks: their definitions (one validator, used for proxy.toml
//! and anything else that builds them) and how one attempt of each runs.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use canopy_proxy::{ReleaseName, ServiceName};

/// Output of a command check kept in the report, in bytes.
const OUTPUT_LIMIT: usize = 4096;
/// Response body bytes read from an HTTP check.
const BODY_LIMIT: usize = 1 << 20;

/// One configured check of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Name shown in reports and metrics (defaults to kind and path).
    pub name: String,
    /// What to do.
    pub kind: CheckKind,
    /// Limit for one attempt.
    pub timeout: Duration,
    /// Extra attempts after a failure.
    pub retries: u32,
    /// Pause between attempts.
    pub interval: Duration,
}

/// The four kinds of check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// GET `path` on every backend; pass on `expect_status` (and body substring).
    Http {
        /// Request path, e.g. `/health`.
        path: String,
        /// Required status.
        expect_status: u16,
        /// Required body substring.
        expect_body: Option<String>,
    },
    /// POST a GraphQL `query` to `path`; pass only if the JSON answer has
    /// `data` and no `errors`.
    Graphql {
        /// Endpoint path, e.g. `/shop-api`.
        path: String,
        /// The query document.
        query: String,
    },
    /// A sequence of requests, each with an expected status and body substring.
    Smoke {
        /// The requests, in order.
        requests: Vec<SmokeRequest>,
    },
    /// Run a program (argv, `{release}` and `{service}` substituted); exit 0 passes.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

/// One request of a smoke check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmokeRequest {
    /// HTTP method.
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    /// Request body (sent as is).
    pub body: Option<String>,
    /// Required status.
    pub expect_status: u16,
    /// Required body substring.
    pub expect_body: Option<String>,
}

/// Why a check definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid check: {0}")]
pub struct CheckError(pub String);

/// Rule: a request path starts with `/` and has no spaces or control characters.
pub fn validate_path(path: &str) -> Result<(), CheckError> {
    if !path.starts_with('/') || path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(CheckError(format!("path `{path}` must start with `/` and contain no spaces")));
    }
    Ok(())
}

/// Rule: a status code is in 100..=599.
pub fn validate_status(status: u16) -> Result<(), CheckError> {
    if !(100..=599).contains(&status) {
        return Err(CheckError(format!("status {status} is not an HTTP status (100-599)")));
    }
    Ok(())
}

impl Check {
    /// Validates a check definition (the one validator for every source).
    pub fn validate(&self) -> Result<(), CheckError> {
        if self.timeout.is_zero() {
            return Err(CheckError("timeout must be greater than zero".into()));
        }
        match &self.kind {
            CheckKind::Http { path, expect_status, .. } => {
                validate_path(path)?;
                validate_status(*expect_status)
            }
            CheckKind::Graphql { path, query } => {
                validate_path(path)?;
                if query.trim().is_empty() {
                    return Err(CheckError("graphql query is empty".into()));
                }
                Ok(())
            }
            CheckKind::Smoke { requests } => {
                if requests.is_empty() {
                    return Err(CheckError("smoke check has no requests".into()));
                }
                for r in requests {
                    validate_path(&r.path)?;
                    validate_status(r.expect_status)?;
                }
                Ok(())
            }
            CheckKind::Command { argv } => {
                if argv.first().is_none_or(|a| a.is_empty()) {
                    return Err(CheckError("command check needs a program (argv[0])".into()));
                }
                Ok(())
            }
        }
    }

    /// `http`, `graphql`, `smoke` or `command`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            CheckKind::Http { .. } => "http",
            CheckKind::Graphql { .. } => "graphql",
            CheckKind::Smoke { .. } => "smoke",
            CheckKind::Command { .. } => "command",
        }
    }

    /// True for checks that run once per service rather than per backend.
    pub fn per_service(&self) -> bool {
        matches!(self.kind, CheckKind::Command { .. })
    }

    /// The default name: kind plus path or program.
    pub fn default_name(kind: &CheckKind) -> String {
        match kind {
            CheckKind::Http { path, .. } => format!("http {path}"),
            CheckKind::Graphql { path, .. } => format!("graphql {path}"),
            CheckKind::Smoke { requests } => format!("smoke ({} requests)", requests.len()),
            CheckKind::Command { argv } => format!("command {}", argv.first().map_or("", |s| s)),
        }
    }
}

/// What one attempt found: pass or the reason it failed, plus command output.
pub struct Attempt {
    /// Passed?
    pub passed: bool,
    /// Why not (or a note).
    pub reason: String,
    /// Command output.
    pub output: Option<String>,
}

impl Attempt {
    fn pass(reason: impl Into<String>) -> Self {
        Self { passed: true, reason: reason.into(), output: None }
    }
    fn fail(reason: impl Into<String>) -> Self {
        Self { passed: false, reason: reason.into(), output: None }
    }
}

async fn read_body(resp: reqwest::Response) -> Result<String, String> {
    let mut resp = resp;
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading body: {e}"))? {
        buf.extend_from_slice(&chunk);
        if buf.len() >= BODY_LIMIT {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn expect(req: reqwest::RequestBuilder, status: u16, body: Option<&str>) -> Attempt {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Attempt::fail(describe(&e)),
    };
    let got = resp.status().as_u16();
    let text = match read_body(resp).await {
        Ok(t) => t,
        Err(e) => return Attempt::fail(e),
    };
    if got != status {
        return Attempt::fail(format!("status {got}, expected {status}"));
    }
    if let Some(want) = body {
        if !text.contains(want) {
            return Attempt::fail(format!("body does not contain `{want}`"));
        }
    }
    Attempt::pass(format!("status {got}"))
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = e.source();
    while let Some(s) = src {
        if s.source().is_none() {
            msg.push_str(&format!(": {s}"));
        }
        src = s.source();
    }
    msg
}

fn truncate(mut s: String) -> String {
    if s.len() > OUTPUT_LIMIT {
        let mut cut = OUTPUT_LIMIT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Runs one attempt of `check`. `target` is the backend (None for commands).
pub async fn run_once(
    client: &reqwest::Client,
    check: &Check,
    release: &ReleaseName,
    service: &ServiceName,
    target: Option<SocketAddr>,
    timeout: Duration,
) -> Attempt {
    let url = |path: &str| format!("http://{}{}", target.expect("http checks have a target"), path);
    match &check.kind {
        CheckKind::Http { path, expect_status, expect_body } => {
            expect(client.get(url(path)).timeout(timeout), *expect_status, expect_body.as_deref()).await
        }
        CheckKind::Graphql { path, query } => {
            let req = client.post(url(path)).timeout(timeout).json(&serde_json::json!({ "query": query }));
            graphql(req).await
        }
        CheckKind::Smoke { requests } => {
            let deadline = tokio::time::Instant::now() + timeout;
            for (i, r) in requests.iter().enumerate() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let mut req = client.request(r.method.clone(), url(&r.path)).timeout(left);
                if let Some(b) = &r.body {
                    req = req.body(b.clone());
                }
                let a = expect(req, r.expect_status, r.expect_body.as_deref()).await;
                if !a.passed {
                    return Attempt::fail(format!("request {} ({} {}): {}", i + 1, r.method, r.path, a.reason));
                }
            }
            Attempt::pass(format!("{} requests answered as expected", requests.len()))
        }
        CheckKind::Command { argv } => command(argv, release, service, timeout).await,
    }
}

async fn graphql(req: reqwest::RequestBuilder) -> Attempt {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Attempt::fail(describe(&e)),
    };
    let status = resp.status().as_u16();
    let text = match read_body(resp).await {
        Ok(t) => t,
        Err(e) => return Attempt::fail(e),
    };
    let json: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => return Attempt::fail(format!("status {status}, response is not JSON")),
    };
    if let Some(errors) = json.get("errors").and_then(|e| e.as_array()).filter(|e| !e.is_empty()) {
        let first = errors[0].get("message").and_then(|m| m.as_str()).unwrap_or("(no message)");
        return Attempt::fail(format!("{} error(s) in response: {first}", errors.len()));
    }
    match json.get("data") {
        Some(d) if !d.is_null() => {
            if status != 200 {
                return Attempt::fail(format!("status {status}, expected 200"));
            }
            Attempt::pass("data without errors")
        }
        _ => Attempt::fail(format!("status {status}, response has no `data`")),
    }
}

/// Substitutes `{release}` and `{service}` in each argument.
pub fn substitute(argv: &[String], release: &ReleaseName, service: Option<&ServiceName>) -> Vec<String> {
    argv.iter()
        .map(|a| {
            let a = a.replace("{release}", release.as_str());
            match service {
                Some(s) => a.replace("{service}", s.as_str()),
                None => a,
            }
        })
        .collect()
}

/// Runs a program with a deadline (killed on timeout), capturing its output.
/// Shared by command checks and retire hooks.
pub async fn run_program(argv: &[String], timeout: Duration) -> Attempt {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // its own process group, so a timeout can stop everything it started
        .process_group(0)
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Attempt::fail(format!("cannot run `{}`: {e}", argv[0])),
    };
    let pgid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            if let Some(pgid) = pgid {
                kill_group(pgid).await;
            }
            Attempt::fail(format!("timed out after {}", humantime::format_duration(timeout)))
        }
        Ok(Err(e)) => Attempt::fail(format!("waiting for `{}`: {e}", argv[0])),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let output = Some(truncate(text));
            let (passed, reason) = match out.status.code() {
                Some(0) => (true, "exit status 0".to_string()),
                Some(c) => (false, format!("exit status {c}")),
                None => (false, "killed by a signal".to_string()),
            };
            Attempt { passed, reason, output }
        }
    }
}

/// SIGKILLs a process group (a timed-out check or hook and its children).
/// Uses kill(1): this crate forbids `unsafe`, so no direct kill(2) call.
async fn kill_group(pgid: u32) {
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(e) = status {
        log::warn!("could not kill process group {pgid}: {e}");
    }
}

async fn command(argv: &[String], release: &ReleaseName, service: &ServiceName, timeout: Duration) -> Attempt {
    run_program(&substitute(argv, release, Some(service)), timeout).await
}
