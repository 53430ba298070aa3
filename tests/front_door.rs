//! The front door's own answers, end to end on the real binary: request
//! body limits (413 before the upstream sees a byte, HTTP/1.1 and h2).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use canopy_testkit::*;

/// The test config with `proxy_lines` added to `[proxy]` and
/// `server_lines` to the `server` service.
fn front_config(proxy_lines: &str, server_lines: &str) -> String {
    let base = config("", "");
    let with_proxy = base.replacen("shutdown-grace = \"5s\"\n", &format!("shutdown-grace = \"5s\"\n{proxy_lines}\n"), 1);
    with_proxy.replacen("name = \"server\"\nport = 3000\n", &format!("name = \"server\"\nport = 3000\n{server_lines}\n"), 1)
}

/// A listener that answers nothing and counts every byte it receives:
/// registered as a release, it shows whether anything was forwarded.
async fn tripwire() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bytes = Arc::new(AtomicUsize::new(0));
    let seen = bytes.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    seen.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, bytes)
}

/// Sends raw HTTP/1.1 bytes and reads the answer until the connection closes.
async fn raw(addr: SocketAddr, request: Vec<u8>) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&request).unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        String::from_utf8_lossy(&resp).into_owned()
    })
    .await
    .unwrap()
}

fn chunked(head: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut req = head.as_bytes().to_vec();
    for part in body.chunks(chunk) {
        req.extend(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend(part);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_before_the_upstream_sees_a_byte() {
    let text = front_config("max-request-body = \"1k\"\nh2c = true", "max-request-body = \"256k\"");
    let (c, juniper, _elm) = two_releases_with(&text).await;
    let (trip, seen) = tripwire().await;
    register(&c, "trip", trip, trip, trip).await;
    let to_trip = "x-canopy-release: trip\r\n";
    let big = vec![b'a'; 2048];

    // HTTP/1.1, Content-Length over the storefront's 1 KiB (the [proxy] default)
    let head = format!("POST /echo HTTP/1.1\r\nHost: shop\r\n{to_trip}Content-Length: 2048\r\n\r\n");
    let out = raw(c.proxy, [head.as_bytes(), &big].concat()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains(r#""limit_bytes":1024"#), "{out}");

    // HTTP/1.1 chunked: no length to check, so the body is read first
    let head = format!("POST /echo HTTP/1.1\r\nHost: shop\r\n{to_trip}Transfer-Encoding: chunked\r\n\r\n");
    let out = raw(c.proxy, chunked(&head, &big, 300)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    // h2 (h2c with prior knowledge), a declared length over the limit
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().timeout(Duration::from_secs(10)).build().unwrap();
    let r = h2.post(c.url("/echo")).header("x-canopy-release", "trip").body(big.clone()).send().await.unwrap();
    assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_2, 413));

    // h2 without a length (curl streams stdin): read first, then refused
    let curl = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--http2-prior-knowledge", "-T", "-"])
        .args(["-H", "x-canopy-release: trip", &c.url("/echo")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl is installed");
    let out = feed_and_wait(curl, big.clone()).await;
    assert_eq!(out, "413 2", "curl h2 upload of unknown length");

    // the tripwire release never received a byte of any of them
    assert_eq!(seen.load(Ordering::Relaxed), 0, "bytes reached the upstream");
    let metrics = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "canopy_request_body_too_large_total 4"), "{metrics}");

    // within the limit, chunked bodies are buffered and forwarded whole
    let small: Vec<u8> = (0..1000u32).map(|i| b'a' + (i * 7 % 26) as u8).collect();
    let out =
        raw(c.proxy, chunked("POST /echo HTTP/1.1\r\nHost: shop\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n", &small, 97))
            .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.as_bytes().windows(small.len()).any(|w| w == small), "chunked body changed in transit: {out}");
    // the server service's own limit (256 KiB) is above pingora's 64 KiB retry buffer
    let body = vec![b'z'; 200 * 1024];
    let head = "POST /assets/upload HTTP/1.1\r\nHost: shop\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    let out = raw(c.proxy, chunked(head, &body, 16 * 1024)).await;
    assert!(out.starts_with("HTTP/1.1 200") && out.contains(r#""body_len":204800"#), "{out}");
    let r = client().post(c.url("/assets/upload")).body(vec![b'z'; 300 * 1024]).send().await.unwrap();
    assert_eq!(r.status(), 413, "over the server service's 256 KiB");
    assert!(juniper.server.hits.load(Ordering::Relaxed) >= 1);
}

/// Writes `body` to the child's stdin, closes it and returns its stdout.
async fn feed_and_wait(mut child: tokio::process::Child, body: Vec<u8>) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&body).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await.expect("curl finished").unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Headless Chromium's rendering of `url` (its DOM after load), as a
/// shopper's browser sees it: Chromium sends its own `Accept: text/html...`.
async fn chromium_dom(url: &str) -> String {
    const CHROMIUM: &str = "/usr/bin/chromium";
    assert!(std::path::Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: apt-get install -y chromium");
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-proxy-server"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("chromium finished within 60 s").unwrap();
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_error_pages_api_clients_json_and_neither_names_a_backend() {
    let dead = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pages")).unwrap();
    std::fs::write(dir.path().join("pages/413.html"), "<!doctype html><title>Too big</title><h1>Our own 413 page</h1>").unwrap();
    let release = format!(
        "\n[[release]]\nname = \"oak\"\nbackends = {{ server = [\"{dead}\"], worker = [\"{dead}\"], storefront = [\"{dead}\"] }}\n"
    );
    let text = front_config("error-pages = \"pages\"\nmax-request-body = \"1k\"", "") + &release;
    let text = text.replacen("preview = true", "preview = true\ninitial = \"oak\"", 1);
    let c = Canopy::start_in(dir.path(), &text);

    // Chromium renders the built-in 502 page; no backend address on it
    let dom = chromium_dom(&c.url("/products/1")).await;
    assert!(dom.contains("<h1>Temporarily unavailable</h1>") && dom.contains("Error 502"), "{dom}");
    let port = dead.port().to_string();
    assert!(!dom.contains(&port) && !dom.contains("127.0.0.1"), "the page names a backend: {dom}");

    // the same request from an API client: JSON, naming release and service only
    let r = client().get(c.url("/products/1")).header("accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = r.text().await.unwrap();
    assert!(body.contains(r#""release":"oak""#) && !body.contains(&port) && !body.contains("127.0.0.1"), "{body}");

    // the operator's own 413 page replaces the built-in one; JSON stays JSON
    let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let r = client().post(c.url("/products")).header("accept", html).body(vec![0u8; 4096]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert!(r.text().await.unwrap().contains("Our own 413 page"));
    let r = client().post(c.url("/products")).body(vec![0u8; 4096]).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["content-type"].to_str().unwrap()), (413, "application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_release_and_slow_upstream_pages() {
    let html = "text/html,*/*;q=0.8";
    let c = Canopy::start(&config("", ""));
    let r = client().get(c.url("/")).header("accept", html).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("Error 503"));
    let r = client().get(c.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "no live release");

    let (c, _j, _e) = two_releases("", "").await;
    // upstream-timeout is 2 s in the test config
    let r = client().get(c.url("/slow?ms=3000")).header("accept", html).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-canopy-release"], "juniper");
    assert!(r.text().await.unwrap().contains("<h1>Taking too long</h1>"));
}

/// The access log's lines so far (the config writes it to `access.log` in
/// canopy's directory), once `n` are there.
async fn access_lines(c: &Canopy, n: usize) -> Vec<serde_json::Value> {
    let path = c.tmp.as_ref().unwrap().path().join("access.log");
    until_some("access log lines", Duration::from_secs(10), || {
        let path = path.clone();
        async move {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            (lines.len() >= n).then_some(lines)
        }
    })
    .await
}

/// GET /products through `c` with `headers`: (upstream's JSON, response's x-request-id).
async fn through(c: &Canopy, headers: &[(&str, &str)]) -> (serde_json::Value, String) {
    let mut req = client().get(c.url("/products"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (r.json().await.unwrap(), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_address_and_request_id_only_from_trusted_peers() {
    let spoof = [("x-forwarded-for", "6.6.6.6, 198.51.100.7"), ("cf-connecting-ip", "6.6.6.6"), ("x-request-id", "from-the-client")];

    // the test's own connections come from 127.0.0.1: not in 10.0.0.0/8, so untrusted
    let lines = "trusted-proxies = [\"10.0.0.0/8\"]\nrequest-id = true\naccess-log = \"access.log\"";
    let (c, _j, _e) = two_releases_with(&front_config(lines, "")).await;
    let (seen, id) = through(&c, &spoof).await;
    assert_eq!(seen["x_forwarded_for"], "127.0.0.1", "an untrusted peer's X-Forwarded-For reached the upstream");
    assert_eq!(seen["x_request_id"], id.as_str());
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "a new request ID, not the client's: {id}");
    let line = access_lines(&c, 1).await.pop().unwrap();
    assert_eq!((line["client"].as_str(), line["request_id"].as_str()), (Some("127.0.0.1"), Some(id.as_str())), "{line}");

    // the same headers from a trusted peer: walked right to left past trusted hops
    let lines = "trusted-proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\nrequest-id = true\naccess-log = \"access.log\"";
    let (c, _j, _e) = two_releases_with(&front_config(lines, "")).await;
    let (seen, id) = through(&c, &[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3"), spoof[2]]).await;
    assert_eq!(seen["x_forwarded_for"], "198.51.100.7, 10.1.2.3, 127.0.0.1", "the chain from the client on");
    assert_eq!((seen["x_request_id"].as_str(), id.as_str()), (Some("from-the-client"), "from-the-client"));
    let line = access_lines(&c, 1).await.pop().unwrap();
    assert_eq!((line["client"].as_str(), line["request_id"].as_str()), (Some("198.51.100.7"), Some("from-the-client")), "{line}");

    // a CDN's single-address header: believed from a trusted peer only, and
    // an untrusted peer's claim does not reach the upstream
    let cf = "client-ip-header = \"CF-Connecting-IP\"\naccess-log = \"access.log\"";
    let (c, _j, _e) = two_releases_with(&front_config(&format!("trusted-proxies = [\"127.0.0.1\"]\n{cf}"), "")).await;
    let (seen, id) = through(&c, &spoof).await;
    assert_eq!(seen["cf_connecting_ip"], "6.6.6.6");
    assert_eq!(id, "", "request-id is off unless configured");
    assert_eq!(access_lines(&c, 1).await.pop().unwrap()["client"], "6.6.6.6");
    let (c, _j, _e) = two_releases_with(&front_config(&format!("trusted-proxies = [\"192.0.2.0/24\"]\n{cf}"), "")).await;
    let (seen, _) = through(&c, &spoof).await;
    assert_eq!((seen["cf_connecting_ip"].as_str(), seen["x_forwarded_for"].as_str()), (None, Some("127.0.0.1")));
    assert_eq!(access_lines(&c, 1).await.pop().unwrap()["client"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_never_believes_forwarding_headers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "admin-token-0123456789abcdef\n").unwrap();
    let text = front_config("trusted-proxies = [\"127.0.0.0/8\"]", "").replacen(
        "state-file = \"state.json\"",
        "state-file = \"state.json\"\ntoken-file = \"token\"",
        1,
    );
    let c = Canopy::start_in(dir.path(), &text);
    let r = client()
        .get(c.admin_url("/status"))
        .header("x-forwarded-for", "127.0.0.1")
        .header("cf-connecting-ip", "127.0.0.1")
        .header("x-real-ip", "127.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a forwarding header stood in for the token");
    let r = client().get(c.admin_url("/status")).bearer_auth("admin-token-0123456789abcdef").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_hosts_are_redirected_to_the_canonical_host_acme_paths_excepted() {
    let (c, _j, _e) = two_releases_with(&front_config("canonical-host = \"shop.example\"", "")).await;
    let port = c.proxy.port();
    let get = |host: String, path: &'static str| {
        raw(c.proxy, format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes())
    };
    let out = get(format!("www.shop.example:{port}"), "/products/1?ref=mail").await;
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    assert!(out.to_ascii_lowercase().contains(&format!("location: http://shop.example:{port}/products/1?ref=mail\r\n")), "{out}");
    let out = get("127.0.0.1".into(), "/").await;
    assert!(out.to_ascii_lowercase().contains("location: http://shop.example/\r\n"), "{out}");
    // the canonical host itself (any case) and ACME challenges are served
    for (host, path) in
        [(format!("Shop.Example:{port}"), "/products/1"), (format!("www.shop.example:{port}"), "/.well-known/acme-challenge/tok")]
    {
        let out = get(host, path).await;
        assert!(out.starts_with("HTTP/1.1 200") && out.contains("x-canopy-release: juniper"), "{path}: {out}");
    }
}
