//! The status page (`GET /` on the admin listener) against the real binary:
//! Debian's headless Chromium, driven over WebDriver (fantoccini talking to
//! Debian's `chromedriver`, started by the test on a free loopback port),
//! switches canopy from juniper to elm through the page; the proxy and the
//! admin API must agree afterwards. Needs `/usr/bin/chromium` and
//! `/usr/bin/chromedriver` (packages `chromium chromium-driver`;
//! `scripts/install-deps.sh --test` installs them).
//!
//! What the browser run does: opens the page and sees `juniper` live (after
//! a locked page that shows nothing but the token prompt, when a token is
//! set) and healthy; registers `oak` (backends that
//! refuse connections) through the admin API; checks elm with the page's check
//! button; cancels a switch (no request is sent); switches to oak and sees the
//! refusal with the failed checks (live stays juniper); switches to elm,
//! confirms, waits for the page to show `elm` live (the warm `juniper`'s
//! background check the same in its panel and on its card) and asserts the
//! proxy now answers with `x-canopy-release: elm`. Another run kills the live
//! release's backend and sees the page raise the alert, then clear it. Traffic runs through the proxy
//! meanwhile so the chart has something to draw. Console errors (other than
//! the expected 401/422 answers), uncaught exceptions and requests to another
//! origin fail the run: Chromium's browser and network logs are read through
//! chromedriver's log endpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_testkit::*;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use serde_json::{json, Value};

const TOKEN: &str = "page-token-0123456789abcdef";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const VIEWPORT: (u32, u32) = (1280, 900);

/// Debian's chromedriver on a free loopback port; killed and reaped on drop.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    /// Starts chromedriver and waits until its `/status` says it is ready.
    async fn start() -> ChromeDriver {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(Path::new(path).exists(), "{path} is missing: apt-get install -y chromium chromium-driver");
        }
        let reserved = reserve();
        let port = reserved.port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}")).arg("--allowed-ips=127.0.0.1").stdout(Stdio::null()).stderr(Stdio::null());
        reserved.release();
        let child = cmd.spawn().expect("starting chromedriver");
        let mut driver = ChromeDriver { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited with {status} before it was ready (port {port} taken?)");
            }
            // ours, not another test's server on a port that was free a moment ago
            if listens(driver.child.id(), port) {
                let ready = client().get(format!("{}/status", driver.url)).send().await;
                if let Ok(r) = ready {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    if v["value"]["ready"] == true {
                        return driver;
                    }
                }
            }
            assert!(Instant::now() < deadline, "chromedriver not ready within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's log endpoint (`POST /session/{id}/se/log`): returns and
/// clears the entries of one log type ("browser" or "performance").
#[derive(Debug)]
struct GetLog(&'static str);

impl WebDriverCompatibleCommand for GetLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({ "type": self.0 }).to_string()))
    }
}

/// One WebDriver session of headless Chromium, with what its logs reported so far.
struct Browser {
    wd: WebDriver,
    /// The admin listener's origin: every request the page makes must go there.
    origin: String,
    /// Console errors and uncaught exceptions (the expected 401/422 answers excepted).
    errors: Vec<String>,
    /// Requests to any other origin.
    foreign: Vec<String>,
    /// Every request the page sent other than GET, as "METHOD path".
    mutations: Vec<String>,
    /// Console errors for the expected 401/422 answers: proof that the console log is read.
    expected_errors: usize,
    /// GET requests of the page to its own origin (its refreshes among them).
    gets: usize,
}

impl Browser {
    /// A fresh Chromium session (chromedriver gives it a temporary profile it removes on quit).
    async fn open(driver: &ChromeDriver, origin: &str) -> Browser {
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-extensions",
                    "--force-color-profile=srgb", "--hide-scrollbars",
                    format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1),
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL", "performance": "ALL" }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let wd = ClientBuilder::new(connector).capabilities(caps).connect(&driver.url).await.expect("WebDriver session");
        Browser {
            wd,
            origin: origin.to_string(),
            errors: Vec::new(),
            foreign: Vec::new(),
            mutations: Vec::new(),
            expected_errors: 0,
            gets: 0,
        }
    }

    /// Reads (and so clears) Chromium's console and network logs into `errors`,
    /// `foreign` and `mutations`.
    async fn read_logs(&mut self) {
        let console = self.wd.issue_cmd(GetLog("browser")).await.expect("browser log");
        for e in console.as_array().into_iter().flatten() {
            let msg = e["message"].as_str().unwrap_or_default();
            // failed API calls (the expected 401 and 422) are logged by Chromium as errors
            let expected = msg.contains("status of 401") || msg.contains("status of 422");
            match (e["level"] == "SEVERE", expected) {
                (true, false) => self.errors.push(msg.to_string()),
                (true, true) => self.expected_errors += 1,
                _ => {}
            }
        }
        let network = self.wd.issue_cmd(GetLog("performance")).await.expect("performance log");
        for e in network.as_array().into_iter().flatten() {
            let Ok(event) = serde_json::from_str::<Value>(e["message"].as_str().unwrap_or_default()) else { continue };
            if event["message"]["method"] != "Network.requestWillBeSent" {
                continue;
            }
            let request = &event["message"]["params"]["request"];
            let (method, url) = (request["method"].as_str().unwrap_or_default(), request["url"].as_str().unwrap_or_default());
            if url.starts_with("data:") {
                continue;
            }
            match url.strip_prefix(self.origin.as_str()) {
                Some(path) if path.is_empty() || path.starts_with('/') => {
                    if method == "GET" {
                        self.gets += 1;
                    } else {
                        self.mutations.push(format!("{method} {path}"));
                    }
                }
                _ => self.foreign.push(url.to_string()),
            }
        }
    }

    /// Reads the logs until the page has sent a GET to its origin since the
    /// last read (its refresh, every 2 s): whatever it sent before is in the
    /// logs then. Panics after `limit`.
    async fn wait_for_refresh(&mut self, limit: Duration) {
        self.read_logs().await;
        let seen = self.gets;
        let deadline = Instant::now() + limit;
        while self.gets == seen {
            assert!(Instant::now() < deadline, "the page sent no request within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.read_logs().await;
        }
    }

    /// The rendered text (innerText) of the first element matching `css`.
    async fn text(&self, css: &str) -> String {
        let el = self.wd.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        el.text().await.unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// Clicks the first element matching `css`.
    async fn click(&self, css: &str) {
        let el = self.wd.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        el.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replaces the value of the input `css` with `value`, as typed.
    async fn fill(&self, css: &str, value: &str) {
        let el = self.wd.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        el.clear().await.unwrap_or_else(|e| panic!("clear {css}: {e}"));
        el.send_keys(value).await.unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Picks the option with `value` in the select `css`.
    async fn select(&self, css: &str, value: &str) {
        let el = self.wd.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        el.select_by_value(value).await.unwrap_or_else(|e| panic!("select {value} in {css}: {e}"));
    }

    /// Polls the text content of the first element matching `css` every 100 ms
    /// until `pred` holds (the page refreshes itself every 2 s); panics with
    /// `what` and the last text after `limit`.
    async fn wait_text(&self, css: &str, pred: impl Fn(&str) -> bool, what: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut last = "(missing)".to_string();
        loop {
            if let Ok(el) = self.wd.find(Locator::Css(css)).await {
                last = el.prop("textContent").await.ok().flatten().unwrap_or_default().trim().to_string();
                if pred(&last) {
                    return last;
                }
            }
            assert!(Instant::now() < deadline, "{what}: {css} shows {:?}", last.chars().take(400).collect::<String>());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until the first element matching `css` exists and its visibility is `shown`.
    async fn wait_shown(&self, css: &str, shown: bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = match self.wd.find(Locator::Css(css)).await {
                Ok(el) => el.is_displayed().await.unwrap_or(false),
                Err(_) => false,
            };
            if now == shown {
                return;
            }
            assert!(Instant::now() < deadline, "{css} not {} within 15 s", if shown { "visible" } else { "hidden" });
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until at least one element matches `css`.
    async fn wait_present(&self, css: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.wd.find_all(Locator::Css(css)).await.map_or(true, |v| v.is_empty()) {
            assert!(Instant::now() < deadline, "nothing matches {css} within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the whole page: the window is made as tall as the document first.
    async fn full_page_png(&self) -> Vec<u8> {
        let height = self.wd.execute("return document.documentElement.scrollHeight", vec![]).await.expect("page height");
        let height = height.as_u64().unwrap_or(VIEWPORT.1 as u64).max(VIEWPORT.1 as u64) as u32;
        self.wd.set_window_size(VIEWPORT.0, height).await.expect("resize for a full-page screenshot");
        self.wd.screenshot().await.expect("screenshot")
    }
}

/// Where the browser run points and what it asserts on the way.
struct Run<'a> {
    c: &'a Canopy,
    screenshot: Option<PathBuf>,
    token: Option<&'a str>,
}

/// Prints one step with its duration, like a test runner would.
fn step_done(name: &str, t0: Instant) {
    println!("[status-page] ok   {name} ({} ms)", t0.elapsed().as_millis());
}

/// An admin API call as a script outside the browser would make it: (status, JSON body or Null).
async fn admin_json(run: &Run<'_>, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = client().request(method, run.c.admin_url(path));
    if let Some(t) = run.token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("admin API request");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Background traffic through the proxy while the page is used: the live
/// release, plus some preview requests to `elm` so the chart shows two
/// releases before the flip. Counts sent and failed requests until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(c: &Canopy) -> Traffic {
        let (stop, sent, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, n, f, base) = (stop.clone(), sent.clone(), failed.clone(), c.url(""));
        let task = tokio::spawn(async move {
            let http = client();
            while !s.load(Ordering::Relaxed) {
                let first = n.load(Ordering::Relaxed);
                let mut batch: Vec<_> = (0..4).map(|i| http.get(format!("{base}/products/{}", first + i)).send()).collect();
                if first % 20 == 0 {
                    batch.push(http.get(format!("{base}/")).header("x-canopy-release", "elm").send());
                }
                n.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for r in futures_util::future::join_all(batch).await {
                    let ok = match r {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if !ok {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        });
        Traffic { stop, sent, failed, task }
    }

    /// Stops the loop; returns (sent, failed).
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("traffic task");
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// The browser run described at the top of this file; panics with the failed step.
async fn run_browser_test(run: Run<'_>) {
    let driver = ChromeDriver::start().await;
    let origin = format!("http://{}", run.c.admin);
    let mut b = Browser::open(&driver, &origin).await;
    // a hang is a clear failure rather than a stuck CI
    let outcome = tokio::time::timeout(Duration::from_secs(120), drive(&run, &mut b)).await;
    let _ = b.wd.clone().close().await;
    outcome.expect("status page test did not finish within 120 s");
}

async fn drive(run: &Run<'_>, b: &mut Browser) {
    const WAIT: Duration = Duration::from_secs(20);
    let t = Instant::now();
    b.wd.goto(&format!("{}/", b.origin)).await.expect("open the status page");
    // WebDriver does not expose the response: ask the same URL for status and type
    let r = client().get(run.c.admin_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET / answered {}", r.status());
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(ct.starts_with("text/html"), "GET / is {ct}");
    assert_eq!(b.wd.title().await.unwrap(), "canopy");
    step_done("open the status page", t);

    if let Some(token) = run.token {
        let t = Instant::now();
        b.wait_shown("#auth", true).await;
        // locked: only the token form, no empty state that reads like "nothing registered"
        for hidden in [".hero", "#releases", "#events", "#chart-rate"] {
            b.wait_shown(hidden, false).await;
        }
        assert_ne!(b.text("#live-name").await, "juniper", "live release shown without a token");
        let locked = b.wd.execute("return document.body.classList.contains('locked')", vec![]).await.unwrap();
        assert_eq!(locked, true, "the page is not locked");
        b.wait_text("#conn-text", |t| t.contains("token required"), "the header does not say the page is locked", WAIT).await;
        let msg = b.text("#auth").await;
        assert!(msg.contains("Locked") && msg.contains("token"), "{msg}");
        step_done("a locked page asks for the token after a 401", t);

        let t = Instant::now();
        b.fill("#token-input", "wrong-token-0123456789").await;
        b.click("#token-save").await;
        b.wait_text("#token-msg", |t| t.contains("rejected"), "no rejection message for a wrong token", WAIT).await;
        b.wait_shown("#auth", true).await;
        step_done("a wrong token is rejected", t);

        let t = Instant::now();
        b.fill("#token-input", token).await;
        b.click("#token-save").await;
        b.wait_shown("#auth", false).await;
        b.wait_shown(".hero", true).await;
        step_done("the right token unlocks the page", t);

        let t = Instant::now();
        let script = "return { session: Object.keys(sessionStorage), local: localStorage.length, cookie: document.cookie }";
        let kept = b.wd.execute(script, vec![]).await.expect("read the page's storage");
        assert_eq!(kept["local"], 0, "localStorage has items: {kept}");
        assert_eq!(kept["cookie"], "", "cookies set: {kept}");
        assert_eq!(kept["session"].as_array().map(Vec::len), Some(1), "sessionStorage keys: {kept}");
        step_done("the token is kept in the tab only (sessionStorage, no localStorage, no cookie)", t);
    }

    let t = Instant::now();
    b.wait_text("#live-name", |t| t == "juniper", "live release is not juniper", WAIT).await;
    b.wait_present(r#"[data-release="elm"]"#, WAIT).await;
    let elm_state = b.text(r#"[data-state="elm"]"#).await;
    assert_eq!(elm_state, "registered", "elm state");
    let backends = b.text(r#"[data-release="elm"]"#).await;
    assert!(backends.contains("127.0.0.1:"), "elm card shows no backend address: {backends}");
    // the live watch's verdict, in the panel and on the live card
    b.wait_text("#live-health", |t| t.starts_with("Health: 3 checks passed"), "no live health", WAIT).await;
    b.wait_present(r#"[data-watch="juniper"]"#, WAIT).await;
    let preview = b.text("#preview-state").await;
    assert_eq!(preview, "preview on", "{preview}");
    step_done("page shows live juniper, healthy", t);

    let traffic = Traffic::start(run.c);

    let t = Instant::now();
    let dead = json!({"backends": {"server": ["127.0.0.1:1"], "worker": ["127.0.0.1:1"], "storefront": ["127.0.0.1:1"]}});
    let (code, body) = admin_json(run, reqwest::Method::PUT, "/releases/oak", Some(dead)).await;
    assert!(code == 200 || code == 201, "PUT /releases/oak answered {code}: {body}");
    b.wait_present(r#"[data-release="oak"]"#, WAIT).await;
    step_done("register oak (unreachable backends) through the admin API", t);

    let t = Instant::now();
    b.click(r#"[data-check="elm"]"#).await;
    b.wait_present("#confirm[open]", WAIT).await;
    b.click("#confirm-ok").await;
    let all_passed = |t: &str| {
        t.strip_prefix("elm: all ")
            .and_then(|r| r.strip_suffix(" checks passed"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
    };
    b.wait_text("#result-title", all_passed, "check of elm not reported as passed", WAIT).await;
    b.wait_text(r#"[data-release="elm"] .verdict"#, |t| t.starts_with("passed"), "elm card shows no passed report", WAIT).await;
    step_done("check elm from its card", t);

    let t = Instant::now();
    b.select("#switch-select", "elm").await;
    b.read_logs().await;
    let before = b.mutations.len();
    b.click("#switch-btn").await;
    b.wait_present("#confirm[open]", WAIT).await;
    b.click("#confirm-cancel").await;
    b.wait_shown("#confirm", false).await;
    // a request the cancel sent would come before the page's next refresh
    b.wait_for_refresh(WAIT).await;
    assert_eq!(b.mutations[before..], [] as [String; 0], "a request was sent after cancel");
    assert_eq!(b.text("#live-name").await, "juniper", "live changed after cancel");
    step_done("cancelling the confirmation changes nothing", t);

    let t = Instant::now();
    b.select("#switch-select", "oak").await;
    b.click("#switch-btn").await;
    b.wait_present("#confirm[open]", WAIT).await;
    b.click("#confirm-ok").await;
    b.wait_text("#result-title", |t| t.contains("refused (422)"), "no 422 refusal shown", WAIT).await;
    let err = b.text("#result-error").await;
    assert!(err.contains("validation of release `oak` failed"), "refusal reason: {err}");
    let failed = b.wd.find_all(Locator::Css("#result-failed li")).await.unwrap().len();
    assert!(failed >= 1, "no failed check listed");
    assert_eq!(b.text("#live-name").await, "juniper", "live is not juniper after the refusal");
    let (_, st) = admin_json(run, reqwest::Method::GET, "/status", None).await;
    assert_eq!(st["live"], "juniper", "admin API says live is {}", st["live"]);
    step_done("switch to oak is refused with the failed checks", t);

    let t = Instant::now();
    b.wait_present("#chart-rate path.series", WAIT).await;
    step_done("chart draws the request rate", t);

    let t = Instant::now();
    b.select("#switch-select", "elm").await;
    b.click("#switch-btn").await;
    b.wait_present("#confirm[open]", WAIT).await;
    let dialog = b.text("#confirm").await;
    assert!(dialog.contains("elm"), "confirmation does not name elm: {dialog}");
    b.click("#confirm-ok").await;
    step_done("select elm, switch, confirm", t);

    let t = Instant::now();
    b.wait_text("#live-name", |t| t == "elm", "live release did not become elm", WAIT).await;
    b.wait_text("#result-title", |t| t.starts_with("Switched to elm"), "no success message", WAIT).await;
    b.wait_text("#prev-name", |t| t == "juniper", "previous release is not juniper", WAIT).await;
    let countdown = |t: &str| {
        let Some((clock, _)) = t.split_once(" left") else { return false };
        let Some((m, s)) = clock.split_once(':') else { return false };
        !m.is_empty() && m.bytes().all(|c| c.is_ascii_digit()) && s.len() == 2 && s.bytes().all(|c| c.is_ascii_digit())
    };
    b.wait_text("#prev-left", countdown, "no validation-window countdown", WAIT).await;
    // the warm release's background check: the same report in the panel and on its card
    b.wait_text("#prev-health", |t| t.starts_with("Health: 3 checks passed"), "no health of the warm release", WAIT).await;
    b.wait_present(r#"[data-watch="juniper"] [data-ago]"#, WAIT).await;
    // ... of the same report, with the same age (both redrawn together, ages every second)
    let script = r#"const at = (css) => { const e = document.querySelector(css); return e ? [e.dataset.ago, e.textContent] : null; };
        return [at('#prev-health [data-ago]'), at('[data-watch="juniper"] [data-ago]')]"#;
    let ages = b.wd.execute(script, vec![]).await.expect("read the ages");
    assert!(ages[0].is_array() && ages[0] == ages[1], "panel and card disagree: {ages}");
    b.wait_text("#events tr:first-child td:nth-child(3)", |t| t == "juniper→elm", "switch missing from the history", WAIT).await;
    b.wait_text("#events tr:first-child td:nth-child(4)", |t| t == "ok", "switch in the history is not ok", WAIT).await;
    step_done("page shows live elm", t);

    let t = Instant::now();
    let (code, release, _) = get(run.c, "/products/42").await;
    assert_eq!((code, release.as_str()), (200, "elm"), "the proxy after the page's switch");
    step_done("the proxy now serves elm", t);

    let t = Instant::now();
    // "m:ss left": the page redraws every 2 s; wait for a redraw showing less time left
    let left = |t: &str| -> Option<u64> {
        let (m, s) = t.split_once(" left")?.0.split_once(':')?;
        Some(m.parse::<u64>().ok()? * 60 + s.parse::<u64>().ok()?)
    };
    let first = b.wait_text("#prev-left", |t| left(t).is_some(), "no countdown", WAIT).await;
    let start = left(&first).unwrap();
    b.wait_text("#prev-left", |t| left(t).is_some_and(|l| l < start), "countdown did not move", WAIT).await;
    step_done("the countdown counts down", t);

    if let Some(path) = &run.screenshot {
        let t = Instant::now();
        // a few more scrapes so the chart shows traffic moving to elm
        tokio::time::sleep(Duration::from_secs(8)).await;
        let png = b.full_page_png().await;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
        step_done(&format!("screenshot to {}", path.display()), t);
    }

    let (sent, failed) = traffic.stop().await;
    let t = Instant::now();
    b.read_logs().await;
    assert!(b.errors.is_empty(), "page errors:\n  {}", b.errors.join("\n  "));
    assert!(b.foreign.is_empty(), "requests to other origins:\n  {}", b.foreign.join("\n  "));
    assert_eq!(failed, 0, "{failed} of {sent} proxy requests failed during the test");
    // the page's own mutations were seen: the check, the refused switch and the switch
    let posts = b.mutations.iter().filter(|m| m.starts_with("POST ")).count();
    assert!(posts >= 3, "the network log saw {posts} POSTs from the page: {:?}", b.mutations);
    // and the console log its refused switch (422), so an empty error list means something
    assert!(b.expected_errors >= 1, "the console log did not show the refused switch's 422");
    step_done("no page errors, no request to another origin", t);
    println!("[status-page] {sent} proxy requests sent meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_to_elm_from_the_status_page_in_chromium() {
    let (c, _juniper, _elm) = two_releases("", "").await;
    // CANOPY_SCREENSHOT=docs/status-page.png refreshes the README's picture;
    // by default a test run leaves the work tree alone
    let shot = std::env::var_os("CANOPY_SCREENSHOT")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png"), PathBuf::from);
    run_browser_test(Run { c: &c, screenshot: Some(shot.clone()), token: None }).await;
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
    let text = config("", "")
        .replace("state-file = \"state.json\"", &format!("state-file = \"state.json\"\ntoken-file = \"{}\"", token_path.display()));
    let c = Canopy::start(&text);
    let juniper = Stack::spawn("juniper").await;
    let elm = Stack::spawn("elm").await;
    register_with_token(&c, "juniper", &juniper).await;
    register_with_token(&c, "elm", &elm).await;
    let r = client().post(c.admin_url("/switch")).bearer_auth(TOKEN).json(&json!({"release": "juniper"})).send().await.unwrap();
    assert_eq!(r.status(), 200);

    run_browser_test(Run { c: &c, screenshot: None, token: Some(TOKEN) }).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_lists_certificates_with_expiry_and_a_refused_reload() {
    use canopy_testkit::tls::{cert, tls_config};
    let (shop, wildcard) = (cert(&["shop.test", "www.shop.test"]), cert(&["*.cdn.test"]));
    let tmp = tempfile::tempdir().unwrap();
    shop.write(tmp.path(), "shop");
    wildcard.write(tmp.path(), "cdn");
    let tls =
        "[tls]\n[[tls.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n[[tls.certificate]]\ncert = \"cdn.pem\"\nkey = \"cdn.key\"\n";
    let mut c = Canopy::start_in(tmp.path(), &tls_config(tls));
    c.tmp = Some(tmp);
    let driver = ChromeDriver::start().await;
    let origin = format!("http://{}", c.admin);
    let mut b = Browser::open(&driver, &origin).await;
    b.wd.goto(&format!("{origin}/")).await.expect("open the status page");
    b.wait_shown("#certs-card", true).await;
    let rows = b.wait_text("#certs", |t| t.contains("*.cdn.test"), "both certificates listed", Duration::from_secs(20)).await;
    // rcgen's certificates are valid until 4096: thousands of days left
    assert!(rows.contains("shop.test, www.shop.test") && rows.contains("days") && rows.contains("shop.pem"), "{rows}");
    // a broken key: `canopy tls reload` is refused and the page says so
    std::fs::write(c.dir.join("cdn.key"), "garbage\n").unwrap();
    assert!(!c.cli(&["tls", "reload"]).status.success());
    let rows = b.wait_text("#certs", |t| t.contains("reload refused"), "the refused reload shown", Duration::from_secs(20)).await;
    assert!(rows.contains("cdn.key"), "{rows}");
    b.read_logs().await;
    let _ = b.wd.clone().close().await;
    assert!(b.errors.is_empty() && b.foreign.is_empty(), "page errors {:?}, foreign requests {:?}", b.errors, b.foreign);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_raises_the_alert_when_the_live_release_dies() {
    const WAIT: Duration = Duration::from_secs(20);
    let c = Canopy::start(&config("", ""));
    let mut server = canopy_testkit::upstream::Killable::spawn("juniper", "server").await;
    let worker = canopy_testkit::upstream::spawn("juniper", "worker").await;
    let storefront = canopy_testkit::upstream::spawn("juniper", "storefront").await;
    register(&c, "juniper", server.addr, worker.addr, storefront.addr).await;
    assert_eq!(switch(&c, "juniper").await.0, 200);
    let driver = ChromeDriver::start().await;
    let origin = format!("http://{}", c.admin);
    let mut b = Browser::open(&driver, &origin).await;
    b.wd.goto(&format!("{origin}/")).await.expect("open the status page");
    b.wait_text("#live-health", |t| t.starts_with("Health: 3 checks passed"), "the live release healthy", WAIT).await;
    b.wait_shown("#alerts", false).await;

    server.kill();
    b.wait_shown("#alerts", true).await;
    b.wait_text("#alerts", |t| t.contains("live release juniper is failing its health checks"), "the live alert", WAIT).await;
    b.wait_text("#live-health", |t| t.starts_with("Health: FAILING since"), "the live card's health", WAIT).await;
    let card = b.text(r#"[data-watch="juniper"]"#).await;
    assert!(card.contains("1 of 3 checks failed"), "{card}");

    server.restart().await;
    b.wait_shown("#alerts", false).await;
    b.wait_text("#live-health", |t| t.starts_with("Health: 3 checks passed"), "healthy again", WAIT).await;
    b.read_logs().await;
    let _ = b.wd.clone().close().await;
    assert!(b.errors.is_empty() && b.foreign.is_empty(), "page errors {:?}, foreign requests {:?}", b.errors, b.foreign);
}

/// Issue 22: the page shows the canary's weight and the guard's figures
/// live, then the verdict that aborted the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_the_canary_weight_and_the_guard_verdict() {
    use canopy_testkit::traffic::{Shoppers, Traffic as ShopperTraffic};
    let (c, _juniper, elm) = two_releases("[releases.canary]\nstep-duration = \"10m\"", "").await;
    let shoppers = ShopperTraffic::start(
        c.proxy,
        &Shoppers { distinct_addresses: true, ..Shoppers::new(40, "/shop-api/x", Duration::from_millis(40)) },
    );
    let (code, body) = admin_json(
        &Run { c: &c, token: None, screenshot: None },
        reqwest::Method::POST,
        "/switch",
        Some(json!({"release": "elm", "canary": [20]})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let driver = ChromeDriver::start().await;
    let origin = format!("http://{}", c.admin);
    let mut b = Browser::open(&driver, &origin).await;
    b.wd.goto(&format!("{origin}/")).await.expect("open the status page");
    b.wait_shown("#guard-card", true).await;
    let weight = b.wait_text("#canary", |t| t.contains("20%"), "the canary's weight", Duration::from_secs(20)).await;
    assert!(weight.contains("of the traffic to elm"), "{weight}");
    let figures = b.wait_text("#guard-table", |t| t.contains("server"), "the guard's figures per service", Duration::from_secs(20)).await;
    assert!(figures.contains("juniper"), "compared with the live release: {figures}");
    // elm starts failing: the guard aborts the canary and the page says why
    elm.server.knobs.error_permille.store(500, Ordering::Relaxed);
    let verdict = b.wait_text("#guard-verdict", |t| t.contains("canary-abort"), "the verdict", Duration::from_secs(20)).await;
    assert!(verdict.contains("error ratio") && verdict.contains("elm"), "{verdict}");
    b.wait_shown("#canary", false).await;
    shoppers.stop().await;
    b.read_logs().await;
    let _ = b.wd.clone().close().await;
    assert!(b.errors.is_empty() && b.foreign.is_empty(), "page errors {:?}, foreign requests {:?}", b.errors, b.foreign);
}

/// Issue 23: in a fleet the page lists every node, the revision it serves
/// and its lag, and says whether this node is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_lists_the_fleets_nodes() {
    let fleet = canopy_testkit::fleet::Fleet::start(1, 2, &["juniper", "elm"], "").await;
    let c = &fleet.nodes[0].canopy;
    let driver = ChromeDriver::start().await;
    let origin = format!("http://{}", c.admin);
    let mut b = Browser::open(&driver, &origin).await;
    b.wd.goto(&format!("{origin}/")).await.expect("open the status page");
    b.wait_shown("#fleet-card", true).await;
    let summary = b.wait_text("#fleet-summary", |t| t.contains("ready"), "this node's readiness", Duration::from_secs(20)).await;
    assert!(summary.contains("this node n1 is ready, serving revision"), "{summary}");
    let nodes = b.wait_text("#fleet-nodes", |t| t.contains("n1") && t.contains("n2"), "both nodes", Duration::from_secs(20)).await;
    assert_eq!(nodes.matches("up to date").count(), 2, "{nodes}");
    b.read_logs().await;
    let _ = b.wd.clone().close().await;
    assert!(b.errors.is_empty() && b.foreign.is_empty(), "page errors {:?}, foreign requests {:?}", b.errors, b.foreign);
}
