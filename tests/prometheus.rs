//! A real Prometheus server (Debian's `prometheus`) scrapes canopy's admin
//! listener; after a flip its HTTP API must report the new live release and
//! the switch counters.

use std::process::Command;
use std::time::{Duration, Instant};

use canopy_testkit::*;
use serde_json::Value;

/// A Prometheus server scraping one target every 200 ms; stopped on drop.
struct Prometheus {
    _proc: Proc,
    url: String,
    _dir: tempfile::TempDir,
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\nscrape_configs:\n  - job_name: canopy\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = reserve();
    let listen = port.addr();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={listen}"));
    assert!(
        Command::new("prometheus").arg("--version").output().is_ok(),
        "prometheus is missing: apt-get install prometheus (scripts/install-deps.sh --test does)"
    );
    port.release();
    let p = Proc::spawn("prometheus", &mut cmd, &dir.path().join("prometheus.log"));
    wait_listening(p.pid(), listen.port(), Duration::from_secs(30), "prometheus");
    Prometheus { _proc: p, url: format!("http://{listen}"), _dir: dir }
}

/// Polls an instant query until `ok` accepts its result vector (or panics at the deadline).
async fn wait_for(p: &Prometheus, query: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(r) = client().get(format!("{}/api/v1/query", p.url)).query(&[("query", query)]).send().await {
            if let Ok(v) = r.json::<Value>().await {
                let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
                if ok(&result) {
                    return result;
                }
                last = v;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prometheus never satisfied `{query}`; last answer: {last}");
}

fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_flip() {
    let (c, _j, _e) = two_releases("", "").await;
    let prom = start_prometheus(c.admin);
    for _ in 0..5 {
        assert_eq!(get(&c, "/products").await.1, "juniper");
    }
    let live = wait_for(&prom, "canopy_live_release_info", |r| r.len() == 1).await;
    assert_eq!(live[0]["metric"]["release"], "juniper");

    assert_eq!(switch(&c, "elm").await.0, 200);
    for _ in 0..3 {
        assert_eq!(get(&c, "/products").await.1, "elm");
    }
    let live = wait_for(&prom, "canopy_live_release_info", |r| r.len() == 1 && r[0]["metric"]["release"] == "elm").await;
    assert_eq!(value(&live[0]), 1.0);
    // juniper (initial switch) then elm
    let ok = wait_for(&prom, "canopy_switches_total{result=\"ok\"}", |r| r.len() == 1 && value(&r[0]) == 2.0).await;
    assert_eq!(ok[0]["metric"]["job"], "canopy");
    let reqs = wait_for(&prom, "sum by (release) (canopy_requests_total{service=\"storefront\",code=\"200\"})", |r| r.len() == 2).await;
    for s in &reqs {
        let expected = if s["metric"]["release"] == "juniper" { 5.0 } else { 3.0 };
        assert_eq!(value(s), expected, "{s}");
    }
    let checks = wait_for(&prom, "canopy_validation_checks_total{release=\"elm\",result=\"pass\"}", |r| !r.is_empty()).await;
    assert!(checks.iter().any(|s| s["metric"]["service"] == "worker"));
    wait_for(&prom, "process_resident_memory_bytes", |r| r.len() == 1 && value(&r[0]) > 0.0).await;
}

/// Every query of the shipped Grafana dashboard (each panel and each
/// annotation) evaluates on a real Prometheus scraping canopy and returns
/// data, a sample with a number in it, once canopy has done what the panels
/// show: requests on two releases under way, 502s and upstream errors from a
/// release whose backend refuses, a refused switch (a failed check), a
/// switch and a rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_run_on_prometheus() {
    let (c, juniper, elm) = two_releases("", "").await;
    let prom = start_prometheus(c.admin);
    // scraped once before anything below happens, so every change falls between scrapes
    wait_for(&prom, "canopy_live_release_info", |r| r.len() == 1).await;
    // `oak`: its server refuses connections, its preview requests are 502s
    let body = serde_json::json!({"backends": {"server": [dead_addr().to_string()],
        "worker": [juniper.worker.addr.to_string()], "storefront": [juniper.storefront.addr.to_string()]}});
    let r = client().put(c.admin_url("/releases/oak")).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "register oak: {}", r.status());
    // traffic all along: the live release, and oak
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, live, oak) = (stop.clone(), c.url("/products"), c.url("/shop-api/x"));
        tokio::spawn(async move {
            let http = client();
            let mut codes = std::collections::BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let a = http.get(&live).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                let b = http.get(&oak).header("x-canopy-release", "oak").send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                *codes.entry(a).or_insert(0) += 1;
                *codes.entry(b).or_insert(0) += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            codes
        })
    };
    // a refused switch: elm's GraphQL answers with errors
    elm.server.knobs.graphql_errors.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(switch(&c, "elm").await.0, 422);
    elm.server.knobs.graphql_errors.store(false, std::sync::atomic::Ordering::Relaxed);
    // a switch, seen by Prometheus with elm serving, then a rollback
    assert_eq!(switch(&c, "elm").await.0, 200);
    wait_for(&prom, "canopy_requests_total{release=\"elm\"}", |r| !r.is_empty()).await;
    // the guard has judged elm (its panels need a judgement) before the rollback
    wait_for(&prom, "canopy_guard_latency_seconds{release=\"elm\"}", |r| !r.is_empty()).await;
    let r = client().post(c.admin_url("/rollback")).send().await.unwrap();
    assert_eq!(r.status(), 200, "rollback: {}", r.text().await.unwrap());

    let dash: Value = serde_json::from_str(&std::fs::read_to_string("deploy/grafana-dashboard.json").unwrap()).unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            queries.push((p["title"].as_str().unwrap().to_string(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    for a in dash["annotations"]["list"].as_array().unwrap() {
        queries.push((format!("annotation {}", a["name"].as_str().unwrap()), a["expr"].as_str().unwrap().to_string()));
    }
    assert!(queries.len() >= 15, "{queries:?}");
    for (title, expr) in &queries {
        let r: Value =
            client().get(format!("{}/api/v1/query", prom.url)).query(&[("query", expr)]).send().await.unwrap().json().await.unwrap();
        assert_eq!(r["status"], "success", "{title}: {expr}: {r}");
        // data: a sample whose value is a number (a rate over no change is NaN)
        wait_for(&prom, expr, |r| r.iter().any(|s| value(s).is_finite())).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let codes = traffic.await.unwrap();
    assert_eq!(codes.keys().copied().collect::<Vec<u16>>(), [200, 502], "{codes:?}");
    let live = wait_for(&prom, "max by (release) (canopy_live_release_info)", |r| r.len() == 1).await;
    assert_eq!(live[0]["metric"]["release"], "juniper");
}
