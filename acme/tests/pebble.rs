//! The ACME manager against a real pebble: issue and cache, restart from the
//! cache without the CA, renewal at two thirds of the lifetime, and failed
//! renewals that keep the old certificate.

mod support {
    pub mod sink;
}

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use canopy_acme::{AcmeManager, AcmeSettings};
use canopy_testkit::dead_addr;
use canopy_testkit::pebble::Pebble;
use support::sink::TestSink;
use x509_parser::pem::Pem;

const NAMES: [&str; 2] = ["shop.test", "www.shop.test"];
/// Generous bound for one order against a local pebble.
const ORDER_WITHIN: Duration = Duration::from_secs(30);

fn settings(directory: &str, cache: &Path, pebble: &Pebble) -> AcmeSettings {
    AcmeSettings {
        directory: directory.to_string(),
        contact: vec!["mailto:ops@shop.test".to_string()],
        names: vec![NAMES.iter().map(|n| n.to_string()).collect()],
        cache_dir: cache.to_path_buf(),
        ca_root: Some(pebble.ca_root.clone()),
        retry_interval: Duration::from_secs(1),
    }
}

fn spawn(settings: AcmeSettings, sink: &Arc<TestSink>) -> (Arc<AcmeManager>, tokio::task::JoinHandle<()>) {
    let manager = Arc::new(AcmeManager::new(settings, sink.clone()).expect("valid settings"));
    let task = tokio::spawn(manager.clone().run());
    (manager, task)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Polls `condition` every 50 ms until it holds, failing after `within`.
async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "not {what} after {within:?}\n{}", context());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_installs_and_caches_then_restarts_from_the_cache_without_the_ca() {
    let sink = TestSink::start().await;
    let pebble = Pebble::start(sink.port, Duration::from_secs(3600)).await;
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("acme");
    let (manager, task) = spawn(settings(&pebble.directory, &cache, &pebble), &sink);

    let installed = sink.wait_installs(1, ORDER_WITHIN, || pebble.log()).await.remove(0);
    assert_eq!(installed.names, NAMES);
    let mut sans = installed.sans();
    sans.sort();
    assert_eq!(sans, ["shop.test", "www.shop.test"], "the certificate is for exactly the configured names");
    assert_eq!(sink.open_challenges(), 0, "challenge tokens are withdrawn after the order");

    // The chain is leaf + intermediate; pebble's root (/roots/0) is not in it.
    let chain = installed.chain_der();
    assert_eq!(chain.len(), 2, "leaf and one intermediate");
    let root_pem = pebble.root().await;
    let root = Pem::iter_from_buffer(root_pem.as_bytes()).next().unwrap().unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(&root.contents).unwrap();
    let (_, intermediate) = x509_parser::parse_x509_certificate(&chain[1]).unwrap();
    assert_eq!(intermediate.issuer(), root.subject(), "the intermediate is signed by pebble's /roots/0");
    assert!(!chain.contains(&root_pem.as_bytes().to_vec()));

    // Status: installed, renewal at two thirds, nothing failed (reported
    // once the certificate is cached too).
    eventually(Duration::from_secs(5), "reported", || manager.renewals_ok() == 1, String::new).await;
    let status = manager.status();
    assert_eq!(status.len(), 1);
    let (not_before, not_after) = installed.validity();
    assert_eq!(unix(status[0].not_after.unwrap()) as i64, not_after);
    let expected_renew = not_before as f64 + (not_after - not_before) as f64 * 2.0 / 3.0;
    assert!((unix(status[0].renew_at.unwrap()) - expected_renew).abs() < 1.0, "{status:?}");
    assert_eq!(status[0].next_attempt, status[0].renew_at);
    assert_eq!(status[0].last_error, None);
    assert!(status[0].last_renewal.is_some());
    assert_eq!((manager.renewals_ok(), manager.renewals_failed()), (1, 0));

    // Cached: exactly what was installed, the key private, the cache dir too.
    let crt = cache.join("shop.test.crt");
    let key = cache.join("shop.test.key");
    assert_eq!(std::fs::read_to_string(&crt).unwrap(), installed.chain_pem);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), installed.key_pem);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cache.join("account.json")), 0o600);
    assert_eq!(mode(&cache), 0o700, "created private");
    task.abort();

    // A restart with the CA unreachable still serves the cached certificate.
    let dead = format!("https://{}/dir", dead_addr());
    let restarted = TestSink::start().await;
    let (manager, task) = spawn(settings(&dead, &cache, &pebble), &restarted);
    let again = restarted.wait_installs(1, Duration::from_secs(5), String::new).await.remove(0);
    assert_eq!(again.serial(), installed.serial(), "the cached certificate, not a new one");
    assert_eq!(again.key_pem, installed.key_pem);
    // The status follows the install; the next attempt is at the renewal time, not now.
    eventually(Duration::from_secs(5), "reported", || manager.status()[0].not_after.is_some(), String::new).await;
    let status = manager.status();
    assert_eq!(unix(status[0].not_after.unwrap()) as i64, not_after);
    assert_eq!(status[0].next_attempt, status[0].renew_at);
    assert!(status[0].next_attempt.unwrap() > SystemTime::now() + Duration::from_secs(1800), "{status:?}");
    assert_eq!(status[0].last_error, None, "{status:?}");
    assert_eq!((manager.renewals_ok(), manager.renewals_failed()), (0, 0));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_by_itself_at_two_thirds_of_the_lifetime() {
    let sink = TestSink::start().await;
    // 12 s: renewal due 8 s in, 4 s to spare before expiry on a busy machine
    let pebble = Pebble::start(sink.port, Duration::from_secs(12)).await;
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("acme");
    let (manager, task) = spawn(settings(&pebble.directory, &cache, &pebble), &sink);

    let installs = sink.wait_installs(2, ORDER_WITHIN, || pebble.log()).await;
    let (first, second) = (&installs[0], &installs[1]);
    assert_ne!(first.serial(), second.serial(), "a new certificate was installed");
    let (not_before, not_after) = first.validity();
    let renew_at = not_before as f64 + (not_after - not_before) as f64 * 2.0 / 3.0;
    let renewed = unix(second.at);
    assert!(
        renewed >= renew_at && renewed < not_after as f64,
        "renewed at {renewed}, due at {renew_at} (not before {not_before}, not after {not_after})"
    );
    assert_eq!(manager.renewals_failed(), 0);
    let cached = || std::fs::read_to_string(cache.join("shop.test.crt")).unwrap();
    // The cache is written right after the install.
    eventually(Duration::from_secs(5), "cached", || cached() == second.chain_pem, String::new).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_renewals_keep_the_old_certificate_and_are_retried() {
    let sink = TestSink::start().await;
    let mut pebble = Pebble::start(sink.port, Duration::from_secs(3600)).await;
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("acme");
    let (manager, task) = spawn(settings(&pebble.directory, &cache, &pebble), &sink);
    let first = sink.wait_installs(1, ORDER_WITHIN, || pebble.log()).await.remove(0);
    let cached = || std::fs::read_to_string(cache.join("shop.test.crt")).unwrap();

    // The challenge server stops answering: validation fails.
    sink.set_answering(false);
    let before = SystemTime::now();
    manager.renew_now().await;
    let status = manager.status().remove(0);
    let error = status.last_error.clone().unwrap_or_default();
    assert!(error.starts_with("ACME: certificate for shop.test: validation failed: "), "{error}");
    assert!(error.contains("/.well-known/acme-challenge/") && error.contains("404"), "the reason says what the CA saw: {error}");
    assert_eq!(manager.renewals_failed(), 1);
    let next = status.next_attempt.unwrap();
    assert!(next >= before + Duration::from_secs(1) && next <= SystemTime::now() + Duration::from_secs(1), "{status:?}");
    assert_eq!(sink.installs().len(), 1, "the old certificate stays installed");
    assert_eq!(sink.open_challenges(), 0, "tokens are withdrawn after a failed order too");
    assert_eq!(cached(), first.chain_pem);

    // The CA goes away: the manager retries every retry_interval by itself.
    pebble.stop();
    let failed = manager.renewals_failed();
    eventually(Duration::from_secs(10), "retried twice", || manager.renewals_failed() >= failed + 2, || format!("{:?}", manager.status()))
        .await;
    let error = manager.status()[0].last_error.clone().unwrap_or_default();
    assert!(error.starts_with("ACME: certificate for shop.test: new order failed: "), "{error}");
    assert!(error.ends_with("Connection refused (os error 111)"), "the reason names the cause: {error}");
    assert_eq!(sink.installs().len(), 1, "still the old certificate");
    assert_eq!(manager.status()[0].not_after, status.not_after);
    assert_eq!(cached(), first.chain_pem);

    // The CA comes back (having forgotten the account): the next retry
    // registers a new account and succeeds.
    let account = || std::fs::read_to_string(cache.join("account.json")).unwrap();
    let old_account = account();
    sink.set_answering(true);
    pebble.restart().await;
    let installs = sink.wait_installs(2, ORDER_WITHIN, || format!("{:?}\n{}", manager.status(), pebble.log())).await;
    assert_ne!(installs[1].serial(), first.serial());
    eventually(Duration::from_secs(5), "reported", || manager.renewals_ok() == 2, String::new).await;
    assert_eq!(manager.status()[0].last_error, None);
    assert_eq!(cached(), installs[1].chain_pem);
    assert_ne!(account(), old_account, "a new account was registered and saved");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_proxy_refuses_is_not_cached() {
    let sink = TestSink::start().await;
    sink.set_refusal(Some("key type not allowed"));
    let pebble = Pebble::start(sink.port, Duration::from_secs(3600)).await;
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("acme");
    let (manager, task) = spawn(settings(&pebble.directory, &cache, &pebble), &sink);

    let context = || format!("{:?}\n{}", manager.status(), pebble.log());
    eventually(ORDER_WITHIN, "failed once", || manager.renewals_failed() >= 1, context).await;
    assert_eq!(
        manager.status()[0].last_error.as_deref(),
        Some("ACME: the proxy refused the certificate for shop.test: key type not allowed")
    );
    assert!(!cache.join("shop.test.crt").exists() && !cache.join("shop.test.key").exists());

    sink.set_refusal(None);
    manager.renew_now().await;
    assert_eq!(sink.installs().len(), 1);
    assert_eq!(manager.status()[0].last_error, None);
    eventually(Duration::from_secs(5), "cached", || cache.join("shop.test.crt").exists(), String::new).await;
    task.abort();
}
