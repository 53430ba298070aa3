//! Live reload of proxy.toml (`canopy reload` / `POST /reload` / SIGHUP)
//! under load: a new route, a new service and a changed check take effect
//! from the next request with no failed request and the releases still
//! registered and live; a bad file, an unknown key or a change that needs a
//! new socket is refused with its reason and changes nothing.

use std::process::Command;
use std::time::Duration;

use canopy_testkit::load::{Kind, Load};
use canopy_testkit::*;
use serde_json::{json, Value};

/// Rewrites the running config file of `c` with `edit` applied to its text.
fn edit_config(c: &Canopy, edit: impl FnOnce(&str) -> String) -> String {
    let path = c.dir.join("proxy.toml");
    let text = edit(&std::fs::read_to_string(&path).unwrap());
    std::fs::write(&path, &text).unwrap();
    text
}

async fn post_reload(c: &Canopy) -> (u16, Value) {
    let r = client().post(c.admin_url("/reload")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// GET through the proxy: (status, release, service that answered).
async fn served_by(c: &Canopy, path: &str) -> (u16, String, String) {
    let (code, release, body) = get(c, path).await;
    (code, release, body["service"].as_str().unwrap_or_default().to_string())
}

/// The value of one sample line of `GET /metrics`.
/// `/status` without the live watch's latest report, which is renewed
/// every second whatever else happens.
async fn settled_status(c: &Canopy) -> Value {
    let mut st = status(c).await;
    st.as_object_mut().expect("status is an object").remove("live_health");
    st
}

async fn metric(c: &Canopy, series: &str) -> f64 {
    let text = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no `{series}` in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_adds_a_route_and_a_service_and_changes_a_check() {
    let (c, _juniper, elm) = two_releases("", "").await;
    let generation = status(&c).await["generation"].as_u64().unwrap();
    let kinds = [Kind::KEEPALIVE_GET, Kind::KEEPALIVE_GET, Kind::FRESH_GET, Kind::POST, Kind::slow("slow-get", 300)];
    let load = Load::start(c.proxy, &kinds, true);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // before: /catalog is the storefront's (route "/"), /search too
    assert_eq!(served_by(&c, "/catalog/1").await, (200, "juniper".into(), "storefront".into()));

    // a route for the server, a new service `search`, and a check the elm release fails
    edit_config(&c, |t| {
        t.replace(r#"routes = ["/shop-api","#, r#"routes = ["/catalog", "/shop-api","#)
            // the server's extra-checks line, empty in the harness config
            .replacen("  \n]", "  { kind = \"command\", name = \"not elm\", argv = [\"sh\", \"-c\", \"test {release} != elm\"] },\n]", 1)
            + "\n[[service]]\nname = \"search\"\nport = 7700\nroutes = [\"/search\"]\n"
    });
    let (code, body) = post_reload(&c).await;
    assert_eq!(code, 200, "{body}");
    let changes: Vec<&str> = body["changes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(changes.contains(&"services, routes and address template") && changes.contains(&"checks"), "{body}");
    // the very next request takes the new route; the releases stay live and registered
    assert_eq!(served_by(&c, "/catalog/1").await, (200, "juniper".into(), "server".into()));
    let st = status(&c).await;
    assert_eq!(st["live"], "juniper", "{st}");
    assert_eq!(st["releases"].as_array().unwrap().len(), 2, "{st}");
    assert_eq!(st["generation"].as_u64(), Some(generation), "a reload is no flip: {st}");

    // the new service: no backends until a release gives it some
    let search = upstream::spawn("juniper", "search").await;
    let backends = json!({"backends": {
        "server": [_juniper.server.addr.to_string()], "worker": [_juniper.worker.addr.to_string()],
        "storefront": [_juniper.storefront.addr.to_string()], "search": [search.addr.to_string()]}});
    let r = client().put(c.admin_url("/releases/juniper")).json(&backends).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(served_by(&c, "/search?q=1").await, (200, "juniper".into(), "search".into()));

    // the changed check refuses elm, which passed before
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("validation of release `elm` failed"), "{body}");
    assert_eq!(get(&c, "/shop-api/x").await.1, "juniper");
    drop(elm);

    let (done, failures) = load.stop().await;
    assert!(failures.is_empty(), "{} failed requests across the reload: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert!(done.len() > 100, "too little traffic ({}) to prove anything", done.len());
    assert_eq!(metric(&c, "canopy_config_reloads_total{result=\"ok\"}").await, 1.0);
    assert!(metric(&c, "canopy_config_last_reload_timestamp_seconds").await > 1.7e9);
    let events: Value = client().get(c.admin_url("/events")).send().await.unwrap().json().await.unwrap();
    assert!(events.as_array().unwrap().iter().any(|e| e["action"] == "reload" && e["result"] == "ok"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reloads_are_refused_with_the_reason_and_change_nothing() {
    let (c, _juniper, _elm) = two_releases("", "").await;
    let good = std::fs::read_to_string(c.dir.join("proxy.toml")).unwrap();
    let before = (settled_status(&c).await, c.durable_files());
    let file = c.dir.join("proxy.toml").display().to_string();
    for (what, text, expect) in [
        ("syntax error", good.replace("[[service]]\nname = \"worker\"", "[[service]\nname = \"worker\""), format!("{file}:")),
        ("unknown key", good.replace("threads = 2", "threads = 2\nthreadz = 3"), "unknown field `threadz`".to_string()),
        ("new socket", good.replace(&format!("127.0.0.1:{}", c.proxy.port()), "127.0.0.1:1"), "[proxy] listen".to_string()),
    ] {
        std::fs::write(c.dir.join("proxy.toml"), &text).unwrap();
        let (code, body) = post_reload(&c).await;
        assert_eq!(code, 422, "{what}: {body}");
        let err = body["error"].as_str().unwrap();
        assert!(err.contains("config reload refused, nothing changed") && err.contains(&expect), "{what}: {err}");
        if what == "syntax error" {
            // file, line and column
            let at = err.split(&format!("{file}:")).nth(1).unwrap();
            let mut nums = at.split(':').take(2).map(|n| n.trim().parse::<u32>());
            assert!(nums.all(|n| n.is_ok()), "{what}: no line and column in {err}");
        }
        if what == "new socket" {
            assert!(err.contains("canopy serve --upgrade"), "{err}");
        }
        assert_eq!(get(&c, "/shop-api/x").await.0, 200, "traffic after a refused {what}");
    }
    assert_eq!((settled_status(&c).await, c.durable_files()), before, "a refused reload changed something");
    assert_eq!(metric(&c, "canopy_config_reloads_total{result=\"refused\"}").await, 3.0);
    // the CLI says the same and fails
    let out = c.cli(&["reload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused (422)"), "{}", String::from_utf8_lossy(&out.stderr));
    // and with the good file back, a reload that changes nothing says so
    std::fs::write(c.dir.join("proxy.toml"), &good).unwrap();
    let out = c.cli(&["reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "reloaded: nothing changed\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_new_token_file_takes_effect() {
    let (c, _juniper, _elm) = two_releases("", "").await;
    let token = c.dir.join("token");
    std::fs::write(&token, "reloaded-token-0123456789\n").unwrap();
    edit_config(&c, |t| {
        t.replace("state-file = \"state.json\"", &format!("state-file = \"state.json\"\ntoken-file = \"{}\"", token.display()))
    });
    let hup = Command::new("kill").args(["-HUP", &c.child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    eventually("the token to be required after SIGHUP", Duration::from_secs(5), || async {
        client().get(c.admin_url("/status")).send().await.unwrap().status() == 401
    })
    .await;
    let r = client().get(c.admin_url("/status")).bearer_auth("reloaded-token-0123456789").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let events: Value =
        client().get(c.admin_url("/events")).bearer_auth("reloaded-token-0123456789").send().await.unwrap().json().await.unwrap();
    let last = events.as_array().unwrap().last().unwrap();
    assert_eq!((last["action"].as_str(), last["actor"].as_str()), (Some("reload"), Some("SIGHUP")), "{last}");
    assert!(last["detail"].as_str().unwrap().contains("admin token"), "{last}");
}
