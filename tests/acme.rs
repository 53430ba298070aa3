//! ACME end to end through the real binary against a real pebble (the Let's
//! Encrypt test CA): canopy obtains a certificate by HTTP-01 (pebble's
//! validation requests come to canopy's plaintext listener, which redirects
//! everything else to HTTPS), serves it by SNI, renews it by itself at two
//! thirds of its short life under load, and when renewal fails keeps
//! serving the certificate it has, visibly (status, metrics).

use std::time::Duration;

use canopy_testkit::load::{Kind, Load, Target};
use canopy_testkit::tls::{https, metric, served, tls_config};
use canopy_testkit::*;

/// The serial number of a DER certificate, as hex.
fn serial(der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.raw_serial_as_string()
}

fn names(der: &[u8]) -> Vec<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    let mut n: Vec<String> = c
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    n.sort();
    n
}

/// How long canopy may take to get (or renew) a certificate from pebble.
const ACME_WITHIN: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acme_issues_serves_renews_and_keeps_the_old_certificate_when_renewal_fails() {
    // pebble must know canopy's port first (it validates HTTP-01 there): held until canopy starts
    let proxy_port = reserve();
    // 30 s certificates: renewed 20 s after issue, with 10 s to spare on a
    // busy machine before the old one expires
    let mut ca = pebble::Pebble::start(proxy_port.port(), Duration::from_secs(30)).await;
    let tls_part = format!(
        r#"
[tls]
redirect-http = true
[tls.acme]
directory = "{}"
ca-root = "{}"
contact = ["mailto:ops@shop.test"]
names = [["shop.test", "www.shop.test"]]
cache-dir = "acme"
retry-interval = "1s"
"#,
        ca.directory,
        ca.ca_root.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Canopy::start_in_on(tmp.path(), &tls_config(&tls_part), proxy_port);
    c.tmp = Some(tmp);
    let (c, _juniper, _elm) = two_releases_on(c).await;
    let tls = c.tls.unwrap();

    // clients trust pebble's root (the served chain is leaf + intermediate)
    let root = reqwest::Certificate::from_pem(ca.root().await.as_bytes()).unwrap();
    let fresh = |name: &str| https(name, tls, &[]).add_root_certificate(root.clone()).pool_max_idle_per_host(0).build().unwrap();
    let url = |name: &str| format!("https://{name}:{}/shop-api/acme", tls.port());
    let first = until_some("the ACME certificate is served", ACME_WITHIN, || async {
        match fresh("shop.test").get(url("shop.test")).send().await {
            Ok(r) if r.status() == 200 => Some(served(&r)),
            _ => None,
        }
    })
    .await;
    assert_eq!(names(&first), ["shop.test", "www.shop.test"]);
    let r = fresh("www.shop.test").get(url("www.shop.test")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["x-canopy-release"].to_str().unwrap()), (200, "juniper"));
    assert_eq!(serial(&served(&r)), serial(&first), "both names share the one certificate");
    // the order is complete (certificate cached, status recorded) once /tls
    // says when to renew: the certificate is served a moment before that
    eventually("the first order recorded on /tls", ACME_WITHIN, || async {
        let v: serde_json::Value = client().get(c.admin_url("/tls")).send().await.unwrap().json().await.unwrap();
        v["acme"][0]["renew_at"].is_string()
    })
    .await;
    // cached on disk, the key private
    let cache = c.dir.join("acme");
    let key_mode = std::fs::metadata(cache.join("shop.test.key")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777, 0o600);
    assert!(cache.join("shop.test.crt").exists() && cache.join("account.json").exists());
    let v: serde_json::Value = client().get(c.admin_url("/tls")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["certificates"][0]["source"], "acme:shop.test", "{v}");
    assert!(v["acme"][0]["renew_at"].is_string() && v["acme"][0]["last_error"].is_null(), "{v}");

    // renewal by itself, under load on new TLS connections and h2
    let roots = root.clone();
    let target = Target {
        base: format!("https://shop.test:{}", tls.port()),
        builder: std::sync::Arc::new(move || https("shop.test", tls, &[]).add_root_certificate(roots.clone())),
    };
    let load = Load::start_on(&target, &[Kind::FRESH_GET, Kind::KEEPALIVE_GET]);
    let second = until_some("a renewed certificate is served", ACME_WITHIN, || async {
        let der = served(&fresh("shop.test").get(url("shop.test")).send().await.unwrap());
        (serial(&der) != serial(&first)).then_some(der)
    })
    .await;
    let (done, failures) = load.stop().await;
    assert!(failures.is_empty(), "requests failed across the renewal: {failures:?}");
    assert!(done.len() >= 20, "only {} requests during the renewal", done.len());
    // counted once the order is complete, a moment after its certificate is served
    eventually("the renewal counted in canopy_acme_renewals_total", Duration::from_secs(5), || async {
        let m = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
        metric(&m, r#"canopy_acme_renewals_total{result="ok"}"#) >= 2.0
    })
    .await;

    // the CA goes away: the next renewal fails, is retried, and is visible;
    // the certificate in service stays
    ca.stop();
    eventually("the failed renewal shows on /tls", ACME_WITHIN, || async {
        let v: serde_json::Value = client().get(c.admin_url("/tls")).send().await.unwrap().json().await.unwrap();
        v["acme"][0]["last_error"].is_string()
    })
    .await;
    let r = fresh("shop.test").get(url("shop.test")).send().await.expect("the renewed certificate still serves");
    assert_eq!(r.status(), 200);
    assert_eq!(serial(&served(&r)), serial(&second), "the renewed certificate must stay in service");
    let m = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric(&m, r#"canopy_acme_renewals_total{result="failed"}"#) >= 1.0, "{m}");
    assert_eq!(metric(&m, r#"canopy_acme_renewal_failing{name="shop.test"}"#), 1.0, "{m}");
    let out = c.cli(&["tls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("LAST RENEWAL FAILED"), "{}", String::from_utf8_lossy(&out.stdout));
}
