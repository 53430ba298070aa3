//! The admin API client behind `canopy status`, `switch`, ...: sends one
//! request, prints text (or `--json`), and fails with the server's reason.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::cli::{ClientOpts, Cmd, TlsAction};

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

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_report(r: &Value) -> String {
    let mut out = format!(
        "validation of {} ({}): {} in {} ms\n",
        s(&r["release"]),
        s(&r["mode"]),
        if r["passed"].as_bool() == Some(true) { "PASSED" } else { "FAILED" },
        s(&r["duration_ms"])
    );
    for c in r["checks"].as_array().into_iter().flatten() {
        let mark = if c["passed"].as_bool() == Some(true) { "ok  " } else { "FAIL" };
        let target = c["target"].as_str().map(|t| format!(" @{t}")).unwrap_or_default();
        out += &format!(
            "  {mark} {}/{}{target}: {} ({} ms, {} attempt(s))\n",
            s(&c["service"]),
            s(&c["check"]),
            s(&c["reason"]),
            s(&c["duration_ms"]),
            s(&c["attempts"])
        );
        if let Some(o) = c["output"].as_str().filter(|o| !o.trim().is_empty() && c["passed"].as_bool() != Some(true)) {
            for line in o.lines().take(10) {
                out += &format!("         | {line}\n");
            }
        }
    }
    out
}

fn print_steps(steps: &Value) -> String {
    let mut out = String::new();
    for st in steps.as_array().into_iter().flatten() {
        let service = st["service"].as_str().map(|s| format!(" {s}")).unwrap_or_default();
        out += &format!("  {:<9}{service:<12} {} ({:.0} ms)\n", s(&st["step"]), s(&st["detail"]), st["ms"].as_f64().unwrap_or(0.0));
    }
    out
}

fn print_containers(v: &Value) -> String {
    let mut out = String::new();
    if let Some(d) = v["docker"].as_object() {
        out += &format!("containers (engine: {}):\n", s(&d["engine"]));
        for c in d["containers"].as_array().into_iter().flatten() {
            let health = if c["health"] == "none" { String::new() } else { format!(", {}", s(&c["health"])) };
            out += &format!("  {:<28} {:<10} {}{health}  {}\n", s(&c["name"]), s(&c["release"]), s(&c["state"]), s(&c["image"]));
            if let Some(p) = c["problem"].as_str() {
                out += &format!("      REFUSED: {p}\n");
            }
        }
    }
    for a in v["alerts"].as_array().into_iter().flatten() {
        out += &format!("ALERT: {}\n", s(a));
    }
    out
}

fn print_releases(rels: &Value) -> String {
    let mut out = String::new();
    for r in rels.as_array().into_iter().flatten() {
        out += &format!("  {:<16} {:<10} inflight {}\n", s(&r["name"]), s(&r["state"]), s(&r["inflight"]));
        for (svc, b) in r["services"].as_object().into_iter().flatten() {
            let addrs: Vec<String> = b["addresses"].as_array().into_iter().flatten().map(s).collect();
            let unresolved: Vec<String> = b["unresolved"].as_array().into_iter().flatten().map(s).collect();
            out += &format!("      {svc:<12} {}", if addrs.is_empty() { "-".into() } else { addrs.join(", ") });
            if !unresolved.is_empty() {
                out += &format!("  (unresolved: {})", unresolved.join("; "));
            }
            out += "\n";
        }
    }
    out
}

fn human(cmd: &Cmd, v: &Value) -> String {
    match cmd {
        Cmd::Status(_) => {
            let mut out = format!("live:       {}\ngeneration: {}\n", s(&v["live"]), s(&v["generation"]));
            if let Some(p) = v["previous"].as_object() {
                out += &format!("previous:   {} (warm, retired in {:.0}s)\n", s(&p["release"]), p["seconds_left"].as_f64().unwrap_or(0.0));
                let w = &p["watch"];
                out += &match w["passed"].as_bool() {
                    None => "            not checked yet\n".to_string(),
                    Some(true) => format!("            healthy ({} checks passed)\n", w["checks"].as_array().map_or(0, Vec::len)),
                    Some(false) => {
                        let failed: Vec<String> = w["checks"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|c| c["passed"] == false)
                            .map(|c| format!("{}/{}: {}", s(&c["service"]), s(&c["check"]), s(&c["reason"])))
                            .collect();
                        format!("            UNHEALTHY (a rollback will re-check first): {}\n", failed.join("; "))
                    }
                };
            }
            if v["switch_in_progress"].as_bool() == Some(true) {
                out += "a switch is in progress\n";
            }
            out + "releases:\n" + &print_releases(&v["releases"]) + &print_containers(v)
        }
        Cmd::Releases(_) => print_releases(&v["releases"]) + &print_containers(v),
        Cmd::Deploy { name, .. } => {
            let mut out = format!("deploying {name}\n{}", print_steps(&v["steps"]));
            out += &format!(
                "{name} is live (generation {}) after {:.1} s",
                s(&v["generation"]),
                v["duration_ms"].as_f64().unwrap_or(0.0) / 1e3
            );
            if let Some(p) = v["previous"].as_str() {
                out += &format!("; {p} stays warm for the validation window, then its containers are stopped");
            }
            out + "\n"
        }
        Cmd::Register { name, .. } => format!("registered {name}\n{}", print_releases(&json!([v]))),
        Cmd::Check { .. } => print_report(v),
        Cmd::Switch { .. } | Cmd::Rollback { .. } => {
            let verb = if matches!(cmd, Cmd::Switch { .. }) { "switched" } else { "rolled back" };
            let mut out = format!(
                "{verb} to {} (generation {}) in {:.1} ms",
                s(&v["live"]),
                s(&v["generation"]),
                v["duration_ms"].as_f64().unwrap_or(0.0)
            );
            if v["forced"].as_bool() == Some(true) {
                out += " — FORCED, validation skipped";
            }
            if let Some(p) = v["previous"].as_object() {
                out += &format!("\nprevious release {} stays warm for the validation window", s(&p["release"]));
            }
            out + "\n"
        }
        Cmd::Retire { name, .. } => {
            let mut out = format!("retired {name} (drained: {})\n", s(&v["drained"]));
            for h in v["hooks"].as_array().into_iter().flatten() {
                out += &format!("  hook {}: {}\n", s(&h["argv"]), s(&h["reason"]));
            }
            out
        }
        Cmd::Events(_) => {
            let mut out = String::new();
            for e in v.as_array().into_iter().flatten() {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e["at"].as_u64().unwrap_or(0));
                out += &format!(
                    "{} {:<12} {:<8} {} -> {} by {}{} {}\n",
                    humantime::format_rfc3339_seconds(at),
                    s(&e["action"]),
                    s(&e["result"]),
                    s(&e["from"]),
                    s(&e["to"]),
                    s(&e["actor"]),
                    if e["forced"].as_bool() == Some(true) { " (forced)" } else { "" },
                    s(&e["detail"])
                );
            }
            out
        }
        Cmd::Reload(_) => match v["changes"].as_array().filter(|c| !c.is_empty()) {
            Some(changes) => {
                let list: Vec<String> = changes.iter().map(s).collect();
                format!("reloaded (generation {}): {}\n", s(&v["generation"]), list.join("; "))
            }
            None => "reloaded: nothing changed\n".into(),
        },
        Cmd::Tls { action, .. } => {
            let mut out = if *action == TlsAction::Reload { "certificates reloaded\n".to_string() } else { String::new() };
            for c in v["certificates"].as_array().into_iter().flatten() {
                let names: Vec<String> = c["names"].as_array().into_iter().flatten().map(s).collect();
                let days = c["expires_in_secs"].as_f64().unwrap_or(0.0) / 86400.0;
                out += &format!("{:<40} expires {} ({days:.1} days)  {}\n", names.join(", "), s(&c["not_after"]), s(&c["source"]));
            }
            if let Some(e) = v["last_reload_error"].as_str() {
                out += &format!("last reload refused: {e}\n");
            }
            for a in v["acme"].as_array().into_iter().flatten() {
                let names: Vec<String> = a["names"].as_array().into_iter().flatten().map(s).collect();
                out += &format!("acme {}: renews {}", names.join(", "), s(&a["renew_at"]));
                if let Some(e) = a["last_error"].as_str() {
                    out += &format!("; LAST RENEWAL FAILED: {e} (next try {})", s(&a["next_attempt"]));
                }
                out += "\n";
            }
            out
        }
        Cmd::Serve { .. } | Cmd::CheckConfig { .. } => String::new(),
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
        Cmd::Switch { name, flip, opts } => (
            opts,
            Method::POST,
            "/switch".into(),
            Some(json!({ "release": name, "force": flip.force, "expect_generation": flip.expect_generation })),
        ),
        Cmd::Deploy { name, keep_failed, opts } => {
            (opts, Method::POST, "/deploy".into(), Some(json!({ "release": name, "keep_failed": keep_failed })))
        }
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
        let mut msg = format!("refused ({status}): {}", s(&v["error"]));
        if v["steps"].is_array() {
            msg += "\n";
            msg += &print_steps(&v["steps"]);
        }
        if v["report"].is_object() {
            msg += "\n";
            msg += &print_report(&v["report"]);
        }
        return Err(ClientError::Refused(msg));
    }
    let text = human(&cmd, &v);
    if failed_check {
        return Err(ClientError::Refused(text));
    }
    Ok(text)
}
