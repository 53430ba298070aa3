//! An operator's first hour, the mistakes a newcomer makes: a preview
//! header while preview is off (the answer says so), releases whose backends
//! do not resolve (`check-config` warns naming the host, `register` refuses
//! unless `--allow-unresolved`), and the first start's initial release
//! (recorded as a first start, not as a forced switch).

use canopy_testkit::*;
use serde_json::Value;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// GET through the proxy with `x-canopy-release: want`: (status, release that answered, x-canopy-preview).
async fn preview(c: &Canopy, want: &str) -> (u16, String, Option<String>) {
    let r = client().get(c.url("/shop-api/x")).header("x-canopy-release", want).send().await.unwrap();
    let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), header("x-canopy-release").unwrap_or_default(), header("x-canopy-preview"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_preview_header_is_visible() {
    let (c, _juniper, _elm) = two_releases_with(&config("", "").replace("preview = true", "preview = false")).await;
    assert_eq!(preview(&c, "elm").await, (200, "juniper".into(), Some("disabled".into())));
    // no preview header, no note
    let r = client().get(c.url("/shop-api/x")).send().await.unwrap();
    assert!(r.headers().get("x-canopy-preview").is_none());
    // status says it plainly
    assert_eq!(status(&c).await["preview"], false);
    let text = stdout(&c.cli(&["status"]));
    assert!(text.contains("preview:    off (`x-canopy-release` request headers are ignored"), "{text}");
    assert!(text.contains("`preview = true` in [releases] turns it on"), "{text}");

    let (c, _juniper, _elm) = two_releases("", "").await;
    assert_eq!(preview(&c, "elm").await, (200, "elm".into(), None));
    // a name that is not registered falls back to the live release, and says so
    assert_eq!(preview(&c, "eml").await, (200, "juniper".into(), Some("unknown-release".into())));
    assert_eq!(status(&c).await["preview"], true);
    assert!(stdout(&c.cli(&["status"])).contains("preview:    on"));
}

#[test]
fn check_config_warns_about_releases_that_would_go_live_unresolved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ux.toml");
    let (text, _ports) = fill_ports(&config("initial = \"juniper\"", ""));
    std::fs::write(&path, &text).unwrap();
    let out = canopy_cli(&["check-config", "-c", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "warnings do not fail the check: {}", stderr(&out));
    let err = stderr(&out);
    for service in ["server", "worker", "storefront"] {
        let needle = format!("initial release `juniper`, service `{service}`: cannot resolve `test-{service}--juniper.invalid:");
        assert!(err.contains(&needle), "{needle:?} missing: {err}");
    }
    assert!(err.contains("every request it answers for `server` would be a 502"), "{err}");
    assert_eq!(stdout(&out), format!("{}: ok, with 3 warning(s) above\n", path.display()));
    // CANOPY_CONFIG names the file for check-config (and serve) as for the client commands
    let out = canopy_cli(&["check-config"], &[("CANOPY_CONFIG", path.to_str().unwrap())]);
    assert_eq!(stdout(&out), format!("{}: ok, with 3 warning(s) above\n", path.display()));

    // seeds with addresses that resolve: no warning
    let seeded = config("initial = \"juniper\"", "")
        + "\n[[release]]\nname = \"juniper\"\nbackends = { server = [\"127.0.0.1:3000\"], worker = [\"localhost:3020\"], storefront = [\"127.0.0.1:4000\"] }\n";
    let (text, _ports) = fill_ports(&seeded);
    std::fs::write(&path, &text).unwrap();
    let out = canopy_cli(&["check-config", "-c", path.to_str().unwrap()], &[]);
    assert!(out.status.success());
    assert_eq!((stderr(&out).as_str(), stdout(&out)), ("", format!("{}: ok\n", path.display())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_refuses_unresolved_backends_unless_allowed() {
    let c = Canopy::start(&config("", ""));
    let before = c.durable_files();
    let out = c.cli(&["register", "green"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("refused (422): release `green` not registered"), "{err}");
    assert!(err.contains("server: cannot resolve `test-server--green.invalid:3000`"), "{err}");
    assert!(err.contains("--allow-unresolved"), "{err}");
    assert_eq!(c.durable_files(), before, "a refused register wrote the state");
    assert!(status(&c).await["releases"].as_array().unwrap().is_empty());

    // explicit backends that resolve are fine; one that does not is named
    let green = Stack::spawn("green").await;
    let out = c.cli(&[
        "register",
        "green",
        "--backend",
        &format!("server={}", green.server.addr),
        "--backend",
        &format!("worker={}", green.worker.addr),
        "--backend",
        "storefront=nosuch-host.invalid:4000",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("storefront: cannot resolve `nosuch-host.invalid:4000`"), "{}", stderr(&out));

    // allowed: registered, the unresolved host shown
    let out = c.cli(&["register", "green", "--allow-unresolved"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("registered green\n") && text.contains("(unresolved: cannot resolve `test-server--green.invalid:3000`"),
        "{text}"
    );
    // the API takes the flag as a query parameter too
    let r = client().put(c.admin_url("/releases/blue?allow_unresolved=true")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = client().put(c.admin_url("/releases/teal")).send().await.unwrap();
    assert_eq!(r.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_release_is_a_first_start_not_a_forced_switch() {
    let juniper = Stack::spawn("juniper").await;
    let seeded = config("initial = \"juniper\"", "")
        + &format!(
            "\n[[release]]\nname = \"juniper\"\nbackends = {{ server = [\"{}\"], worker = [\"{}\"], storefront = [\"{}\"] }}\n",
            juniper.server.addr, juniper.worker.addr, juniper.storefront.addr
        );
    let c = Canopy::start(&seeded);
    assert_eq!(get(&c, "/shop-api/x").await.1, "juniper");
    let events: Value = client().get(c.admin_url("/events")).send().await.unwrap().json().await.unwrap();
    let switch = events.as_array().unwrap().iter().find(|e| e["action"] == "switch").expect("the initial switch is recorded").clone();
    assert_eq!(switch["forced"], false, "{switch}");
    assert_eq!(switch["actor"], "canopy (initial)", "{switch}");
    assert_eq!(switch["detail"], "initial release from config (first start)", "{switch}");
    let text = stdout(&c.cli(&["events"]));
    assert!(text.contains("- -> juniper by canopy (initial)") && !text.contains("(forced)"), "{text}");
}
