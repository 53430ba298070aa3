//! The systemd deployment in deploy/: the unit passes `systemd-analyze
//! verify`, and its main process, deploy/canopy-supervise, upgrades canopy in
//! place on SIGUSR2 under load (no failed request), keeps the old process
//! serving when the new one fails to start, forwards SIGHUP (reload), and
//! stops cleanly on SIGTERM.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use canopy_testkit::load::{Kind, Load};
use canopy_testkit::*;

fn deploy(file: &str) -> String {
    format!("{}/deploy/{file}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    assert!(
        Command::new("systemd-analyze").arg("--version").output().is_ok(),
        "systemd-analyze is missing: apt-get install -y systemd (scripts/install-deps.sh --test does)"
    );
    // verify checks that every command exists: point them at this checkout's files
    let unit = std::fs::read_to_string(deploy("canopy.service"))
        .unwrap()
        .replace("/usr/local/lib/canopy/canopy-supervise", &deploy("canopy-supervise"))
        .replace("/usr/local/bin/canopy", &canopy_bin().to_string_lossy());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canopy.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {}\n{stderr}", out.status);
}

/// canopy-supervise running canopy, in a process group of its own (so that
/// nothing outlives the test).
struct Supervised {
    c: Canopy,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.c.child.id())]).stderr(Stdio::null()).status();
    }
}

impl Supervised {
    fn start(dir: &Path) -> Supervised {
        let (text, ports) = fill_ports(&config("", ""));
        std::fs::write(dir.join("proxy.toml"), &text).unwrap();
        let log = std::fs::File::create(dir.join("canopy.log")).unwrap();
        let (proxy, admin) = (ports.proxy.addr(), ports.admin.addr());
        let mut supervise = Command::new(deploy("canopy-supervise"));
        supervise
            .arg(canopy_bin())
            .args(["serve", "-c"])
            .arg(dir.join("proxy.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        ports.release();
        let child = supervise.spawn().unwrap();
        let c = Canopy { child, dir: dir.to_path_buf(), proxy, admin, tls: None, config_text: text, template: String::new(), tmp: None };
        Supervised { c }
    }

    /// The canopy named by the pid file, once it listens on both ports.
    async fn serving(&self) -> u32 {
        let mut pid = 0;
        eventually("a canopy listening on both ports", Duration::from_secs(20), || {
            pid = std::fs::read_to_string(self.c.dir.join("state.json.pid")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            let ok = pid != 0 && listens(pid, self.c.proxy.port()) && listens(pid, self.c.admin.port());
            async move { ok }
        })
        .await;
        pid
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill").args([sig, &self.c.child.id().to_string()]).status().unwrap().success());
    }
}

fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_upgrades_in_place_keeps_the_old_one_on_failure_reloads_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Supervised::start(dir.path());
    let first = s.serving().await;
    let (juniper, elm) = (Stack::spawn("juniper").await, Stack::spawn("elm").await);
    juniper.register(&s.c, "juniper").await;
    elm.register(&s.c, "elm").await;
    assert_eq!(switch(&s.c, "juniper").await.0, 200);
    let load = Load::start(s.c.proxy, &[Kind::KEEPALIVE_GET, Kind::FRESH_GET, Kind::POST], false);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // SIGUSR2: a new canopy takes over, the old one drains and exits
    s.signal("-USR2");
    eventually("the upgrade to complete", Duration::from_secs(20), || {
        let done = s.c.log().contains(&format!("upgrade complete: pid {first} has drained and exited"));
        async move { done }
    })
    .await;
    let second = s.serving().await;
    assert!(second != first && gone(first), "pid {first} -> {second}\n{}", s.c.log());
    assert_eq!(load.failures(), 0, "{:?}\n{}", load.failure_list(), s.c.log());

    // a new process that cannot start (bad config) leaves the old one serving
    let good = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
    std::fs::write(dir.path().join("proxy.toml"), format!("{good}\nbogus = 1\n")).unwrap();
    s.signal("-USR2");
    eventually("the failed upgrade to be reported", Duration::from_secs(20), || {
        let done = s.c.log().contains(&format!("; pid {second} keeps serving"));
        async move { done }
    })
    .await;
    std::fs::write(dir.path().join("proxy.toml"), good).unwrap();
    assert_eq!(s.serving().await, second);
    let (code, release, _) = get(&s.c, "/shop-api/x").await;
    assert_eq!((code, release.as_str()), (200, "juniper"));

    // SIGHUP (systemctl reload) reaches the serving canopy, which reloads proxy.toml
    s.signal("-HUP");
    eventually("the reload", Duration::from_secs(10), || {
        let done = s.c.log().contains("config reloaded by SIGHUP");
        async move { done }
    })
    .await;

    let (done, failures) = load.stop().await;
    assert!(failures.is_empty(), "{} failed requests: {:?}\n{}", failures.len(), &failures[..failures.len().min(5)], s.c.log());
    assert!(done.len() > 100, "too little traffic ({}) to show anything", done.len());
    // the state went across the upgrade
    assert_eq!(status(&s.c).await["live"], "juniper");

    // SIGTERM (systemctl stop): canopy drains and exits, then the supervisor, with 0
    s.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        if let Some(st) = s.c.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the supervisor did not exit after SIGTERM\n{}", s.c.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(st.success(), "supervisor exited with {st}\n{}", s.c.log());
    assert!(gone(second), "canopy pid {second} outlived its supervisor");
}
