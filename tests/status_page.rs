//! The status page (`GET /` on the admin listener) against the real binary:
//! Debian's headless Chromium, driven by playwright-core from
//! `tests/browser/status_page.mjs`, switches canopy from juniper to elm through
//! the page; the proxy and the admin API must agree afterwards. Needs
//! `/usr/bin/chromium` and node/npm (`.ci/run` installs them); the npm package
//! is installed into `tests/browser/node_modules` on first use.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "page-token-0123456789abcdef";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `npm ci` in tests/browser unless playwright-core is already installed (once per process).
fn ensure_playwright() {
    static LOCK: Mutex<()> = Mutex::new(());
    let _once = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("tests/browser");
    if dir.join("node_modules/playwright-core/package.json").exists() {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .output()
        .expect("running npm (install node and npm: apt-get install -y nodejs npm)");
    assert!(
        out.status.success(),
        "npm ci --prefix tests/browser failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the browser test script against `c`; returns its output (printed as well).
async fn run_browser_test(c: &Canopy, screenshot: Option<PathBuf>, token: Option<&str>) -> Output {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: apt-get install -y chromium"
    );
    ensure_playwright();
    let mut cmd = Command::new("node");
    cmd.current_dir(root())
        .arg("tests/browser/status_page.mjs")
        .args(["--admin", &format!("http://{}", c.admin), "--proxy", &format!("http://{}", c.proxy)]);
    if let Some(path) = screenshot {
        cmd.arg("--screenshot").arg(path);
    }
    if let Some(t) = token {
        cmd.env("CANOPY_TOKEN", t); // env, not argv: keeps it out of `ps`
    }
    // blocking wait off the runtime threads: the upstreams of this test run on them
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("running node (apt-get install -y nodejs)"))
        .await
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn assert_passed(out: &Output, c: &Canopy) {
    assert!(
        out.status.success(),
        "browser test failed ({}):\n{}\n{}\n--- canopy log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_to_elm_from_the_status_page_in_chromium() {
    let (c, _juniper, _elm) = two_releases("", "").await;
    // CANOPY_SCREENSHOT=docs/status-page.png refreshes the README's picture;
    // by default a test run leaves the work tree alone
    let shot = std::env::var_os("CANOPY_SCREENSHOT")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png"), PathBuf::from);
    let out = run_browser_test(&c, Some(shot.clone()), None).await;
    assert_passed(&out, &c);
    // the admin API agrees with what the page showed
    let st = status(&c).await;
    assert_eq!(st["live"], "elm", "{st}");
    assert_eq!(st["previous"]["release"], "juniper", "{st}");
    let (code, release, _) = get(&c, "/shop-api/products").await;
    assert_eq!((code, release.as_str()), (200, "elm"));
    // the page's actions are in the audit log under its own actor name
    let events: Value = client().get(c.admin_url("/events")).send().await.unwrap().json().await.unwrap();
    let last = events.as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["action"].as_str(), last["to"].as_str(), last["result"].as_str()), (Some("switch"), Some("elm"), Some("ok")));
    assert!(last["actor"].as_str().unwrap().starts_with("status-page@"), "{last}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot {} is not a real PNG", shot.display());
}

async fn register_with_token(c: &Canopy, release: &str, s: &Stack) {
    let body = json!({"backends": {
        "server": [s.server.addr.to_string()], "worker": [s.worker.addr.to_string()], "storefront": [s.storefront.addr.to_string()]}});
    let r = client().put(c.admin_url(&format!("/releases/{release}"))).bearer_auth(TOKEN).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "register {release}: {}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_asks_for_the_token_and_keeps_it_in_the_tab() {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
    let text = config("", "").replace(
        "state-file = \"state.json\"",
        &format!("state-file = \"state.json\"\ntoken-file = \"{}\"", token_path.display()),
    );
    let c = Canopy::start(&text);
    let juniper = Stack::spawn("juniper").await;
    let elm = Stack::spawn("elm").await;
    register_with_token(&c, "juniper", &juniper).await;
    register_with_token(&c, "elm", &elm).await;
    let r = client().post(c.admin_url("/switch")).bearer_auth(TOKEN).json(&json!({"release": "juniper"})).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let out = run_browser_test(&c, None, Some(TOKEN)).await;
    assert_passed(&out, &c);
    let st: Value = client().get(c.admin_url("/status")).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(st["live"], "elm", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_is_self_contained_html() {
    let c = Canopy::start(&config("", ""));
    let r = client().get(c.admin_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let html = r.text().await.unwrap();
    assert!(html.contains("<title>canopy</title>"));
    let lower = html.to_ascii_lowercase();
    for bad in ["src=\"http", "href=\"http", "src='http", "href='http", "src=\"//", "href=\"//", "url(http", "url(//", "@import"] {
        assert!(!lower.contains(bad), "status page references an external asset: `{bad}`");
    }
    // the browser is told so too: nothing but inline code and same-origin fetches
    assert!(html.contains("default-src 'none'") && html.contains("connect-src 'self'"), "no restrictive CSP");
    // the page is for the admin listener's own origin only
    let r = client().get(c.admin_url("/")).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(r.status(), 403);
}
