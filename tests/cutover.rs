//! Zero downtime under load: clients on keep-alive and fresh connections
//! (GET, POST with bodies, slow requests, a WebSocket) while the admin API
//! flips between two real releases 100+ times. No request may fail; every
//! request started after a switch reply is served by the new release; every
//! request in flight at a flip finishes on the release it started on.

use std::sync::Arc;
use std::time::Duration;

use canopy_testkit::load::{assert_right_releases, count, flip_many, Kind, Load};
use canopy_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_flips_under_load_lose_nothing() {
    let (c, _juniper, _elm) = two_releases("", "").await;
    let c = Arc::new(c);
    // keep-alive GETs, fresh-connection GETs, POSTs with bodies, slow GETs, and
    // WebSockets opened one after another; each spans several flips and must
    // stay on the release it was opened on
    let slow = Kind::slow("slow-get", 150);
    let kinds = [Kind::KEEPALIVE_GET, Kind::KEEPALIVE_GET, Kind::FRESH_GET, Kind::POST, Kind::FRESH_POST, slow, slow];
    let load = Load::start(c.proxy, &kinds, true);

    // 100+ flips through the admin API, validation included
    tokio::time::sleep(Duration::from_millis(200)).await;
    let flips = flip_many(&c.admin_url("/switch"), 110, ["elm", "juniper"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (done, failures) = load.stop().await;

    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert_right_releases("juniper", &flips, &done);
    let spanned = done.iter().filter(|d| flips.iter().any(|f| d.arrived < f.sent && d.end > f.acked)).count();
    let count = |k: &str| count(&done, k);
    eprintln!(
        "flips: {}, requests: {} (keepalive-get {}, fresh-get {}, post {}, fresh-post {}, slow-get {}, websocket {}), spanning a flip: {spanned}",
        flips.len(),
        done.len(),
        count("keepalive-get"),
        count("fresh-get"),
        count("post"),
        count("fresh-post"),
        count("slow-get"),
        count("websocket"),
    );
    assert!(flips.len() >= 100);
    assert!(count("websocket") >= 2 && count("slow-get") >= 10 && count("fresh-get") >= 20);
    assert!(spanned >= 10, "too few requests were in flight across a flip ({spanned}) to prove anything");
    let st = status(&c).await;
    assert_eq!(st["live"], flips.last().unwrap().to.as_str());
}

/// The load loops' own cross-check, which the test above relies on: an
/// answer that canopy tags with one release while another release's upstream
/// gave it is a failure. Release `oak` here is juniper's upstreams under
/// another name, as a proxy that routed with one table and tagged with
/// another would answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_loops_fail_an_answer_whose_upstream_is_another_release() {
    let (c, juniper, _elm) = two_releases("", "").await;
    juniper.register(&c, "oak").await;
    let (code, body) = switch(&c, "oak").await;
    assert_eq!(code, 200, "{body}");
    let load = Load::start(c.proxy, &[Kind::KEEPALIVE_GET, Kind::POST], true);
    eventually("every loop failed once", Duration::from_secs(10), || std::future::ready(load.failures() >= 3)).await;
    let (done, failures) = load.stop().await;
    assert!(done.is_empty(), "answers counted as right: {:?}", &done[..done.len().min(3)]);
    for kind in [
        "keepalive-get: x-canopy-release oak but the upstream of Some(\"juniper\")",
        "post: x-canopy-release oak but the upstream of Some(\"juniper\")",
        "ws oak m0",
    ] {
        assert!(failures.iter().any(|f| f.starts_with(kind)), "no failure like `{kind}`: {failures:?}");
    }
}
