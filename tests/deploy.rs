//! `canopy deploy` against the real Docker engine: the real canopy binary on
//! 127.0.0.1, real containers from the test images (scripts/test-images.sh)
//! on each test's own network, reached by their addresses there. Every test
//! names its network and containers `dpl-<random>…` and removes them on drop,
//! panics included. The `docker` CLI is used only by the tests, to look
//! behind canopy's back (inspect, kill).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use canopy_testkit::configs::listeners;
use canopy_testkit::load::{assert_right_releases, count, Flip, Kind, Load};
use canopy_testkit::process::{docker, run_script, unique_prefix};
use canopy_testkit::registry::Registry;
use canopy_testkit::*;
use serde_json::{json, Value};

const IMAGE: &str = "canopy-test/server";
/// examples/upstream in a container (scripts/upstream-image.sh): echoes POST
/// bodies and WebSockets, and says when each request arrived.
const UPSTREAM_IMAGE: &str = "canopy-test/upstream";

/// Builds the test images once per test process.
fn images() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        run_script("test-images.sh", &[]);
        run_script("upstream-image.sh", &[]);
    });
}

/// A test's own Docker network and container-name prefix; removes every
/// container with the prefix and the network on drop.
struct Scope {
    prefix: String,
    network: String,
    /// Image references this test made (removed on drop).
    images: std::sync::Mutex<Vec<String>>,
}

impl Scope {
    fn new() -> Scope {
        images();
        let prefix = unique_prefix("dpl");
        Scope { network: format!("{prefix}-net"), prefix, images: Default::default() }
    }

    /// The container of `service` of `release` (the config's address template).
    fn name(&self, service: &str, release: &str) -> String {
        format!("{}-{service}--{release}", self.prefix)
    }

    /// `running`, `exited`, ... or "" when the container does not exist.
    fn state(&self, service: &str, release: &str) -> String {
        docker(&["inspect", "-f", "{{.State.Status}}", &self.name(service, release)])
    }

    fn inspect(&self, service: &str, release: &str, format: &str) -> String {
        docker(&["inspect", "-f", format, &self.name(service, release)])
    }

    /// While this file exists, `release` fails the server's "not failing" check.
    fn fail_file(&self, release: &str) -> String {
        format!("/tmp/{}-fail-{release}", self.prefix)
    }

    /// The releases whose `worker` container runs now.
    fn running_workers(&self) -> Vec<String> {
        let mut running: Vec<String> = ["juniper", "elm", "oak", "bare", "pine"]
            .into_iter()
            .filter(|r| self.state("worker", r) == "running")
            .map(str::to_string)
            .collect();
        running.sort();
        running
    }

    /// Names of this scope's containers, running or not.
    fn containers(&self) -> Vec<String> {
        let names = docker(&["ps", "-a", "--filter", &format!("name=^/{}-", self.prefix), "--format", "{{.Names}}"]);
        let mut names: Vec<String> = names.lines().map(str::to_string).collect();
        names.sort();
        names
    }

    /// proxy.toml for server and worker from the test images on this scope's network.
    fn config(&self, window: &str, keep: usize, worker_overlap: bool, socket: Option<&str>) -> String {
        self.config_with(IMAGE, window, keep, worker_overlap, socket)
    }

    /// [`Scope::config`] with the services' images from `image`.
    fn config_with(&self, image: &str, window: &str, keep: usize, worker_overlap: bool, socket: Option<&str>) -> String {
        let socket = socket.map(|s| format!("socket = \"{s}\"\n")).unwrap_or_default();
        let head = listeners("upstream-timeout = \"5s\"\n");
        format!(
            r#"{head}
[releases]
address-template = "{prefix}-{{service}}--{{release}}"
validation-window = "{window}"
drain-timeout = "1s"

[docker]
{socket}network = "{network}"
keep-releases = {keep}
deploy-timeout = "30s"
stop-timeout = "1s"

[[service]]
name = "server"
port = 8080
image = "{image}"
routes = ["/"]
checks = [
  {{ kind = "http", path = "/health", timeout = "1s", retries = 3, interval = "200ms" }},
  {{ kind = "command", name = "not oak", argv = ["sh", "-c", "test {{release}} != oak"], retries = 0 }},
  {{ kind = "command", name = "not failing", argv = ["sh", "-c", "test ! -e /tmp/{prefix}-fail-{{release}}"], retries = 0 }},
]

[service.container]
env = {{ CANOPY_SERVICE = "server" }}

[[service]]
name = "worker"
port = 8080
image = "{image}"
overlap = {worker_overlap}
checks = [{{ kind = "http", path = "/health", timeout = "1s", retries = 3, interval = "200ms" }}]

[service.container]
env = {{ CANOPY_SERVICE = "worker" }}
command = ["worker=0.0.0.0:8080"]
"#,
            prefix = self.prefix,
            network = self.network,
        )
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let names = self.containers();
        if !names.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(names.iter().map(String::as_str));
            docker(&args);
        }
        docker(&["network", "rm", &self.network]);
        for release in ["juniper", "elm", "oak"] {
            let _ = std::fs::remove_file(self.fail_file(release));
        }
        for image in self.images.lock().unwrap().drain(..) {
            docker(&["rmi", &image]);
        }
    }
}

fn slow_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(120)).build().unwrap()
}

/// POST /deploy; (status, body).
async fn deploy(c: &Canopy, release: &str) -> (u16, Value) {
    let r = slow_client().post(c.admin_url("/deploy")).json(&json!({"release": release})).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn deployed(c: &Canopy, release: &str) -> Value {
    let (code, body) = deploy(c, release).await;
    assert_eq!(code, 200, "deploy {release}: {body:#}\n{}", c.log());
    body
}

async fn metrics(c: &Canopy) -> String {
    client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap()
}

fn steps(body: &Value) -> Vec<String> {
    body["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_under_load_switches_cleanly_and_stops_the_old_stack_after_the_window() {
    let scope = Scope::new();
    let c = Canopy::start(&scope.config_with(UPSTREAM_IMAGE, "3s", 3, true, None));

    // the very first deploy, nothing live: live once validated
    let first = deployed(&c, "juniper").await;
    assert_eq!(first["release"], "juniper");
    assert_eq!(first["previous"], Value::Null);
    let st = status(&c).await;
    assert_eq!(st["live"], "juniper");
    let (code, release, body) = get(&c, "/shop-api/products").await;
    assert_eq!((code, release.as_str(), &body["release"]), (200, "juniper", &json!("juniper")));

    let kinds = [Kind::KEEPALIVE_GET, Kind::KEEPALIVE_GET, Kind::FRESH_GET, Kind::POST, Kind::FRESH_POST];
    let load = Load::start(c.proxy, &kinds, true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    let body = deployed(&c, "elm").await;
    let acked = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (done, failures) = load.stop().await;

    assert_eq!(
        steps(&body),
        ["network", "pull", "pull", "create", "create", "start", "start", "healthy", "healthy", "register", "checks", "switch"]
    );
    assert_eq!(body["previous"], "juniper");
    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    let flips = [Flip { sent, acked, to: "elm".into() }];
    assert_right_releases("juniper", &flips, &done);
    let after: Vec<_> = done.iter().filter(|d| d.start >= acked).collect();
    assert!(after.iter().all(|d| d.release == "elm"), "juniper answered after the switch was acknowledged");
    let before = done.iter().filter(|d| d.end <= sent).count();
    eprintln!(
        "deploy elm under load: {} requests ({} before the deploy, {} after its ack; post {}, fresh-post {}, websocket {}), deploy took {:?}",
        done.len(),
        before,
        after.len(),
        count(&done, "post"),
        count(&done, "fresh-post"),
        count(&done, "websocket"),
        acked - sent
    );
    assert!(before >= 20 && after.len() >= 20, "too little traffic around the deploy to prove anything");
    assert!(count(&done, "websocket") >= 2 && count(&done, "post") >= 10, "too few WebSockets or POSTs");

    // elm runs its own image tag; juniper stays up for the window, then is stopped (kept)
    assert_eq!(scope.state("server", "elm"), "running");
    assert_eq!(scope.inspect("server", "elm", "{{.Config.Image}}"), format!("{UPSTREAM_IMAGE}:elm"));
    assert_eq!(scope.inspect("server", "elm", "{{index .Config.Labels \"canopy.release\"}}"), "elm");
    assert_eq!(scope.state("server", "juniper"), "running");
    eventually("juniper's containers stopped after the validation window", Duration::from_secs(15), || async {
        scope.state("server", "juniper") == "exited" && scope.state("worker", "juniper") == "exited"
    })
    .await;
    assert_eq!(scope.state("server", "elm"), "running");
    assert_eq!(scope.state("worker", "elm"), "running");
    eventually("discovery sees juniper stopped", Duration::from_secs(1), || async {
        let st = status(&c).await;
        st["docker"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == scope.name("server", "juniper") && x["state"] == "exited")
    })
    .await;
    let st = status(&c).await;
    assert_eq!(st["live"], "elm");
    let containers = st["docker"]["containers"].as_array().unwrap();
    let juniper = containers.iter().find(|x| x["name"] == scope.name("server", "juniper")).expect("juniper listed");
    assert_eq!((&juniper["state"], &juniper["tag"]), (&json!("exited"), &json!("juniper")));
    let elm = containers.iter().find(|x| x["name"] == scope.name("server", "elm")).expect("elm listed");
    assert_eq!(
        (&elm["state"], &elm["health"], &elm["image"]),
        (&json!("running"), &json!("none"), &json!(format!("{UPSTREAM_IMAGE}:elm")))
    );
    let m = metrics(&c).await;
    assert!(m.contains("canopy_deploys_total{result=\"ok\"} 2"), "{m}");
    assert!(m.contains("canopy_deploy_duration_seconds_count{phase=\"healthy\"} 2"), "{m}");
    assert!(m.contains("canopy_release_containers{release=\"juniper\",service=\"server\",state=\"exited\"} 1"), "{m}");
    let events = client().get(c.admin_url("/events")).send().await.unwrap().json::<Value>().await.unwrap();
    let actions: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["deploy-start", "register", "switch", "deploy", "retire", "stop-containers"] {
        assert!(actions.contains(&action), "audit log lacks {action}: {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deploys_change_nothing_live_and_leave_no_container() {
    let scope = Scope::new();
    let c = Canopy::start(&scope.config("10m", 3, true, None));
    deployed(&c, "juniper").await;
    let live_containers = scope.containers();

    // a check fails (the `not oak` command check)
    let (code, body) = deploy(&c, "oak").await;
    assert_eq!(code, 422, "{body:#}");
    assert!(body["error"].as_str().unwrap().contains("validation of release `oak` failed"), "{body:#}");
    assert_eq!(body["report"]["passed"], false);
    assert_eq!(steps(&body).last().unwrap(), "checks");

    // the image does not exist (and cannot be pulled: no registry)
    let (code, body) = deploy(&c, "nosuch").await;
    assert_eq!(code, 422, "{body:#}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("cannot pull image `canopy-test/server` tag `nosuch`"), "{error}");

    // the container crashes at start: refused with its last log lines, via the CLI
    let out = c.cli(&["deploy", "crash"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exited with code 3 before it was ready"), "{stderr}");
    assert!(stderr.contains("fatal: SERVER_CRASH=3 is set"), "the container's log is shown: {stderr}");
    assert!(stderr.contains("healthy   server      FAILED: container"), "the steps are shown: {stderr}");

    // nothing live changed, nothing new is left
    let st = status(&c).await;
    assert_eq!(st["live"], "juniper");
    assert_eq!(st["generation"], 1);
    let names: Vec<&str> = st["releases"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["juniper"]);
    assert_eq!(scope.containers(), live_containers);
    let (code, release, _) = get(&c, "/x").await;
    assert_eq!((code, release.as_str()), (200, "juniper"));

    // one deploy at a time: while `sick` waits for health, deploys and switches get 409
    let admin = c.admin;
    let slow = tokio::spawn(async move {
        let r = slow_client().post(format!("http://{admin}/deploy")).json(&json!({"release": "sick"})).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    eventually("the sick deploy started its container", Duration::from_secs(10), || async { scope.state("server", "sick") == "running" })
        .await;
    let (code, body) = deploy(&c, "elm").await;
    assert_eq!(code, 409, "{body:#}");
    let (code, body) = switch(&c, "juniper").await;
    assert_eq!(code, 409, "{body:#}");
    let (code, body) = slow.await.unwrap();
    assert_eq!(code, 422, "{body:#}");
    assert!(body["error"].as_str().unwrap().contains("is unhealthy"), "{body:#}");
    eventually("no sick container left", Duration::from_secs(10), || async { scope.containers() == live_containers }).await;

    let m = metrics(&c).await;
    assert!(m.contains("canopy_deploys_total{result=\"refused\"} 4"), "{m}");
    assert_eq!(status(&c).await["live"], "juniper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_missing_locally_is_pulled_from_its_registry_with_progress() {
    let scope = Scope::new();
    let registry = Registry::start().await;
    let repository = format!("{}/{}/server", registry.host, scope.prefix);
    for release in ["juniper", "elm"] {
        let reference = format!("{repository}:{release}");
        scope.images.lock().unwrap().push(reference.clone());
        assert!(Command::new("docker").args(["tag", &format!("{IMAGE}:{release}"), &reference]).output().unwrap().status.success());
        let push = Command::new("docker").args(["push", &reference]).output().unwrap();
        assert!(push.status.success(), "push {reference}: {}", String::from_utf8_lossy(&push.stderr));
        // only the registry has this reference now (the layers stay: other tests share them)
        assert!(Command::new("docker").args(["rmi", &reference]).output().unwrap().status.success());
    }
    let c = Canopy::start(&scope.config_with(&repository, "10m", 3, true, None));
    deployed(&c, "juniper").await;
    let body = deployed(&c, "elm").await;
    let pulls: Vec<&Value> = body["steps"].as_array().unwrap().iter().filter(|s| s["step"] == "pull").collect();
    let detail = pulls[0]["detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("{repository}:elm pulled (")), "{detail}");
    assert!(pulls[1]["detail"].as_str().unwrap().ends_with("present"), "the second service's image was pulled once: {pulls:?}");
    assert!(c.log().contains(&format!("deploy: pull {repository}:elm: Status: Downloaded newer image")), "progress lines are logged");
    assert_eq!(scope.inspect("server", "elm", "{{.Config.Image}}"), format!("{repository}:elm"));
    let (code, release, _) = get(&c, "/x").await;
    assert_eq!((code, release.as_str()), (200, "elm"));
    // a tag the registry lacks: the registry's reason, naming repository and tag
    let (code, body) = deploy(&c, "oak").await;
    assert_eq!(code, 422, "{body:#}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(&format!("cannot pull image `{repository}` tag `oak`")) && error.contains("manifest unknown"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_unreachable_is_a_clear_error_and_the_proxy_keeps_serving() {
    let scope = Scope::new();
    let c = Canopy::start(&scope.config("10m", 3, true, Some("unix:///nonexistent/docker.sock")));
    // a release registered by hand (upstreams in this process) is live
    let (server, worker) = (upstream::spawn("juniper", "server").await, upstream::spawn("juniper", "worker").await);
    let backends = json!({"backends": {"server": [server.addr.to_string()], "worker": [worker.addr.to_string()]}});
    let r = client().put(c.admin_url("/releases/juniper")).json(&backends).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let (code, body) = switch(&c, "juniper").await;
    assert_eq!(code, 200, "{body:#}");
    let (code, release, body) = get(&c, "/products").await;
    assert_eq!((code, release.as_str(), &body["release"]), (200, "juniper", &json!("juniper")), "{body}");
    // the deploy cannot reach the engine: a clear error, an alert
    let (code, body) = deploy(&c, "elm").await;
    assert_eq!(code, 502, "{body:#}");
    assert!(body["error"].as_str().unwrap().contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"), "{body:#}");
    let st = status(&c).await;
    assert!(st["alerts"][0].as_str().unwrap().contains("Docker engine: cannot reach"), "{st:#}");
    assert_eq!(st["live"], "juniper", "{st:#}");
    // and the proxy keeps serving the live release
    let served = server.hits.load(std::sync::atomic::Ordering::Relaxed);
    for i in 0..5 {
        let (code, release, body) = get(&c, &format!("/products/{i}")).await;
        assert_eq!((code, release.as_str(), &body["release"]), (200, "juniper", &json!("juniper")), "{body}");
    }
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::Relaxed), served + 5, "answered by the live release's server");
    let r = client().get(c.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploy_restarts_a_stopped_release_overlap_false_stops_at_the_switch_and_keep_releases_prunes() {
    let scope = Scope::new();
    let c = Canopy::start(&scope.config("1s", 1, false, None));
    deployed(&c, "juniper").await;
    let juniper_id = scope.inspect("server", "juniper", "{{.Id}}");

    // overlap = false: juniper's worker stops at the switch, its server only after the window
    let body = deployed(&c, "elm").await;
    let stop = body["steps"].as_array().unwrap().iter().find(|s| s["step"] == "stop").expect("a stop step");
    assert_eq!(stop["service"], "worker");
    assert_eq!(scope.state("worker", "juniper"), "exited");
    assert_eq!(scope.state("worker", "elm"), "running");
    eventually("juniper stopped after the window", Duration::from_secs(15), || async { scope.state("server", "juniper") == "exited" })
        .await;

    // a stopped release is started again, not recreated (through the CLI)
    let out = c.cli(&["deploy", "juniper"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("adopted (exited)") && stdout.contains("juniper is live"), "{stdout}");
    assert_eq!(scope.inspect("server", "juniper", "{{.Id}}"), juniper_id, "the same container was restarted");
    assert_eq!(scope.state("server", "juniper"), "running");
    assert_eq!(scope.state("worker", "elm"), "exited", "overlap = false: elm's worker stopped at the switch");
    eventually("elm stopped after the window", Duration::from_secs(15), || async { scope.state("server", "elm") == "exited" }).await;

    // keep-releases = 1: once oak is live and juniper stopped, elm (the oldest stopped) is removed
    // (oak fails the `not oak` check, so deploy release `bare`: no healthcheck, running is ready)
    deployed(&c, "bare").await;
    // (elm's two containers are removed one after the other)
    eventually("elm pruned, juniper kept", Duration::from_secs(45), || async {
        scope.state("server", "elm").is_empty() && scope.state("worker", "elm").is_empty() && scope.state("server", "juniper") == "exited"
    })
    .await;
    let state = c.durable_state(canopy_admin::load_state);
    assert_eq!(state["stopped"], json!(["juniper"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_starts_the_overlap_false_container_again_and_stops_the_other() {
    let scope = Scope::new();
    let c = Canopy::start(&scope.config("10m", 3, false, None));
    deployed(&c, "juniper").await;
    deployed(&c, "elm").await;
    assert_eq!((scope.state("worker", "juniper").as_str(), scope.state("server", "juniper").as_str()), ("exited", "running"));

    let r = client().post(c.admin_url("/rollback")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(status(&c).await["live"], "juniper");
    assert_eq!(scope.state("worker", "juniper"), "running", "started again for the rollback");
    assert_eq!(scope.state("worker", "elm"), "exited", "never two workers at once");
    assert_eq!(scope.state("server", "elm"), "running", "servers overlap: elm stays warm");
    let (code, release, _) = get(&c, "/x").await;
    assert_eq!((code, release.as_str()), (200, "juniper"));
}

/// Issue 20: after a rollback, every way forward (switch, rollback, deploy)
/// starts the target's `overlap = false` worker and stops the other one, under
/// load, with exactly one worker running after each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlap_false_worker_follows_every_flip_back_and_forth_under_load() {
    let scope = Scope::new();
    let c = Canopy::start(&scope.config_with(UPSTREAM_IMAGE, "10m", 3, false, None));
    deployed(&c, "juniper").await;
    assert_eq!(scope.running_workers(), ["juniper"]);

    let load = Load::start(c.proxy, &[Kind::KEEPALIVE_GET, Kind::FRESH_GET, Kind::POST], false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut flips = Vec::new();
    let rollback = || async { client().post(c.admin_url("/rollback")).send().await.unwrap() };
    for (step, to) in
        [("deploy", "elm"), ("rollback", "juniper"), ("switch", "elm"), ("rollback", "juniper"), ("deploy", "elm"), ("switch", "juniper")]
    {
        let sent = Instant::now();
        let (code, body) = match step {
            "deploy" => deploy(&c, to).await,
            "switch" => switch(&c, to).await,
            _ => {
                let r = rollback().await;
                (r.status().as_u16(), r.json().await.unwrap())
            }
        };
        let acked = Instant::now();
        assert_eq!(code, 200, "{step} {to}: {body:#}\n{}", c.log());
        flips.push(Flip { sent, acked, to: to.into() });
        assert_eq!(status(&c).await["live"], to, "after {step} {to}");
        assert_eq!(scope.running_workers(), [to], "after {step} {to}: exactly the live release's worker runs");
        assert_eq!(scope.state("server", "juniper"), "running", "servers overlap: both stay up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (done, failures) = load.stop().await;
    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert_right_releases("juniper", &flips, &done);
    assert!(done.len() >= 100, "too little traffic to prove anything: {}", done.len());
    eprintln!("overlap = false back and forth: {} requests, 0 failed, {} flips", done.len(), flips.len());

    // status says which containers run, and why the others are stopped
    let st = status(&c).await;
    let elm = st["releases"].as_array().unwrap().iter().find(|r| r["name"] == "elm").expect("elm listed");
    let worker = elm["containers"].as_array().unwrap().iter().find(|x| x["service"] == "worker").expect("elm's worker listed");
    assert_eq!(worker["state"], "exited", "{elm:#}");
    assert!(worker["why"].as_str().unwrap().contains("overlap = false"), "{elm:#}");
    let server = elm["containers"].as_array().unwrap().iter().find(|x| x["service"] == "server").expect("elm's server listed");
    assert_eq!(server["state"], "running", "{elm:#}");
    let out = c.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{} stopped (overlap = false", scope.name("worker", "elm"))), "{text}");

    // a check of elm while its worker is stopped names the stopped container, not just a timeout
    let r = client().post(c.admin_url("/releases/elm/check")).send().await.unwrap();
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["passed"], false, "{report:#}");
    let failed: Vec<&str> =
        report["checks"].as_array().unwrap().iter().filter(|x| x["passed"] == false).map(|x| x["reason"].as_str().unwrap()).collect();
    let stopped = format!("{} is stopped (overlap = false)", scope.name("worker", "elm"));
    assert!(failed.iter().any(|r| r.contains(&stopped)), "{report:#}");
    assert_eq!(scope.running_workers(), ["juniper"], "a check starts nothing");
}

/// Issue 20: a flip refused by a failing check stops the worker it started
/// for the candidate again and leaves the live one running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_switch_stops_the_worker_it_started_and_keeps_the_live_one() {
    let scope = Scope::new();
    let c = Canopy::start(&scope.config("10m", 3, false, None));
    deployed(&c, "juniper").await;
    deployed(&c, "elm").await;
    let r = client().post(c.admin_url("/rollback")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(scope.running_workers(), ["juniper"]);

    std::fs::write(scope.fail_file("elm"), "").unwrap();
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 422, "{body:#}");
    assert!(body["error"].as_str().unwrap().contains("not failing"), "{body:#}");
    assert_eq!(status(&c).await["live"], "juniper");
    assert_eq!(scope.running_workers(), ["juniper"], "the candidate's worker is stopped again");
    // the refused switch did start elm's worker for its checks: the worker check passed
    let worker = body["report"]["checks"].as_array().unwrap().iter().find(|x| x["service"] == "worker").expect("worker check");
    assert_eq!(worker["passed"], true, "{body:#}");

    // and a refused deploy of the same release does the same
    let (code, body) = deploy(&c, "elm").await;
    assert_eq!(code, 422, "{body:#}");
    assert_eq!(scope.running_workers(), ["juniper"], "{body:#}");
    assert_eq!(status(&c).await["live"], "juniper");

    std::fs::remove_file(scope.fail_file("elm")).unwrap();
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 200, "{body:#}");
    assert_eq!(scope.running_workers(), ["elm"]);
}

/// Issue 22 through `canopy deploy`: a deployed release failing under
/// traffic is rolled back by the guard (its worker stopped, the old one
/// started again); a deploy can end in a canary, promoted by hand, with one
/// worker running throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployed_release_failing_under_traffic_is_rolled_back_and_a_deploy_can_end_in_a_canary() {
    use canopy_testkit::traffic::{Shoppers, Traffic};
    let scope = Scope::new();
    // elm's containers answer 500 to 30% of the traffic (checks pass: only the traffic sees it)
    let config = scope
        .config_with(UPSTREAM_IMAGE, "10m", 3, false, None)
        .replace(r#"env = { CANOPY_SERVICE = "server" }"#, r#"env = { CANOPY_SERVICE = "server", UPSTREAM_FAULTS = "elm:error=300" }"#);
    let c = Canopy::start(&config);
    deployed(&c, "juniper").await;
    let traffic = Traffic::start(c.proxy, &Shoppers::new(6, "/products", Duration::from_millis(15)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body = deployed(&c, "elm").await;
    assert_eq!(body["rollback_ready"]["ready"], true, "{body:#}");
    eventually("the guard rolled elm back", Duration::from_secs(15), || async { status(&c).await["live"] == "juniper" }).await;
    let events = client().get(c.admin_url("/events")).send().await.unwrap().json::<Value>().await.unwrap();
    let auto = events.as_array().unwrap().iter().rev().find(|e| e["action"] == "auto-rollback").expect("an auto-rollback event");
    assert!(auto["detail"].as_str().unwrap().contains("error ratio"), "{auto:#}");
    // the rollback started juniper's worker before it flipped, and stops elm's after
    eventually("only juniper's worker runs", Duration::from_secs(10), || async { scope.running_workers() == ["juniper"] }).await;

    // a deploy ending in a canary: pine goes out to 50%, judged, promoted by hand
    let r = slow_client().post(c.admin_url("/deploy")).json(&json!({"release": "pine", "canary": [50]})).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!((&body["canary"]["release"], &body["canary"]["weight"]), (&json!("pine"), &json!(50.0)), "{body:#}");
    assert_eq!(steps(&body).last().unwrap(), "canary");
    assert_eq!(status(&c).await["live"], "juniper");
    assert_eq!(scope.running_workers(), ["juniper"], "during the canary only the live release's worker runs");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = c.cli(&["canary", "promote"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(status(&c).await["live"], "pine");
    assert_eq!(scope.running_workers(), ["pine"], "the promotion started pine's worker and stopped juniper's");
    let answers = traffic.stop().await;
    let odd: Vec<_> = answers.iter().filter(|a| !(a.status == 200 || (a.status == 500 && a.release == "elm"))).take(5).collect();
    assert!(odd.is_empty(), "only elm's induced failures: {odd:?}");
    assert!(answers.iter().any(|a| a.release == "pine") && answers.iter().any(|a| a.release == "elm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_registered_by_hand_still_switch_and_roll_back_beside_deployed_ones() {
    let scope = Scope::new();
    let c = Canopy::start(&scope.config("10m", 3, false, None));
    deployed(&c, "juniper").await;
    // elm has no containers of its own: registered with juniper's addresses
    let ip =
        |service| scope.inspect(service, "juniper", &format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", scope.network));
    let backends = json!({"backends": {"server": [format!("{}:8080", ip("server"))], "worker": [format!("{}:8080", ip("worker"))]}});
    let r = client().put(c.admin_url("/releases/elm")).json(&backends).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let (code, body) = switch(&c, "elm").await;
    assert_eq!(code, 200, "{body:#}");
    for (to, expected) in [("juniper", "juniper"), ("elm", "elm")] {
        let r = client().post(c.admin_url("/rollback")).send().await.unwrap();
        assert_eq!(r.status(), 200, "rollback to {to}: {}", r.text().await.unwrap());
        assert_eq!(status(&c).await["live"], expected);
    }
    // no container alert for a live release canopy does not run (the live
    // watch may rightly say elm's worker is down: the juniper worker it
    // borrows is stopped while juniper is not live, overlap = false)
    let st = status(&c).await;
    let alerts = st["alerts"].as_array().unwrap_or_else(|| panic!("no alerts list with [docker]: {st:#}"));
    assert!(alerts.iter().all(|a| a.as_str().is_some_and(|a| a.starts_with("live release elm is failing its health checks"))), "{st:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_whose_tag_is_not_its_release_is_refused_and_reported() {
    let scope = Scope::new();
    let c = Canopy::start(&scope.config("10m", 3, true, None));
    deployed(&c, "juniper").await;
    // made behind canopy's back: labelled release oak, but running the elm image
    let name = scope.name("server", "oak");
    let made = docker(&[
        "create",
        "--name",
        &name,
        "--network",
        &scope.network,
        "--label",
        "canopy.managed=true",
        "--label",
        "canopy.release=oak",
        "--label",
        "canopy.service=server",
        &format!("{IMAGE}:elm"),
    ]);
    assert!(!made.is_empty());
    eventually("the impostor reported in /status", Duration::from_secs(2), || async {
        let st = status(&c).await;
        st["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains(&format!("container `{name}` runs image `{IMAGE}:elm` but is labelled release `oak`")))
    })
    .await;
    let (code, body) = deploy(&c, "oak").await;
    assert_eq!(code, 422, "{body:#}");
    assert!(body["error"].as_str().unwrap().contains("exists with image `canopy-test/server:elm`"), "{body:#}");
    assert_eq!(status(&c).await["live"], "juniper");
    assert_eq!(scope.state("server", "oak"), "created", "a container canopy did not make for this release is left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_container_killed_shows_in_status_and_metrics_within_a_second() {
    let scope = Scope::new();
    let c = Canopy::start(&scope.config("10m", 3, true, None));
    deployed(&c, "juniper").await;
    let series = "canopy_release_containers{release=\"juniper\",service=\"server\",state=\"running\"} 1";
    eventually("discovery lists juniper", Duration::from_secs(5), || async { metrics(&c).await.contains(series) }).await;

    let killed = Instant::now();
    assert!(!docker(&["kill", &scope.name("server", "juniper")]).is_empty());
    let exited = "canopy_release_containers{release=\"juniper\",service=\"server\",state=\"exited\"} 1";
    eventually("the kill in /metrics", Duration::from_secs(1), || async { metrics(&c).await.contains(exited) }).await;
    eventually("the kill in /status", Duration::from_secs(1), || async {
        let st = status(&c).await;
        st["alerts"].as_array().unwrap().iter().any(|a| a.as_str().unwrap().contains("is exited (exit code 137)"))
    })
    .await;
    eprintln!("killed container reported after {:?}", killed.elapsed());
    let out = c.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("ALERT: live release juniper: container {} is exited", scope.name("server", "juniper"))), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_deploy_then_restart_cleans_up_the_half_made_release() {
    let scope = Scope::new();
    let mut c = Canopy::start(&scope.config("10m", 3, true, None));
    deployed(&c, "juniper").await;
    let before = scope.containers();

    // `sick` never becomes healthy: the deploy is still waiting when canopy dies
    let admin = c.admin;
    let pending = tokio::spawn(async move {
        let _ = slow_client().post(format!("http://{admin}/deploy")).json(&json!({"release": "sick"})).send().await;
    });
    eventually("sick's containers started", Duration::from_secs(10), || async {
        scope.state("server", "sick") == "running" && scope.state("worker", "sick") == "running"
    })
    .await;
    let tmp = c.tmp.take();
    c.kill9();
    pending.await.unwrap();
    assert_eq!(c.durable_state(canopy_admin::load_state)["deploying"], "sick", "the journal says a deploy was running");

    let c = Canopy::start_in(&c.dir, &c.template);
    eventually("the half-made release's containers removed", Duration::from_secs(15), || async { scope.containers() == before }).await;
    let st = status(&c).await;
    assert_eq!(st["live"], "juniper");
    let names: Vec<&str> = st["releases"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["juniper"]);
    let (code, release, _) = get(&c, "/x").await;
    assert_eq!((code, release.as_str()), (200, "juniper"));
    eventually("the interrupted deploy recorded", Duration::from_secs(5), || async {
        c.durable_state(canopy_admin::load_state)["deploying"].is_null()
    })
    .await;
    let events = client().get(c.admin_url("/events")).send().await.unwrap().json::<Value>().await.unwrap();
    let last = events.as_array().unwrap().iter().rev().find(|e| e["action"] == "deploy").expect("a deploy event");
    assert_eq!(last["result"], "failed");
    assert!(last["detail"].as_str().unwrap().contains("restarted mid-deploy"), "{last}");
    // a new deploy works again
    deployed(&c, "elm").await;
    drop(tmp);
}

#[test]
fn compose_file_is_valid() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/compose.yaml");
    let out = Command::new("docker-compose").arg("-f").arg(&file).arg("config").output().expect("docker-compose");
    assert!(out.status.success(), "docker-compose config: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["/var/run/docker.sock", "vendure-network", "vendure-db"] {
        assert!(text.contains(needle), "compose.yaml lacks {needle}:\n{text}");
    }
    // one fleet host's part (docs/fleet.md)
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/fleet-node.compose.yaml");
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(&file)
        .arg("config")
        .env("NODE", "web-1")
        .env("NODE_IP", "10.0.0.1")
        .output()
        .expect("docker-compose");
    assert!(out.status.success(), "docker-compose config (fleet node): {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["--name=web-1", "http://10.0.0.1:2379", "hostname: web-1", "proxy.fleet.toml"] {
        assert!(text.contains(needle), "fleet-node.compose.yaml lacks {needle}:\n{text}");
    }
}
