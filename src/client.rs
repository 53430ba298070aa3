//! The admin API client behind `canopy status`, `switch`, ...: finds the
//! admin API (`target.rs`: flags, environment, config file), sends one
//! request, reads the typed reply the admin API defines (canopy-admin's
//! reply and view types), prints text (`text.rs`) or the JSON with
//! `--json`, and fails with the server's reason or with what fixes the
//! connection: every connection or authentication error names the flag or
//! variable to set.

use std::collections::BTreeMap;

use canopy_admin::{
    CanaryView, DeployReply, ErrorReply, Event, FlipReply, MaintenanceReply, PauseView, ReleaseView, ReloadReply, RetireReply, StatusView,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::{CanaryAction, ClientOpts, Cmd, GoLiveOpts, MaintenanceAction, TlsAction};

mod target;
mod text;

pub use target::{admin_url, find as find_target, Origin, Target, TargetError, DEFAULT_ADMIN, FIX_ADMIN, FIX_TOKEN};

/// A refusal or transport failure, printed by main.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad arguments, or no way to reach the admin API (the message says which setting).
    #[error("{0}")]
    Usage(String),
    /// The admin API could not be reached, or what answered is not it.
    #[error("{0}")]
    Unreachable(String),
    /// The admin API refused; the text is its explanation.
    #[error("{0}")]
    Refused(String),
    /// With `--json`: the refusal (or the client's own error) as a JSON
    /// object, printed on stdout.
    #[error("{0}")]
    Json(String),
}

/// One reply of the admin API (or of whatever answered).
struct Reply {
    status: u16,
    body: Value,
    /// The `x-canopy-release` header: only canopy's proxy port sends it.
    release_header: Option<String>,
}

struct Client {
    http: reqwest::Client,
    target: Target,
}

/// The innermost cause of a transport error ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

impl Client {
    fn new(target: Target) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder().no_proxy().build().map_err(|e| ClientError::Usage(e.to_string()))?;
        Ok(Self { http, target })
    }

    /// Sends one request; the status and the body as JSON (a non-JSON body
    /// becomes a JSON string).
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Reply, ClientError> {
        let url = format!("{}{}", self.target.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.target.token {
            req = req.bearer_auth(t);
        }
        let actor = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        req = req.header("x-canopy-actor", actor);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let unreachable = |e: reqwest::Error| {
            ClientError::Unreachable(format!(
                "cannot reach canopy's admin API at {} ({}): {}. Is canopy running there? {FIX_ADMIN}",
                self.target.base,
                self.target.base_from,
                root_cause(&e)
            ))
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let release_header = resp.headers().get(canopy_proxy::RELEASE_HEADER).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let text = resp.text().await.map_err(unreachable)?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply { status, body, release_header })
    }

    /// Whether what answers is canopy's admin API: its `GET /healthz` says
    /// `{"status": "ok", "generation": N, ...}` and no `x-canopy-release`.
    async fn is_admin(&self) -> bool {
        match self.call(reqwest::Method::GET, "/healthz", None).await {
            Ok(r) => r.status == 200 && r.release_header.is_none() && r.body["status"] == "ok" && r.body["generation"].is_u64(),
            Err(_) => false,
        }
    }

    /// The error for a server that is not canopy's admin API.
    fn not_admin(&self, path: &str, reply: &Reply) -> ClientError {
        let what = match &reply.release_header {
            Some(release) => format!(
                "is canopy's proxy port, not its admin API: it answered {path} with `x-canopy-release: {release}` \
                 (the admin API listens on `[admin] listen`, by default 127.0.0.1:9901)"
            ),
            None => format!("is not canopy's admin API (it answered {path} with {}{})", reply.status, excerpt(&reply.body)),
        };
        ClientError::Unreachable(format!("{} ({}) {what}. {FIX_ADMIN}", self.target.base, self.target.base_from))
    }

    /// The error for a 401: no token given, or the one given refused.
    fn unauthorized(&self) -> ClientError {
        ClientError::Refused(match &self.target.token_from {
            None => format!("refused (401): the admin API at {} requires a token and none was given; {FIX_TOKEN}", self.target.base),
            Some((file, from)) => format!(
                "refused (401): the admin API at {} refused the token in {} ({from}); is that the `token-file` of the canopy at {} ({})? {FIX_TOKEN}",
                self.target.base,
                file.display(),
                self.target.base,
                self.target.base_from
            ),
        })
    }
}

/// A short view of an unexpected body, for messages.
fn excerpt(v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let text: String = text.chars().filter(|c| !c.is_control()).take(80).collect();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// Reads a reply as its type; a reply of another shape is reported as such.
fn typed<T: DeserializeOwned>(v: &Value) -> Result<T, ClientError> {
    T::deserialize(v).map_err(|e| ClientError::Refused(format!("unexpected reply from the admin API ({e}): {v}")))
}

/// The text for a successful reply to `cmd`.
fn human(cmd: &Cmd, v: &Value) -> Result<String, ClientError> {
    Ok(match cmd {
        Cmd::Status(_) => text::status(&typed(v)?, canopy_admin::now_ms()),
        Cmd::Releases(_) => {
            let status: StatusView = typed(v)?;
            text::alerts(&status) + &text::releases(&status.releases) + &text::containers(&status)
        }
        Cmd::Deploy { name, .. } => {
            let r: DeployReply = typed(v)?;
            let mut out = format!("deploying {name}\n{}", text::steps(&r.steps));
            if let Some(c) = &r.canary {
                return Ok(out + &text::canary(c));
            }
            out += &format!("{name} is live (generation {}) after {:.1} s", r.generation, r.duration_ms / 1e3);
            if let Some(p) = &r.previous {
                out += &format!("; {p} stays warm for the validation window, then its containers are stopped");
            }
            out + "\n" + &text::readiness_and_warnings(r.rollback_ready.as_ref(), &r.warnings)
        }
        Cmd::Register { name, .. } => format!("registered {name}\n{}", text::releases(&[typed::<ReleaseView>(v)?])),
        Cmd::Check { .. } => text::report(&typed(v)?),
        Cmd::Switch { .. } => text::flip("switched", &typed(v)?),
        Cmd::Rollback { .. } => text::flip("rolled back", &typed(v)?),
        Cmd::Retire { name, .. } => {
            let r: RetireReply = typed(v)?;
            let mut out = format!("retired {name} (drained: {})\n", r.drained);
            for h in &r.hooks {
                out += &format!("  hook {}: {}\n", serde_json::to_string(&h.argv).unwrap_or_default(), h.reason);
            }
            out
        }
        Cmd::Events(_) => text::events(&typed::<Vec<Event>>(v)?),
        Cmd::Reload(_) => {
            let r: ReloadReply = typed(v)?;
            if r.changes.is_empty() {
                "reloaded: nothing changed\n".into()
            } else {
                format!("reloaded (generation {}): {}\n", r.generation, r.changes.join("; "))
            }
        }
        Cmd::Tls { action, .. } => text::tls(*action, &typed(v)?),
        Cmd::Guard(_) => text::guard(&typed(v)?),
        Cmd::Canary { action: CanaryAction::Show, .. } => match typed::<Option<CanaryView>>(v)? {
            Some(c) => text::canary(&c),
            None => "no canary is running\n".to_string(),
        },
        Cmd::Canary { action: CanaryAction::Promote, .. } => text::flip("promoted: switched", &typed(v)?),
        Cmd::Canary { action: CanaryAction::Abort, .. } => {
            format!("canary aborted: everyone is on {} again\n", typed::<FlipReply>(v)?.live)
        }
        Cmd::Maintenance { .. } => text::maintenance(&typed::<MaintenanceReply>(v)?),
        Cmd::Pause { .. } => text::paused(&typed(v)?),
        Cmd::Resume(_) => match typed::<Option<PauseView>>(v)? {
            Some(p) => format!("resumed: {} request(s) were held, {} answered 503\n", p.held_total, p.refused),
            None => "not paused: nothing to resume\n".into(),
        },
        Cmd::Serve { .. } | Cmd::CheckConfig { .. } => String::new(),
    })
}

/// `--until` as RFC 3339: a time as given, or a span (`30m`) from now.
fn until(u: &str) -> Result<String, ClientError> {
    if humantime::parse_rfc3339_weak(u).is_ok() {
        return Ok(u.to_string());
    }
    let span = humantime::parse_duration(u)
        .map_err(|_| ClientError::Usage(format!("--until `{u}`: write a time (2026-12-06T10:00:00Z) or a span from now (30m)")))?;
    Ok(humantime::format_rfc3339_seconds(std::time::SystemTime::now() + span).to_string())
}

/// Adds `--canary`, `--no-guard` and `--pause` to a switch or deploy body.
fn go_live(body: &mut Value, live: &GoLiveOpts) {
    if let Some(steps) = &live.canary {
        body["canary"] = json!(steps);
    }
    if live.no_guard {
        body["guard"] = json!(false);
    }
    if live.pause {
        body["pause"] = json!(true);
        body["pause_max"] = json!(live.pause_max);
    }
}

fn backends(list: &[String]) -> Result<BTreeMap<String, Vec<String>>, ClientError> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in list {
        let (svc, addr) = b.split_once('=').ok_or_else(|| ClientError::Usage(format!("--backend `{b}`: expected SERVICE=HOST:PORT")))?;
        map.entry(svc.to_string()).or_default().push(addr.to_string());
    }
    Ok(map)
}

/// The request a client command sends: its options, method, path and body.
type Request<'a> = (&'a ClientOpts, reqwest::Method, String, Option<Value>);

fn request(cmd: &Cmd) -> Result<Request<'_>, ClientError> {
    use reqwest::Method;
    Ok(match cmd {
        Cmd::Status(o) => (o, Method::GET, "/status".to_string(), None),
        // the text form also shows the containers, which /status carries
        Cmd::Releases(o) => (o, Method::GET, if o.json { "/releases" } else { "/status" }.into(), None),
        Cmd::Events(o) => (o, Method::GET, "/events".into(), None),
        Cmd::Register { name, backends: b, allow_unresolved, opts } => {
            let body = json!({ "backends": backends(b)?, "allow_unresolved": allow_unresolved });
            (opts, Method::PUT, format!("/releases/{name}"), Some(body))
        }
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
        Cmd::Pause { max, max_held, opts } => (opts, Method::POST, "/pause".into(), Some(json!({ "max": max, "max_held": max_held }))),
        Cmd::Resume(o) => (o, Method::POST, "/resume".into(), None),
        Cmd::Maintenance { action: MaintenanceAction::Show, opts, .. } => (opts, Method::GET, "/maintenance".into(), None),
        Cmd::Maintenance { action: MaintenanceAction::On, message, until: u, opts } => {
            let until = u.as_deref().map(until).transpose()?;
            (opts, Method::POST, "/maintenance".into(), Some(json!({ "message": message, "until": until })))
        }
        Cmd::Maintenance { action: MaintenanceAction::Off, message, until, opts } => {
            if message.is_some() || until.is_some() {
                return Err(ClientError::Usage("--message and --until go with `canopy maintenance on`".into()));
            }
            (opts, Method::DELETE, "/maintenance".into(), None)
        }
        Cmd::Serve { .. } | Cmd::CheckConfig { .. } => unreachable!("not a client command"),
    })
}

/// Runs one client command; `Ok` carries what to print on stdout. With
/// `--json` every failure is [`ClientError::Json`]: the admin API's own
/// error object, or `{"error": ...}` for the client's.
pub async fn run(cmd: Cmd) -> Result<String, ClientError> {
    let json = client_opts(&cmd).is_some_and(|o| o.json);
    let result = run_text(&cmd).await;
    match result {
        Err(ClientError::Json(_)) | Ok(_) => result,
        Err(e) if json => Err(ClientError::Json(pretty(&json!({ "error": e.to_string() })))),
        Err(e) => Err(e),
    }
}

/// The options of a client command (`None` for `serve` and `check-config`).
fn client_opts(cmd: &Cmd) -> Option<&ClientOpts> {
    match cmd {
        Cmd::Status(o) | Cmd::Releases(o) | Cmd::Events(o) | Cmd::Reload(o) | Cmd::Guard(o) | Cmd::Resume(o) => Some(o),
        Cmd::Register { opts, .. }
        | Cmd::Check { opts, .. }
        | Cmd::Switch { opts, .. }
        | Cmd::Deploy { opts, .. }
        | Cmd::Rollback { opts, .. }
        | Cmd::Retire { opts, .. }
        | Cmd::Tls { opts, .. }
        | Cmd::Canary { opts, .. }
        | Cmd::Maintenance { opts, .. }
        | Cmd::Pause { opts, .. } => Some(opts),
        Cmd::Serve { .. } | Cmd::CheckConfig { .. } => None,
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

async fn run_text(cmd: &Cmd) -> Result<String, ClientError> {
    let (opts, method, path, body) = request(cmd)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let target = target::find(opts, &env).map_err(|e| ClientError::Usage(e.to_string()))?;
    let client = Client::new(target)?;
    let reply = client.call(method.clone(), &path, body).await?;
    let what = format!("{method} {path}");
    if reply.release_header.is_some() {
        return Err(client.not_admin(&what, &reply));
    }
    if reply.status == 401 {
        return Err(client.unauthorized());
    }
    if reply.status >= 400 {
        // the proxy port answers 404 (no route), 502-504 itself; so may any other server
        let refusal = ErrorReply::deserialize(&reply.body).ok();
        if (refusal.is_none() || matches!(reply.status, 404 | 405 | 502..=504)) && !client.is_admin().await {
            return Err(client.not_admin(&what, &reply));
        }
        return Err(match (opts.json, refusal) {
            (true, _) => ClientError::Json(pretty(&reply.body)),
            (false, Some(e)) => ClientError::Refused(text::refusal(reply.status, &e)),
            (false, None) => ClientError::Refused(format!("refused ({}): {}", reply.status, reply.body)),
        });
    }
    let text = match human(cmd, &reply.body) {
        Ok(text) => text,
        Err(e) if client.is_admin().await => return Err(e),
        Err(_) => return Err(client.not_admin(&what, &reply)),
    };
    let failed_check = matches!(cmd, Cmd::Check { .. }) && reply.body["passed"].as_bool() == Some(false);
    match (opts.json, failed_check) {
        (true, false) => Ok(pretty(&reply.body)),
        (true, true) => Err(ClientError::Json(pretty(&reply.body))),
        (false, false) => Ok(text),
        (false, true) => Err(ClientError::Refused(text)),
    }
}
