//! Data plane end to end: the real canopy binary in front of real upstreams.

use std::io::{Read, Write};
use std::time::Duration;

use canopy_testkit::*;
use futures_util::{SinkExt, StreamExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_longest_prefix_and_tags_release() {
    let (c, _j, _e) = two_releases("", "").await;
    for (path, service) in [
        ("/shop-api", "server"),
        ("/shop-api/x?y=1", "server"),
        ("/assets/logo.png", "server"),
        ("/payments/stripe", "server"),
        ("/shop-apix", "storefront"),
        ("/", "storefront"),
        ("/products/42", "storefront"),
    ] {
        let (code, release, body) = get(&c, path).await;
        assert_eq!(code, 200, "{path}");
        assert_eq!(release, "juniper", "{path}");
        assert_eq!(body["service"], service, "{path}");
        assert_eq!(body["release"], "juniper", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_forwarding_headers() {
    let (c, _j, _e) = two_releases("", "").await;
    let r = client().get(c.url("/products")).header("x-forwarded-for", "203.0.113.7").send().await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["x_forwarded_for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(body["x_forwarded_proto"], "http");
    assert_eq!(body["x_forwarded_host"], c.proxy.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_megabyte_post_body_is_byte_exact() {
    let (c, _j, _e) = two_releases("", "").await;
    // every byte value, in a pattern that would show reordering or loss
    let body: Vec<u8> = (0..1_048_576u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let r = client().post(c.url("/echo")).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-canopy-release"], "juniper");
    let got = r.bytes().await.unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got[..] == body[..], "body changed in transit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_streams_through() {
    let (c, _j, _e) = two_releases("", "").await;
    let addr = c.proxy;
    let out = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = b"POST /echo HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for chunk in ["hello ", "chunked ", "world"] {
            req.extend(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
        }
        req.extend(b"0\r\n\r\n");
        s.write_all(&req).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        String::from_utf8_lossy(&resp).into_owned()
    })
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-canopy-release: juniper"), "{out}");
    assert!(out.contains("hello chunked world"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let (c, _j, _e) = two_releases("", "").await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", c.proxy)).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-canopy-release"], "juniper");
    for i in 0..3 {
        ws.send(format!("ping {i}").into()).await.unwrap();
        let msg = ws.next().await.unwrap().unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), format!("juniper:ping {i}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_the_next_backend_of_the_same_release() {
    let c = Canopy::start(&config("", ""));
    let oak = Stack::spawn("oak").await;
    let dead = dead_addr();
    let body = serde_json::json!({"backends": {
        "server": [dead.to_string(), oak.server.addr.to_string()],
        "worker": [oak.worker.addr.to_string()],
        "storefront": [dead.to_string(), oak.storefront.addr.to_string()]}});
    let r = client().put(c.admin_url("/releases/oak")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = client().post(c.admin_url("/switch?force=true")).json(&serde_json::json!({"release": "oak"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..10 {
        let (code, release, body) = get(&c, "/shop-api/q").await;
        assert_eq!((code, release.as_str()), (200, "oak"), "{body}");
    }
    assert_eq!(oak.server.hits.load(std::sync::atomic::Ordering::Relaxed), 10);
    let metrics = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("canopy_upstream_errors_total{release=\"oak\",service=\"server\",kind=\"connect\"} 5"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_refusing_is_a_json_502() {
    let c = Canopy::start(&config("", ""));
    let dead = dead_addr().to_string();
    let body = serde_json::json!({"backends": {"server": [dead.clone(), dead.clone()], "worker": [dead.clone()], "storefront": [dead]}});
    client().put(c.admin_url("/releases/ash")).json(&body).send().await.unwrap();
    client().post(c.admin_url("/switch?force=true")).json(&serde_json::json!({"release": "ash"})).send().await.unwrap();
    let r = client().get(c.url("/shop-api")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-canopy-release"], "ash");
    assert_eq!(r.headers()["content-type"], "application/json");
    let text = r.text().await.unwrap();
    assert_eq!(text, r#"{"error":"upstream unavailable","release":"ash","service":"server"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_a_504_after_the_timeout() {
    let (c, _j, _e) = two_releases("", "").await;
    let started = std::time::Instant::now();
    let r = client().get(c.url("/products?ms=5000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    let text = r.text().await.unwrap();
    assert_eq!(text, r#"{"error":"upstream timed out","release":"juniper","service":"storefront"}"#);
    // and the next request is served normally
    let (code, release, _) = get(&c, "/products").await;
    assert_eq!((code, release.as_str()), (200, "juniper"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_header_selects_a_registered_release() {
    let (c, _j, _e) = two_releases("", "").await;
    let send = |rel: &'static str| client().get(c.url("/products")).header("x-canopy-release", rel).send();
    let r = send("elm").await.unwrap();
    assert_eq!(r.headers()["x-canopy-release"], "elm");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["release"], "elm");
    assert_eq!(body["x_canopy_release"], serde_json::Value::Null, "selector must not be forwarded");
    let r = send("nonexistent").await.unwrap();
    assert_eq!(r.headers()["x-canopy-release"], "juniper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_release_is_a_json_503() {
    let c = Canopy::start(&config("", ""));
    let r = client().get(c.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), r#"{"error":"no live release","service":"storefront"}"#);
}

#[test]
fn bad_config_names_file_line_and_column_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // its ports held by this test: a serve that got as far as binding would fail on them
    let (text, _ports) = fill_ports(&config("", ""));
    let bad = text.replace("validation-window = \"10m\"", "validation-window = \"10 parsecs\"");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &bad).unwrap();
    for cmd in ["check-config", "serve"] {
        let out = std::process::Command::new(canopy_bin()).args([cmd, "-c"]).arg(&path).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let expected = format!("error: {}:15:21: invalid duration `10 parsecs`", path.display());
        assert!(err.contains(&expected), "{cmd}: {err}");
        assert!(err.contains("15 | validation-window = \"10 parsecs\""), "{err}");
        // refused before binding or starting anything
        assert!(!err.contains("canopy serving on") && !err.contains("Bootstrap"), "{cmd}: {err}");
    }

    let unknown = text.replace("threads = 2", "threads = 2\nlisten-backlog = 5");
    std::fs::write(&path, &unknown).unwrap();
    let out = std::process::Command::new(canopy_bin()).args(["check-config", "-c"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":5:1: unknown field `listen-backlog`"), "{err}");

    let ok = std::process::Command::new(canopy_bin()).args(["check-config", "-c", "proxy.toml"]).output().unwrap();
    assert!(ok.status.success(), "shipped proxy.toml must be valid: {}", String::from_utf8_lossy(&ok.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_inflight_requests_then_exits() {
    let (mut c, _j, _e) = two_releases("", "").await;
    let url = c.url("/products?ms=1000");
    let slow = tokio::spawn(async move { client().get(url).send().await.unwrap() });
    eventually("the request in flight", Duration::from_secs(5), || async { inflight(&c).await == 1 }).await;
    let sent = std::time::Instant::now();
    let pid = c.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let r = slow.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-canopy-release"], "juniper");
    // exits once drained: well inside the 5 s grace, nowhere near pingora's 300 s default
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = c.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "canopy still running 5 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(sent.elapsed() < Duration::from_secs(3), "{:?}", sent.elapsed());
}

/// Regression for pingora#946 (patched in vendor/pingora-proxy): with a fast
/// upstream the tunnel was torn down right after the 101 a few times per
/// hundred upgrades. Every one of 300 upgrades must carry its first frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_first_frame_survives_a_fast_101() {
    let (c, _j, _e) = two_releases("", "").await;
    let mut failures = Vec::new();
    for i in 0..300 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", c.proxy)).await.unwrap();
        let sent = ws.send(format!("hello {i}").into()).await;
        match (sent, ws.next().await) {
            (Ok(()), Some(Ok(m))) if m.to_text().ok() == Some(&format!("juniper:hello {i}")) => {}
            (sent, got) => failures.push(format!("upgrade {i}: send {sent:?}, got {got:?}")),
        }
        let _ = ws.close(None).await;
    }
    assert!(failures.is_empty(), "{} of 300 upgrades lost their tunnel: {:?}", failures.len(), &failures[..failures.len().min(3)]);
}

/// Writes `parts` to one connection to the proxy without reading in between;
/// a part with a release name first waits until the previous request is at
/// the upstream and switches to that release. Then reads until canopy closes
/// the connection (the last request says `Connection: close`). Returns, per
/// response in order, its status, `x-canopy-release` and body.
async fn pipeline(c: &Canopy, parts: Vec<(&'static [u8], Option<&str>)>) -> Vec<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(c.proxy).await.unwrap();
    for (bytes, switch_to) in parts {
        if let Some(release) = switch_to {
            // the previous request is at the upstream: flip under it
            eventually("the request in flight", Duration::from_secs(5), || async { inflight(c).await == 1 }).await;
            assert_eq!(switch(c, release).await.0, 200);
        }
        s.write_all(bytes).await.unwrap();
    }
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await.expect("canopy closed the connection").unwrap();
    let text = String::from_utf8(raw).unwrap();
    let mut responses = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let (head, after) = rest.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {rest:?}"));
        let status = head[9..12].parse().unwrap();
        let header = |name: &str| {
            head.lines().find_map(|l| l.split_once(": ").filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_string()))
        };
        let len: usize = header("content-length").expect("upstream answers have a length").parse().unwrap();
        responses.push((status, header("x-canopy-release").unwrap_or_default(), after[..len].to_string()));
        rest = &after[len..];
    }
    responses
}

/// A client that pipelines (sends the next request before reading the
/// answer) gets every answer, in order; each request is routed when it is
/// read, so one queued behind a flip goes to the new live release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (c, _j, _e) = two_releases("", "").await;
    // one segment: three requests, a POST with a body in the middle
    let got = pipeline(
        &c,
        vec![(
            b"GET /p1 HTTP/1.1\r\nHost: shop\r\n\r\nPOST /echo HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\n\r\nhello\
              GET /p3 HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
            None,
        )],
    )
    .await;
    let path = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap()["path"].as_str().unwrap().to_string();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[0].0, path(&got[0].2).as_str()), (200, "/p1"));
    assert_eq!((got[1].0, got[1].2.as_str()), (200, "hello"));
    assert_eq!((got[2].0, path(&got[2].2).as_str()), (200, "/p3"));
    // the next request sent while the first is still at the upstream, and a
    // switch to elm in between: answered in order, the second by elm
    let got = pipeline(
        &c,
        vec![
            (b"GET /slow?ms=500 HTTP/1.1\r\nHost: shop\r\n\r\n", None),
            (b"GET /after HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n", Some("elm")),
        ],
    )
    .await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].0, got[0].1.as_str(), path(&got[0].2).as_str()), (200, "juniper", "/slow"));
    assert_eq!((got[1].0, got[1].1.as_str(), path(&got[1].2).as_str()), (200, "elm", "/after"));
}
