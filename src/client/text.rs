//! The human text of the client commands' replies: status, releases,
//! reports, deploy steps, flips, events, certificates. Pure functions of the
//! typed replies (canopy-admin's reply and view types).

use std::time::{Duration, UNIX_EPOCH};

use canopy_admin::{
    CanaryView, DeployStep, ErrorReply, Event, FleetAck, FleetView, FlipReply, GuardView, LiveHealthView, MaintenanceReply, PauseView,
    Readiness, ReleaseView, Report, StatusView, TlsView,
};

use crate::cli::TlsAction;

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// `1 check`, `3 checks`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A span of time as people say it: `45 s`, `9 min 50 s`, `2 h 5 min`.
pub fn span(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// A Unix-ms time as RFC 3339 (UTC, seconds).
fn at(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// How long ago a Unix-ms time was, from `now_ms`.
fn ago(ms: u64, now_ms: u64) -> String {
    match Duration::from_millis(now_ms.saturating_sub(ms)) {
        d if d < Duration::from_secs(2) => "just now".into(),
        d => format!("{} ago", span(d)),
    }
}

/// A validation report, one line per check (the output of failed command checks below it).
pub fn report(r: &Report) -> String {
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

/// A deploy's steps, one per line.
pub fn steps(steps: &[DeployStep]) -> String {
    let mut out = String::new();
    for st in steps {
        let service = st.service.as_ref().map(|s| format!(" {s}")).unwrap_or_default();
        out += &format!("  {:<9}{service:<12} {} ({:.0} ms)\n", st.step, st.detail, st.ms);
    }
    out
}

/// The containers discovery knows (with `[docker]`).
pub fn containers(status: &StatusView) -> String {
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
    out
}

/// Every alert, one `ALERT:` line each.
pub fn alerts(status: &StatusView) -> String {
    status.alerts.iter().flatten().map(|a| format!("ALERT: {a}\n")).collect()
}

/// Registered releases with their backends and containers.
pub fn releases(releases: &[ReleaseView]) -> String {
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

/// The live watch's verdict, as the line under `live:`.
fn live_health(h: Option<&LiveHealthView>, now_ms: u64) -> String {
    match h {
        None => "not checked yet".into(),
        Some(h) if h.report.checks.is_empty() => "not watched: its services have no http check".into(),
        Some(h) if h.healthy => {
            format!("healthy ({} passed {})", plural(h.report.checks.len(), "check", "checks"), ago(h.report.at, now_ms))
        }
        Some(h) => format!("UNHEALTHY since {} ({}): {}", at(h.since), ago(h.since, now_ms), h.report.summary()),
    }
}

/// `canopy status`: alerts first, then live, previous, preview, releases, containers.
pub fn status(v: &StatusView, now_ms: u64) -> String {
    let mut out = alerts(v);
    out += &format!("live:       {}\n", or_dash(v.live.as_ref()));
    if v.live.is_some() {
        out += &format!("            {}\n", live_health(v.live_health.as_ref(), now_ms));
    }
    out += &format!("generation: {}\n", v.generation);
    if let Some(f) = &v.fleet {
        out += &fleet(f);
    }
    if let Some(p) = &v.previous {
        out += &format!("previous:   {} (warm, retires in {})\n", p.release, span(Duration::from_secs_f64(p.seconds_left.max(0.0))));
        out += &match &p.watch {
            None => "            not checked yet\n".to_string(),
            Some(w) if w.passed => format!("            healthy ({} passed)\n", plural(w.checks.len(), "check", "checks")),
            Some(w) => {
                let failed: Vec<String> =
                    w.checks.iter().filter(|c| !c.passed).map(|c| format!("{}/{}: {}", c.service, c.check, c.reason)).collect();
                format!("            UNHEALTHY (a rollback will re-check first): {}\n", failed.join("; "))
            }
        };
    }
    out += if v.preview {
        "preview:    on (a request with `x-canopy-release: NAME` goes to that registered release)\n"
    } else {
        "preview:    off (`x-canopy-release` request headers are ignored and answered by the live release with \
         `x-canopy-preview: disabled`; `preview = true` in [releases] turns it on)\n"
    };
    if let Some(p) = &v.paused {
        out += &paused(p);
    }
    if v.maintenance.is_some() {
        out += &maintenance(&MaintenanceReply::from(v.maintenance.clone()));
    }
    if v.switch_in_progress {
        out += "a switch is in progress\n";
    }
    if let Some(c) = &v.canary {
        out += &canary(c);
    }
    if let Some(g) = &v.guard {
        out += &guard(g);
    }
    out + "releases:\n" + &releases(&v.releases) + &containers(v)
}

/// Maintenance mode, as `canopy maintenance` and `canopy status` say it.
pub fn maintenance(m: &MaintenanceReply) -> String {
    let Some(m) = &m.maintenance else {
        return "maintenance: off (requests are routed)\n".into();
    };
    let until = m.until.map_or_else(|| "no end announced".to_string(), |u| format!("expected back by {}", at(u)));
    format!("maintenance: ON since {} ({until}): every routed request is answered 503 with \"{}\"\n", at(m.since), m.message)
}

/// A pause in progress.
pub fn paused(p: &PauseView) -> String {
    format!(
        "PAUSED: new requests are held ({} now, {} so far, {} answered 503); held requests get 503 in {}\n",
        p.held,
        p.held_total,
        p.refused,
        span(Duration::from_secs_f64(p.seconds_left.max(0.0)))
    )
}

/// A canary in progress.
pub fn canary(c: &CanaryView) -> String {
    let steps: Vec<String> = c.steps.iter().map(|s| format!("{s}%")).collect();
    let guard = if c.guarded { "judged by the guard" } else { "not judged" };
    format!(
        "canary: {}% of the traffic to {} (step {} of {}: {}), {guard}; this step ends at {}\n",
        c.weight,
        c.release,
        c.step + 1,
        c.steps.len(),
        steps.join(", "),
        at(c.step_ends_at)
    )
}

/// Whether a rollback would work.
pub fn readiness(r: &Readiness) -> String {
    if r.ready {
        format!("rollback-ready: yes ({} passed its checks after {} started)\n", r.release, r.candidate)
    } else {
        format!("rollback-ready: NO ({})\n", r.why)
    }
}

/// A flip's or deploy's rollback readiness and warnings.
pub fn readiness_and_warnings(ready: Option<&Readiness>, warnings: &[String]) -> String {
    let mut out = ready.map(readiness).unwrap_or_default();
    for w in warnings {
        out += &format!("WARNING: {w}\n");
    }
    out
}

/// The guard: what it watches, its figures per service, the last verdict.
pub fn guard(g: &GuardView) -> String {
    let mut out = if g.enabled { String::new() } else { "guard: off ([releases.guard] enabled = false)\n".to_string() };
    let latency = |l: Option<f64>| l.map_or_else(|| "-".to_string(), |l| format!("{:.1} ms", l * 1e3));
    match &g.watching {
        Some(w) => {
            out += &format!(
                "guard: watching {} against {} ({}; {} evaluations, {} with enough answers; {} of {} bad in a row)\n",
                w.release, w.against, w.kind, w.evaluations, w.conclusive, w.consecutive_bad, w.failure_limit
            );
            for s in w.last.iter().flat_map(|e| &e.services) {
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
        out += &match &v.refused {
            None => format!("last verdict: {} of {} at {}: {}\n", v.action, v.release, at(v.at), v.evidence),
            Some(why) => format!("ALERT: {} is bad ({}) but the {} was refused: {why}\n", v.release, v.evidence, v.action),
        };
    }
    if let Some(r) = &g.rollback_ready {
        out += &readiness(r);
    }
    out
}

/// A successful switch or rollback (or a canary started instead).
pub fn flip(verb: &str, r: &FlipReply) -> String {
    if let Some(c) = &r.canary {
        return format!("{}live stays {} (generation {})\n", canary(c), r.live, r.generation);
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
    if let Some(a) = &r.fleet {
        out += &fleet_ack(a);
    }
    out + "\n" + &readiness_and_warnings(r.rollback_ready.as_ref(), &r.warnings)
}

/// A flip's acknowledgement across the fleet: who applied it, when; who did not.
fn fleet_ack(a: &FleetAck) -> String {
    let applied: Vec<String> = a.nodes.iter().map(|n| format!("{} {:.1} ms", n.node, n.applied_ms)).collect();
    let mut out = if a.acknowledged {
        format!("\nfleet: revision {} applied by every live node in {:.1} ms ({})", a.revision, a.ack_ms, applied.join(", "))
    } else {
        format!(
            "\nfleet: revision {} NOT acknowledged: applied by {}",
            a.revision,
            if applied.is_empty() { "none".into() } else { applied.join(", ") }
        )
    };
    if !a.expired.is_empty() {
        out += &format!("\nfleet: session expired, not ready, catches up on reconnect: {}", a.expired.join(", "));
    }
    if !a.late.is_empty() {
        out += &format!("\nfleet: LATE (live session, not applied within apply-timeout): {}", a.late.join(", "));
    }
    out
}

/// The fleet in `canopy status`: this node's readiness, then every node.
fn fleet(f: &FleetView) -> String {
    let mut out = match &f.not_ready {
        None => format!("fleet:      node {} ready, serving revision {} of {}\n", f.node, f.applied, f.revision),
        Some(why) => format!("fleet:      node {} NOT READY (serving revision {} of {}): {why}\n", f.node, f.applied, f.revision),
    };
    if let Some(e) = &f.error {
        out += &format!("            nodes unknown: {e}\n");
    }
    for n in &f.nodes {
        let lag = if n.lag == 0 { "up to date".to_string() } else { format!("{} behind", plural(n.lag as usize, "revision", "revisions")) };
        out += &format!("            {:<16} revision {:<6} {lag}  {}\n", n.record.node, n.record.applied, n.record.listeners.join(" "));
    }
    out
}

/// What an event was about: `juniper -> elm` for a flip, the release for
/// anything else (`retire green`), nothing for a reload.
pub fn subject(e: &Event) -> String {
    match e.action.as_str() {
        "switch" | "rollback" => format!("{} -> {}", or_dash(e.from.as_ref()), or_dash(e.to.as_ref())),
        _ => e.to.as_ref().map(|r| r.to_string()).unwrap_or_default(),
    }
}

/// The audit log, oldest first.
pub fn events(events: &[Event]) -> String {
    let mut out = String::new();
    for e in events {
        let subject = subject(e);
        let subject = if subject.is_empty() { String::new() } else { format!("{subject} ") };
        out += &format!(
            "{} {:<12} {:<8} {subject}by {}{} {}\n",
            at(e.at),
            e.action,
            e.result,
            e.actor,
            // a first start's initial switch was recorded as forced before it was not
            if e.forced && e.actor != "canopy (initial)" { " (forced)" } else { "" },
            e.detail
        );
    }
    out
}

/// `canopy tls`: the served certificates and ACME's state.
pub fn tls(action: TlsAction, v: &TlsView) -> String {
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

/// A refusal: the reason, then the deploy's steps and the failed
/// validation where the reply has them.
pub fn refusal(status: u16, e: &ErrorReply) -> String {
    let mut msg = format!("refused ({status}): {}", e.error);
    if let Some(s) = &e.steps {
        msg += "\n";
        msg += &steps(s);
    }
    if let Some(r) = &e.report {
        msg += "\n";
        msg += &report(r);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, from: Option<&str>, to: Option<&str>) -> Event {
        let name = |n: &str| canopy_proxy::ReleaseName::parse(n).unwrap();
        Event {
            at: 0,
            action: action.into(),
            actor: "alice".into(),
            from: from.map(name),
            to: to.map(name),
            result: "ok".into(),
            forced: false,
            generation: 1,
            detail: String::new(),
        }
    }

    #[test]
    fn events_name_their_subject() {
        assert_eq!(subject(&event("switch", Some("blue"), Some("green"))), "blue -> green");
        assert_eq!(subject(&event("switch", None, Some("blue"))), "- -> blue");
        assert_eq!(subject(&event("retire", Some("blue"), Some("green"))), "green");
        assert_eq!(subject(&event("register", None, Some("green"))), "green");
        assert_eq!(subject(&event("reload", Some("green"), None)), "");
        let text = events(&[event("retire", Some("blue"), Some("green")), event("reload", Some("green"), None)]);
        assert!(text.contains("retire       ok       green by alice"), "{text}");
        assert!(text.contains("reload       ok       by alice"), "{text}");
    }

    #[test]
    fn spans_and_plurals_read_as_people_say_them() {
        assert_eq!(span(Duration::from_secs(70)), "1 min 10 s");
        assert_eq!(span(Duration::from_secs(9)), "9 s");
        assert_eq!(span(Duration::from_secs(7300)), "2 h 1 min");
        assert_eq!(plural(1, "check", "checks"), "1 check");
        assert_eq!(plural(3, "check", "checks"), "3 checks");
    }
}
