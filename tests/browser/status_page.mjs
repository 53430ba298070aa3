// Drives canopy's status page (GET / on the admin listener) in Debian's
// headless Chromium through playwright-core, against a real canopy that has
// releases `juniper` (live) and `elm` registered (tests/status_page.rs starts it).
//
//   node tests/browser/status_page.mjs --admin http://127.0.0.1:9901 --proxy http://127.0.0.1:8080 \
//        [--screenshot docs/status-page.png]
//
// Also from the environment: CANOPY_ADMIN_URL, CANOPY_PROXY_URL, CANOPY_SCREENSHOT,
// CANOPY_TOKEN (when set, the page must ask for it on 401 and work once it is entered),
// CHROMIUM (default /usr/bin/chromium). Positional form: ADMIN PROXY [SCREENSHOT].
//
// What it does: opens the page and sees `juniper` live; registers `oak` (backends that
// refuse connections) through the admin API; checks elm with the page's check button;
// cancels a switch (nothing happens); switches to oak and sees the refusal with the
// failed checks (live stays juniper); switches to elm, confirms, waits for the page to
// show `elm` live and asserts the proxy now answers with `x-canopy-release: elm`.
// Traffic runs through the proxy meanwhile so the chart has something to draw.
// Exits non-zero with the failed step on any failure.

import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { chromium } from "playwright-core";

// ---- arguments ---------------------------------------------------------------
function parseArgs(argv) {
  const named = {};
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
      const [k, v] = a.includes("=") ? [a.slice(2, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a.slice(2), argv[++i]];
      if (v === undefined) die(`option --${k} needs a value`);
      named[k] = v;
    } else {
      positional.push(a);
    }
  }
  return {
    admin: (named.admin || positional[0] || process.env.CANOPY_ADMIN_URL || "").replace(/\/+$/, ""),
    proxy: (named.proxy || positional[1] || process.env.CANOPY_PROXY_URL || "").replace(/\/+$/, ""),
    screenshot: named.screenshot || positional[2] || process.env.CANOPY_SCREENSHOT || "",
    token: named.token || process.env.CANOPY_TOKEN || "",
    chromium: named.chromium || process.env.CHROMIUM || "/usr/bin/chromium",
  };
}

function die(msg) {
  console.error(`status page test: ${msg}`);
  process.exit(2);
}

const opt = parseArgs(process.argv.slice(2));
if (!/^https?:\/\//.test(opt.admin) || !/^https?:\/\//.test(opt.proxy)) {
  die("usage: node status_page.mjs --admin URL --proxy URL [--screenshot PATH] (or CANOPY_ADMIN_URL / CANOPY_PROXY_URL)");
}

// Hard limit for the whole run, so a hang is a clear failure rather than a stuck CI.
const watchdog = setTimeout(() => {
  console.error("FAIL: status page test did not finish within 120 s");
  process.exit(1);
}, 120_000);

const log = (msg) => console.log(`[status-page] ${msg}`);
let currentStep = "start";
async function step(name, fn) {
  currentStep = name;
  const t0 = Date.now();
  const out = await fn();
  log(`ok   ${name} (${Date.now() - t0} ms)`);
  return out;
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

// ---- helpers outside the browser -------------------------------------------------
const authHeaders = () => (opt.token ? { Authorization: `Bearer ${opt.token}` } : {});

async function adminJson(method, path, body) {
  const res = await fetch(opt.admin + path, {
    method,
    headers: { "content-type": "application/json", ...authHeaders() },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

// Background traffic through the proxy: the live release, plus some preview requests
// to `elm` so the chart shows two releases before the flip.
function startTraffic() {
  let stop = false;
  let sent = 0, failed = 0;
  const loop = async () => {
    while (!stop) {
      const reqs = [];
      for (let i = 0; i < 4; i++) reqs.push(fetch(`${opt.proxy}/products/${sent + i}`));
      if (sent % 20 === 0) reqs.push(fetch(`${opt.proxy}/`, { headers: { "x-canopy-release": "elm" } }));
      sent += reqs.length;
      for (const r of await Promise.allSettled(reqs)) {
        if (r.status === "rejected") failed++;
        else await r.value.arrayBuffer().catch(() => {});
      }
      await new Promise((r) => setTimeout(r, 150));
    }
  };
  const done = loop();
  return { stop: async () => { stop = true; await done; return { sent, failed }; } };
}

// ---- the run ------------------------------------------------------------------------
let browser;
let traffic;
const pageErrors = [];
const foreignRequests = [];

async function main() {
  browser = await step("launch chromium", () =>
    // chromium.launch uses a fresh temporary user-data-dir and removes it on close.
    chromium.launch({
      executablePath: opt.chromium,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      timeout: 30_000,
    }));
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: "light" });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const origin = new URL(opt.admin).origin;
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("console", (m) => {
    // failed API calls (e.g. the expected 401 and 422) are logged by Chromium as console errors
    if (m.type() === "error" && !/status of (401|422)/.test(m.text())) pageErrors.push(`console: ${m.text()}`);
  });
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith("data:") && new URL(u).origin !== origin) foreignRequests.push(u);
  });
  const posts = [];
  page.on("request", (r) => { if (r.method() !== "GET") posts.push(`${r.method()} ${new URL(r.url()).pathname}`); });

  const text = (sel) => page.locator(sel).first().innerText();
  // Polls the text of the first element matching `sel` until `pred` holds (the page
  // refreshes itself every 2 s; its CSP forbids eval, so this polls from here).
  const waitText = async (sel, pred, what, timeout = 20_000) => {
    const deadline = Date.now() + timeout;
    let last = "(missing)";
    while (Date.now() < deadline) {
      const el = page.locator(sel).first();
      if (await el.count()) {
        last = ((await el.textContent().catch(() => "")) || "").trim();
        if (pred(last)) return last;
      }
      await page.waitForTimeout(100);
    }
    throw new Error(`${what}: ${sel} shows ${JSON.stringify(last.slice(0, 400))}`);
  };

  await step("open the status page", async () => {
    const res = await page.goto(`${opt.admin}/`, { waitUntil: "load" });
    assert(res && res.status() === 200, `GET / answered ${res && res.status()}`);
    assert((res.headers()["content-type"] || "").startsWith("text/html"), "GET / is not text/html");
  });

  if (opt.token) {
    await step("asks for the token after a 401", async () => {
      await page.locator("#auth").waitFor({ state: "visible" });
      assert((await text("#live-name")) !== "juniper", "live release shown without a token");
    });
    await step("a wrong token is rejected", async () => {
      await page.fill("#token-input", "wrong-token-0123456789");
      await page.click("#token-save");
      await waitText("#token-msg", (t) => t.includes("rejected"), "no rejection message for a wrong token");
      await page.locator("#auth").waitFor({ state: "visible" });
    });
    await step("the right token unlocks the page", async () => {
      await page.fill("#token-input", opt.token);
      await page.click("#token-save");
      await page.locator("#auth").waitFor({ state: "hidden" });
    });
    await step("the token is kept in the tab only (sessionStorage, no localStorage, no cookie)", async () => {
      const where = await page.evaluate(() => ({ session: Object.keys(sessionStorage), local: localStorage.length, cookie: document.cookie }));
      assert(where.local === 0, `localStorage has ${where.local} item(s)`);
      assert(where.cookie === "", `cookies set: ${where.cookie}`);
      assert(where.session.length === 1, `sessionStorage keys: ${where.session}`);
    });
  }

  await step("page shows live juniper", async () => {
    await waitText("#live-name", (t) => t === "juniper", "live release is not juniper");
    await page.locator('[data-release="elm"]').waitFor();
    const elmState = await text('[data-state="elm"]');
    assert(elmState === "registered", `elm state is ${elmState}`);
    const backends = await text('[data-release="elm"]');
    assert(/127\.0\.0\.1:\d+/.test(backends), "elm card shows no backend address");
  });

  traffic = startTraffic();

  await step("register oak (unreachable backends) through the admin API", async () => {
    const r = await adminJson("PUT", "/releases/oak", { backends: { server: ["127.0.0.1:1"], worker: ["127.0.0.1:1"], storefront: ["127.0.0.1:1"] } });
    assert(r.status === 201 || r.status === 200, `PUT /releases/oak answered ${r.status}: ${r.text}`);
    await page.locator('[data-release="oak"]').waitFor();
  });

  await step("check elm from its card", async () => {
    await page.click('[data-check="elm"]');
    await page.locator("#confirm[open]").waitFor();
    await page.click("#confirm-ok");
    await waitText("#result-title", (t) => /^elm: all \d+ checks passed$/.test(t), "check of elm not reported as passed");
    await waitText('[data-release="elm"] .verdict', (t) => t.startsWith("passed"), "elm card shows no passed report");
  });

  await step("cancelling the confirmation changes nothing", async () => {
    await page.selectOption("#switch-select", "elm");
    const before = posts.length;
    await page.click("#switch-btn");
    await page.locator("#confirm[open]").waitFor();
    await page.click("#confirm-cancel");
    await page.locator("#confirm").waitFor({ state: "hidden" });
    await page.waitForTimeout(300);
    assert(posts.length === before, `a request was sent after cancel: ${posts.slice(before)}`);
    assert((await text("#live-name")) === "juniper", "live changed after cancel");
  });

  await step("switch to oak is refused with the failed checks", async () => {
    await page.selectOption("#switch-select", "oak");
    await page.click("#switch-btn");
    await page.locator("#confirm[open]").waitFor();
    await page.click("#confirm-ok");
    await waitText("#result-title", (t) => t.includes("refused (422)"), "no 422 refusal shown");
    const err = await text("#result-error");
    assert(err.includes("validation of release `oak` failed"), `refusal reason: ${err}`);
    const failed = await page.locator("#result-failed li").count();
    assert(failed >= 1, "no failed check listed");
    assert((await text("#live-name")) === "juniper", "live is not juniper after the refusal");
    const st = await adminJson("GET", "/status");
    assert(st.json && st.json.live === "juniper", `admin API says live is ${st.json && st.json.live}`);
  });

  await step("chart draws the request rate", async () => {
    await page.waitForFunction(() => document.querySelectorAll("#chart-rate path.series").length > 0, null, { timeout: 20_000 });
  });

  await step("select elm, switch, confirm", async () => {
    await page.selectOption("#switch-select", "elm");
    await page.click("#switch-btn");
    await page.locator("#confirm[open]").waitFor();
    const dialog = await text("#confirm");
    assert(dialog.includes("elm"), `confirmation does not name elm: ${dialog}`);
    await page.click("#confirm-ok");
  });

  await step("page shows live elm", async () => {
    await waitText("#live-name", (t) => t === "elm", "live release did not become elm");
    await waitText("#result-title", (t) => t.startsWith("Switched to elm"), "no success message");
    await waitText("#prev-name", (t) => t === "juniper", "previous release is not juniper");
    await waitText("#prev-left", (t) => /^\d+:\d\d left/.test(t), "no validation-window countdown");
    await waitText("#events tr:first-child td:nth-child(3)", (t) => t === "juniper→elm", "switch missing from the history");
    await waitText("#events tr:first-child td:nth-child(4)", (t) => t === "ok", "switch in the history is not ok");
  });

  await step("the proxy now serves elm", async () => {
    const res = await fetch(`${opt.proxy}/products/42`);
    const rel = res.headers.get("x-canopy-release");
    await res.arrayBuffer();
    assert(res.status === 200, `proxy answered ${res.status}`);
    assert(rel === "elm", `proxy answered with x-canopy-release: ${rel}`);
  });

  await step("the countdown counts down", async () => {
    const a = await text("#prev-left");
    await page.waitForTimeout(2100);
    const b = await text("#prev-left");
    assert(a !== b, `countdown did not move: ${a}`);
  });

  if (opt.screenshot) {
    await step(`screenshot to ${opt.screenshot}`, async () => {
      // a few more scrapes so the chart shows traffic moving to elm
      await page.waitForTimeout(8000);
      mkdirSync(dirname(opt.screenshot) || ".", { recursive: true });
      await page.screenshot({ path: opt.screenshot, fullPage: true });
    });
  }

  const t = await traffic.stop();
  traffic = null;
  await step("no page errors, no request to another origin", async () => {
    assert(pageErrors.length === 0, `page errors:\n  ${pageErrors.join("\n  ")}`);
    assert(foreignRequests.length === 0, `requests to other origins:\n  ${foreignRequests.join("\n  ")}`);
    assert(t.failed === 0, `${t.failed} of ${t.sent} proxy requests failed during the test`);
  });
  log(`${t.sent} proxy requests sent meanwhile`);
}

try {
  await main();
  log("PASS");
  process.exitCode = 0;
} catch (e) {
  console.error(`FAIL at step "${currentStep}": ${e && e.message ? e.message : e}`);
  if (pageErrors.length) console.error(`page errors:\n  ${pageErrors.join("\n  ")}`);
  process.exitCode = 1;
} finally {
  if (traffic) await traffic.stop().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  clearTimeout(watchdog);
}
