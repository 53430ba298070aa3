//! Guarded releases against the real binary, under traffic: canopy notices
//! a bad release by itself (errors, latency) and rolls it back through the
//! validated flip; a healthy release with the same noise as the live one is
//! left alone; no verdict without traffic; rollback readiness after a
//! candidate's start broke the live release.

use std::time::{Duration, Instant};

use canopy_testkit::traffic::{Answer, Shoppers, Traffic};
use canopy_testkit::*;
use serde_json::{json, Value};

/// The tests here judge latency and timing under load: one at a time, so
/// one test's load is not another's noise.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Shoppers on the server's routes: about 300 requests a second.
fn shoppers() -> Shoppers {
    Shoppers::new(6, "/shop-api/products", Duration::from_millis(15))
}

/// Polls `/status` until `live` is `release`; returns when that was first seen.
async fn live_becomes(c: &Canopy, release: &str, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if status(c).await["live"] == release {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{release} not live within {limit:?}:\n{:#}\n{}", status(c).await, c.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn events(c: &Canopy) -> Vec<Value> {
    client().get(c.admin_url("/events")).send().await.unwrap().json::<Vec<Value>>().await.unwrap()
}

async fn metrics(c: &Canopy) -> String {
    client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap()
}

fn set_faults(stack: &Stack, error_permille: u32, delay_ms: u64, jitter_ms: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    for u in [&stack.server, &stack.worker, &stack.storefront] {
        u.knobs.error_permille.store(error_permille, Relaxed);
        u.knobs.delay_ms.store(delay_ms, Relaxed);
        u.knobs.jitter_ms.store(jitter_ms, Relaxed);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Must-show 1: a candidate answering 500 on 20% of its requests after the
/// switch is rolled back by canopy alone, within 3 s of the first bad answer,
/// over 20 induced failures; the audit event carries the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_failing_under_traffic_is_rolled_back_by_canopy_alone() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (c, _juniper, elm) = two_releases("", "").await;
    let traffic = Traffic::start(c.proxy, &shoppers());
    tokio::time::sleep(Duration::from_secs(2)).await; // juniper's baseline
    set_faults(&elm, 200, 0, 0);
    let mut detections = Vec::new();
    for round in 0..20 {
        let sent = Instant::now();
        let (code, body) = switch(&c, "elm").await;
        assert_eq!(code, 200, "round {round}: {body:#}");
        if round > 0 {
            let warnings = body["warnings"].as_array().unwrap();
            assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("auto-rollback")), "{body:#}");
        }
        let rolled_back = live_becomes(&c, "juniper", Duration::from_secs(10)).await;
        let first_bad = traffic
            .answers()
            .iter()
            .filter(|a| a.start >= sent && a.status == 500)
            .map(|a| a.end)
            .min()
            .expect("elm answered 500 before the rollback");
        detections.push(rolled_back.saturating_duration_since(first_bad));
        // the next round's baseline: juniper again for a moment
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let answers = traffic.stop().await;
    let mut sorted = detections.clone();
    sorted.sort();
    eprintln!(
        "first bad answer -> rollback seen, over {} induced failures: p50 {:?}, p99 {:?}, max {:?} ({} answers)",
        sorted.len(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted[sorted.len() - 1],
        answers.len()
    );
    // a slow round is explained by canopy's own times: when the guard judged,
    // and how long each flip (its durable write included) took
    let slow = || c.log().lines().filter(|l| l.contains("guard") || l.contains(" to ")).collect::<Vec<_>>().join("\n");
    assert!(sorted.iter().all(|d| *d <= Duration::from_secs(3)), "detection to rollback over 3 s: {detections:?}\n{}", slow());
    // nothing but the induced failures: every 500 came from elm, nothing failed in transport
    assert!(answers.iter().all(|a| a.status == 200 || (a.status == 500 && a.release == "elm")), "{:?}", odd(&answers));

    let events = events(&c).await;
    let autos: Vec<&Value> = events.iter().filter(|e| e["action"] == "auto-rollback").collect();
    assert_eq!(autos.len(), 20, "{events:#?}");
    let detail = autos[0]["detail"].as_str().unwrap();
    assert!(detail.contains("error ratio") && detail.contains("> 5.0%") && detail.contains("rule error-ratio"), "{detail}");
    assert_eq!((&autos[0]["from"], &autos[0]["to"], &autos[0]["actor"]), (&json!("elm"), &json!("juniper"), &json!("canopy (guard)")));
    let st = status(&c).await;
    assert_eq!(st["guard"]["verdict"]["action"], "auto-rollback", "{st:#}");
    let elm_view = st["releases"].as_array().unwrap().iter().find(|r| r["name"] == "elm").unwrap();
    assert_eq!(elm_view["failed"]["action"], "auto-rollback", "{elm_view:#}");
    let m = metrics(&c).await;
    assert!(m.contains("canopy_auto_rollbacks_total{rule=\"error-ratio\"} 20"), "{m}");
    assert!(m.contains("canopy_guard_evaluations_total{release=\"elm\",result=\"fail\",rule=\"error-ratio\"}"), "{m}");
    let out = c.cli(&["events"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("auto-rollback") && text.contains("error ratio"), "{text}");
}

/// The answers that are neither a 200 nor an induced 500.
fn odd(answers: &[Answer]) -> Vec<&Answer> {
    answers.iter().filter(|a| a.status != 200 && a.status != 500).take(10).collect()
}

/// Must-show 2: a candidate four times slower than the live release is
/// rolled back by the latency rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_four_times_slower_is_rolled_back_by_the_latency_rule() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (c, juniper, elm) = two_releases("", "").await;
    // 4x slower; delays long enough that a busy machine's own latency does not hide the ratio
    set_faults(&juniper, 0, 50, 0);
    set_faults(&elm, 0, 200, 0);
    let traffic = Traffic::start(c.proxy, &Shoppers::new(24, "/shop-api/products", Duration::from_millis(5)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 200, "{body:#}");
    live_becomes(&c, "juniper", Duration::from_secs(20)).await;
    let answers = traffic.stop().await;
    assert!(answers.iter().all(|a| a.status == 200), "{:?}", odd(&answers));
    let events = events(&c).await;
    let auto = events.iter().rev().find(|e| e["action"] == "auto-rollback").expect("an auto-rollback event");
    let detail = auto["detail"].as_str().unwrap();
    // the quantile is the highest the window's answers can tell (p99 with
    // 500 answers, p98 with 250, ...): some pNN, the same for both releases
    let quantile = detail.split_whitespace().find(|w| w.len() == 3 && w.starts_with('p') && w[1..].parse::<u8>().is_ok());
    assert!(quantile.is_some() && detail.contains("rule latency") && detail.contains("juniper's"), "{detail}");
    eprintln!("latency verdict: {detail}");
}

/// Must-show 3: the same noise in both releases (1% errors, jittered
/// latency) is never judged bad, over 20 switches under traffic; and
/// without enough answers there is no verdict at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_noise_as_the_live_release_is_never_rolled_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (c, juniper, elm) = two_releases("", "").await;
    set_faults(&juniper, 10, 2, 8);
    set_faults(&elm, 10, 2, 8);
    let traffic = Traffic::start(c.proxy, &shoppers());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 0..20 {
        let to = if round % 2 == 0 { "elm" } else { "juniper" };
        let (code, body) = switch(&c, to).await;
        assert_eq!(code, 200, "round {round}: {body:#}");
        // judged at least failure-limit times with enough answers, and still live
        eventually("two judgements of the new release", Duration::from_secs(20), || async {
            status(&c).await["guard"]["watching"]["conclusive"].as_u64().unwrap_or(0) >= 2
        })
        .await;
        let st = status(&c).await;
        assert_eq!(st["live"], to, "round {round}: {st:#}");
    }
    let answers = traffic.stop().await;
    let errors = answers.iter().filter(|a| a.status == 500).count();
    eprintln!("20 switches with 1% noise in both: {} answers, {errors} of them 500, no rollback", answers.len());
    assert!(errors > 0, "the noise was there");
    assert!(!events(&c).await.iter().any(|e| e["action"] == "auto-rollback"));

    // a trickle of traffic below min-requests: even a release failing every request is not judged
    let (c, _juniper, elm) = two_releases("", "").await;
    set_faults(&elm, 1000, 0, 0);
    let trickle = Traffic::start(c.proxy, &Shoppers::new(1, "/shop-api/products", Duration::from_millis(600)));
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 200, "{body:#}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let answers = trickle.stop().await;
    let st = status(&c).await;
    assert_eq!(st["live"], "elm", "no verdict below min-requests: {st:#}");
    let watching = &st["guard"]["watching"];
    assert!(watching["evaluations"].as_u64().unwrap() >= 3 && watching["conclusive"] == 0, "{st:#}");
    assert!(answers.iter().any(|a| a.status == 500), "elm did fail, with too few answers to judge");
}

/// Must-show 5: a candidate whose start drops a table the live release
/// needs is reported not rollback-ready, and refused with
/// `require-rollback-ready = true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_broke_the_live_release_is_not_rollback_ready() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("products-table");
    std::fs::write(&table, "").unwrap();
    // juniper's code needs the table; elm's (after its migration) does not
    let check = format!(
        r#"{{ kind = "command", name = "products table", argv = ["sh", "-c", "test {{release}} != juniper || test -e {}"], retries = 0 }},"#,
        table.display()
    );
    for require in [false, true] {
        let extra = if require { "require-rollback-ready = true" } else { "" };
        std::fs::write(&table, "").unwrap();
        let (c, _juniper, _elm) = two_releases(extra, &check).await;
        std::fs::remove_file(&table).unwrap(); // elm's start ran its migration
        let (code, body) = switch(&c, "elm").await;
        if require {
            assert_eq!(code, 422, "{body:#}");
            let error = body["error"].as_str().unwrap();
            assert!(error.contains("not rollback-ready") && error.contains("broke the running release"), "{error}");
            assert_eq!(status(&c).await["live"], "juniper");
        } else {
            assert_eq!(code, 200, "{body:#}");
            assert_eq!(body["rollback_ready"]["ready"], false, "{body:#}");
            let why = body["rollback_ready"]["why"].as_str().unwrap();
            assert!(
                why.contains("juniper fails its checks now that elm has started") && why.contains("a rollback to juniper would not work"),
                "{why}"
            );
            let st = status(&c).await;
            assert_eq!(st["guard"]["rollback_ready"]["ready"], false, "{st:#}");
            let out = c.cli(&["status"]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("rollback-ready: NO"), "{text}");
        }
    }
    // with the table there, a switch says it is rollback-ready
    std::fs::write(&table, "").unwrap();
    let (c, _juniper, _elm) = two_releases("", &check).await;
    let (code, body) = switch(&c, "elm").await;
    assert_eq!((code, &body["rollback_ready"]["ready"]), (200, &json!(true)), "{body:#}");
}
