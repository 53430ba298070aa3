//! Canaries against the real binary: 500 shoppers, each with its own cookie
//! jar and loopback address, through a 10%/50% canary that the guard
//! promotes, and through one it aborts. Shares per step, every shopper's
//! releases monotonic, nothing failed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use canopy_testkit::traffic::{Answer, Shoppers, Traffic};
use canopy_testkit::*;
use serde_json::{json, Value};

const STEP: &str = r#"
[releases.canary]
step-duration = "5s"
"#;

/// One test at a time: 500 shoppers each.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn shoppers() -> Shoppers {
    Shoppers { distinct_addresses: true, ..Shoppers::new(500, "/shop-api/products", Duration::from_millis(1000)) }
}

/// Maps canopy's Unix-ms timestamps onto this process's clock.
struct Clock {
    instant: Instant,
    unix: SystemTime,
}

impl Clock {
    fn now() -> Clock {
        Clock { instant: Instant::now(), unix: SystemTime::now() }
    }

    fn at(&self, unix_ms: u64) -> Instant {
        let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
        match t.duration_since(self.unix) {
            Ok(after) => self.instant + after,
            Err(e) => self.instant - e.duration(),
        }
    }
}

async fn events(c: &Canopy) -> Vec<Value> {
    client().get(c.admin_url("/events")).send().await.unwrap().json::<Vec<Value>>().await.unwrap()
}

/// The share of answers from `release` among those started in [from, to).
fn share(answers: &[Answer], release: &str, from: Instant, to: Instant) -> (f64, usize) {
    let window: Vec<&Answer> = answers.iter().filter(|a| a.start >= from && a.start < to).collect();
    let n = window.iter().filter(|a| a.release == release).count();
    (n as f64 * 100.0 / window.len().max(1) as f64, window.len())
}

/// Every shopper's releases, in the order of their requests.
fn sequences(answers: &[Answer]) -> BTreeMap<usize, Vec<&str>> {
    let mut by_client: BTreeMap<usize, Vec<&Answer>> = BTreeMap::new();
    for a in answers {
        by_client.entry(a.client).or_default().push(a);
    }
    by_client
        .into_iter()
        .map(|(client, mut list)| {
            list.sort_by_key(|a| a.start);
            (client, list.into_iter().map(|a| a.release.as_str()).collect())
        })
        .collect()
}

/// Must-show 4: a 10%/50% canary with 500 distinct shoppers: each step's
/// share within 3 points of its target, every shopper's releases monotonic
/// (old ... old new ... new), nothing failed, then the promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_moves_shoppers_one_way_step_by_step_and_ends_in_the_switch() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (c, _juniper, _elm) = two_releases(STEP, "").await;
    let clock = Clock::now();
    let traffic = Traffic::start(c.proxy, &shoppers());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // the canary starts: no flip yet
    let r = client().post(c.admin_url("/switch")).json(&json!({"release": "elm", "canary": [10, 50]})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (&body["live"], &body["canary"]["weight"], &body["canary"]["steps"]),
        (&json!("juniper"), &json!(10.0), &json!([10.0, 50.0])),
        "{body:#}"
    );
    // a preview header still wins over the canary's bucket
    let r = client().get(c.url("/shop-api/x")).header("x-canopy-release", "elm").send().await.unwrap();
    assert_eq!(r.headers()["x-canopy-release"], "elm");
    assert!(r.headers().get("set-cookie").is_none(), "a preview takes no part in the canary");
    // a shopper without the cookie gets one, with the bucket it was routed by
    let r = client().get(c.url("/shop-api/x")).send().await.unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("canopy-bucket=")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax")
            && !cookie.contains("Secure"),
        "{cookie}"
    );

    eventually("the canary ended", Duration::from_secs(40), || async { status(&c).await["canary"].is_null() }).await;
    assert_eq!(status(&c).await["live"], "elm", "promoted, not aborted: {:#?}", events(&c).await.iter().rev().take(4).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = traffic.stop().await;

    let events = events(&c).await;
    let at = |action: &str| {
        clock.at(events.iter().rev().find(|e| e["action"] == action).unwrap_or_else(|| panic!("{action}: {events:#?}"))["at"]
            .as_u64()
            .unwrap())
    };
    let (started, stepped, promoted) = (at("canary-start"), at("canary-step"), at("canary-promote"));
    let margin = Duration::from_millis(300);
    let (first, n1) = share(&answers, "elm", started + margin, stepped - margin);
    let (second, n2) = share(&answers, "elm", stepped + margin, promoted - margin);
    let (after, n3) = share(&answers, "elm", promoted + margin, Instant::now());
    eprintln!(
        "canary shares: step 1 {first:.1}% of {n1}, step 2 {second:.1}% of {n2}, after the promotion {after:.1}% of {n3}; {} answers",
        answers.len()
    );
    assert!((first - 10.0).abs() <= 3.0, "step 1: {first:.1}%");
    assert!((second - 50.0).abs() <= 3.0, "step 2: {second:.1}%");
    assert_eq!(after, 100.0);
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(failed.is_empty(), "{} failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    let sequences = sequences(&answers);
    assert_eq!(sequences.len(), 500, "every shopper was served");
    for (client, releases) in &sequences {
        let first_elm = releases.iter().position(|r| *r == "elm").unwrap_or(releases.len());
        assert!(releases[first_elm..].iter().all(|r| *r == "elm"), "shopper {client} went back: {releases:?}");
        assert!(releases[..first_elm].iter().all(|r| *r == "juniper"), "shopper {client}: {releases:?}");
    }
    let promote = events.iter().rev().find(|e| e["action"] == "canary-promote").unwrap();
    assert_eq!((&promote["from"], &promote["to"], &promote["actor"]), (&json!("juniper"), &json!("elm"), &json!("canopy (canary)")));
    let st = status(&c).await;
    assert_eq!((&st["live"], &st["previous"]["release"], &st["canary"]), (&json!("elm"), &json!("juniper"), &Value::Null), "{st:#}");
}

/// Must-show 4, the failing half: a step the guard finds bad aborts the
/// canary at once; every shopper is back on the live release.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_step_sends_everyone_back_to_the_live_release() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (c, _juniper, elm) = two_releases(STEP, "").await;
    elm.server.knobs.error_permille.store(300, std::sync::atomic::Ordering::Relaxed);
    let clock = Clock::now();
    let traffic = Traffic::start(c.proxy, &shoppers());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = c.cli(&["switch", "elm", "--canary", "10,50"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("canary: 10% of the traffic to elm (step 1 of 2"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the canary aborted", Duration::from_secs(10), || async { status(&c).await["canary"].is_null() }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = traffic.stop().await;

    let events = events(&c).await;
    let abort = events.iter().rev().find(|e| e["action"] == "canary-abort").expect("a canary-abort event");
    let detail = abort["detail"].as_str().unwrap();
    assert!(detail.contains("error ratio") && detail.contains("juniper's"), "{detail}");
    let aborted = clock.at(abort["at"].as_u64().unwrap());
    let started = clock.at(events.iter().rev().find(|e| e["action"] == "canary-start").unwrap()["at"].as_u64().unwrap());
    eprintln!("canary aborted {:?} after it started: {detail}", aborted - started);
    let (after, n) = share(&answers, "elm", aborted + Duration::from_millis(100), Instant::now());
    assert!(n > 100 && after == 0.0, "after the abort: {after}% of {n} on elm");
    let odd: Vec<_> = answers.iter().filter(|a| !(a.status == 200 || (a.status == 500 && a.release == "elm"))).take(5).collect();
    assert!(odd.is_empty(), "only elm's induced failures: {odd:?}");
    let st = status(&c).await;
    assert_eq!(st["live"], "juniper");
    let elm_view = st["releases"].as_array().unwrap().iter().find(|r| r["name"] == "elm").unwrap();
    assert_eq!(elm_view["failed"]["action"], "canary-abort", "the candidate stays registered, marked: {elm_view:#}");
    let m = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("canopy_auto_rollbacks_total{rule=\"error-ratio\"} 1"), "{m}");
}

/// A canary by hand: abort and promote from the CLI, and the refusals that
/// keep one canary and its flips apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_promoted_or_aborted_by_hand_and_holds_other_flips() {
    let (c, _juniper, _elm) = two_releases("[releases.canary]\nstep-duration = \"10m\"\nsteps = [25]", "").await;
    let r = client().post(c.admin_url("/switch")).json(&json!({"release": "elm", "canary": []})).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["canary"]["steps"], json!([25.0]), "[] takes the configured steps: {body:#}");
    let m = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("canopy_canary_weight{release=\"elm\"} 25"), "{m}");
    // other flips wait for the canary
    let r = client().post(c.admin_url("/switch")).json(&json!({"release": "elm"})).send().await.unwrap();
    assert_eq!(r.status(), 200, "switching to the canary's release promotes it");
    assert_eq!(status(&c).await["live"], "elm");

    let r = client().post(c.admin_url("/switch")).json(&json!({"release": "juniper", "canary": [10, 5]})).send().await.unwrap();
    assert_eq!(r.status(), 400, "steps must rise");
    let r = client().post(c.admin_url("/switch")).json(&json!({"release": "juniper", "canary": [20]})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().delete(c.admin_url("/releases/juniper")).send().await.unwrap();
    assert_eq!(r.status(), 409, "the canary's release cannot be retired");
    let out = c.cli(&["canary"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("canary: 20% of the traffic to juniper"), "{out:?}");
    // a rollback during a canary aborts it: everyone back on the live release at once
    let out = c.cli(&["rollback"]);
    assert!(out.status.success(), "{out:?}");
    let st = status(&c).await;
    assert_eq!((&st["live"], &st["canary"]), (&json!("elm"), &Value::Null), "{st:#}");
    let r = client().post(c.admin_url("/canary/abort")).send().await.unwrap();
    assert_eq!(r.status(), 409, "no canary is running");
    let r = client().post(c.admin_url("/switch")).json(&json!({"release": "juniper", "canary": [30]})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let st = status(&c).await;
    assert_eq!(st["canary"]["release"], "juniper", "{st:#}\n{}", c.log());
    let out = c.cli(&["canary", "promote"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(status(&c).await["live"], "juniper");
    let actions: Vec<String> = events(&c).await.iter().map(|e| e["action"].as_str().unwrap().to_string()).collect();
    for action in ["canary-start", "canary-promote", "canary-abort"] {
        assert!(actions.iter().any(|a| a == action), "{action} in {actions:?}");
    }
}
