//! Restart safety: SIGTERM under load drains, SIGKILL at random points of a
//! switch loop keeps the last acknowledged switch.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_testkit::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_inflight_and_refuses_new_connections() {
    let (mut c, _j, _e) = two_releases("", "").await;
    let n = 8;
    // separate clients: separate connections
    let slow: Vec<_> = (0..n)
        .map(|i| {
            let url = c.url(&format!("/products/{i}?ms=1500"));
            tokio::spawn(async move {
                let r = client().get(url).send().await.unwrap();
                let rel = r.headers()["x-canopy-release"].to_str().unwrap().to_string();
                (r.status().as_u16(), rel, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    eventually("all requests in flight", Duration::from_secs(5), || async { inflight(&c).await == n }).await;
    let sent = Instant::now();
    let pid = c.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // the listener closes: new connections are refused while old ones finish
    eventually("canopy stops listening after SIGTERM", Duration::from_secs(2), || {
        std::future::ready(!listens(c.child.id(), c.proxy.port()))
    })
    .await;
    // ... while the requests are still being answered (no wall-clock bound: a
    // loaded test machine may take its time, but not the 1.5 s they take;
    // the upstream timeout is 2 s)
    assert!(slow.iter().all(|t| !t.is_finished()), "listener closed only after in-flight requests finished ({:?})", sent.elapsed());
    assert!(client().get(c.url("/")).send().await.is_err(), "a new request was served after SIGTERM");
    for (i, t) in slow.into_iter().enumerate() {
        let (code, rel, body) = t.await.unwrap();
        assert_eq!((code, rel.as_str()), (200, "juniper"), "request {i}: {body}");
        assert_eq!(body["path"], format!("/products/{i}"));
    }
    let mut exited = None;
    eventually("canopy exits once drained", Duration::from_secs(5), || {
        exited = c.child.try_wait().unwrap();
        std::future::ready(exited.is_some())
    })
    .await;
    assert!(exited.unwrap().success(), "{exited:?}");
    // drained, not cut off by the 5 s shutdown grace
    assert!(sent.elapsed() < Duration::from_secs(5), "{:?}", sent.elapsed());
}

/// xorshift64*: enough randomness for kill timings without a dependency.
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
        eprintln!("FAULTS_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_during_a_switch_loop_keeps_the_last_ack() {
    let (mut c, _j, _e) = two_releases("", "").await;
    let dir = c.dir.clone();
    let text = c.template.clone();
    let mut rng = Rng::new();
    // (live, generation) known durable: the last acknowledged switch
    let mut acked = (String::from("juniper"), 1u64);
    let (mut cycles, mut total_acks, mut in_doubt) = (0, 0, 0);
    let started = Instant::now();
    while cycles < 25 && started.elapsed() < Duration::from_secs(20) {
        let admin = c.admin;
        let state = Arc::new(Mutex::new((acked.clone(), None::<String>)));
        let shared = state.clone();
        let mut seed = rng.below(u64::MAX);
        // switches back and forth until canopy dies under it
        let switcher = tokio::spawn(async move {
            let mut acks = 0;
            loop {
                let (live, _) = shared.lock().unwrap().0.clone();
                let target = if live == "elm" { "juniper" } else { "elm" };
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let force = seed >> 63 == 1; // half of them validate first
                shared.lock().unwrap().1 = Some(target.to_string());
                let url = format!("http://{admin}/switch?force={force}");
                let Ok(r) = client().post(url).json(&json!({"release": target})).send().await else { return acks };
                let code = r.status().as_u16();
                let Ok(v) = r.json::<Value>().await else { return acks };
                assert_eq!(code, 200, "{v}");
                let generation = v["generation"].as_u64().unwrap();
                let mut s = shared.lock().unwrap();
                assert_eq!(generation, s.0 .1 + 1, "{v}");
                *s = ((target.to_string(), generation), None);
                acks += 1;
            }
        });
        tokio::time::sleep(Duration::from_millis(rng.below(250))).await; // the random kill point
        c.kill9();
        total_acks += switcher.await.unwrap();
        let ((live, generation), attempted) = state.lock().unwrap().clone();
        let saved = durable_state_in(&dir, canopy_admin::load_state);
        let got = (saved["live"].as_str().unwrap().to_string(), saved["generation"].as_u64().unwrap());
        let attempt = attempted.map(|t| (t, generation + 1));
        assert!(
            got == (live.clone(), generation) || Some(&got) == attempt.as_ref(),
            "cycle {cycles}: state {got:?}, last ack ({live}, {generation}), attempt {attempt:?}"
        );
        if got != (live, generation) {
            in_doubt += 1; // the kill landed after the write, before the reply
        }
        acked = got.clone();
        let tmp = c.tmp.take();
        c = Canopy::start_in(&dir, &text);
        c.tmp = tmp;
        let st = status(&c).await;
        assert_eq!((st["live"].as_str().unwrap(), st["generation"].as_u64().unwrap()), (got.0.as_str(), got.1));
        assert_eq!(get(&c, "/").await.1, got.0, "the proxy serves the durable live release");
        cycles += 1;
    }
    eprintln!("{cycles} kill cycles, {total_acks} acknowledged switches, {in_doubt} written-but-unacknowledged");
    assert!(cycles >= 10, "only {cycles} cycles");
    assert!(total_acks >= cycles, "too few switches acknowledged ({total_acks}) for the kills to land mid-loop");
}
