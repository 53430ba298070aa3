//! The admin HTTP API: translates requests into controller calls and
//! errors into status codes. It decides nothing itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use canopy_proxy::{Endpoint, ReleaseName, ServiceName};
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::api_error::ApiError;
use crate::auth::Guard;
use crate::controller::Controller;
use crate::replies::MaintenanceReply;
use crate::requests::{DeployRequest, SwitchRequest};

/// Largest admin request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The OpenAPI 3 description of this API, served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The status page served at `GET /`.
pub const STATUS_PAGE: &str = include_str!("status.html");

/// Body of `PUT /releases/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    #[serde(default)]
    backends: BTreeMap<ServiceName, Vec<Endpoint>>,
    /// Register even if a backend's host name does not resolve (yet).
    #[serde(default)]
    allow_unresolved: bool,
}

/// Body of `POST /switch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    release: ReleaseName,
    #[serde(default)]
    expect_generation: Option<u64>,
    #[serde(default)]
    force: bool,
    /// `false`: no guard after this switch.
    #[serde(default)]
    guard: Option<bool>,
    /// Canary steps in percent (`[]`: the configured ones) instead of a switch.
    #[serde(default)]
    canary: Option<Vec<f64>>,
    /// Hold traffic around the flip (and `[releases] migrate`).
    #[serde(default)]
    pause: bool,
    /// With `pause`: the longest hold (`"30s"` when absent).
    #[serde(default)]
    pause_max: Option<String>,
}

/// Body of `POST /pause` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    /// The longest hold, e.g. `"30s"` (`"30s"` when absent).
    #[serde(default)]
    max: Option<String>,
    /// The most requests held at once (then 503).
    #[serde(default)]
    max_held: Option<usize>,
}

/// A pause's longest hold when none is given.
const PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest hold a pause may ask for.
const PAUSE_MAX_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// A pause's `max`, checked (`"30s"` when absent).
fn pause_max(max: Option<&str>) -> Result<std::time::Duration, ApiError> {
    let Some(m) = max else { return Ok(PAUSE_MAX) };
    let d =
        humantime::parse_duration(m.trim()).map_err(|e| ApiError::BadRequest(format!("max `{m}` is not a duration such as 30s: {e}")))?;
    if d.is_zero() || d > PAUSE_MAX_LIMIT {
        return Err(ApiError::BadRequest(format!("max `{m}` must be above 0 and at most 10m")));
    }
    Ok(d)
}

/// A switch's or deploy's `pause` and `pause_max`, checked.
fn paused(pause: bool, max: Option<&str>, canary: bool) -> Result<Option<std::time::Duration>, ApiError> {
    if !pause {
        return Ok(None);
    }
    if canary {
        return Err(ApiError::BadRequest("a canary cannot be paused around: pause goes with a switch".into()));
    }
    pause_max(max).map(Some)
}

/// Body of `POST /deploy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    release: ReleaseName,
    #[serde(default)]
    keep_failed: bool,
    #[serde(default)]
    guard: Option<bool>,
    #[serde(default)]
    canary: Option<Vec<f64>>,
    #[serde(default)]
    pause: bool,
    #[serde(default)]
    pause_max: Option<String>,
}

/// `DeployBody` behind an Option so `parse_body` can require it.
#[derive(Debug, Default)]
struct DeployBodyOpt(Option<DeployBody>);

impl<'de> Deserialize<'de> for DeployBodyOpt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DeployBody::deserialize(d).map(|b| DeployBodyOpt(Some(b)))
    }
}

/// Body of `POST /rollback` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    expect_generation: Option<u64>,
    #[serde(default)]
    force: bool,
}

/// Body of `POST /maintenance`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    /// What shoppers read; a default sentence when absent.
    #[serde(default)]
    message: Option<String>,
    /// The expected end, RFC 3339 (`2026-12-06T10:00:00Z`).
    #[serde(default)]
    until: Option<String>,
}

/// The message shown when `POST /maintenance` gives none.
const MAINTENANCE_MESSAGE: &str = "We are updating the shop and will be back shortly.";
/// The longest maintenance message.
const MAINTENANCE_MESSAGE_MAX: usize = 1000;

impl MaintenanceBody {
    /// The message and the end in Unix milliseconds, checked.
    fn parse(self) -> Result<(String, Option<crate::clock::UnixMillis>), ApiError> {
        let message = self.message.map(|m| m.trim().to_string()).filter(|m| !m.is_empty());
        let message = message.unwrap_or_else(|| MAINTENANCE_MESSAGE.to_string());
        if message.chars().count() > MAINTENANCE_MESSAGE_MAX {
            return Err(ApiError::BadRequest(format!("message is longer than {MAINTENANCE_MESSAGE_MAX} characters")));
        }
        let until = match self.until {
            None => None,
            Some(u) => {
                let t = humantime::parse_rfc3339_weak(u.trim())
                    .map_err(|e| ApiError::BadRequest(format!("until `{u}` is not a time such as 2026-12-06T10:00:00Z: {e}")))?;
                let ms = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                if ms <= crate::clock::now_ms() {
                    return Err(ApiError::BadRequest(format!("until `{u}` is in the past")));
                }
                Some(ms)
            }
        };
        Ok((message, until))
    }
}

/// The admin application (one per process), served by a pingora listening service.
pub struct AdminApi {
    controller: Arc<Controller>,
    guard: Guard,
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, v: impl serde::Serialize) -> Self {
        let mut body = serde_json::to_vec_pretty(&v).expect("serialisable");
        body.push(b'\n');
        Self { status, content_type: "application/json", body }
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::json(e.status(), e.body())
    }
}

fn release_name(raw: &str) -> Result<ReleaseName, ApiError> {
    ReleaseName::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// JSON's whitespace (RFC 8259): narrower than `is_ascii_whitespace`, which
/// also admits form feed.
fn json_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn parse_body<T: DeserializeOwned + Default>(body: &[u8], required: bool) -> Result<T, ApiError> {
    if body.iter().all(json_space) {
        if required {
            return Err(ApiError::BadRequest("request body is empty; a JSON object is required".into()));
        }
        return Ok(T::default());
    }
    // serde would also read a struct from a JSON array; only objects are accepted
    if body.iter().find(|b| !json_space(b)) != Some(&b'{') {
        return Err(ApiError::BadRequest("request body must be a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn query_flag(query: Option<&str>, key: &str) -> Result<Option<bool>, ApiError> {
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        if k == key {
            return match v {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => Err(ApiError::BadRequest(format!("query parameter `{key}` must be true or false"))),
            };
        }
    }
    Ok(None)
}

async fn read_body(s: &mut ServerSession) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        match s.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(ApiError::TooLarge(MAX_BODY));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(ApiError::BadRequest(format!("reading request body: {e}"))),
        }
    }
}

impl AdminApi {
    /// The API over `controller`, protected by `guard`.
    pub fn new(controller: Arc<Controller>, guard: Guard) -> Self {
        Self { controller, guard }
    }

    async fn handle(&self, s: &mut ServerSession) -> Result<Reply, ApiError> {
        let req = s.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        // Public paths answer only GET; other methods get their 405 without a token.
        let public = matches!(path.as_str(), "/healthz" | "/readyz" | "/" | "/openapi.json");
        self.guard.check(req, public)?;
        let actor = self.guard.actor(req, s.client_addr());
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let c = &self.controller;
        let not_allowed = || ApiError::MethodNotAllowed { method: method.to_string(), path: path.clone() };
        let reply = match (segments.as_slice(), &method) {
            ([""], &Method::GET) => Reply { status: 200, content_type: "text/html; charset=utf-8", body: STATUS_PAGE.into() },
            (["healthz"], &Method::GET) => {
                let (live, generation) = c.live().await;
                Reply::json(200, json!({"status": "ok", "live": live, "generation": generation}))
            }
            (["readyz"], &Method::GET) => match c.readiness() {
                Ok(()) => Reply::json(200, json!({"ready": true})),
                Err(why) => Reply::json(503, json!({"ready": false, "error": why})),
            },
            (["status"], &Method::GET) => Reply::json(200, c.status().await),
            (["releases"], &Method::GET) => Reply::json(200, c.status().await.releases),
            (["events"], &Method::GET) => Reply::json(200, c.events().await),
            (["metrics"], &Method::GET) => {
                Reply { status: 200, content_type: crate::metrics::CONTENT_TYPE, body: c.metrics_text().await.into_bytes() }
            }
            (["openapi.json"], &Method::GET) => Reply { status: 200, content_type: "application/json", body: OPENAPI.into() },
            (["releases", name], &Method::GET) => {
                let name = release_name(name)?;
                let st = c.status().await;
                let r = st.releases.into_iter().find(|r| r.name == name);
                Reply::json(200, r.ok_or(crate::state::StateError::NotFound { name })?)
            }
            (["releases", name], &Method::PUT) => {
                let name = release_name(name)?;
                let body: RegisterBody = parse_body(&read_body(s).await?, false)?;
                let allow_unresolved = query_flag(query.as_deref(), "allow_unresolved")?.unwrap_or(false) || body.allow_unresolved;
                let (view, created) = c.register(name, body.backends, allow_unresolved, &actor).await?;
                Reply::json(if created { 201 } else { 200 }, view)
            }
            (["releases", name], &Method::DELETE) => {
                let name = release_name(name)?;
                Reply::json(200, c.retire(&name, &actor).await?)
            }
            (["releases", name, "check"], &Method::POST) => {
                let name = release_name(name)?;
                Reply::json(200, c.check(&name).await?)
            }
            (["switch"], &Method::POST) => {
                let body: SwitchBodyOpt = parse_body(&read_body(s).await?, true)?;
                let body = body.0.expect("required body");
                let force = query_flag(query.as_deref(), "force")?.unwrap_or(false) || body.force;
                let guard = query_flag(query.as_deref(), "guard")?.or(body.guard);
                let pause = paused(body.pause, body.pause_max.as_deref(), body.canary.is_some())?;
                let req = SwitchRequest {
                    release: body.release,
                    expect_generation: body.expect_generation,
                    force,
                    guard,
                    canary: body.canary,
                    pause,
                };
                Reply::json(200, c.switch(req, &actor).await?)
            }
            (["deploy"], &Method::POST) => {
                let body: DeployBodyOpt = parse_body(&read_body(s).await?, true)?;
                let body = body.0.expect("required body");
                let keep_failed = query_flag(query.as_deref(), "keep_failed")?.unwrap_or(false) || body.keep_failed;
                let guard = query_flag(query.as_deref(), "guard")?.or(body.guard);
                let pause = paused(body.pause, body.pause_max.as_deref(), body.canary.is_some())?;
                let req = DeployRequest { release: body.release, keep_failed, guard, canary: body.canary, pause };
                Reply::json(200, c.deploy(req, &actor).await?)
            }
            (["rollback"], &Method::POST) => {
                let body: RollbackBody = parse_body(&read_body(s).await?, false)?;
                let force = query_flag(query.as_deref(), "force")?.unwrap_or(false) || body.force;
                Reply::json(200, c.rollback(body.expect_generation, force, &actor).await?)
            }
            (["reload"], &Method::POST) => {
                let _: ReloadBody = parse_body(&read_body(s).await?, false)?;
                Reply::json(200, c.reload(&actor).await?)
            }
            (["guard"], &Method::GET) => Reply::json(200, c.guard_view()),
            (["canary"], &Method::GET) => Reply::json(200, c.status().await.canary),
            (["canary", "promote"], &Method::POST) => {
                let _: ReloadBody = parse_body(&read_body(s).await?, false)?;
                Reply::json(200, c.promote_canary(&actor).await?)
            }
            (["canary", "abort"], &Method::POST) => {
                let _: ReloadBody = parse_body(&read_body(s).await?, false)?;
                Reply::json(200, c.abort_canary_by_hand(&actor).await?)
            }
            (["pause"], &Method::POST) => {
                let body: PauseBody = parse_body(&read_body(s).await?, false)?;
                let max = pause_max(body.max.as_deref())?;
                let max_held = body.max_held.unwrap_or(crate::controller::PAUSE_MAX_HELD);
                if max_held == 0 {
                    return Err(ApiError::BadRequest("max_held must be at least 1".into()));
                }
                Reply::json(200, c.pause(max, max_held, &actor).await?)
            }
            (["resume"], &Method::POST) => {
                let _: ReloadBody = parse_body(&read_body(s).await?, false)?;
                Reply::json(200, c.resume_traffic(&actor).await?)
            }
            (["maintenance"], &Method::GET) => Reply::json(200, MaintenanceReply::from(c.status().await.maintenance)),
            (["maintenance"], &Method::POST) => {
                let on = parse_body::<MaintenanceBody>(&read_body(s).await?, false)?.parse()?;
                Reply::json(200, MaintenanceReply::from(c.set_maintenance(Some(on), &actor).await?))
            }
            (["maintenance"], &Method::DELETE) => {
                let _: ReloadBody = parse_body(&read_body(s).await?, false)?;
                Reply::json(200, MaintenanceReply::from(c.set_maintenance(None, &actor).await?))
            }
            (["tls"], &Method::GET) => Reply::json(200, c.tls_status()?),
            (["tls", "reload"], &Method::POST) => {
                let _: ReloadBody = parse_body(&read_body(s).await?, false)?;
                Reply::json(200, c.reload_certificates(&actor)?)
            }
            (
                [""]
                | ["healthz"]
                | ["status"]
                | ["releases"]
                | ["events"]
                | ["metrics"]
                | ["openapi.json"]
                | ["tls"]
                | ["guard"]
                | ["canary"]
                | ["canary", "promote"]
                | ["canary", "abort"]
                | ["maintenance"]
                | ["pause"]
                | ["resume"]
                | ["releases", _]
                | ["releases", _, "check"]
                | ["switch"]
                | ["rollback"]
                | ["reload"]
                | ["deploy"]
                | ["tls", "reload"],
                _,
            ) => return Err(not_allowed()),
            _ => return Err(ApiError::NotFound { kind: "path", name: path.clone() }),
        };
        Ok(reply)
    }
}

/// The methods a path answers, for the `Allow` header of a 405 (RFC 9110 15.5.6).
fn allowed_methods(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Some(match segments.as_slice() {
        [""] | ["healthz"] | ["status"] | ["releases"] | ["events"] | ["metrics"] | ["openapi.json"] | ["tls"] | ["guard"] | ["canary"] => {
            "GET"
        }
        ["releases", _] => "GET, PUT, DELETE",
        ["maintenance"] => "GET, POST, DELETE",
        ["releases", _, "check"]
        | ["switch"]
        | ["rollback"]
        | ["reload"]
        | ["deploy"]
        | ["tls", "reload"]
        | ["canary", "promote" | "abort"]
        | ["pause"]
        | ["resume"] => "POST",
        _ => return None,
    })
}

/// `POST /reload` takes no parameters: an empty body or `{}`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadBody {}

/// `SwitchBody` behind an Option so `parse_body` can require it.
#[derive(Debug, Default)]
struct SwitchBodyOpt(Option<SwitchBody>);

impl<'de> Deserialize<'de> for SwitchBodyOpt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SwitchBody::deserialize(d).map(|b| SwitchBodyOpt(Some(b)))
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        self.controller.prioritise_current_thread();
        let reply = match self.handle(s).await {
            Ok(r) => r,
            Err(e) => {
                if e.status() >= 500 && !matches!(e, ApiError::Control(crate::error::ControlError::Upgrading)) {
                    log::error!("admin {} {}: {e}", s.req_header().method, s.req_header().uri.path());
                }
                e.into()
            }
        };
        let mut b = Response::builder()
            .status(reply.status)
            .header("content-type", reply.content_type)
            .header("content-length", reply.body.len())
            .header("cache-control", "no-store")
            .header("x-content-type-options", "nosniff")
            .header("x-frame-options", "DENY");
        if reply.status == 401 {
            b = b.header("www-authenticate", "Bearer realm=\"canopy\"");
        }
        if reply.status == 503 {
            // only after a hand-over: the new process takes the next attempt
            b = b.header("retry-after", "1");
        }
        if reply.status == 405 {
            if let Some(allow) = allowed_methods(s.req_header().uri.path()) {
                b = b.header("allow", allow);
            }
        }
        b.body(reply.body).expect("valid response")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router answers is described in the OpenAPI document.
    #[test]
    fn openapi_describes_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for (path, method) in [
            ("/", "get"),
            ("/healthz", "get"),
            ("/status", "get"),
            ("/releases", "get"),
            ("/releases/{name}", "get"),
            ("/releases/{name}", "put"),
            ("/releases/{name}", "delete"),
            ("/releases/{name}/check", "post"),
            ("/switch", "post"),
            ("/rollback", "post"),
            ("/reload", "post"),
            ("/deploy", "post"),
            ("/tls", "get"),
            ("/tls/reload", "post"),
            ("/guard", "get"),
            ("/canary", "get"),
            ("/canary/promote", "post"),
            ("/canary/abort", "post"),
            ("/maintenance", "get"),
            ("/maintenance", "post"),
            ("/maintenance", "delete"),
            ("/pause", "post"),
            ("/resume", "post"),
            ("/events", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from openapi.json");
        }
    }

    #[test]
    fn allow_lists_the_methods_of_each_route() {
        assert_eq!(allowed_methods("/releases/elm"), Some("GET, PUT, DELETE"));
        assert_eq!(allowed_methods("/switch"), Some("POST"));
        assert_eq!(allowed_methods("/reload"), Some("POST"));
        assert_eq!(allowed_methods("/tls/reload"), Some("POST"));
        assert_eq!(allowed_methods("/tls"), Some("GET"));
        assert_eq!(allowed_methods("/status"), Some("GET"));
        assert_eq!(allowed_methods("/nowhere"), None);
    }

    #[test]
    fn form_feed_is_not_an_empty_body() {
        assert!(parse_body::<RollbackBody>(b" \r\n\t", false).is_ok());
        assert!(parse_body::<RollbackBody>(b"\x0c", false).is_err());
        assert!(parse_body::<RollbackBody>(b"\x0c{}", false).is_err());
    }

    #[test]
    fn query_flags() {
        assert_eq!(query_flag(Some("force=true"), "force").unwrap(), Some(true));
        assert_eq!(query_flag(Some("a=1&force"), "force").unwrap(), Some(true));
        assert_eq!(query_flag(None, "force").unwrap(), None);
        assert!(query_flag(Some("force=yes"), "force").is_err());
    }
}
