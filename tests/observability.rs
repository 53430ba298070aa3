//! Metrics text, access log and audit log as an operator reads them.

use std::time::{Duration, Instant};

use canopy_testkit::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    let text = config("", "").replace("shutdown-grace = \"5s\"", "shutdown-grace = \"5s\"\naccess-log = \"access.log\"");
    let c = Canopy::start(&text);
    let juniper = Stack::spawn("juniper").await;
    juniper.register(&c, "juniper").await;
    assert_eq!(switch(&c, "juniper").await.0, 200);
    get(&c, "/products/1?token=secret").await;
    client().post(c.url("/shop-api")).body("{}").send().await.unwrap();
    let path = c.dir.join("access.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first = &lines[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/products/1", "query strings may carry secrets and are not logged");
    assert_eq!(first["release"], "juniper");
    assert_eq!(first["service"], "storefront");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], juniper.storefront.addr.to_string());
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[1]["service"], "server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_bounded_labels_and_control_plane_series() {
    let (c, _j, elm) = two_releases("", "").await;
    for i in 0..20 {
        get(&c, &format!("/products/{i}?user={i}")).await;
    }
    elm.server.knobs.graphql_errors.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(switch(&c, "elm").await.0, 422);
    let m = client().get(c.admin_url("/metrics")).send().await.unwrap();
    assert!(m.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let m = m.text().await.unwrap();
    assert!(m.contains("canopy_requests_total{release=\"juniper\",service=\"storefront\",code=\"200\"} 20"), "{m}");
    assert!(m.contains("canopy_request_duration_seconds_count{release=\"juniper\",service=\"storefront\"} 20"));
    assert!(m.contains("canopy_live_release_info{release=\"juniper\"} 1"));
    assert!(m.contains("canopy_switches_total{result=\"ok\"} 1"));
    assert!(m.contains("canopy_switches_total{result=\"refused\"} 1"));
    assert!(m.contains("canopy_inflight_requests{release=\"juniper\"} 0"));
    // the prometheus crate writes a vector's labels sorted by name (their order means nothing to Prometheus)
    assert!(
        m.contains("canopy_validation_checks_total{check=\"graphql /shop-api\",release=\"elm\",result=\"fail\",service=\"server\"} 1"),
        "{m}"
    );
    assert!(m.contains("canopy_switch_duration_seconds_count 1"));
    assert!(m.contains("process_open_fds "));
    // bounded labels: no paths, no query strings, no client addresses
    assert!(!m.contains("/products/"), "a path leaked into labels");
    assert!(!m.contains("127.0.0.1"), "an address leaked into labels");
    // every line is a comment or `name{labels} value`
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        v.parse::<f64>().unwrap_or_else(|_| panic!("bad sample line {line}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_says_who_when_what_and_survives_restart() {
    let (mut c, _j, elm) = two_releases("", "").await;
    let r = client().post(c.admin_url("/switch")).header("x-canopy-actor", "alice").json(&json!({"release": "elm"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    elm.server.knobs.unhealthy.store(true, std::sync::atomic::Ordering::Relaxed);
    let r = client().post(c.admin_url("/rollback?force=true")).header("x-canopy-actor", "bob").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let before: Value = client().get(c.admin_url("/events")).send().await.unwrap().json().await.unwrap();
    let ev = before.as_array().unwrap();
    let switch = ev.iter().rev().find(|e| e["action"] == "switch").unwrap();
    assert_eq!(switch["actor"], "alice@127.0.0.1");
    assert_eq!((switch["from"].clone(), switch["to"].clone()), (json!("juniper"), json!("elm")));
    assert_eq!(switch["result"], "ok");
    assert!(switch["detail"].as_str().unwrap().ends_with("checks passed"), "{switch}");
    assert!(switch["at"].as_u64().unwrap() > 1_700_000_000_000);
    let rollback = ev.last().unwrap();
    assert_eq!(rollback["action"], "rollback");
    assert_eq!(rollback["forced"], true);
    assert_eq!(rollback["detail"], "forced: validation skipped");
    // persisted with the state
    c.kill9();
    let (dir, text, tmp) = (c.dir.clone(), c.template.clone(), c.tmp.take());
    c = Canopy::start_in(&dir, &text);
    c.tmp = tmp;
    let after: Value = client().get(c.admin_url("/events")).send().await.unwrap().json().await.unwrap();
    assert_eq!(after, before);
    // the CLI prints it
    let out = c.cli(&["events"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("switch       ok       juniper -> elm by alice@127.0.0.1"), "{text}");
    assert!(text.contains("(forced)"), "{text}");
}

/// `promtool check metrics` (Debian's prometheus package) on `text`; panics with its findings.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed with prometheus (scripts/install-deps.sh --test)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the scrape:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_passes_promtool_after_traffic_refusal_switch_and_rollback_and_retire_drops_series() {
    let (c, _j, elm) = two_releases("", "").await;
    for i in 0..10 {
        assert_eq!(get(&c, &format!("/products/{i}")).await.0, 200);
    }
    elm.server.knobs.graphql_errors.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(switch(&c, "elm").await.0, 422);
    elm.server.knobs.graphql_errors.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(switch(&c, "elm").await.0, 200);
    assert_eq!(get(&c, "/products/x").await.1, "elm");
    let r = client().post(c.admin_url("/rollback")).json(&serde_json::json!({})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let m = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    promtool_accepts(&m);
    for series in [
        "canopy_switches_total{result=\"ok\"} 2",
        "canopy_switches_total{result=\"refused\"} 1",
        "canopy_rollbacks_total{result=\"ok\"} 1",
        "canopy_live_release_info{release=\"juniper\"} 1",
        "canopy_requests_total{release=\"elm\",service=\"storefront\",code=\"200\"} 1",
        "canopy_access_log_dropped_lines_total 0",
        &format!("canopy_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        "# TYPE canopy_request_duration_seconds histogram",
        "# TYPE process_cpu_seconds_total counter",
    ] {
        assert!(m.contains(series), "missing `{series}` in:\n{m}");
    }
    assert!(m.contains("release=\"elm\""), "{m}");

    // retiring elm (now the warm previous release) drops every series that names it
    let r = client().delete(c.admin_url("/releases/elm")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let m = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    promtool_accepts(&m);
    assert!(!m.contains("release=\"elm\""), "a retired release kept series:\n{m}");
    assert!(m.contains("canopy_requests_total{release=\"juniper\",service=\"storefront\",code=\"200\"} 10"), "{m}");
}
