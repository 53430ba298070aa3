//! Talking to a running canopy as a test does: an HTTP client, the admin
//! calls (register, switch, status, in-flight gauge), a request through the
//! proxy, and the usual two-release set-up on real upstreams.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::canopy::Canopy;
use crate::configs::config;
use crate::upstream::{self, Upstream};

/// A client for loopback (no proxy from the environment, 10 s timeout).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("HTTP client")
}

/// Registers `release` with the given upstreams for server, worker and storefront.
pub async fn register(c: &Canopy, release: &str, server: SocketAddr, worker: SocketAddr, storefront: SocketAddr) -> Value {
    let body = serde_json::json!({"backends": {
        "server": [server.to_string()], "worker": [worker.to_string()], "storefront": [storefront.to_string()]}});
    let r = client().put(c.admin_url(&format!("/releases/{release}"))).json(&body).send().await.expect("PUT /releases");
    assert!(r.status().is_success(), "register {release}: {}", r.status());
    r.json().await.expect("JSON reply")
}

/// One release's three upstreams (server, worker, storefront).
pub struct Stack {
    /// `server`.
    pub server: Upstream,
    /// `worker` (no routes: health only).
    pub worker: Upstream,
    /// `storefront`.
    pub storefront: Upstream,
}

impl Stack {
    /// Three upstreams answering as `release`, on 127.0.0.1:0.
    pub async fn spawn(release: &str) -> Stack {
        Stack {
            server: upstream::spawn(release, "server").await,
            worker: upstream::spawn(release, "worker").await,
            storefront: upstream::spawn(release, "storefront").await,
        }
    }

    /// Registers them with `c` as `release`.
    pub async fn register(&self, c: &Canopy, release: &str) -> Value {
        register(c, release, self.server.addr, self.worker.addr, self.storefront.addr).await
    }
}

/// POST /switch; returns (status, body).
pub async fn switch(c: &Canopy, release: &str) -> (u16, Value) {
    let r = client().post(c.admin_url("/switch")).json(&serde_json::json!({"release": release})).send().await.expect("POST /switch");
    (r.status().as_u16(), r.json().await.expect("JSON reply"))
}

/// GET through the proxy; returns (status, x-canopy-release, JSON body or Null).
pub async fn get(c: &Canopy, path: &str) -> (u16, String, Value) {
    let r = client().get(c.url(path)).send().await.expect("GET through the proxy");
    let rel = r.headers().get("x-canopy-release").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (r.status().as_u16(), rel, r.json().await.unwrap_or(Value::Null))
}

/// GET /status.
pub async fn status(c: &Canopy) -> Value {
    client().get(c.admin_url("/status")).send().await.expect("GET /status").json().await.expect("JSON status")
}

/// Sum of `canopy_inflight_requests` over every release, from GET /metrics.
pub async fn inflight(c: &Canopy) -> i64 {
    let text = client().get(c.admin_url("/metrics")).send().await.expect("GET /metrics").text().await.expect("metrics text");
    text.lines().filter(|l| l.starts_with("canopy_inflight_requests{")).map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap()).sum()
}

/// Canopy with releases `juniper` (live, validated) and `elm` (registered),
/// each a real three-service stack; `extra_top` goes into `[releases]`,
/// `server_checks` into the server's checks (see [`config`]).
pub async fn two_releases(extra_top: &str, server_checks: &str) -> (Canopy, Stack, Stack) {
    two_releases_with(&config(extra_top, server_checks)).await
}

/// [`two_releases`] on a config text of the caller's (placeholders as in [`config`]).
pub async fn two_releases_with(config_text: &str) -> (Canopy, Stack, Stack) {
    two_releases_on(Canopy::start(config_text)).await
}

/// [`two_releases`] on a canopy the caller started (e.g. in a directory
/// holding files its config names).
pub async fn two_releases_on(c: Canopy) -> (Canopy, Stack, Stack) {
    let juniper = Stack::spawn("juniper").await;
    let elm = Stack::spawn("elm").await;
    juniper.register(&c, "juniper").await;
    elm.register(&c, "elm").await;
    let (code, body) = switch(&c, "juniper").await;
    assert_eq!(code, 200, "{body}");
    (c, juniper, elm)
}
