//! Upgrading canopy itself without dropping a request: `canopy serve
//! --upgrade` started beside the running process takes over its listening
//! sockets (proxy and admin) and its state. Under load (keep-alive and fresh
//! GETs, POSTs with bodies, long requests spanning the upgrade, WebSockets)
//! and with a switch/rollback loop on the admin API, nothing may fail: no
//! refused connection, no failed request, no flip lost or applied twice, and
//! no answer from a release that a flip acknowledged before it had replaced.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_testkit::load::{assert_right_releases, count, Flip, Kind, Load};
use canopy_testkit::*;
use serde_json::{json, Value};

/// Starts `canopy serve --upgrade` on `c`'s config; its log goes to `canopy-<n>.log`.
fn spawn_upgrade(c: &Canopy, n: usize) -> Child {
    let log = std::fs::File::create(c.dir.join(format!("canopy-{n}.log"))).unwrap();
    Command::new(canopy_bin())
        .args(["serve", "-c"])
        .arg(c.dir.join("proxy.toml"))
        .arg("--upgrade")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Every log of `c` (the first process and each upgrade's), for failure messages.
fn logs(c: &Canopy, upgrades: usize) -> String {
    let mut out = format!("--- canopy.log ---\n{}", c.log());
    for n in 1..=upgrades {
        let text = std::fs::read_to_string(c.dir.join(format!("canopy-{n}.log"))).unwrap_or_default();
        out += &format!("\n--- canopy-{n}.log ---\n{text}");
    }
    out
}

/// Upgrades `c` in place: returns once the new process owns every listening
/// socket (proxy, admin and TLS) and the old one has let go of them. `c.child` becomes the new
/// process; the old one (still finishing its requests) is returned.
async fn upgrade(c: &mut Canopy, n: usize) -> Child {
    let mut new = spawn_upgrade(c, n);
    let ports: Vec<u16> = [c.proxy.port(), c.admin.port()].into_iter().chain(c.tls.map(|t| t.port())).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = new.try_wait() {
            panic!("upgrade {n}: new process exited with {st}\n{}", logs(c, n));
        }
        let (new_pid, old_pid) = (new.id(), c.child.id());
        if ports.iter().all(|&p| listens(new_pid, p) && !listens(old_pid, p)) {
            break;
        }
        assert!(Instant::now() < deadline, "upgrade {n} did not complete in 20 s\n{}", logs(c, n));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::mem::replace(&mut c.child, new)
}

/// Most switch calls a [`FlipLoop`] makes.
const MAX_FLIPS: usize = 100_000;

/// What a [`FlipLoop`] saw: acknowledged flips with their generations, how
/// many 503s, and any other failure.
type Flips = (Vec<(Flip, u64)>, usize, Vec<String>);

/// Flips back and forth through the admin API until stopped. Every 200 is
/// recorded as a flip with its generation; a 503 (documented: an upgrade is
/// completing) is counted and retried; anything else is a failure.
struct FlipLoop {
    stop: Arc<AtomicBool>,
    /// Flips acknowledged so far.
    acked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Flips>,
}

impl FlipLoop {
    fn start(c: &Canopy) -> FlipLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let (url, stop2, acked2) = (c.admin_url("/switch"), stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let (admin, mut flips, mut unavailable, mut failures) = (client(), Vec::new(), 0, Vec::new());
            let mut k = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                // bounded: a loop that ran out before the upgrades did would prove less than it says
                assert!(k < MAX_FLIPS, "the flip loop reached {MAX_FLIPS} flips before the test stopped it");
                let to = if flips.len() % 2 == 0 { "elm" } else { "juniper" };
                k += 1;
                let sent = Instant::now();
                match admin.post(&url).json(&json!({"release": to})).send().await {
                    Ok(r) if r.status() == 200 => {
                        let acked = Instant::now();
                        let body: Value = r.json().await.unwrap();
                        flips.push((Flip { sent, acked, to: to.to_string() }, body["generation"].as_u64().unwrap()));
                        acked2.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status() == 503 => {
                        assert_eq!(r.headers()["retry-after"], "1");
                        unavailable += 1;
                    }
                    Ok(r) => failures.push(format!("switch to {to}: {} {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => failures.push(format!("switch to {to}: {e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            (flips, unavailable, failures)
        });
        FlipLoop { stop, acked, task }
    }

    /// Waits until `more` flips beyond `since` are acknowledged (at most 15 s).
    async fn wait_for(&self, since: usize, more: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.acked.load(Ordering::Relaxed) < since + more {
            assert!(Instant::now() < deadline, "no flip acknowledged within 15 s of an upgrade");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> Flips {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_upgrades_under_load_lose_nothing() {
    let (mut c, _juniper, _elm) = two_releases("", "").await;
    let long = Kind::slow("long-get", 1500);
    let kinds = [Kind::KEEPALIVE_GET, Kind::KEEPALIVE_GET, Kind::FRESH_GET, Kind::POST, Kind::FRESH_POST, long, long];
    let load = Load::start(c.proxy, &kinds, true);
    let flipper = FlipLoop::start(&c);
    tokio::time::sleep(Duration::from_millis(300)).await;

    const UPGRADES: usize = 20;
    let mut old = Vec::new();
    let mut upgraded_at = Vec::new();
    for n in 1..=UPGRADES {
        let acked = flipper.acked.load(Ordering::Relaxed);
        upgraded_at.push(Instant::now());
        old.push(upgrade(&mut c, n).await);
        assert_eq!(load.failures(), 0, "requests failed by upgrade {n}: {:?}\n{}", load.failure_list(), logs(&c, n));
        // flips resume once the old process has drained: two more before the next upgrade
        flipper.wait_for(acked, 2).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (flips, unavailable, admin_failures) = flipper.stop().await;
    let (done, failures) = load.stop().await;

    assert!(failures.is_empty(), "{} failed requests: {:?}\n{}", failures.len(), &failures[..failures.len().min(10)], logs(&c, UPGRADES));
    assert!(admin_failures.is_empty(), "admin API failures: {admin_failures:?}");
    let only_flips: Vec<Flip> = flips.iter().map(|(f, _)| f.clone()).collect();
    assert_right_releases("juniper", &only_flips, &done);
    // every acknowledged flip is in the state now served: the last one is live,
    // with its generation (none lost, none applied twice)
    let (last, generation) = flips.last().expect("some flips were acknowledged");
    let st = status(&c).await;
    assert_eq!((st["live"].as_str(), st["generation"].as_u64()), (Some(last.to.as_str()), Some(*generation)), "{st}");
    let gens: Vec<u64> = flips.iter().map(|(_, g)| *g).collect();
    assert!(gens.windows(2).all(|w| w[1] == w[0] + 1), "acknowledged generations are not consecutive: {gens:?}");
    // long requests in flight at an upgrade finished on the old process
    let spanning = done.iter().filter(|d| d.kind == "long-get" && upgraded_at.iter().any(|u| d.start < *u && d.end > *u)).count();
    // the old processes exited by themselves, cleanly
    for (n, mut child) in old.into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "process {n} did not exit after its upgrade");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "process {n} exited with {status}");
    }
    eprintln!(
        "upgrades: {UPGRADES}, requests: {} (keepalive-get {}, fresh-get {}, post {}, fresh-post {}, long-get {} of which {spanning} spanned an upgrade, websocket {}), flips acknowledged: {}, 503 while upgrading: {unavailable}",
        done.len(),
        count(&done, "keepalive-get"),
        count(&done, "fresh-get"),
        count(&done, "post"),
        count(&done, "fresh-post"),
        count(&done, "long-get"),
        count(&done, "websocket"),
        flips.len(),
    );
    assert!(spanning >= UPGRADES / 2, "too few long requests spanned an upgrade ({spanning}) to prove anything");
    assert!(count(&done, "websocket") >= 5 && count(&done, "fresh-get") >= 50);
    assert!(flips.len() >= 2 * UPGRADES, "too few flips were acknowledged ({}) across the upgrades", flips.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_without_a_running_canopy_is_refused_clearly() {
    let c = Canopy::start(&config("", ""));
    let pid_file = c.dir.join("state.json.pid");
    eventually("the pid file", Duration::from_secs(5), || async { pid_file.exists() }).await;
    std::fs::write(&pid_file, "1\n").unwrap(); // init: alive, but not a canopy
    let out = Command::new(canopy_bin()).args(["serve", "-c"]).arg(c.dir.join("proxy.toml")).arg("--upgrade").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: --upgrade: no running canopy to take over from: pid 1 from"), "{err}");
    assert!(err.contains("is not a running `canopy serve`"), "{err}");
    // the running one was not disturbed
    assert_eq!(client().get(c.admin_url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_process_gone_before_taking_over_leaves_the_old_one_serving() {
    let (c, _juniper, _elm) = two_releases("", "").await;
    // SIGQUIT as `serve --upgrade` sends it, but no new process takes the
    // sockets (as when it dies first): the old one gives up after the 5 s the
    // hand-over may take, and resumes
    let quit = Command::new("kill").args(["-QUIT", &c.child.id().to_string()]).status().unwrap();
    assert!(quit.success());
    eventually("the hand-over to start", Duration::from_secs(5), || async { c.log().contains("SIGQUIT: handing") }).await;
    let (code, release, _) = get(&c, "/shop-api/x").await;
    assert_eq!((code, release.as_str()), (200, "juniper"));
    eventually("the old process to resume after the failed hand-over", Duration::from_secs(15), || async {
        c.log().contains("upgrade failed, this process keeps serving")
    })
    .await;
    // it still serves, and takes changes again
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&c, "/shop-api/x").await.1, "elm");
    assert!(listens(c.child.id(), c.proxy.port()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_process_killed_after_the_handover_leaves_the_new_one_with_the_last_state() {
    let (mut c, _juniper, _elm) = two_releases("", "").await;
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 200, "{body}");
    let generation = body["generation"].as_u64().unwrap();
    let mut old = upgrade(&mut c, 1).await;
    old.kill().unwrap();
    old.wait().unwrap();
    // the new process has the acknowledged state and, its predecessor gone, takes changes
    let st = status(&c).await;
    assert_eq!((st["live"].as_str(), st["generation"].as_u64()), (Some("elm"), Some(generation)), "{st}");
    assert_eq!(get(&c, "/shop-api/x").await.1, "elm");
    eventually("the new process to take changes", Duration::from_secs(5), || async { switch(&c, "juniper").await.0 == 200 }).await;
    assert_eq!(get(&c, "/shop-api/x").await.1, "juniper");
    // and a plain restart after kill -9 of the survivor recovers the same state
    c.kill9();
    let restarted = Canopy::start_in(&c.dir.clone(), &c.template);
    let st = status(&restarted).await;
    assert_eq!(st["live"], "juniper", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_process_killed_after_the_handover_is_recovered_by_a_restart() {
    let (mut c, _juniper, _elm) = two_releases("", "").await;
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 200, "{body}");
    let mut old = upgrade(&mut c, 1).await;
    c.kill9(); // the new process, right after it took the sockets
               // the old one took no change after handing over: it drains and exits
    let deadline = Instant::now() + Duration::from_secs(15);
    while old.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restarted = Canopy::start_in(&c.dir.clone(), &c.template);
    let st = status(&restarted).await;
    assert_eq!(st["live"], "elm", "{st}");
    assert_eq!(get(&restarted, "/shop-api/x").await.1, "elm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrades_hand_over_the_tls_listener_under_h2_and_https_load() {
    use canopy_testkit::tls::{cert, h1_tls_target, h2_target, https, served, tls_config};
    let shop = cert(&["shop.test"]);
    let tmp = tempfile::tempdir().unwrap();
    shop.write(tmp.path(), "shop");
    let tls_part = "[tls]\n[[tls.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n";
    let mut c = Canopy::start_in(tmp.path(), &tls_config(tls_part));
    c.tmp = Some(tmp);
    let (mut c, _juniper, _elm) = two_releases_on(c).await;
    let tls = c.tls.unwrap();
    // long-lived h2 connections (each is told GOAWAY by the old process and
    // reconnects to the new one) and a new TLS connection per request
    let h2 = Load::start_on(&h2_target("shop.test", tls, vec![shop.clone()]), &[Kind::KEEPALIVE_GET, Kind::POST]);
    let h1 = Load::start_on(&h1_tls_target("shop.test", tls, vec![shop.clone()]), &[Kind::FRESH_GET, Kind::KEEPALIVE_GET]);
    let mut old = Vec::new();
    for n in 1..=3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        old.push(upgrade(&mut c, n).await);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (done_h2, failed_h2) = h2.stop().await;
    let (done_h1, failed_h1) = h1.stop().await;
    for mut o in old {
        let st = tokio::task::spawn_blocking(move || o.wait()).await.unwrap().unwrap();
        assert!(st.success(), "an old process exited with {st}\n{}", logs(&c, 3));
    }
    assert!(failed_h2.is_empty() && failed_h1.is_empty(), "h2: {failed_h2:?}\nhttps: {failed_h1:?}\n{}", logs(&c, 3));
    eprintln!(
        "3 upgrades: {} h2 streams, {} HTTPS requests ({} on new connections), 0 failed",
        done_h2.len(),
        done_h1.len(),
        count(&done_h1, "fresh-get")
    );
    assert!(done_h2.len() >= 20 && count(&done_h1, "fresh-get") >= 20);
    // the last process serves HTTPS with the same certificate
    let r = https("shop.test", tls, &[&shop])
        .build()
        .unwrap()
        .get(format!("https://shop.test:{}/shop-api/after", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_2));
    assert!(served(&r) == shop.der);
}

/// Checks canopy answers as in maintenance: browsers the page with
/// `message`, API clients JSON, both 503 with `Retry-After`; its own health
/// still answers.
async fn in_maintenance(c: &Canopy, message: &str) {
    let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let r = client().get(c.url("/products/7")).header("accept", html).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1800).contains(&retry), "Retry-After counts down to --until: {retry}");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = r.text().await.unwrap();
    assert!(page.contains(message) && page.contains("expected back by"), "{page}");
    let r = client().post(c.url("/shop-api")).header("accept", "application/json").body("{}").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["error"].as_str(), body["message"].as_str()), (Some("maintenance"), Some(message)));
    assert_eq!(client().get(c.admin_url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(status(c).await["maintenance"]["message"], message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_stays_on_across_a_restart_and_an_upgrade() {
    let (mut c, juniper, _elm) = two_releases("", "").await;
    let message = "Back soon: we are moving the shop to a new database";
    let out = c.cli(&["maintenance", "on", "--message", message, "--until", "30m"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("maintenance: ON"), "{}", String::from_utf8_lossy(&out.stdout));
    let hits = juniper.storefront.hits.load(std::sync::atomic::Ordering::Relaxed);
    in_maintenance(&c, message).await;
    assert_eq!(juniper.storefront.hits.load(std::sync::atomic::Ordering::Relaxed), hits, "a request reached the release");

    // a bad request is refused and changes nothing
    let r = client().post(c.admin_url("/maintenance")).json(&json!({"message": "x", "until": "yesterday"})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    in_maintenance(&c, message).await;

    // restart (SIGKILL, start again on the same state file)
    c.kill9();
    let (dir, text, tmp) = (c.dir.clone(), c.template.clone(), c.tmp.take());
    c = Canopy::start_in(&dir, &text);
    c.tmp = tmp;
    in_maintenance(&c, message).await;

    // serve --upgrade
    let mut old = upgrade(&mut c, 1).await;
    in_maintenance(&c, message).await;
    let _ = old.wait();

    let out = c.cli(&["maintenance", "off"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(&c, "/products/7").await.1, "juniper");
    let events = client().get(c.admin_url("/events")).send().await.unwrap().json::<Value>().await.unwrap();
    let actions: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"maintenance-on") && actions.contains(&"maintenance-off"), "{actions:?}");
}
