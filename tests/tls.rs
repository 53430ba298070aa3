//! HTTPS and HTTP/2 through the real binary: TLS listeners with
//! certificates per SNI, h2 by ALPN and h2c, flips on long-lived h2
//! connections, certificate rotation under load, the handshake deadline
//! and h2 slowloris protection, the HTTPS redirect and HSTS, and bad
//! certificate files. Clients: reqwest (rustls) checking the served
//! certificate, curl --http2 and h2load.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_testkit::load::{assert_right_releases, count, flip_many, Kind, Load};
use canopy_testkit::tls::{cert, h1_tls_target, h2_target, https, metric, served, tls_config, TestCert};
use canopy_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The four certificates of the SNI tests: three names and a default.
struct Certs {
    shop: TestCert,
    api: TestCert,
    wildcard: TestCert,
    fallback: TestCert,
}

impl Certs {
    fn new() -> Certs {
        Certs { shop: cert(&["shop.test"]), api: cert(&["api.test"]), wildcard: cert(&["*.cdn.test"]), fallback: cert(&["fallback.test"]) }
    }

    fn all(&self) -> Vec<&TestCert> {
        vec![&self.shop, &self.api, &self.wildcard, &self.fallback]
    }

    fn write(&self, dir: &Path) {
        self.shop.write(dir, "shop");
        self.api.write(dir, "api");
        self.wildcard.write(dir, "wildcard");
        self.fallback.write(dir, "fallback");
    }
}

const FOUR_CERTS: &str = r#"
[tls]
hsts = "max-age=600"
[[tls.certificate]]
cert = "shop.pem"
key = "shop.key"
[[tls.certificate]]
cert = "api.pem"
key = "api.key"
[[tls.certificate]]
cert = "wildcard.pem"
key = "wildcard.key"
[[tls.certificate]]
cert = "fallback.pem"
key = "fallback.key"
default = true
"#;

/// canopy with juniper live and elm registered, started in a directory that
/// holds `certs`, with `tls` as its `[tls]` part.
async fn tls_canopy(write: impl FnOnce(&Path), tls: &str) -> (Canopy, Stack, Stack) {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path());
    let mut c = Canopy::start_in(tmp.path(), &tls_config(tls));
    c.tmp = Some(tmp);
    two_releases_on(c).await
}

async fn metrics(c: &Canopy) -> String {
    client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap()
}

fn body(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_h2_and_h2c_proxy_byte_for_byte_and_sni_picks_the_certificate() {
    let certs = Certs::new();
    let (c, _juniper, _elm) = tls_canopy(|d| certs.write(d), FOUR_CERTS).await;
    let tls = c.tls.unwrap();

    // SNI: three names (exact, exact, wildcard) and the default for the rest
    for (name, want) in
        [("shop.test", &certs.shop), ("api.test", &certs.api), ("img.cdn.test", &certs.wildcard), ("fallback.test", &certs.fallback)]
    {
        let http = https(name, tls, &certs.all()).build().unwrap();
        let r = http.get(format!("https://{name}:{}/shop-api/sni", tls.port())).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{name}: h2 chosen by ALPN");
        assert!(served(&r) == want.der, "{name}: served the wrong certificate");
        assert_eq!(r.headers()["x-canopy-release"], "juniper");
        assert_eq!(r.headers()["strict-transport-security"], "max-age=600");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["x_forwarded_proto"], "https", "{name}");
    }
    // a name no certificate has, and no SNI at all (an IP address): the default
    for (url, resolve) in [(format!("https://other.test:{}/", tls.port()), Some("other.test")), (format!("https://{tls}/"), None)] {
        let mut b = reqwest::Client::builder().use_rustls_tls().tls_info(true).danger_accept_invalid_certs(true).no_proxy();
        if let Some(n) = resolve {
            b = b.resolve(n, tls);
        }
        let r = b.build().unwrap().get(&url).send().await.unwrap();
        assert!(served(&r) == certs.fallback.der, "{url}: not the default certificate");
    }

    // byte for byte: 300 KB POSTed over h2, HTTP/1.1 over TLS and h2c
    let payload = body(300_000, 7);
    let h2 = https("shop.test", tls, &certs.all()).build().unwrap();
    let h1 = https("shop.test", tls, &certs.all()).http1_only().build().unwrap();
    let h2c = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let base = format!("https://shop.test:{}", tls.port());
    for (what, http, url, version) in [
        ("h2", &h2, format!("{base}/echo"), reqwest::Version::HTTP_2),
        ("http/1.1 over TLS", &h1, format!("{base}/echo"), reqwest::Version::HTTP_11),
        ("h2c", &h2c, c.url("/echo"), reqwest::Version::HTTP_2),
    ] {
        let r = http.post(url).body(payload.clone()).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.version()), (200, version), "{what}");
        assert_eq!(r.headers()["x-canopy-release"], "juniper", "{what}");
        let got = r.bytes().await.unwrap();
        assert!(got[..] == payload[..], "{what}: body changed ({} bytes back)", got.len());
    }
    // h2c answers plaintext HTTP/1.1 too, with X-Forwarded-Proto http and no HSTS
    let r = client().get(c.url("/shop-api/plain")).send().await.unwrap();
    assert!(r.headers().get("strict-transport-security").is_none());
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["x_forwarded_proto"], "http");

    // curl --http2 (OpenSSL, nghttp2): h2 over TLS and h2c, byte for byte
    let dir = c.dir.clone();
    std::fs::write(dir.join("payload.bin"), &payload).unwrap();
    std::fs::write(dir.join("ca.pem"), &certs.shop.pem).unwrap();
    for (what, args) in [
        (
            "curl h2",
            vec![
                "--http2".to_string(),
                "--cacert".into(),
                "ca.pem".into(),
                "--resolve".into(),
                format!("shop.test:{}:127.0.0.1", tls.port()),
                format!("{base}/echo"),
            ],
        ),
        ("curl h2c", vec!["--http2-prior-knowledge".to_string(), c.url("/echo")]),
    ] {
        let out = Command::new("curl")
            .current_dir(&dir)
            .args(["-sS", "--fail", "--data-binary", "@payload.bin", "-o", "back.bin", "-D", "head.txt", "-w", "%{http_version}"])
            .args(&args)
            .output()
            .expect("curl is installed");
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2", "{what}: not HTTP/2");
        assert!(std::fs::read(dir.join("back.bin")).unwrap() == payload, "{what}: body changed");
        let head = std::fs::read_to_string(dir.join("head.txt")).unwrap();
        assert!(head.contains("x-canopy-release: juniper"), "{what}: {head}");
    }

    // what an operator sees: metrics and the status page's certificates
    let m = metrics(&c).await;
    assert!(metric(&m, r#"canopy_requests_by_protocol_total{version="2",tls="true"}"#) >= 6.0, "{m}");
    assert!(metric(&m, r#"canopy_requests_by_protocol_total{version="2",tls="false"}"#) >= 2.0, "{m}");
    assert!(metric(&m, r#"canopy_requests_by_protocol_total{version="1.1",tls="true"}"#) >= 1.0, "{m}");
    assert!(metric(&m, r#"canopy_tls_handshakes_total{result="ok"}"#) >= 8.0, "{m}");
    let expiry = metric(&m, r#"canopy_tls_certificate_expiry_seconds{name="shop.test"}"#);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expiry > now + 86400.0, "shop.test expiry {expiry} not in the future");
    let st = status(&c).await;
    let listed: Vec<&str> = st["tls"]["certificates"].as_array().unwrap().iter().map(|c| c["names"][0].as_str().unwrap()).collect();
    assert_eq!(listed, ["shop.test", "api.test", "*.cdn.test", "fallback.test"]);
    let out = c.cli(&["tls"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("*.cdn.test"), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Runs h2load against `url` for `secs` seconds; returns (succeeded, failed
/// + errored, non-2xx) from its summary.
fn h2load(url: &str, secs: u64) -> std::process::Child {
    Command::new("h2load")
        .args(["-c", "2", "-m", "8", "-D", &secs.to_string(), "--warm-up-time", "0", url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("h2load (nghttp2-client) is installed")
}

fn h2load_result(child: std::process::Child) -> (u64, u64, u64, String) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text.lines().find(|l| l.starts_with("requests:")).unwrap_or_else(|| panic!("h2load printed no summary:\n{text}"));
    let field = |name: &str| -> u64 {
        line.split(',').find(|p| p.trim().ends_with(name)).and_then(|p| p.split_whitespace().next()).unwrap().parse().unwrap()
    };
    let codes = text.lines().find(|l| l.starts_with("status codes:")).unwrap();
    let non2xx: u64 = codes.split(',').skip(1).map(|p| p.split_whitespace().next().unwrap().parse::<u64>().unwrap()).sum();
    (field("succeeded"), field("failed") + field("errored"), non2xx, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_flips_on_long_lived_h2_connections_lose_nothing() {
    let certs = Certs::new();
    let (c, _juniper, _elm) = tls_canopy(|d| certs.write(d), FOUR_CERTS).await;
    let c = Arc::new(c);
    let tls = c.tls.unwrap();
    let roots: Vec<TestCert> = certs.all().into_iter().cloned().collect();
    let handshakes_before = metric(&metrics(&c).await, r#"canopy_tls_handshakes_total{result="ok"}"#);

    // each loop is one client with one h2 connection for the whole test:
    // GETs, POSTs with bodies and slow GETs as streams on it
    let target = h2_target("shop.test", tls, roots);
    let slow = Kind::slow("slow-get", 150);
    let kinds = [Kind::KEEPALIVE_GET, Kind::KEEPALIVE_GET, Kind::POST, slow, slow];
    let load = Load::start_on(&target, &kinds);
    // and h2load: 2 connections with 8 concurrent streams each
    let h2 = h2load(&format!("https://127.0.0.1:{}/shop-api/h2load", tls.port()), 6);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let flips = flip_many(&c.admin_url("/switch"), 110, ["elm", "juniper"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (done, failures) = load.stop().await;
    let (h2_ok, h2_failed, h2_non2xx, h2_text) = tokio::task::spawn_blocking(move || h2load_result(h2)).await.unwrap();
    let handshakes = metric(&metrics(&c).await, r#"canopy_tls_handshakes_total{result="ok"}"#) - handshakes_before;

    assert!(failures.is_empty(), "{} failed streams: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert_right_releases("juniper", &flips, &done);
    assert_eq!((h2_failed, h2_non2xx), (0, 0), "h2load saw failures:\n{h2_text}");
    let spanned = done.iter().filter(|d| flips.iter().any(|f| d.arrived < f.sent && d.end > f.acked)).count();
    eprintln!(
        "flips: {}, h2 streams: {} (get {}, post {}, slow {}), spanning a flip: {spanned}, h2load streams: {h2_ok}, TLS handshakes: {handshakes}",
        flips.len(),
        done.len(),
        count(&done, "keepalive-get"),
        count(&done, "post"),
        count(&done, "slow-get"),
    );
    assert!(flips.len() >= 100 && count(&done, "slow-get") >= 10 && h2_ok >= 100);
    assert!(spanned >= 10, "too few streams were in flight across a flip ({spanned}) to prove anything");
    // the streams ran on a few long-lived connections, not one per request:
    // 5 client loops + 2 h2load connections (+ a retry or two)
    assert!(handshakes <= 10.0, "{handshakes} handshakes for {} streams: connections were not long-lived", done.len());
    // both releases answered on the same connections
    assert!(done.iter().any(|d| d.release == "elm") && done.iter().any(|d| d.release == "juniper"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    // four generations of the shop.test certificate; clients trust them all
    let generations: Vec<TestCert> = (0..4).map(|_| cert(&["shop.test"])).collect();
    let first = generations[0].clone();
    let tls_part = "[tls]\nwatch-interval = \"200ms\"\n[[tls.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n";
    let (c, _juniper, _elm) = tls_canopy(|d| first.write(d, "shop"), tls_part).await;
    let tls = c.tls.unwrap();
    let fresh = || https("shop.test", tls, &generations.iter().collect::<Vec<_>>()).pool_max_idle_per_host(0).build().unwrap();
    let url = format!("https://shop.test:{}/shop-api/rot", tls.port());
    let served_now = || async { served(&fresh().get(&url).send().await.unwrap()) };
    assert!(served_now().await == generations[0].der);

    // long-lived h2 connections, keep-alive HTTP/1.1 and a new TLS connection per request
    let h2 = Load::start_on(&h2_target("shop.test", tls, generations.clone()), &[Kind::KEEPALIVE_GET, Kind::POST]);
    let h1 =
        Load::start_on(&h1_tls_target("shop.test", tls, generations.clone()), &[Kind::KEEPALIVE_GET, Kind::FRESH_GET, Kind::FRESH_POST]);
    let old_conn = https("shop.test", tls, &generations.iter().collect::<Vec<_>>()).build().unwrap();
    assert!(served(&old_conn.get(&url).send().await.unwrap()) == generations[0].der);

    for (k, next) in generations.iter().enumerate().skip(1) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        next.write(&c.dir, "shop");
        if k % 2 == 1 {
            // `canopy tls reload`: the very next handshake has the new certificate
            let out = c.cli(&["tls", "reload"]);
            assert!(out.status.success(), "tls reload: {}", String::from_utf8_lossy(&out.stderr));
            assert!(served_now().await == next.der, "generation {k}: not served right after `canopy tls reload`");
        } else {
            // the file watch picks it up by itself
            let want = next.der.clone();
            eventually(&format!("generation {k} served after the file changed"), Duration::from_secs(10), || {
                let want = want.clone();
                async move { served_now().await == want }
            })
            .await;
        }
    }
    // a connection opened before the rotations is still open and serving
    let r = old_conn.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(served(&r) == generations[0].der, "the old connection was replaced");

    // a broken key: the reload is refused naming the file; the last good
    // certificate stays in service
    std::fs::write(c.dir.join("shop.key"), "not a key\n").unwrap();
    let out = c.cli(&["tls", "reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shop.key") && err.contains("no PEM private key"), "{err}");
    assert!(served_now().await == generations[3].der);
    let v: serde_json::Value = client().get(c.admin_url("/tls")).send().await.unwrap().json().await.unwrap();
    assert!(v["last_reload_error"].as_str().unwrap().contains("shop.key"), "{v}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (done_h2, failed_h2) = h2.stop().await;
    let (done_h1, failed_h1) = h1.stop().await;
    assert!(failed_h2.is_empty(), "h2: {failed_h2:?}");
    assert!(failed_h1.is_empty(), "http/1.1: {failed_h1:?}");
    eprintln!(
        "requests during 3 rotations: h2 {}, http/1.1 {} ({} on fresh connections)",
        done_h2.len(),
        done_h1.len(),
        count(&done_h1, "fresh-get") + count(&done_h1, "fresh-post")
    );
    assert!(count(&done_h1, "fresh-get") >= 20 && done_h2.len() >= 20);
}

/// Connects to `addr`, sends `first`, then `drip` (if any) one chunk every
/// 200 ms; returns how long until the server closed the connection.
async fn closed_after(mut s: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, first: &[u8], drip: Option<&[u8]>) -> Duration {
    let t = Instant::now();
    s.write_all(first).await.unwrap();
    let mut buf = [0u8; 4096];
    let limit = Duration::from_secs(15);
    loop {
        assert!(t.elapsed() < limit, "still open after {limit:?}");
        if let Some(d) = drip {
            if s.write_all(d).await.is_err() {
                return t.elapsed();
            }
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            _ => {}
        }
    }
}

/// An HTTP/2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn tls_h2(tls: std::net::SocketAddr, root: &TestCert) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(root.der.clone().into()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("shop.test").unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshakes_and_slowloris_h2_streams_are_cut_off() {
    let certs = Certs::new();
    let tls_part = FOUR_CERTS.replace("[tls]\n", "[tls]\nhandshake-timeout = \"1s\"\n");
    let (c, _juniper, _elm) = tls_canopy(|d| certs.write(d), &tls_part).await;
    let tls = c.tls.unwrap();
    let tcp = || async { tokio::net::TcpStream::connect(tls).await.unwrap() };

    // TLS: nothing at all, and a ClientHello that never completes (handshake-timeout 1s)
    let silent = closed_after(tcp().await, b"", None).await;
    let partial = closed_after(tcp().await, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", Some(b"\x00")).await;
    for (what, t) in [("silent client", silent), ("dripped ClientHello", partial)] {
        assert!(t >= Duration::from_millis(900) && t < Duration::from_secs(5), "{what}: closed after {t:?}");
    }
    let m = metrics(&c).await;
    assert!(metric(&m, r#"canopy_tls_handshakes_total{result="timeout"}"#) >= 2.0, "{m}");

    // h2 over TLS (client-timeout 2s): a connection that never opens a
    // stream, and one whose HEADERS frame is dripped a byte at a time, are
    // closed; a real request meanwhile is served. (Dripping CONTINUATION
    // frames instead is cut off by the h2 codec itself after a few frames.)
    let preface = [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &frame(4, 0, 0, &[])].concat();
    let idle = tokio::spawn({
        let (root, preface) = (certs.shop.clone(), preface.clone());
        async move { closed_after(tls_h2(tls, &root).await, &preface, None).await }
    });
    // a HEADERS frame (END_STREAM | END_HEADERS, stream 1) announcing 300
    // bytes of header block, of which a byte arrives every 200 ms
    let mut headers = preface.clone();
    headers.extend_from_slice(&frame(1, 0x5, 1, &[])[..9]);
    headers[preface.len() + 2] = 44; // length 300 = 0x00012c
    headers[preface.len() + 1] = 1;
    let drip = [0x82u8];
    let dripping = tokio::spawn({
        let root = certs.shop.clone();
        async move { closed_after(tls_h2(tls, &root).await, &headers, Some(&drip)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let good = https("shop.test", tls, &certs.all()).build().unwrap();
    let r = good.get(format!("https://shop.test:{}/shop-api/ok", tls.port())).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_2));
    for (what, t) in [("idle h2 connection", idle.await.unwrap()), ("dripped h2 HEADERS frame", dripping.await.unwrap())] {
        assert!(t >= Duration::from_millis(1900) && t < Duration::from_secs(6), "{what}: closed after {t:?}");
    }

    // HTTP/1.1 over TLS: a request head dripped a byte at a time
    let s = tls_h2_free_h1(tls, &certs.shop).await;
    let t = closed_after(s, b"GET /shop-api/x HTTP/1.1\r\nHost: shop.test\r\n", Some(b"X")).await;
    assert!(t >= Duration::from_millis(1900) && t < Duration::from_secs(6), "dripped HTTP/1.1 head over TLS: closed after {t:?}");
    // and h2c with prior knowledge on the plaintext listener: an idle connection
    let plain = tokio::net::TcpStream::connect(c.proxy).await.unwrap();
    let t = closed_after(plain, &preface, None).await;
    assert!(t >= Duration::from_millis(1900) && t < Duration::from_secs(6), "idle h2c connection: closed after {t:?}");
}

/// A TLS connection offering only http/1.1.
async fn tls_h2_free_h1(tls: std::net::SocketAddr, root: &TestCert) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(root.der.clone().into()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("shop.test").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_redirects_to_https_and_acme_paths_are_not_redirected() {
    let shop = cert(&["shop.test"]);
    let tls_part = "[tls]\nredirect-http = true\nhsts = \"max-age=63072000; includeSubDomains\"\n[[tls.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n";
    let (c, _juniper, _elm) = tls_canopy(|d| shop.write(d, "shop"), tls_part).await;
    let tls = c.tls.unwrap();
    let no_follow = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_follow.post(c.url("/shop-api/cart?add=3")).header("host", "shop.test").body("x").send().await.unwrap();
    assert_eq!(r.status(), 308, "plaintext POST is redirected keeping its method");
    assert_eq!(r.headers()["location"], format!("https://shop.test:{}/shop-api/cart?add=3", tls.port()));
    assert!(r.headers().get("strict-transport-security").is_none(), "HSTS is never sent over plain HTTP");
    // HTTP-01 challenges must reach their answerer over plain HTTP: not redirected
    let r = no_follow.get(c.url("/.well-known/acme-challenge/some-token")).header("host", "shop.test").send().await.unwrap();
    assert_eq!(r.status(), 200, "an unknown challenge token goes to the routes (here the storefront)");
    assert_eq!(r.headers()["x-canopy-release"], "juniper");
    // following the redirect lands on HTTPS with HSTS
    let http = https("shop.test", tls, &[&shop]).build().unwrap();
    let r = http.get(format!("https://shop.test:{}/shop-api/cart?add=3", tls.port())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=63072000; includeSubDomains");
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["x_forwarded_proto"], "https");
}

/// `check-config` on a config whose `[tls]` names `cert`/`key` (written
/// into a fresh directory by `write`): its exit status and stderr.
fn check_config(write: impl FnOnce(&Path), tls_part: &str) -> (bool, String) {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path());
    let (text, _ports) = fill_ports(&tls_config(tls_part));
    let path = tmp.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(canopy_bin()).args(["check-config", "-c"]).arg(&path).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn bad_certificate_files_are_refused_with_file_line_and_reason() {
    let one = "[tls]\n[[tls.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n";
    let good = cert(&["shop.test"]);
    let other = cert(&["other.test"]);
    let expired = {
        let mut p = rcgen::CertificateParams::new(vec!["shop.test".to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2023, 1, 1);
        p.not_after = rcgen::date_time_ymd(2024, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        TestCert { pem: p.self_signed(&key).unwrap().pem(), key: key.serialize_pem(), der: Vec::new() }
    };
    let write = |cert: Option<&str>, key: Option<&str>| {
        let (cert, key) = (cert.map(str::to_string), key.map(str::to_string));
        move |d: &Path| {
            if let Some(c) = cert {
                std::fs::write(d.join("shop.pem"), c).unwrap();
            }
            if let Some(k) = key {
                std::fs::write(d.join("shop.key"), k).unwrap();
            }
        }
    };
    let cases = [
        ("missing certificate", write(None, Some(&good.key)), "shop.pem: No such file or directory"),
        ("not PEM", write(Some("hello\n"), Some(&good.key)), "shop.pem: no PEM CERTIFICATE block found"),
        ("key of another certificate", write(Some(&good.pem), Some(&other.key)), "shop.key is not the private key of the certificate in"),
        ("no key in the key file", write(Some(&good.pem), Some(&good.pem)), "shop.key: no PEM private key found"),
        ("expired", write(Some(&expired.pem), Some(&expired.key)), "certificate expired"),
    ];
    for (what, files, want) in cases {
        let (ok, err) = check_config(files, one);
        assert!(!ok, "{what}: accepted");
        assert!(err.contains("proxy.toml:") && err.contains(want), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    // expired: the message says when
    let (_, err) = check_config(write(Some(&expired.pem), Some(&expired.key)), one);
    assert!(err.contains("not after 2024-01-01T00:00:00Z"), "{err}");
    // listen-tls without certificates
    let (ok, err) = check_config(|_| {}, "");
    assert!(!ok && err.contains("`listen-tls` needs a [tls] section"), "{err}");

    // serve refuses the same way before binding anything: its ports are held
    // by this test meanwhile, so a serve that tried to bind first would fail
    // on them and say so instead
    let tmp = tempfile::tempdir().unwrap();
    write(Some(&expired.pem), Some(&expired.key))(tmp.path());
    let (text, ports) = fill_ports(&tls_config(one));
    std::fs::write(tmp.path().join("proxy.toml"), text).unwrap();
    let serve = || Command::new(canopy_bin()).args(["serve", "-c"]).arg(tmp.path().join("proxy.toml")).output().unwrap();
    let out = serve();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate expired") && !err.contains("cannot listen"), "{err}");
    // the held ports do stop a serve that gets as far as binding: with a good
    // certificate the same command fails on the first of them
    write(Some(&good.pem), Some(&good.key))(tmp.path());
    let out = serve();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot listen"), "{err}");
    drop(ports);
    let _ = std::io::stderr().flush();
}

/// Sends `request` on a fresh TLS connection (no ALPN: HTTP/1.1) and reads
/// the answer until the server closes or 2 s pass.
async fn raw_https(tls: std::net::SocketAddr, root: &TestCert, request: &[u8]) -> String {
    let mut s = tls_h2_free_h1(tls, root).await;
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_framing_and_header_limits_hold_over_tls_and_h2() {
    let shop = cert(&["shop.test"]);
    let tls_part = "[tls]\n[[tls.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n";
    let (c, juniper, _elm) = tls_canopy(|d| shop.write(d, "shop"), tls_part).await;
    let tls = c.tls.unwrap();
    let hits = || juniper.server.hits.load(std::sync::atomic::Ordering::Relaxed);
    let before = hits();
    // Content-Length with Transfer-Encoding: refused before anything is forwarded
    let smuggle = b"POST /shop-api/x HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let answer = raw_https(tls, &shop, smuggle).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("both Content-Length and Transfer-Encoding"), "{answer}");
    // a 70 KB header section: 431 over HTTP/1.1 on TLS
    let big = "a".repeat(70_000);
    let answer = raw_https(tls, &shop, format!("GET /shop-api/x HTTP/1.1\r\nHost: shop.test\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{}", &answer[..answer.len().min(200)]);
    // and refused by the h2 codec (64 KiB header lists) on h2
    let h2 = https("shop.test", tls, &[&shop]).build().unwrap();
    let url = format!("https://shop.test:{}/shop-api/x", tls.port());
    let refused = h2.get(&url).header("x-big", &big).send().await;
    assert!(refused.as_ref().map_or(true, |r| r.status() == 431), "a 70 KB h2 header list was accepted: {refused:?}");
    assert_eq!(hits(), before, "a refused request reached the upstream");
    // the next request is served
    let r = https("shop.test", tls, &[&shop]).build().unwrap().get(&url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_suites_are_chosen_in_the_servers_order() {
    let certs = Certs::new();
    let (c, _j, _e) = tls_canopy(|d| certs.write(d), FOUR_CERTS).await;
    let tls = c.tls.unwrap().to_string();
    // the client prefers AES-128 and ChaCha20; the server's order (AES-256 first) wins
    let client_order = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:\
                        ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384";
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &tls, "-servername", "shop.test", "-tls1_2", "-cipher", client_order])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let chosen = text.lines().find(|l| l.contains("Cipher is")).unwrap_or_else(|| panic!("no handshake: {text}"));
    assert!(chosen.contains("AES256-GCM-SHA384"), "the client's order was followed: {chosen}");
}
