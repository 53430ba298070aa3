//! Bad admin input, concurrent switches, hooks and checks that hang or
//! cannot run: clear JSON errors, nothing changed, nothing left behind.

use std::time::{Duration, Instant};

use canopy_testkit::*;
use serde_json::{json, Value};

use crate::rig::*;

fn state_live_generation(c: &Canopy) -> (Value, Value) {
    let v = c.durable_state(canopy_admin::load_state);
    (v["live"].clone(), v["generation"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_wrong_types_and_bad_names_get_json_errors_and_change_nothing() {
    let (c, _j, _e) = two_releases("", "").await;
    let before = c.durable_files();
    let long = "a".repeat(1024);
    let cases: Vec<(&str, String, String, u16)> = vec![
        ("POST", "/switch".into(), r#"{"release": ["elm"]}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": null}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": {"name": "elm"}}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": true}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": "elm", "expect_generation": "1"}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": "elm", "expect_generation": -1}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": "elm", "expect_generation": 1.5}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": "elm", "expect_generation": 18446744073709551616}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": "elm", "force": "yes"}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": "elm", "force": 1}"#.into(), 400),
        ("POST", "/switch".into(), r#"{}"#.into(), 400),
        ("POST", "/switch".into(), r#""elm""#.into(), 400),
        ("POST", "/switch".into(), "null".into(), 400),
        ("POST", "/switch".into(), "\u{feff}{\"release\": \"elm\"}".into(), 400),
        ("POST", "/switch".into(), format!(r#"{{"release": "{long}"}}"#), 400),
        ("POST", "/switch".into(), r#"{"release": ""}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": "../etc"}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": "élm"}"#.into(), 400),
        ("POST", "/switch".into(), r#"{"release": "elm\u0000"}"#.into(), 400),
        ("POST", "/switch".into(), format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)), 400),
        ("POST", "/switch".into(), format!(r#"{{"release": "elm", "pad": "{}"}}"#, "p".repeat(100 * 1024)), 413),
        ("POST", "/switch?force=maybe".into(), r#"{"release": "elm"}"#.into(), 400),
        ("POST", "/rollback".into(), r#"{"force": "true"}"#.into(), 400),
        ("POST", "/rollback".into(), r#"{"expect_generation": [1]}"#.into(), 400),
        ("POST", "/rollback".into(), r#"{"to": "elm"}"#.into(), 400),
        ("PUT", "/releases/oak".into(), r#"{"backends": []}"#.into(), 400),
        ("PUT", "/releases/oak".into(), r#"{"backends": null}"#.into(), 400),
        ("PUT", "/releases/oak".into(), r#"{"backends": {"server": "127.0.0.1:1"}}"#.into(), 400),
        ("PUT", "/releases/oak".into(), r#"{"backends": {"server": [5]}}"#.into(), 400),
        ("PUT", "/releases/oak".into(), r#"{"backends": {"server": []}}"#.into(), 400),
        ("PUT", "/releases/oak".into(), r#"{"backends": {"server": ["127.0.0.1:99999"]}}"#.into(), 400),
        ("PUT", "/releases/oak".into(), r#"{"backends": {"server": ["127.0.0.1:0"]}}"#.into(), 400),
        ("PUT", "/releases/oak".into(), r#"{"backends": {"Server": ["127.0.0.1:1"]}}"#.into(), 400),
        ("PUT", "/releases/oak".into(), "{\"backends\": {\"server\": [\"127.0.0.1:1\"]}".into(), 400),
        ("PUT", format!("/releases/{long}"), "{}".into(), 400),
        ("DELETE", format!("/releases/{long}"), "".into(), 400),
        ("GET", format!("/releases/{long}"), "".into(), 400),
        ("POST", format!("/releases/{long}/check"), "".into(), 400),
        ("PUT", "/releases/%2e%2e".into(), "{}".into(), 400),
        ("PUT", "/releases/..".into(), "{}".into(), 400),
        ("PUT", "/releases/a%2Fb".into(), "{}".into(), 400),
        ("PUT", "/releases/a%00".into(), "{}".into(), 400),
        ("PUT", "/releases/-elm".into(), "{}".into(), 400),
        ("PUT", "/releases/elm-".into(), "{}".into(), 400),
        ("PUT", "/releases/el--m".into(), "{}".into(), 400),
        ("PUT", "/releases/%C3%A9lm".into(), "{}".into(), 400),
        ("DELETE", "/releases/nope".into(), "".into(), 404),
        ("POST", "/releases/nope/check".into(), "".into(), 404),
        ("GET", "/releases/nope".into(), "".into(), 404),
        ("DELETE", "/releases/juniper".into(), "".into(), 409),
    ];
    for (method, path, body, want) in &cases {
        let (got, v) = send(&c, method, path, body).await;
        let shown = &body[..body.len().min(80)];
        assert_eq!(got, *want, "{method} {} {shown}: {v}", &path[..path.len().min(80)]);
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path} {shown}: {v}");
        assert!(v["error"].as_str().unwrap().len() < 600, "error message echoes too much: {v}");
    }
    assert_eq!(c.durable_files(), before, "state file or journal touched");
    let st = status(&c).await;
    assert_eq!((st["live"].clone(), st["generation"].clone()), (json!("juniper"), json!(1)));
    assert_eq!(st["releases"].as_array().unwrap().len(), 2);
    assert_eq!(get(&c, "/").await.1, "juniper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_while_a_switch_runs_is_409_and_changes_nothing() {
    // only elm's validation is slow: it holds the first switch for 2 s
    let slow =
        r#"{ kind = "command", name = "slow", argv = ["sh", "-c", "test {release} != elm || sleep 2"], timeout = "5s", retries = 0 },"#;
    let (c, _j, _e) = two_releases("", slow).await;
    let before = c.durable_files();
    let admin = c.admin_url("/switch");
    let first = tokio::spawn(async move {
        let r = client().post(admin).json(&json!({"release": "elm"})).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    eventually("first switch in progress", Duration::from_secs(5), || async { status(&c).await["switch_in_progress"] == true }).await;
    for (path, body) in [
        ("/switch", json!({"release": "elm"})),
        ("/switch", json!({"release": "elm", "force": true})),
        ("/switch", json!({"release": "juniper"})),
        ("/rollback", json!({"force": true})),
    ] {
        let (code, v) = send(&c, "POST", path, &body.to_string()).await;
        assert_eq!(code, 409, "{path} {body}: {v}");
        assert_eq!(v["error"], "another switch or rollback is in progress", "{v}");
    }
    // nothing moved while the first switch validates
    assert_eq!(status(&c).await["switch_in_progress"], true, "first switch ended too early for this test");
    assert_eq!(c.durable_files(), before);
    assert_eq!(get(&c, "/").await.1, "juniper");
    let (code, v) = first.await.unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!((v["live"].clone(), v["generation"].clone()), (json!("elm"), json!(2)));
    assert_eq!(get(&c, "/").await.1, "elm");
    assert_eq!(status(&c).await["switch_in_progress"], false);
}

/// A retire hook that outlives `hook-timeout`: its shell starts `sleep` in
/// the background, writes the sleep's pid to `pid_file` (proof that the hook
/// ran) and waits. The sleep gets a unique length so its process can be
/// found. Returns the `[releases]` lines and that `sleep` command line.
fn hanging_hook(pid_file: &std::path::Path) -> (String, String) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let secs = format!("3.{}{}", std::process::id() % 1000, nanos % 90_000 + 10_000);
    let hook = format!("sleep {secs} & echo $! > {}; wait; echo never", pid_file.display());
    let extra = format!("retire-hooks = [[\"sh\", \"-c\", \"{hook}\"]]\nhook-timeout = \"500ms\"");
    (extra, format!("sleep {secs}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_retire_hook_is_bounded_by_its_timeout() {
    let hook_dir = tempfile::tempdir().unwrap();
    let (extra, _) = hanging_hook(&hook_dir.path().join("hook.pid"));
    let (c, _j, _e) = two_releases(&extra, "").await;
    served_normally(&c).await;
    let (live_before, gen_before) = state_live_generation(&c);
    let base = fds(&c);
    let started = Instant::now();
    let (code, v) = send(&c, "DELETE", "/releases/elm", "").await;
    let took = started.elapsed();
    assert_eq!(code, 200, "{v}");
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(v["release"], "elm");
    assert_eq!(v["hooks"][0]["passed"], false, "{v}");
    assert_eq!(v["hooks"][0]["reason"], "timed out after 500ms", "{v}");
    // live untouched, traffic untouched
    assert_eq!(state_live_generation(&c), (live_before, gen_before));
    served_normally(&c).await;
    let events: Value = client().get(c.admin_url("/events")).send().await.unwrap().json().await.unwrap();
    let hooks = events.as_array().unwrap().iter().rev().find(|e| e["action"] == "retire-hooks").unwrap();
    assert_eq!(hooks["result"], "failed", "{hooks}");
    no_leaks(&c, base, "hanging retire hook").await;
}

/// A hook or command check that times out is killed with everything it
/// started (it runs in its own process group), not just the shell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_hook_leaves_no_process_behind() {
    let hook_dir = tempfile::tempdir().unwrap();
    let pid_file = hook_dir.path().join("hook.pid");
    let (extra, needle) = hanging_hook(&pid_file);
    let (c, _j, _e) = two_releases(&extra, "").await;
    let (code, v) = send(&c, "DELETE", "/releases/elm", "").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["hooks"][0]["reason"], "timed out after 500ms", "{v}");
    // the hook ran: its shell started the sleep and said which process it is
    let text = std::fs::read_to_string(&pid_file).unwrap_or_else(|e| panic!("the hook never ran ({}: {e})", pid_file.display()));
    let sleep: u32 = text.trim().parse().unwrap_or_else(|e| panic!("pid file {text:?}: {e}"));
    // and that process went with the shell
    eventually(&format!("the hook's `{needle}` (pid {sleep}) gone"), Duration::from_secs(1), || {
        std::future::ready(!canopy_testkit::process::alive(sleep) && processes_with(&needle).is_empty())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_check_program_refuses_and_leaves_live_alone() {
    let check = r#"{ kind = "command", argv = ["/nonexistent/check-{release}"], timeout = "2s", retries = 0 },"#;
    let c = Canopy::start(&config("", check));
    let juniper = Stack::spawn("juniper").await;
    juniper.register(&c, "juniper").await;
    let (code, _) = send(&c, "POST", "/switch?force=true", r#"{"release": "juniper"}"#).await;
    assert_eq!(code, 200);
    let before = state_live_generation(&c);
    assert_eq!(before.0, "juniper");
    let elm = Stack::spawn("elm").await;
    elm.register(&c, "elm").await;
    let (code, v) = send(&c, "POST", "/switch", r#"{"release": "elm"}"#).await;
    assert_eq!(code, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("cannot run `/nonexistent/check-elm`"), "{v}");
    assert_eq!(state_live_generation(&c), before);
    assert_eq!(get(&c, "/").await.1, "juniper");
}
