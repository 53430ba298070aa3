//! Debian's docker-registry serving on 127.0.0.1 from a temporary directory,
//! for pull tests that must not leave the machine.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::ports::reserve;
use crate::process::Proc;

/// How long the registry may take to answer `/v2/` after start.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running docker-registry; stopped on drop.
pub struct Registry {
    /// `127.0.0.1:<port>`, the registry part of image references.
    pub host: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts the registry and waits until `/v2/` answers.
    pub async fn start() -> Registry {
        let binary = Path::new("/usr/bin/docker-registry");
        assert!(binary.exists(), "the pull tests need Debian's docker-registry (scripts/install-deps.sh --test installs it)");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = reserve();
        let host = port.addr().to_string();
        let config = dir.path().join("config.yml");
        let config_text = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        std::fs::write(&config, config_text).expect("write config.yml");
        let mut cmd = Command::new(binary);
        cmd.arg("serve").arg(&config);
        port.release();
        let mut proc_ = Proc::spawn("docker-registry", &mut cmd, &dir.path().join("registry.log"));
        let url = format!("http://{host}/v2/");
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().expect("HTTP client");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = proc_.exited() {
                panic!("docker-registry exited with {st}:\n{}", proc_.output());
            }
            if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Registry { host, _proc: proc_, _dir: dir };
            }
            assert!(Instant::now() < deadline, "docker-registry did not answer on {url} within {START_TIMEOUT:?}:\n{}", proc_.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
