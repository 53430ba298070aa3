//! The admin API client behind `canopy status`, `switch`, ...: sends one
//! request, reads the typed reply the admin API defines (canopy-admin's
//! reply and view types), prints text (or the JSON with `--json`), and fails
//! with the server's reason.

use std::collections::BTreeMap;

use canopy_admin::{
    CanaryView, DeployReply, DeployStep, ErrorReply, Event, FlipReply, GuardView, Readiness, ReleaseView, ReloadReply, Report, RetireReply,
    StatusView, TlsView,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::{CanaryAction, ClientOpts, Cmd, GoLiveOpts, TlsAction};

/// A refusal or transport failure, printed by main.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The admin API could not be reached.
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The admin API refused; the text is its explanation.
    #[error("{0}")]
    Refused(String),
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(o: &ClientOpts) -> Result<Self, ClientError> {
        let token = match &o.token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| ClientError::Usage(format!("cannot read token file {}: {e}", p.display())))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let http = reqwest::Client::builder().no_proxy().build().map_err(|e| ClientError::Usage(e.to_string()))?;
        Ok(Self { http, base: o.admin.trim_end_matches('/').to_string(), token })
    }

    /// Sends one request; the status and the body as JSON (a non-JSON body
    /// becomes a JSON string).
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value), ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let actor = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        req = req.header("x-canopy-actor", actor);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable { url: url.clone(), reason: e.to_string() })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| ClientError::Unreachable { url, reason: e.to_string() })?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }
}

/// Reads a reply as its type; a reply of another shape is reported as such.
fn typed<T: DeserializeOwned>(v: &Value) -> Result<T, ClientError> {
    T::deserialize(v).map_err(|e| ClientError::Refused(format!("unexpected reply from the admin API ({e}): {v}")))
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn print_report(r: &Report) -> String {
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let mut out = format!("validation of {} ({}): {verdict} in {} ms\n", r.release, r.mode, r.duration_ms);
    for c in &r.checks {
        let mark = if c.passed { "ok  " } else { "FAIL" };
        let target = c.target.as_ref().map(|t| format!(" @{t}")).unwrap_or_default();
        out += &format!("  {mark} {}/{}{target}: {} ({} ms, {} attempt(s))\n", c.service, c.check, c.reason, c.duration_ms, c.attempts);
        if let Some(o) = c.output.as_deref().filter(|o| !o.trim().is_empty() && !c.passed) {
            for line in o.lines().take(10) {
                out += &format!("         | {line}\n");
            }
        }
    }
    out
}

fn print_steps(steps: &[DeployStep]) -> String {
    let mut out = String::new();
    for st in steps {
        let service = st.service.as_ref().map(|s| format!(" {s}")).unwrap_or_default();
        out += &format!("  {:<9}{service:<12} {} ({:.0} ms)\n", st.step, st.detail, st.ms);
    }
    out
}

fn print_containers(status: &StatusView) -> String {
    let mut out = String::new();
    if let Some(d) = &status.docker {
        out += &format!("containers (engine: {}):\n", d.engine);
        for c in &d.containers {
            let health = if c.health == canopy_docker::Health::None { String::new() } else { format!(", {}", c.health) };
            out += &format!("  {:<28} {:<10} {}{health}  {}\n", c.name, c.release, c.state, c.image);
            if let Some(p) = &c.problem {
                out += &format!("      REFUSED: {p}\n");
            }
        }
    }
    for a in status.alerts.iter().flatten() {
        out += &format!("ALERT: {a}\n");
    }
    out
}

fn print_releases(releases: &[ReleaseView]) -> String {
    let mut out = String::new();
    for r in releases {
        out += &format!("  {:<16} {:<10} inflight {}\n", r.name, r.state.as_str(), r.inflight);
        for (svc, b) in &r.services {
            out += &format!("      {svc:<12} {}", if b.addresses.is_empty() { "-".into() } else { b.addresses.join(", ") });
            if !b.unresolved.is_empty() {
                out += &format!("  (unresolved: {})", b.unresolved.join("; "));
            }
            out += "\n";
        }
        for c in &r.containers {
            let state = match &c.why {
                Some(why) => why.clone(),
                None if c.health == canopy_docker::Health::None => c.state.to_string(),
                None => format!("{}, {}", c.state, c.health),
            };
            out += &format!("      {:<12} {} {state}\n", c.service, c.name);
        }
    }
    out
}

fn print_status(v: &StatusView) -> String {
    let mut out = format!("live:       {}\ngeneration: {}\n", or_dash(v.live.as_ref()), v.generation);
    if let Some(p) = &v.previous {
        out += &format!("previous:   {} (warm, retired in {:.0}s)\n", p.release, p.seconds_left);
        out += &match &p.watch {
            None => "            not checked yet\n".to_string(),
            Some(w) if w.passed => format!("            healthy ({} checks passed)\n", w.checks.len()),
            Some(w) => {
                let failed: Vec<String> =
                    w.checks.iter().filter(|c| !c.passed).map(|c| format!("{}/{}: {}", c.service, c.check, c.reason)).collect();
                format!("            UNHEALTHY (a rollback will re-check first): {}\n", failed.join("; "))
            }
        };
    }
    if v.switch_in_progress {
        out += "a switch is in progress\n";
    }
    if let Some(c) = &v.canary {
        out += &print_canary(c);
    }
    if let Some(g) = &v.guard {
        out += &print_guard(g);
    }
    out + "releases:\n" + &print_releases(&v.releases) + &print_containers(v)
}

fn print_canary(c: &CanaryView) -> String {
    let steps: Vec<String> = c.steps.iter().map(|s| format!("{s}%")).collect();
    let ends = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(c.step_ends_at));
    let guard = if c.guarded { "judged by the guard" } else { "not judged" };
    format!(
        "canary: {}% of the traffic to {} (step {} of {}: {}), {guard}; this step ends at {ends}\n",
        c.weight,
        c.release,
        c.step + 1,
        c.steps.len(),
        steps.join(", ")
    )
}

fn print_readiness(r: &Readiness) -> String {
    if r.ready {
        format!("rollback-ready: yes ({} passed its checks after {} started)\n", r.release, r.candidate)
    } else {
        format!("rollback-ready: NO ({})\n", r.why)
    }
}

fn print_guard(g: &GuardView) -> String {
    let mut out = if g.enabled { String::new() } else { "guard: off ([releases.guard] enabled = false)\n".to_string() };
    match &g.watching {
        Some(w) => {
            out += &format!(
                "guard: watching {} against {} ({}; {} evaluations, {} with enough answers; {} of {} bad in a row)\n",
                w.release, w.against, w.kind, w.evaluations, w.conclusive, w.consecutive_bad, w.failure_limit
            );
            for s in w.last.iter().flat_map(|e| &e.services) {
                let latency = |l: Option<f64>| l.map_or_else(|| "-".to_string(), |l| format!("{:.1} ms", l * 1e3));
                let base = s.baseline.as_ref().map_or_else(
                    || "no baseline".to_string(),
                    |b| format!("{}: {} answers, {:.2}% errors, {}", w.against, b.requests, b.error_ratio * 100.0, latency(b.latency)),
                );
                let verdict = if s.inconclusive {
                    "too few answers".to_string()
                } else if s.broken.is_empty() {
                    "ok".to_string()
                } else {
                    s.broken.iter().map(|b| b.evidence.clone()).collect::<Vec<_>>().join("; ")
                };
                out += &format!(
                    "  {:<12} {} answers, {:.2}% errors, {} | {base} | {verdict}\n",
                    s.service,
                    s.candidate.requests,
                    s.candidate.error_ratio * 100.0,
                    latency(s.candidate.latency)
                );
            }
        }
        None if g.enabled => out += "guard: watching nothing (no release went live since the previous one retired)\n",
        None => {}
    }
    if let Some(v) = &g.verdict {
        let at = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(v.at));
        out += &match &v.refused {
            None => format!("last verdict: {} of {} at {at}: {}\n", v.action, v.release, v.evidence),
            Some(why) => format!("ALERT: {} is bad ({}) but the {} was refused: {why}\n", v.release, v.evidence, v.action),
        };
    }
    if let Some(r) = &g.rollback_ready {
        out += &print_readiness(r);
    }
    out
}

fn print_flip(verb: &str, r: &FlipReply) -> String {
    if let Some(c) = &r.canary {
        return format!("{}live stays {} (generation {})\n", print_canary(c), r.live, r.generation);
    }
    let mut out = format!("{verb} to {} (generation {}) in {:.1} ms", r.live, r.generation, r.duration_ms);
    if r.forced {
        out += " — FORCED, validation skipped";
    }
    if let Some(p) = &r.previous {
        out += &format!("\nprevious release {} stays warm for the validation window", p.release);
    }
    for c in &r.containers {
        let done = if c.action == "start" { "started" } else { "stopped" };
        out += &format!("\n{done} {} ({}, overlap = false) in {:.0} ms", c.name, c.service, c.ms);
    }
    out += "\n";
    if let Some(ready) = &r.rollback_ready {
        out += &print_readiness(ready);
    }
    for w in &r.warnings {
        out += &format!("WARNING: {w}\n");
    }
    out
}

fn print_events(events: &[Event]) -> String {
    let mut out = String::new();
    for e in events {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at);
        out += &format!(
            "{} {:<12} {:<8} {} -> {} by {}{} {}\n",
            humantime::format_rfc3339_seconds(at),
            e.action,
            e.result,
            or_dash(e.from.as_ref()),
            or_dash(e.to.as_ref()),
            e.actor,
            if e.forced { " (forced)" } else { "" },
            e.detail
        );
    }
    out
}

fn print_tls(action: TlsAction, v: &TlsView) -> String {
    let mut out = if action == TlsAction::Reload { "certificates reloaded\n".to_string() } else { String::new() };
    for c in &v.certificates {
        let days = c.expires_in_secs as f64 / 86400.0;
        out += &format!("{:<40} expires {} ({days:.1} days)  {}\n", c.names.join(", "), c.not_after, c.source);
    }
    if let Some(e) = &v.last_reload_error {
        out += &format!("last reload refused: {e}\n");
    }
    // ACME's state is its own document (canopy-acme), read as JSON
    for a in v.acme.as_array().into_iter().flatten() {
        let names: Vec<String> = a["names"].as_array().into_iter().flatten().map(|n| n.as_str().unwrap_or_default().to_string()).collect();
        out += &format!("acme {}: renews {}", names.join(", "), a["renew_at"].as_str().unwrap_or("-"));
        if let Some(e) = a["last_error"].as_str() {
            out += &format!("; LAST RENEWAL FAILED: {e} (next try {})", a["next_attempt"].as_str().unwrap_or("-"));
        }
        out += "\n";
    }
    out
}

/// The text for a successful reply to `cmd`.
fn human(cmd: &Cmd, v: &Value) -> Result<String, ClientError> {
    Ok(match cmd {
        Cmd::Status(_) => print_status(&typed(v)?),
        Cmd::Releases(_) => {
            let status: StatusView = typed(v)?;
            print_releases(&status.releases) + &print_containers(&status)
        }
        Cmd::Deploy { name, .. } => {
            let r: DeployReply = typed(v)?;
            let mut out = format!("deploying {name}\n{}", print_steps(&r.steps));
            if let Some(c) = &r.canary {
                return Ok(out + &print_canary(c));
            }
            out += &format!("{name} is live (generation {}) after {:.1} s", r.generation, r.duration_ms / 1e3);
            if let Some(p) = &r.previous {
                out += &format!("; {p} stays warm for the validation window, then its containers are stopped");
            }
            out += "\n";
            if let Some(ready) = &r.rollback_ready {
                out += &print_readiness(ready);
            }
            for w in &r.warnings {
                out += &format!("WARNING: {w}\n");
            }
            out
        }
        Cmd::Register { name, .. } => format!("registered {name}\n{}", print_releases(&[typed(v)?])),
        Cmd::Check { .. } => print_report(&typed(v)?),
        Cmd::Switch { .. } => print_flip("switched", &typed(v)?),
        Cmd::Rollback { .. } => print_flip("rolled back", &typed(v)?),
        Cmd::Retire { name, .. } => {
            let r: RetireReply = typed(v)?;
            let mut out = format!("retired {name} (drained: {})\n", r.drained);
            for h in &r.hooks {
                out += &format!("  hook {}: {}\n", serde_json::to_string(&h.argv).unwrap_or_default(), h.reason);
            }
            out
        }
        Cmd::Events(_) => print_events(&typed::<Vec<Event>>(v)?),
        Cmd::Reload(_) => {
            let r: ReloadReply = typed(v)?;
            if r.changes.is_empty() {
                "reloaded: nothing changed\n".into()
            } else {
                format!("reloaded (generation {}): {}\n", r.generation, r.changes.join("; "))
            }
        }
        Cmd::Tls { action, .. } => print_tls(*action, &typed(v)?),
        Cmd::Guard(_) => print_guard(&typed(v)?),
        Cmd::Canary { action: CanaryAction::Show, .. } => match typed::<Option<CanaryView>>(v)? {
            Some(c) => print_canary(&c),
            None => "no canary is running\n".to_string(),
        },
        Cmd::Canary { action: CanaryAction::Promote, .. } => print_flip("promoted: switched", &typed(v)?),
        Cmd::Canary { action: CanaryAction::Abort, .. } => {
            format!("canary aborted: everyone is on {} again\n", typed::<FlipReply>(v)?.live)
        }
        Cmd::Serve { .. } | Cmd::CheckConfig { .. } => String::new(),
    })
}

/// The text for a refusal: the reason, then the deploy's steps and the
/// failed validation where the reply has them.
fn refusal(status: u16, v: &Value) -> String {
    let Ok(e) = ErrorReply::deserialize(v) else { return format!("refused ({status}): {v}") };
    let mut msg = format!("refused ({status}): {}", e.error);
    if let Some(steps) = &e.steps {
        msg += "\n";
        msg += &print_steps(steps);
    }
    if let Some(report) = &e.report {
        msg += "\n";
        msg += &print_report(report);
    }
    msg
}

/// Adds `--canary` and `--no-guard` to a switch or deploy body.
fn go_live(body: &mut Value, live: &GoLiveOpts) {
    if let Some(steps) = &live.canary {
        body["canary"] = json!(steps);
    }
    if live.no_guard {
        body["guard"] = json!(false);
    }
}

fn backends(list: &[String]) -> Result<Value, ClientError> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in list {
        let (svc, addr) = b.split_once('=').ok_or_else(|| ClientError::Usage(format!("--backend `{b}`: expected SERVICE=HOST:PORT")))?;
        map.entry(svc.to_string()).or_default().push(addr.to_string());
    }
    Ok(json!({ "backends": map }))
}

/// Runs one client command; `Ok` carries what to print.
pub async fn run(cmd: Cmd) -> Result<String, ClientError> {
    use reqwest::Method;
    let (opts, method, path, body) = match &cmd {
        Cmd::Status(o) => (o, Method::GET, "/status".to_string(), None),
        // the text form also shows the containers, which /status carries
        Cmd::Releases(o) => (o, Method::GET, if o.json { "/releases" } else { "/status" }.into(), None),
        Cmd::Events(o) => (o, Method::GET, "/events".into(), None),
        Cmd::Register { name, backends: b, opts } => (opts, Method::PUT, format!("/releases/{name}"), Some(backends(b)?)),
        Cmd::Check { name, opts } => (opts, Method::POST, format!("/releases/{name}/check"), None),
        Cmd::Switch { name, flip, live, opts } => {
            let mut body = json!({ "release": name, "force": flip.force, "expect_generation": flip.expect_generation });
            go_live(&mut body, live);
            (opts, Method::POST, "/switch".into(), Some(body))
        }
        Cmd::Deploy { name, keep_failed, live, opts } => {
            let mut body = json!({ "release": name, "keep_failed": keep_failed });
            go_live(&mut body, live);
            (opts, Method::POST, "/deploy".into(), Some(body))
        }
        Cmd::Guard(o) => (o, Method::GET, "/guard".into(), None),
        Cmd::Canary { action: CanaryAction::Show, opts } => (opts, Method::GET, "/canary".into(), None),
        Cmd::Canary { action: CanaryAction::Promote, opts } => (opts, Method::POST, "/canary/promote".into(), None),
        Cmd::Canary { action: CanaryAction::Abort, opts } => (opts, Method::POST, "/canary/abort".into(), None),
        Cmd::Rollback { flip, opts } => {
            (opts, Method::POST, "/rollback".into(), Some(json!({ "force": flip.force, "expect_generation": flip.expect_generation })))
        }
        Cmd::Retire { name, opts } => (opts, Method::DELETE, format!("/releases/{name}"), None),
        Cmd::Reload(o) => (o, Method::POST, "/reload".into(), None),
        Cmd::Tls { action: TlsAction::Show, opts } => (opts, Method::GET, "/tls".into(), None),
        Cmd::Tls { action: TlsAction::Reload, opts } => (opts, Method::POST, "/tls/reload".into(), None),
        Cmd::Serve { .. } | Cmd::CheckConfig { .. } => unreachable!("not a client command"),
    };
    let client = Client::new(opts)?;
    let (status, v) = client.call(method, &path, body).await?;
    let failed_check = matches!(cmd, Cmd::Check { .. }) && v["passed"].as_bool() == Some(false);
    if opts.json {
        let text = serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
        return if status >= 400 || failed_check { Err(ClientError::Refused(text)) } else { Ok(text) };
    }
    if status >= 400 {
        return Err(ClientError::Refused(refusal(status, &v)));
    }
    let text = human(&cmd, &v)?;
    if failed_check {
        return Err(ClientError::Refused(text));
    }
    Ok(text)
}
