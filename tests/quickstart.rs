//! The README's production quick start, followed literally: the shell
//! blocks between `<!-- quickstart:begin -->` and `<!-- quickstart:end -->`
//! run in bash from the repository's root, with every absolute path moved
//! under a temporary root (`/usr/local`, `/etc/canopy`, `/etc/systemd/system`,
//! `/var/lib/canopy`, in the installed unit too), the test's own loopback
//! ports for 8080 and 9901, and a real upstream standing in for release
//! `blue` at 127.0.0.1:3000. The steps it cannot take as written, as the
//! README says: `cargo build --release` (this test run has just built the
//! same sources; `cargo metadata --locked` checks that the lock file
//! builds, and the test build's binary is installed), `useradd` (no system
//! user is created on the test machine), and `systemctl daemon-reload` /
//! `enable --now` (no systemd as PID 1: the test runs the installed unit's
//! `ExecStartPre` and `ExecStart` itself, in a process group of their own).
//! `sudo` is dropped: the test runs as whoever runs it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use canopy_testkit::*;

const README: &str = include_str!("../README.md");

/// The shell blocks of the quick start, in order.
fn quickstart_blocks() -> Vec<String> {
    let section = README
        .split("<!-- quickstart:begin -->")
        .nth(1)
        .and_then(|s| s.split("<!-- quickstart:end -->").next())
        .expect("README.md has a quickstart:begin/end section");
    section.split("```sh\n").skip(1).map(|b| b.split("```").next().unwrap().to_string()).collect()
}

/// Where the quick start runs instead of `/`.
struct Relocation {
    root: PathBuf,
    proxy: u16,
    admin: u16,
    blue: std::net::SocketAddr,
}

impl Relocation {
    /// The absolute paths the quick start names, moved under the root.
    fn paths(&self, text: &str) -> String {
        let r = self.root.display();
        text.replace("/usr/local/", &format!("{r}/usr/local/"))
            .replace("/etc/systemd/system", &format!("{r}/etc/systemd/system"))
            .replace("/etc/canopy", &format!("{r}/etc/canopy"))
            .replace("/var/lib/canopy", &format!("{r}/var/lib/canopy"))
    }

    /// One line of the README as the test runs it (see the module doc).
    fn line(&self, line: &str) -> String {
        let line = line.strip_prefix("sudo ").unwrap_or(line);
        if line.starts_with("cargo build --release") {
            return "cargo metadata --locked --offline --format-version 1 --no-deps > /dev/null  # the build: see the test's doc".into();
        }
        if line.starts_with("useradd ") || line.starts_with("systemctl daemon-reload") {
            return format!(": skipped: {line}");
        }
        let line = line.replace("target/release/canopy", &canopy_bin().display().to_string());
        let mut line = self
            .paths(&line)
            .replace("0.0.0.0:8080", &format!("127.0.0.1:{}", self.proxy))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", self.proxy))
            .replace("127.0.0.1:9901", &format!("127.0.0.1:{}", self.admin))
            .replace("127.0.0.1:3000", &self.blue.to_string());
        if line.starts_with("install ") && line.ends_with("/etc/systemd/system/canopy.service") {
            // the installed unit names the installed files: under the root as well
            let unit = self.paths("/etc/systemd/system/canopy.service");
            line += &format!(
                " && sed -i -e 's#/usr/local/#{r}/usr/local/#g' -e 's#/etc/canopy#{r}/etc/canopy#g' {unit}",
                r = self.root.display()
            );
        }
        line
    }
}

/// Runs `script` in bash from the repository's root, with the root's
/// `/usr/local/bin` first on PATH and no `CANOPY_*` variables of the test's.
fn bash(script: &str, root: &Path) -> Output {
    let path = format!("{}/usr/local/bin:{}", root.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(format!("set -euo pipefail\n{script}")).current_dir(env!("CARGO_MANIFEST_DIR")).env("PATH", path);
    for var in ["CANOPY_ADMIN", "CANOPY_CONFIG", "CANOPY_TOKEN_FILE"] {
        cmd.env_remove(var);
    }
    cmd.output().expect("bash")
}

fn show(o: &Output) -> String {
    format!("{}\n--- stdout\n{}\n--- stderr\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// What `systemctl enable --now canopy` starts: the unit's main process, in
/// a process group of its own, killed (with every canopy it started) on drop.
struct Unit(Child);

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).stderr(Stdio::null()).status();
        let _ = self.0.wait();
    }
}

/// The value of `key=` in the unit file (the first one).
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("the unit has no {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_production_quick_start_works_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (proxy, admin) = (reserve(), reserve());
    let blue = upstream::spawn("blue", "storefront").await;
    let at = Relocation { root: tmp.path().to_path_buf(), proxy: proxy.port(), admin: admin.port(), blue: blue.addr };

    let script: Vec<String> = quickstart_blocks().join("").lines().map(|l| at.line(l)).collect();
    let start = script.iter().position(|l| l.starts_with("systemctl enable --now canopy")).expect("the quick start starts the unit");
    let (before, after) = (script[..start].join("\n"), script[start + 1..].join("\n"));
    println!("the quick start as run:\n{}", script.join("\n"));

    // build, install, configure, verify the unit
    let out = bash(&before, &at.root);
    assert!(out.status.success(), "the quick start up to `systemctl enable --now`:\n{before}\n{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("canopy.service:"), "systemd-analyze verify complained:\n{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("/etc/canopy/proxy.toml: ok\n"), "{}", show(&out));
    let unit_path = at.paths("/etc/systemd/system/canopy.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for installed in ["/usr/local/bin/canopy", "/usr/local/lib/canopy/canopy-supervise", "/etc/canopy/proxy.toml"] {
        assert!(Path::new(&at.paths(installed)).exists(), "{installed} was not installed");
    }

    // `systemctl enable --now canopy`: the unit's ExecStartPre, then its ExecStart, in its StateDirectory
    std::fs::create_dir_all(at.paths("/var/lib/canopy")).unwrap();
    let pre: Vec<&str> = unit_value(&unit, "ExecStartPre=").split_whitespace().collect();
    let out = Command::new(pre[0]).args(&pre[1..]).output().unwrap();
    assert!(out.status.success(), "ExecStartPre: {}", show(&out));
    let exec: Vec<&str> = unit_value(&unit, "ExecStart=").split_whitespace().collect();
    let (name, value) = unit_value(&unit, "Environment=").split_once('=').unwrap();
    let log = std::fs::File::create(tmp.path().join("canopy.log")).unwrap();
    let mut main = Command::new(exec[0]);
    main.args(&exec[1..]).env(name, value).current_dir("/").stdout(Stdio::null()).stderr(log).process_group(0);
    let (proxy_port, admin_port) = (proxy.release(), admin.release());
    let _unit = Unit(main.spawn().expect("the unit's ExecStart"));
    let healthz = format!("http://127.0.0.1:{admin_port}/healthz");
    eventually("canopy's admin API to answer", Duration::from_secs(20), || {
        let url = healthz.clone();
        async move { client().get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;

    // the first release: register, check, switch, see it answer
    let out = bash(&after, &at.root);
    let log = std::fs::read_to_string(tmp.path().join("canopy.log")).unwrap_or_default();
    assert!(out.status.success(), "the quick start after `systemctl enable --now`:\n{after}\n{}\n--- canopy's log\n{log}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("its output after the start:\n{stdout}");
    for needle in [
        "registered blue\n",
        "validation of blue (full): PASSED",
        "switched to blue (generation 1)",
        "x-canopy-release: blue",
        "live:       blue\n",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
    let (code, release, _) = {
        let r = client().get(format!("http://127.0.0.1:{proxy_port}/")).send().await.unwrap();
        let release = r.headers()["x-canopy-release"].to_str().unwrap().to_string();
        (r.status().as_u16(), release, ())
    };
    assert_eq!((code, release.as_str()), (200, "blue"));
    // the state is where the config says, under the root
    assert!(Path::new(&at.paths("/var/lib/canopy/state.json")).exists());
}
