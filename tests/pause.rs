//! Pause and resume around a migration that is not backward compatible:
//! `canopy switch elm --pause` holds traffic, runs `[releases] migrate`,
//! validates, flips and resumes; shoppers see latency, not errors. Also the
//! bounds: `--max` exceeded and the limit of held requests answer 503.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_testkit::*;
use serde_json::{json, Value};

/// One answered request: its kind, start, end, status and the release that answered.
#[derive(Debug, Clone)]
struct Answer {
    kind: &'static str,
    start: Instant,
    end: Instant,
    status: u16,
    release: String,
    problem: Option<String>,
}

/// Most requests one client sends, and the longest it runs.
const MAX_REQUESTS: usize = 20_000;
const MAX_TIME: Duration = Duration::from_secs(60);

/// Eight clients: GETs of the storefront, POSTs echoed byte for byte,
/// GraphQL POSTs to the shop API; each checks the upstream's own release
/// against canopy's header.
fn eight_clients(c: &Canopy, stop: Arc<AtomicBool>, answers: Arc<Mutex<Vec<Answer>>>) -> Vec<tokio::task::JoinHandle<()>> {
    let kinds = ["get", "get", "get", "post", "post", "post", "graphql", "graphql"];
    kinds
        .into_iter()
        .enumerate()
        .map(|(n, kind)| {
            let (stop, answers, base) = (stop.clone(), answers.clone(), c.url(""));
            tokio::spawn(async move {
                let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(40)).build().unwrap();
                let began = Instant::now();
                for i in 0..MAX_REQUESTS {
                    if stop.load(Ordering::Relaxed) || began.elapsed() > MAX_TIME {
                        break;
                    }
                    let start = Instant::now();
                    let body = format!("client {n} request {i}");
                    let req = match kind {
                        "get" => http.get(format!("{base}/products/{i}")),
                        "post" => http.post(format!("{base}/echo")).body(body.clone()),
                        _ => http.post(format!("{base}/shop-api")).json(&json!({"query": "{ products { totalItems } }"})),
                    };
                    let (status, release, problem) = match req.send().await {
                        Err(e) => (0, String::new(), Some(e.to_string())),
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let header = r.headers().get("x-canopy-release").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                            let own = r.headers().get("x-release").map(|v| v.to_str().unwrap().to_string());
                            let text = r.text().await.unwrap_or_default();
                            let own = own.or_else(|| serde_json::from_str::<Value>(&text).ok()?["release"].as_str().map(str::to_string));
                            let problem = match (kind, status) {
                                (_, s) if s != 200 => Some(format!("status {s}: {text}")),
                                ("post", _) if text != body => Some(format!("echo differs: {text}")),
                                _ if own.as_deref() != Some(header.as_str()) => Some(format!("header {header}, upstream {own:?}")),
                                _ => None,
                            };
                            (status, header, problem)
                        }
                    };
                    answers.lock().unwrap().push(Answer { kind, start, end: Instant::now(), status, release, problem });
                }
            })
        })
        .collect()
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn latencies(answers: &[&Answer]) -> String {
    let mut d: Vec<Duration> = answers.iter().map(|a| a.end - a.start).collect();
    d.sort();
    if d.is_empty() {
        return "none".into();
    }
    format!("n={} p50={:?} p99={:?} max={:?}", d.len(), quantile(&d, 0.5), quantile(&d, 0.99), d[d.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switch_with_pause_runs_the_migration_and_fails_nothing() {
    let (c, _juniper, _elm) = two_releases("migrate = [\"sh\", \"-c\", \"sleep 3\"]", "").await;
    let (stop, answers) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let clients = eight_clients(&c, stop.clone(), answers.clone());
    eventually("traffic on juniper", Duration::from_secs(10), || async { answers.lock().unwrap().len() >= 40 }).await;

    let sent = Instant::now();
    let out = c.cli(&["switch", "elm", "--pause", "--pause-max", "20s"]);
    let acked = Instant::now();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let after = answers.lock().unwrap().len();
    eventually("traffic on elm", Duration::from_secs(10), || async { answers.lock().unwrap().len() >= after + 40 }).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let answers = answers.lock().unwrap().clone();
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.problem.is_some() || a.status != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), answers.len(), &failed[..failed.len().min(5)]);
    assert!(acked - sent >= Duration::from_secs(3), "the switch returned before the 3 s migration: {:?}", acked - sent);
    // held: sent during the switch and still waiting when the migration had run for 2 s
    let held: Vec<&Answer> =
        answers.iter().filter(|a| a.start > sent && a.start < acked && a.end > sent + Duration::from_secs(2)).collect();
    assert!(held.len() >= 8, "every client should have had a request held: {}", held.len());
    let wrong: Vec<&&Answer> = held.iter().filter(|a| a.release != "elm").collect();
    assert!(wrong.is_empty(), "held requests answered by another release than elm: {wrong:?}");
    // nothing started once the pause was in force reached juniper
    let late: Vec<&Answer> = answers.iter().filter(|a| a.start > sent + Duration::from_millis(300) && a.release == "juniper").collect();
    assert!(late.is_empty(), "answered by juniper after the pause began: {late:?}");
    let before: Vec<&Answer> = answers.iter().filter(|a| a.end < sent).collect();
    let after: Vec<&Answer> = answers.iter().filter(|a| a.start > acked).collect();
    for kind in ["get", "post", "graphql"] {
        assert!(held.iter().any(|a| a.kind == kind), "no {kind} was held");
    }
    eprintln!("switch --pause with a 3 s migration took {:?}; {} requests, 0 failed", acked - sent, answers.len());
    eprintln!("  before the pause: {}", latencies(&before));
    eprintln!("  held:             {}", latencies(&held));
    eprintln!("  after the resume: {}", latencies(&after));
    let st = status(&c).await;
    assert_eq!((st["live"].as_str(), st.get("paused")), (Some("elm"), None), "{st}");
    // the hold is not elm's latency (the guard judges these figures): none took a second
    let metrics = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |prefix: &str| -> u64 {
        metrics.lines().filter(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum()
    };
    let (within, count) = (
        value("canopy_request_duration_seconds_bucket{release=\"elm\",service=\"storefront\",le=\"1\"}"),
        value("canopy_request_duration_seconds_count{release=\"elm\",service=\"storefront\"}"),
    );
    assert!(count > 0 && within == count, "elm's storefront answers over a second: {} of {count}", count - within);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_migration_resumes_on_the_old_release() {
    let (c, _juniper, _elm) = two_releases("migrate = [\"sh\", \"-c\", \"echo relation exists >&2; exit 3\"]", "").await;
    let r = client().post(c.admin_url("/switch")).json(&json!({"release": "elm", "pause": true})).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("migrate failed"), "{body}");
    assert_eq!(get(&c, "/products/1").await.1, "juniper");
    assert_eq!(status(&c).await.get("paused"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_requests_are_bounded_in_time_and_count() {
    let (c, _juniper, _elm) = two_releases("", "").await;
    // a bad request is a JSON 400 and pauses nothing
    for bad in [json!({"max": "forever"}), json!({"max": "1h"}), json!({"max_held": 0}), json!({"hold": true})] {
        let r = client().post(c.admin_url("/pause")).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    }
    assert_eq!(status(&c).await.get("paused"), None);
    // past --max: 503 with Retry-After
    let out = c.cli(&["pause", "--max", "1s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = Instant::now();
    let r = client().get(c.url("/products/1")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (503, "5"));
    assert!(t.elapsed() >= Duration::from_millis(900), "held only {:?}", t.elapsed());
    // health probes and ACME challenges pass a pause
    assert_eq!(get(&c, "/health").await.0, 200);
    let out = c.cli(&["resume"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed"), "{}", String::from_utf8_lossy(&out.stdout));

    // beyond the limit of held requests: 503 at once, the held ones answered at the resume
    let r = client().post(c.admin_url("/pause")).json(&json!({"max": "20s", "max_held": 2})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let held: Vec<_> = (0..2).map(|_| tokio::spawn(client().get(c.url("/products/2")).send())).collect();
    eventually("two held", Duration::from_secs(5), || async { status(&c).await["paused"]["held"] == 2 }).await;
    let t = Instant::now();
    let r = client().get(c.url("/products/3")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (503, "5"));
    assert!(t.elapsed() < Duration::from_secs(2), "refused only after {:?}", t.elapsed());
    let r = client().post(c.admin_url("/pause")).send().await.unwrap();
    assert_eq!(r.status(), 409, "pausing while paused");
    assert_eq!(client().post(c.admin_url("/resume")).send().await.unwrap().status(), 200);
    for h in held {
        let r = h.await.unwrap().unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["x-canopy-release"].to_str().unwrap()), (200, "juniper"));
    }
}
