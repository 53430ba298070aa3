//! The canopy image scripts/canopy-image.sh makes with no registry (the
//! binary and what `ldd` lists, `docker import`): started on the test's own
//! Docker network with a config mounted at /etc/canopy, it resolves a
//! release container by name and proxies a request to it; its CLI works
//! inside it. deploy/compose.yaml runs this image by default. The image is
//! made from the binary this test run built (the README's `cargo build
//! --release` makes the release one; a release build takes ~10 minutes).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use canopy_testkit::process::run_script;
use canopy_testkit::*;

/// Runs the docker CLI; (success, stdout trimmed, stderr).
fn docker(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

/// The test's containers, network and image; removed on drop.
struct Scope {
    prefix: String,
    image: String,
}

impl Scope {
    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for what in ["canopy", "server"] {
            docker(&["rm", "-f", &self.name(what)]);
        }
        docker(&["network", "rm", &self.name("net")]);
        docker(&["image", "rm", "-f", &self.image]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canopy_image_starts_and_proxies_a_request() {
    run_script("test-images.sh", &[]);
    let n = std::process::id();
    let scope = Scope { prefix: format!("cimg-{n}"), image: format!("canopy-test/canopy:{n}") };
    let bin = canopy_bin();
    run_script("canopy-image.sh", &[&bin.to_string_lossy(), &scope.image]);
    // nothing but the binary, its libraries and the empty directories: no shell
    let (_, entrypoint, _) = docker(&["image", "inspect", "-f", "{{json .Config.Entrypoint}} {{json .Config.Cmd}}", &scope.image]);
    assert_eq!(entrypoint, r#"["canopy"] ["serve","-c","/etc/canopy/proxy.toml"]"#);

    let net = scope.name("net");
    let (ok, _, err) = docker(&["network", "create", &net]);
    assert!(ok, "{err}");
    let server = scope.name("server");
    let (ok, _, err) = docker(&["run", "-d", "--name", &server, "--network", &net, "canopy-test/server:juniper"]);
    assert!(ok, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"[proxy]
listen = "0.0.0.0:8080"

[admin]
state-file = "/var/lib/canopy/state.json"

[releases]
address-template = "{prefix}-{{service}}--{{release}}"
initial = "juniper"

[[release]]
name = "juniper"
backends = {{ server = ["{server}:8080"] }}

[[service]]
name = "server"
port = 8080
routes = ["/"]
checks = [{{ kind = "http", path = "/health" }}]
"#,
        prefix = scope.prefix
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let mount = format!("{}:/etc/canopy:ro", dir.path().display());
    let canopy = scope.name("canopy");
    let (ok, _, err) = docker(&["run", "-d", "--name", &canopy, "--network", &net, "-p", "127.0.0.1::8080", "-v", &mount, &scope.image]);
    assert!(ok, "{err}");
    let (_, port, _) = docker(&["port", &canopy, "8080/tcp"]);
    let addr = port.lines().next().unwrap_or_else(|| panic!("no published port: {port:?}")).to_string();

    // the published port answers through canopy, from the release container it resolved by name
    let (release, body) = until_some("a proxied answer from juniper", Duration::from_secs(30), || async {
        let r = client().get(format!("http://{addr}/products")).send().await.ok()?;
        let release = r.headers().get("x-canopy-release")?.to_str().ok()?.to_string();
        let body: serde_json::Value = r.json().await.ok()?;
        Some((release, body))
    })
    .await;
    let (_, logs, logs_err) = docker(&["logs", &canopy]);
    assert_eq!(release, "juniper", "{logs}{logs_err}");
    assert_eq!((body["release"].as_str(), body["path"].as_str()), (Some("juniper"), Some("/products")), "{body}");

    // the CLI inside the image finds the admin API at its default address
    let (ok, status, err) = docker(&["exec", &canopy, "canopy", "status"]);
    assert!(ok, "{err}");
    assert!(status.contains("live:       juniper"), "{status}");
}

#[test]
fn compose_runs_the_image_the_script_builds() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/compose.yaml");
    let out = Command::new("docker-compose").arg("-f").arg(&file).arg("config").output().expect("docker-compose");
    assert!(out.status.success(), "docker-compose config: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let canopy = text.split("\n  canopy:\n").nth(1).expect("a canopy service").split("\n  vendure-").next().unwrap();
    assert!(canopy.contains("image: canopy:local") && canopy.contains("pull_policy: never"), "{canopy}");
    let default = std::fs::read_to_string(script("canopy-image.sh")).unwrap();
    assert!(default.contains(r#"image="${2:-canopy:local}""#), "canopy-image.sh builds another default image");
}
