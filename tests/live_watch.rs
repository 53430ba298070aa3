//! A dead live release raises an alarm: the live watch quick-checks the
//! live release every `live-check-interval` (1 s by default), so a killed
//! backend shows in `/status` (`live_health`, `alerts`), `canopy status` and
//! `canopy_live_release_healthy` within seconds, and clears when the backend
//! is back. Like the warm watch of the previous release, it logs when the
//! verdict changes, never at every check.

use std::time::{Duration, Instant};

use canopy_testkit::upstream::{self, Killable};
use canopy_testkit::*;
use serde_json::Value;

/// How soon the alert must show (the must-show).
const ALERT_WITHIN: Duration = Duration::from_secs(5);

async fn metric(c: &Canopy, line_start: &str) -> Option<String> {
    let text = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find(|l| l.starts_with(line_start)).map(str::to_string)
}

/// Waits until a watch has made `n` more reports (each has its own `at`,
/// found at the JSON `pointer` of `/status`): proof that time passed with
/// checks in it. Polls with a deadline.
async fn more_reports(c: &Canopy, pointer: &str, n: usize) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() <= n {
        assert!(Instant::now() < deadline, "timed out waiting for {n} more reports at {pointer}");
        if let Some(at) = status(c).await.pointer(pointer).and_then(Value::as_u64).filter(|at| !seen.contains(at)) {
            seen.push(at);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_live_backend_raises_the_alert_within_seconds_and_clears_when_it_is_back() {
    let c = Canopy::start(&config("", ""));
    let mut server = Killable::spawn("juniper", "server").await;
    let (worker, storefront) = (upstream::spawn("juniper", "worker").await, upstream::spawn("juniper", "storefront").await);
    register(&c, "juniper", server.addr, worker.addr, storefront.addr).await;
    let elm = Stack::spawn("elm").await;
    elm.register(&c, "elm").await;
    assert_eq!(switch(&c, "juniper").await.0, 200);

    // healthy first: the watch says so, no alert
    eventually("the live watch to pass", ALERT_WITHIN, || async { status(&c).await["live_health"]["healthy"] == true }).await;
    let st = status(&c).await;
    assert_eq!(st["live_health"]["release"], "juniper", "{st}");
    assert!(st["alerts"].is_null(), "{st}");
    assert_eq!(metric(&c, "canopy_live_release_healthy{").await.as_deref(), Some("canopy_live_release_healthy{release=\"juniper\"} 1"));
    let out = c.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("live:       juniper\n            healthy (3 checks passed"), "{text}");

    // the backend dies: every request is a 502, and within seconds canopy says so
    server.kill();
    let killed = Instant::now();
    assert_eq!(get(&c, "/shop-api/x").await.0, 502);
    let st: Value = until_some("the live alert", ALERT_WITHIN, || async {
        let st = status(&c).await;
        (st["live_health"]["healthy"] == false).then_some(st)
    })
    .await;
    eprintln!("alert after {:?}", killed.elapsed());
    let alerts = st["alerts"].as_array().unwrap_or_else(|| panic!("no alerts: {st}"));
    assert!(alerts.iter().any(|a| a.as_str().unwrap().starts_with("live release juniper is failing its health checks")), "{st}");
    let failed = st["live_health"]["report"]["checks"].as_array().unwrap().iter().find(|c| c["passed"] == false).unwrap().clone();
    assert_eq!((failed["service"].as_str(), failed["target"].as_str()), (Some("server"), Some(server.addr.to_string().as_str())), "{st}");
    assert_eq!(metric(&c, "canopy_live_release_healthy{").await.as_deref(), Some("canopy_live_release_healthy{release=\"juniper\"} 0"));
    let out = c.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ALERT: live release juniper is failing its health checks"), "{text}");
    assert!(text.contains("            UNHEALTHY since "), "{text}");

    // it stays failing for several checks: the log says it once
    more_reports(&c, "/live_health/report/at", 3).await;
    assert_eq!(count(&c.log(), "live release juniper is failing its health checks"), 1, "{}", c.log());

    // back: the alert clears, the log says so once
    server.restart().await;
    eventually("the alert to clear", ALERT_WITHIN, || async {
        let st = status(&c).await;
        st["live_health"]["healthy"] == true && st["alerts"].is_null()
    })
    .await;
    assert_eq!(get(&c, "/shop-api/x").await.0, 200);
    assert_eq!(metric(&c, "canopy_live_release_healthy{").await.as_deref(), Some("canopy_live_release_healthy{release=\"juniper\"} 1"));
    more_reports(&c, "/live_health/report/at", 2).await;
    let log = c.log();
    assert_eq!(count(&log, "live release juniper is healthy again"), 1, "{log}");
    assert_eq!(count(&log, "live release juniper is failing its health checks"), 1, "{log}");

    // a dead warm previous release is logged once too, not every second
    assert_eq!(switch(&c, "elm").await.0, 200);
    eventually("elm's live watch", ALERT_WITHIN, || async { status(&c).await["live_health"]["release"] == "elm" }).await;
    server.kill();
    eventually("the warm watch to see juniper fail", ALERT_WITHIN, || async { status(&c).await["previous"]["watch"]["passed"] == false })
        .await;
    more_reports(&c, "/previous/watch/at", 3).await;
    let log = c.log();
    assert_eq!(count(&log, "warm release juniper is unhealthy"), 1, "{log}");
    // the warm release is no live release: no live alert for it
    let st = status(&c).await;
    assert!(st["alerts"].is_null(), "{st}");
}
