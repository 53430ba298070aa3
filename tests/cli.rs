//! The CLI finds its canopy and says what fixes it when it cannot: `-c` and
//! `CANOPY_CONFIG` read the admin address and token file from canopy's
//! config, an address without a scheme works, and every connection or
//! authentication error names the flag or variable to set (`--admin` /
//! `CANOPY_ADMIN`, `-c` / `CANOPY_CONFIG`, `--token-file` /
//! `CANOPY_TOKEN_FILE`); the proxy port is recognised as such. `--json`
//! refusals are JSON on stdout; `canopy events` names each action's subject;
//! messages name the config file loaded, not "proxy.toml".

use std::process::Output;

use canopy_testkit::*;
use serde_json::{json, Value};

const TOKEN: &str = "first-hour-token-0123456789";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// canopy whose admin API wants a token, its config (`ux.toml`) naming the
/// token file; the directory holding the token file comes along.
fn with_token() -> (Canopy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let line = format!("state-file = \"state.json\"\ntoken-file = \"{}\"", token.display());
    (Canopy::start_as("ux.toml", &config("", "").replace("state-file = \"state.json\"", &line)), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_find_canopy_through_its_config() {
    let (c, tokens) = with_token();
    let cfg = c.dir.join("ux.toml");
    let cfg = cfg.to_str().unwrap();

    // -c: the admin address and the token file come from the config
    let out = canopy_cli(&["status", "-c", cfg], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("live:       -"), "{}", stdout(&out));
    // CANOPY_CONFIG does the same
    let out = canopy_cli(&["releases"], &[("CANOPY_CONFIG", cfg)]);
    assert!(out.status.success(), "{}", stderr(&out));
    // an address without a scheme, with the token file named
    let token = tokens.path().join("admin-token");
    let admin = c.admin.to_string();
    let out = canopy_cli(&["status", "--admin", &admin, "--token-file", token.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // no token: 401 says how to give one
    let out = canopy_cli(&["status", "--admin", &admin], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    for needle in ["refused (401)", "requires a token and none was given", "--token-file", "CANOPY_TOKEN_FILE", "-c FILE", "CANOPY_CONFIG"]
    {
        assert!(err.contains(needle), "{needle:?} missing: {err}");
    }
    // a wrong token: which file, and where its name came from
    let wrong = c.dir.join("wrong-token");
    std::fs::write(&wrong, "not-the-token-0123456789").unwrap();
    let out = canopy_cli(&["status", "-c", cfg], &[("CANOPY_TOKEN_FILE", wrong.to_str().unwrap())]);
    assert!(out.status.success(), "-c's token-file wins over CANOPY_TOKEN_FILE: {}", stderr(&out));
    let out = canopy_cli(&["status", "--admin", &admin], &[("CANOPY_TOKEN_FILE", wrong.to_str().unwrap())]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("refused the token in") && err.contains("wrong-token (from CANOPY_TOKEN_FILE)"), "{err}");

    // nothing listens: which address, where it came from, what to set
    let dead = dead_addr().to_string();
    let out = canopy_cli(&["status"], &[("CANOPY_ADMIN", &dead)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot reach canopy's admin API at http://{dead} (from CANOPY_ADMIN)")), "{err}");
    for needle in ["--admin", "CANOPY_ADMIN", "-c FILE", "CANOPY_CONFIG", "refused"] {
        assert!(err.contains(needle), "{needle:?} missing: {err}");
    }
    assert!(!err.contains("builder error") && !err.contains("error sending request"), "{err}");
    // a bad address says so, naming the flag
    let out = canopy_cli(&["status", "--admin", "ftp://127.0.0.1:1"], &[]);
    assert!(stderr(&out).contains("invalid admin address `ftp://127.0.0.1:1` (from --admin)"), "{}", stderr(&out));
    // a config that does not parse is located
    std::fs::write(c.dir.join("broken.toml"), "[admin]\nlisten = \"nowhere\"\n").unwrap();
    let out = canopy_cli(&["status", "-c", c.dir.join("broken.toml").to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert!(err.contains("config file given with -c") && err.contains("broken.toml:2:10"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_port_or_another_server_is_named_as_such() {
    let (c, _juniper, _elm) = two_releases("", "").await;
    let out = canopy_cli(&["status", "--admin", &c.proxy.to_string()], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is canopy's proxy port, not its admin API") && err.contains("x-canopy-release: juniper"), "{err}");
    assert!(err.contains("--admin") && err.contains("-c FILE"), "{err}");

    // any other HTTP server (here an upstream) is not taken for the admin API either
    let other = upstream::spawn("x", "y").await;
    let out = canopy_cli(&["switch", "elm", "--admin", &other.addr.to_string()], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is not canopy's admin API"), "{err}");
    assert_eq!(status(&c).await["live"], "juniper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_refusals_are_json_on_stdout_with_a_failing_exit() {
    let (c, _juniper, elm) = two_releases("", "").await;
    let admin = c.admin.to_string();
    // refused by the state machine
    let out = canopy_cli(&["switch", "nosuch", "--json", "--admin", &admin], &[]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(&out)));
    assert_eq!(v["error"], "release `nosuch` is not registered", "{v}");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    // refused by validation: the report comes along
    elm.server.knobs.unhealthy.store(true, std::sync::atomic::Ordering::Relaxed);
    let out = canopy_cli(&["switch", "elm", "--json", "--admin", &admin], &[]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("validation of release `elm` failed"), "{v}");
    assert_eq!(v["report"]["passed"], false, "{v}");
    // a failed check is a failing exit with its report
    let out = canopy_cli(&["check", "elm", "--json", "--admin", &admin], &[]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["release"].clone(), v["passed"].clone()), (json!("elm"), json!(false)), "{v}");
    // the client's own failure too
    let out = canopy_cli(&["status", "--json"], &[("CANOPY_ADMIN", &dead_addr().to_string())]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("cannot reach canopy's admin API"), "{v}");
    // success stays as it was
    let out = canopy_cli(&["status", "--json", "--admin", &admin], &[]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["live"], "juniper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_name_the_subject_of_each_action() {
    let (c, _juniper, _elm) = two_releases("", "").await;
    let oak = Stack::spawn("oak").await;
    oak.register(&c, "oak").await;
    let r = client().delete(c.admin_url("/releases/oak")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let out = c.cli(&["events"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let retire = text.lines().find(|l| l.contains(" retire ")).unwrap_or_else(|| panic!("no retire event: {text}"));
    assert!(retire.contains("retire       ok       oak by "), "{retire}");
    assert!(!retire.contains("->"), "a retire reads like a switch: {retire}");
    let switch = text.lines().find(|l| l.contains(" switch ")).unwrap();
    assert!(switch.contains("- -> juniper by "), "{switch}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_name_the_config_file_loaded() {
    let c = Canopy::start_as("ux.toml", &config("", ""));
    let file = c.dir.join("ux.toml").display().to_string();
    let out = c.cli(&["tls"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("TLS is not configured: {file} has no `listen-tls`")), "{err}");
    assert!(!err.contains("proxy.toml") && !err.contains("path `/tls` not found"), "{err}");
    let out = c.cli(&["tls", "reload"]);
    assert!(stderr(&out).contains(&format!("{file} has no `listen-tls`")), "{}", stderr(&out));
    let out = c.cli(&["deploy", "elm"]);
    let err = stderr(&out);
    assert!(err.contains(&format!("deploy needs a [docker] section and services with `image` in {file}")), "{err}");
}
