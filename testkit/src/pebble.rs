//! A real ACME server for tests: pebble (the Let's Encrypt test CA) and
//! pebble-challtestsrv as its DNS server, resolving every name to 127.0.0.1.
//! Both come from Debian's `pebble` package. Each [`Pebble`] has its own
//! ports and temporary directory; dropping it kills both processes.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::{dead_addr, reserve, reserve_tcp_and_udp};

/// How long pebble may take to answer its directory after start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running pebble with its DNS server.
pub struct Pebble {
    dir: tempfile::TempDir,
    config: PathBuf,
    dns: String,
    /// The ACME directory URL, `https://127.0.0.1:<port>/dir`.
    pub directory: String,
    /// Pebble's management API, `https://127.0.0.1:<port>` (`/roots/0` is the
    /// root of the certificates it issues).
    pub management: String,
    /// The self-signed certificate of pebble's own HTTPS, for
    /// `AcmeSettings::ca_root`.
    pub ca_root: PathBuf,
    pebble: Option<Child>,
    challtestsrv: Child,
}

impl Pebble {
    /// Starts pebble so that it validates HTTP-01 challenges on
    /// `127.0.0.1:http_port` and issues certificates valid for `validity`
    /// (whole seconds), with no random validation delay, no bad-nonce
    /// rejections and no authorization reuse (every order validates again).
    /// Its own ports are held until just before it starts.
    pub async fn start(http_port: u16, validity: Duration) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("self-signed certificate for pebble");
        let ca_root = dir.path().join("pebble-https.crt");
        let key_path = dir.path().join("pebble-https.key");
        std::fs::write(&ca_root, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

        let (listen, management, dns_management) = (reserve(), reserve(), reserve());
        let (dns_port, dns_udp) = reserve_tcp_and_udp();
        // TLS-ALPN-01 is never used: a port where nothing answers
        let tls = dead_addr().port();
        let config = dir.path().join("pebble-config.json");
        let json = serde_json::json!({
            "pebble": {
                "listenAddress": listen.addr().to_string(),
                "managementListenAddress": management.addr().to_string(),
                "certificate": ca_root,
                "privateKey": key_path,
                "httpPort": http_port,
                "tlsPort": tls,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity.as_secs(),
            }
        });
        std::fs::write(&config, serde_json::to_vec_pretty(&json).unwrap()).unwrap();

        let dns = dns_port.addr().to_string();
        let dns_management_url = format!("http://{}/", dns_management.addr());
        let mut challtestsrv = Command::new("pebble-challtestsrv");
        challtestsrv
            .args(["-dns01", &dns, "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &dns_management.addr().to_string(), "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(log_file(&dir, "challtestsrv.log"))
            .stderr(log_file(&dir, "challtestsrv.log"));
        drop(dns_udp);
        dns_port.release();
        dns_management.release();
        let challtestsrv = challtestsrv.spawn().expect("pebble-challtestsrv runs (scripts/install-deps.sh --test installs it)");
        let mut pebble = Self {
            config,
            dns,
            directory: format!("https://{}/dir", listen.addr()),
            management: format!("https://{}", management.addr()),
            ca_root,
            pebble: None,
            challtestsrv,
            dir,
        };
        wait_http(&dns_management_url, None, &mut pebble.challtestsrv, &pebble.dir, "challtestsrv.log").await;
        listen.release();
        management.release();
        pebble.restart().await;
        pebble
    }

    /// Kills pebble (its DNS server stays): the ACME server is unreachable.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts pebble (again) on the same ports and waits until its directory
    /// answers. A restarted pebble has forgotten its accounts, orders and CA.
    pub async fn restart(&mut self) {
        self.stop();
        let mut child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &self.dns])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log_file(&self.dir, "pebble.log"))
            .stderr(log_file(&self.dir, "pebble.log"))
            .spawn()
            .expect("pebble runs (scripts/install-deps.sh --test installs it)");
        wait_http(&self.directory, Some(&self.ca_root), &mut child, &self.dir, "pebble.log").await;
        self.pebble = Some(child);
    }

    /// The PEM root certificate pebble signs with (its management API's
    /// `/roots/0`); the chains it issues end with an intermediate signed by it.
    pub async fn root(&self) -> String {
        let rsp = client(Some(&self.ca_root)).get(format!("{}/roots/0", self.management)).send().await.expect("GET /roots/0");
        assert!(rsp.status().is_success(), "GET /roots/0: {}", rsp.status());
        rsp.text().await.unwrap()
    }

    /// What pebble logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.challtestsrv.kill();
        let _ = self.challtestsrv.wait();
    }
}

fn log_file(dir: &tempfile::TempDir, name: &str) -> File {
    File::options().create(true).append(true).open(dir.path().join(name)).unwrap()
}

fn client(root: Option<&PathBuf>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
    if let Some(root) = root {
        let pem = std::fs::read(root).unwrap();
        builder = builder.tls_built_in_root_certs(false).add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// Polls `url` until it answers, failing with the process's log if it exits
/// or does not answer within [`START_TIMEOUT`].
async fn wait_http(url: &str, root: Option<&PathBuf>, child: &mut Child, dir: &tempfile::TempDir, log: &str) {
    let client = client(root);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if client.get(url).send().await.is_ok() {
            return;
        }
        let output = || std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{log}: the process exited ({status}) before {url} answered:\n{}", output());
        }
        assert!(Instant::now() < deadline, "{url} did not answer within {START_TIMEOUT:?}:\n{}", output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
