//! Control plane end to end: validation-gated switch, rollback, retire,
//! durability across kill -9, security. Real binary, real upstreams.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use canopy_testkit::*;
use serde_json::{json, Value};

async fn post(c: &Canopy, path: &str, body: Value) -> (u16, Value) {
    let r = client().post(c.admin_url(path)).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_errors_refuse_the_switch_and_live_stays() {
    let (c, _j, elm) = two_releases("", "").await;
    elm.server.knobs.graphql_errors.store(true, Ordering::Relaxed);
    let before = c.durable_state(canopy_admin::load_state);
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 422, "{body}");
    let failed: Vec<&Value> = body["report"]["checks"].as_array().unwrap().iter().filter(|c| c["passed"] == false).collect();
    assert_eq!(failed.len(), 1, "{body}");
    assert_eq!(failed[0]["check"], "graphql /shop-api");
    assert_eq!(failed[0]["reason"], "1 error(s) in response: relation \"product\" does not exist");
    assert!(body["error"].as_str().unwrap().contains("validation of release `elm` failed"));
    // live unchanged, traffic unchanged, generation unchanged
    let st = status(&c).await;
    assert_eq!(st["live"], "juniper");
    assert_eq!(st["generation"], 1);
    assert_eq!(get(&c, "/").await.1, "juniper");
    let state_after = c.durable_state(canopy_admin::load_state);
    assert_eq!(state_after["live"], before["live"]);
    assert_eq!(state_after["generation"], before["generation"]);
    // the CLI says which check failed and exits non-zero
    let out = c.cli(&["switch", "elm"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused (422)"), "{err}");
    assert!(err.contains("FAIL server/graphql /shop-api"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_command_check_refuses_with_its_output() {
    let check = r#"{ kind = "command", name = "migrations", argv = ["sh", "-c", "echo checking {release}/{service}; test {release} != elm"], timeout = "2s", retries = 0 },"#;
    let (c, _j, _e) = two_releases("", check).await;
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 422, "{body}");
    let cmd = body["report"]["checks"].as_array().unwrap().iter().find(|c| c["check"] == "migrations").unwrap().clone();
    assert_eq!(cmd["passed"], false);
    assert_eq!(cmd["reason"], "exit status 1");
    assert_eq!(cmd["output"], "checking elm/server\n");
    assert_eq!(status(&c).await["live"], "juniper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_switch_moves_new_requests_and_rollback_moves_them_back() {
    let (c, _j, _e) = two_releases("", "").await;
    assert_eq!(get(&c, "/shop-api/x").await.1, "juniper");
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["live"], "elm");
    assert_eq!(body["previous"]["release"], "juniper");
    assert_eq!(body["report"]["passed"], true);
    // every check of every service ran, the worker included
    let services: Vec<&str> = body["report"]["checks"].as_array().unwrap().iter().map(|c| c["service"].as_str().unwrap()).collect();
    for s in ["server", "worker", "storefront"] {
        assert!(services.contains(&s), "{s} not checked: {body}");
    }
    for _ in 0..5 {
        assert_eq!(get(&c, "/shop-api/x").await.1, "elm");
        assert_eq!(get(&c, "/").await.1, "elm");
    }
    // the warm previous release is quick-checked in the background...
    eventually("a watch report of juniper", Duration::from_secs(5), || async { status(&c).await["previous"]["watch"]["passed"] == true })
        .await;
    assert_eq!(status(&c).await["previous"]["watch"]["release"], "juniper");
    let metrics = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("canopy_rollback_target_healthy{release=\"juniper\"} 1"), "{metrics}");
    let out = String::from_utf8(c.cli(&["status"]).stdout).unwrap();
    assert!(out.contains("previous:   juniper") && out.contains("healthy (3 checks passed)"), "{out}");
    // ...so the rollback trusts that fresh report instead of checking inline
    let (code, body) = post(&c, "/rollback", json!({})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["live"], "juniper");
    assert_eq!(body["report"]["mode"], "watch", "{body}");
    assert_eq!(body["report"]["passed"], true);
    assert_eq!(body["validation_ms"], 0.0, "{body}");
    assert!(body["persist_ms"].as_f64().unwrap() <= body["duration_ms"].as_f64().unwrap(), "{body}");
    assert!(body["duration_ms"].as_f64().unwrap() < 1000.0, "{body}");
    assert_eq!(get(&c, "/").await.1, "juniper");
    let st = status(&c).await;
    assert_eq!((st["live"].clone(), st["generation"].clone()), (json!("juniper"), json!(3)));
    assert_eq!(st["previous"]["release"], "elm");
    // stale generation and switching to the live release are conflicts
    let (code, body) = post(&c, "/switch", json!({"release": "elm", "expect_generation": 2})).await;
    assert_eq!(code, 409);
    assert!(body["error"].as_str().unwrap().starts_with("stale generation: expected 2, current is 3"), "{body}");
    let (code, _) = post(&c, "/switch", json!({"release": "juniper"})).await;
    assert_eq!(code, 409);
    // audit log
    let events: Value = client().get(c.admin_url("/events")).send().await.unwrap().json().await.unwrap();
    let actions: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "switch").count(), 2);
    assert_eq!(actions.last(), Some(&"rollback"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_refuses_an_unhealthy_previous_release_unless_forced() {
    let (c, juniper, _e) = two_releases("", "").await;
    assert_eq!(switch(&c, "elm").await.0, 200);
    juniper.server.knobs.unhealthy.store(true, Ordering::Relaxed);
    // the background watch notices within its interval (1 s by default)...
    eventually("the watch to see juniper fail", Duration::from_secs(5), || async {
        status(&c).await["previous"]["watch"]["passed"] == false
    })
    .await;
    let metrics = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("canopy_rollback_target_healthy{release=\"juniper\"} 0"), "{metrics}");
    let out = String::from_utf8(c.cli(&["status"]).stdout).unwrap();
    assert!(out.contains("UNHEALTHY (a rollback will re-check first): server/"), "{out}");
    // ...and a failed watch is never trusted: the rollback re-checks inline and refuses
    let (code, body) = post(&c, "/rollback", json!({})).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["report"]["mode"], "quick", "{body}");
    let failed = body["report"]["checks"].as_array().unwrap().iter().find(|c| c["passed"] == false).unwrap();
    assert_eq!(failed["service"], "server", "{body}");
    assert_eq!(status(&c).await["live"], "elm");
    let (code, body) = post(&c, "/rollback?force=true", json!({})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["forced"], true);
    assert_eq!(body["report"], Value::Null);
    assert_eq!(status(&c).await["live"], "juniper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_the_live_release_is_refused() {
    let (c, _j, _e) = two_releases("", "").await;
    let r = client().delete(c.admin_url("/releases/juniper")).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "release `juniper` is live; switch to another release before retiring it");
    assert_eq!(get(&c, "/").await.1, "juniper");
    let r = client().delete(c.admin_url("/releases/oak")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // retiring a candidate works and removes it
    let r = client().delete(c.admin_url("/releases/elm")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let st = status(&c).await;
    assert_eq!(st["releases"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_expiry_drains_then_runs_the_retire_hook() {
    let dir = tempfile::tempdir().unwrap();
    let hook_log = dir.path().join("hooks.log");
    // the hook writes its own time (Unix nanoseconds) beside what it retired
    let hook = format!("echo retired {{release}} $(date +%s%N) >> {}", hook_log.display());
    let extra = format!("retire-hooks = [[\"sh\", \"-c\", \"{hook}\"]]\nhook-timeout = \"5s\"");
    let text = config(&extra, "")
        .replace("validation-window = \"10m\"", "validation-window = \"1s\"")
        .replace("upstream-timeout = \"2s\"", "upstream-timeout = \"5s\"");
    let (c, _juniper, _elm) = two_releases_with(&text).await;
    // a slow request on juniper, started before the flip, outlives the 1 s
    // window by far (so a hook that did not wait for it would show)
    const SLOW: Duration = Duration::from_millis(2500);
    let slow_url = c.url(&format!("/products?ms={}", SLOW.as_millis()));
    let slow = tokio::spawn(async move {
        let r = client().get(slow_url).send().await.unwrap();
        let rel = r.headers()["x-canopy-release"].to_str().unwrap().to_string();
        let received = r.headers()[upstream::RECEIVED_HEADER].to_str().unwrap().parse::<u64>().unwrap();
        (r.status().as_u16(), rel, received)
    });
    eventually("the slow request in flight", Duration::from_secs(5), || async { inflight(&c).await == 1 }).await;
    assert_eq!(switch(&c, "elm").await.0, 200);
    let flipped = unix_now();
    let (code, rel, received) = slow.await.unwrap();
    assert_eq!((code, rel.as_str()), (200, "juniper"));
    // when the upstream answered, at the earliest: SLOW after the request
    // reached it (its header), on the Unix clock
    let at_upstream = upstream::epoch() + Duration::from_micros(received);
    let answered = unix_now() - at_upstream.elapsed() + SLOW;
    eventually("the retire hook ran", Duration::from_secs(10), || {
        std::future::ready(std::fs::read_to_string(&hook_log).is_ok_and(|t| t.ends_with('\n')))
    })
    .await;
    let line = std::fs::read_to_string(&hook_log).unwrap();
    let (what, nanos) = line.trim_end().rsplit_once(' ').unwrap_or_else(|| panic!("hook wrote {line:?}"));
    assert_eq!(what, "retired juniper", "{line:?}");
    assert_eq!(line.lines().count(), 1, "{line:?}");
    let hooked = Duration::from_nanos(nanos.parse().unwrap_or_else(|e| panic!("hook time {nanos:?}: {e}")));
    // the window ran out 1 s after the flip, while juniper was still busy:
    // the hook waited for the drain, so it ran after the upstream answered
    assert!(
        hooked >= flipped + Duration::from_secs(1),
        "hook ran {:?} before the window ended",
        (flipped + Duration::from_secs(1)) - hooked
    );
    assert!(hooked >= answered, "hook ran {:?} before the slow request was answered: it did not drain", answered - hooked);
    let st = status(&c).await;
    assert_eq!(st["previous"], Value::Null);
    let names: Vec<&str> = st["releases"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["elm"]);
    let events: Value = client().get(c.admin_url("/events")).send().await.unwrap().json().await.unwrap();
    let retire = events.as_array().unwrap().iter().find(|e| e["action"] == "retire").unwrap();
    assert_eq!(retire["actor"], "canopy (validation window)");
}

/// Now on the Unix clock (the one `date +%s%N` reads).
fn unix_now() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_switch_ack_keeps_the_switch() {
    let (mut c, _j, _e) = two_releases("", "").await;
    assert_eq!(switch(&c, "elm").await.0, 200);
    c.kill9();
    let dir = c.dir.clone();
    let text = c.template.clone();
    let tmp = c.tmp.take();
    c = Canopy::start_in(&dir, &text);
    c.tmp = tmp;
    // upstream addresses were persisted with the registration
    let st = status(&c).await;
    assert_eq!(st["live"], "elm");
    assert_eq!(st["generation"], 2);
    assert_eq!(get(&c, "/").await.1, "elm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_and_kill_loop_never_loses_an_acknowledged_switch() {
    let (mut c, _j, _e) = two_releases("", "").await;
    let dir = c.dir.clone();
    let text = c.template.clone();
    let mut acked: Option<(String, u64)> = None;
    let started = Instant::now();
    let mut cycles = 0;
    while cycles < 200 && started.elapsed() < Duration::from_secs(120) {
        let target = if cycles % 2 == 0 { "elm" } else { "juniper" };
        // force: this loop is about durability, not validation
        let (code, body) = post(&c, "/switch?force=true", json!({"release": target})).await;
        assert_eq!(code, 200, "{body}");
        acked = Some((target.to_string(), body["generation"].as_u64().unwrap()));
        c.kill9();
        let saved = durable_state_in(&dir, canopy_admin::load_state);
        let (live, generation) = acked.clone().unwrap();
        assert_eq!(saved["live"], live.as_str());
        assert_eq!(saved["generation"], generation);
        let tmp = c.tmp.take();
        c = Canopy::start_in(&dir, &text);
        c.tmp = tmp;
        cycles += 1;
    }
    assert!(cycles >= 50, "only {cycles} cycles in time");
    let st = status(&c).await;
    let (live, generation) = acked.unwrap();
    assert_eq!(st["live"], live.as_str());
    assert_eq!(st["generation"], generation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_change_nothing() {
    let (c, _j, _e) = two_releases("", "").await;
    let before = c.durable_files();
    for (method, path, body, code) in [
        ("POST", "/switch", "{not json", 400),
        ("POST", "/switch", r#"{"release": 5}"#, 400),
        ("POST", "/switch", r#"{"release": "Elm"}"#, 400),
        ("POST", "/switch", r#"{"release": "elm", "extra": 1}"#, 400),
        ("POST", "/switch", "", 400),
        ("POST", "/switch", r#"["elm"]"#, 400),
        ("POST", "/rollback", "[]", 400),
        ("POST", "/switch", r#"{"release": "oak"}"#, 404),
        ("PUT", "/releases/..%2Fetc", "{}", 400),
        ("PUT", "/releases/UPPER", "{}", 400),
        ("PUT", "/releases/elm", r#"{"backends": {"nosuch": ["127.0.0.1:1"]}}"#, 400),
        ("PUT", "/releases/elm", r#"{"backends": {"server": ["nohost"]}}"#, 400),
        ("GET", "/nowhere", "", 404),
        ("GET", "/switch", "", 405),
    ] {
        let r = client().request(method.parse().unwrap(), c.admin_url(path)).body(body.to_string()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), code, "{method} {path} {body}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    let long = "a".repeat(1024);
    let r = client().put(c.admin_url(&format!("/releases/{long}"))).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(c.durable_files(), before, "canopy's durable files changed");
    assert_eq!(status(&c).await["live"], "juniper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_origin_rules() {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "s3cret-token-0123456789\n").unwrap();
    let text = config("", "")
        .replace("state-file = \"state.json\"", &format!("state-file = \"state.json\"\ntoken-file = \"{}\"", token_path.display()));
    let c = Canopy::start(&text);
    let status_url = c.admin_url("/status");
    let r = client().get(&status_url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"canopy\"");
    let r = client().get(&status_url).bearer_auth("wrong-token-0123456789").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client().get(&status_url).bearer_auth("s3cret-token-0123456789").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // health stays open for probes
    assert_eq!(client().get(c.admin_url("/healthz")).send().await.unwrap().status(), 200);
    // cross-origin browser request refused even with the token
    let r = client()
        .post(c.admin_url("/rollback"))
        .bearer_auth("s3cret-token-0123456789")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // CLI with the token file
    let out = std::process::Command::new(canopy_bin())
        .args(["status", "--token-file"])
        .arg(&token_path)
        .env("CANOPY_ADMIN", format!("http://{}", c.admin))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("live:"));
    let out = c.cli(&["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused (401)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_without_token_only_same_origin_loopback() {
    let c = Canopy::start(&config("", ""));
    let r = client().get(c.admin_url("/status")).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let same = format!("http://{}", c.admin);
    let r = client().get(c.admin_url("/status")).header("origin", same).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // DNS rebinding: same-origin but a non-loopback Host name
    let r = client()
        .get(c.admin_url("/status"))
        .header("origin", format!("http://evil.example:{}", c.admin.port()))
        .header("host", format!("evil.example:{}", c.admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_file_stops_startup_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.json"), "{\"version\": 1, \"live\": ").unwrap();
    let (text, ports) = fill_ports(&config("", ""));
    std::fs::write(dir.path().join("proxy.toml"), text).unwrap();
    // serve binds its ports before it reads the state file
    ports.release();
    let out = std::process::Command::new(canopy_bin()).args(["serve", "-c"]).arg(dir.path().join("proxy.toml")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("state file {} is corrupt", dir.path().join("state.json").display())), "{err}");
    // and the file is left as it was
    assert_eq!(std::fs::read_to_string(dir.path().join("state.json")).unwrap(), "{\"version\": 1, \"live\": ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_torn_tail_is_dropped_but_a_corrupt_entry_stops_startup() {
    let (mut c, _j, _e) = two_releases("", "").await;
    assert_eq!(switch(&c, "elm").await.0, 200);
    c.kill9();
    let (dir, text, tmp) = (c.dir.clone(), c.template.clone(), c.tmp.take());
    let journal = canopy_admin::journal_path(&dir.join("state.json"));
    let raw = std::fs::read(&journal).unwrap();
    // entries first, then preallocated zeros
    let acked = raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())].to_vec();
    assert!(acked.ends_with(b"\n") && !acked.is_empty(), "the switch went to the journal");
    // a crash in the middle of the next append: the torn line was never acknowledged
    let mut torn = acked.clone();
    torn.extend_from_slice(br#"{"seq": 99, "at": 1, "actor": "x", "comm"#);
    std::fs::write(&journal, &torn).unwrap();
    c = Canopy::start_in(&dir, &text);
    c.tmp = tmp;
    assert_eq!(status(&c).await["live"], "elm");
    assert_eq!(get(&c, "/").await.1, "elm");
    // start-up folded the journal into the state file
    assert!(std::fs::read(&journal).unwrap().iter().all(|&b| b == 0));
    assert_eq!(c.durable_state(canopy_admin::load_state)["live"], "elm");
    assert_eq!(post(&c, "/rollback", json!({})).await.0, 200);
    c.kill9();
    // damage that is not a torn tail: refuse to start, name the file and line, touch nothing
    let good = std::fs::read(&journal).unwrap();
    let mut bad = b"{\"seq\": oops}\n".to_vec();
    bad.extend_from_slice(&good);
    std::fs::write(&journal, &bad).unwrap();
    let state_before = std::fs::read(dir.join("state.json")).unwrap();
    // fresh ports: the last run's may have been taken since it was killed
    let (conf, ports) = fill_ports(&text);
    std::fs::write(dir.join("proxy.toml"), conf).unwrap();
    ports.release();
    let out = std::process::Command::new(canopy_bin()).args(["serve", "-c"]).arg(dir.join("proxy.toml")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("state file {} is corrupt", journal.display())) && err.contains("line 1:"), "{err}");
    assert_eq!(std::fs::read(&journal).unwrap(), bad);
    assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), state_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_file_wins_over_initial_after_restart() {
    let mut c = Canopy::start(&config("initial = \"juniper\"", ""));
    // first start: `initial` is live (its template backends do not resolve here)
    let st = status(&c).await;
    assert_eq!((st["live"].clone(), st["generation"].clone()), (json!("juniper"), json!(1)));
    let juniper = Stack::spawn("juniper").await;
    let elm = Stack::spawn("elm").await;
    juniper.register(&c, "juniper").await;
    elm.register(&c, "elm").await;
    assert_eq!(switch(&c, "elm").await.0, 200);
    c.kill9();
    let (dir, text, tmp) = (c.dir.clone(), c.template.clone(), c.tmp.take());
    c = Canopy::start_in(&dir, &text);
    c.tmp = tmp;
    let st = status(&c).await;
    assert_eq!((st["live"].clone(), st["generation"].clone()), (json!("elm"), json!(2)));
    assert_eq!(get(&c, "/").await.1, "elm");
}

/// Reading the status (a status page refreshing, a script polling it) never
/// makes a flip busy: `/status` used to hold the one-flip lock while it
/// built its answer, so a switch (or the guard's rollback) that started
/// meanwhile was refused with 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reading_the_status_never_refuses_a_flip() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    const FLIPS: u64 = 200;
    let (c, juniper, _elm) = two_releases("", "").await;
    // a status with something to say takes a while to build
    for i in 0..40 {
        juniper.register(&c, &format!("r{i}")).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (c.admin_url("/status"), stop.clone());
            tokio::spawn(async move {
                let http = client();
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = http.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut refused = Vec::new();
    for i in 0..FLIPS {
        let to = if i % 2 == 0 { "elm" } else { "juniper" };
        let (code, body) = switch(&c, to).await;
        if code != 200 {
            refused.push((i, code, body["error"].clone()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    eprintln!("{FLIPS} flips while /status was read {reads} times: {} refused", refused.len());
    assert!(reads >= FLIPS, "the status was read meanwhile: {reads} reads");
    assert!(refused.is_empty(), "{} of {FLIPS} flips refused while /status was read {reads} times: {refused:?}", refused.len());
}

/// `/status` says a switch is in progress while one validates, and not
/// once it is done (read from the flip's own flag, not its lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_says_a_switch_is_in_progress_while_it_validates() {
    let check = r#"{ kind = "command", name = "slow", argv = ["sleep", "1"], timeout = "3s", retries = 0 },"#;
    let (c, _j, _e) = two_releases("", check).await;
    assert_eq!(status(&c).await["switch_in_progress"], false);
    let switching = {
        let url = c.admin_url("/switch");
        tokio::spawn(async move { client().post(url).json(&json!({"release": "elm"})).send().await.unwrap().status().as_u16() })
    };
    eventually("the status says a switch runs", Duration::from_millis(900), || async { status(&c).await["switch_in_progress"] == true })
        .await;
    let (code, body) = switch(&c, "juniper").await;
    assert_eq!(code, 409, "a second switch meanwhile is busy: {body}");
    assert_eq!(switching.await.unwrap(), 200);
    let st = status(&c).await;
    assert_eq!((st["switch_in_progress"].clone(), st["live"].clone()), (json!(false), json!("elm")), "{st:#}");
}
