//! Deploy phases against the real engine: how long `canopy deploy` spends in
//! each phase (pull, create, start, healthy, register, checks, switch) for an
//! image that is present and healthy at its first probe, against a baseline
//! measured in the same run: the engine alone creating, starting and
//! reporting healthy the same container (canopy-docker, no canopy). The
//! ratio says how much canopy adds on top of the container start.
//!
//! ```sh
//! cargo bench --bench deploy                 # release profile
//! cargo bench --bench deploy --profile dev   # same phases, canopy unoptimised
//! ROUNDS=10 cargo bench --bench deploy
//! ```
//!
//! Needs a Docker engine and the test images (built by scripts/test-images.sh).
//! Makes its own network and containers (`bdep-<pid>-…`) and removes them.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canopy_docker::{ContainerSpec, Engine, Healthcheck};
use canopy_testkit::process::docker;
use canopy_testkit::reserve;
use serde_json::{json, Value};

const IMAGE: &str = "canopy-test/server";
const RELEASES: [&str; 3] = ["juniper", "elm", "oak"];

struct Bench {
    prefix: String,
    network: String,
    canopy: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut c) = self.canopy.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let names = docker(&["ps", "-aq", "--filter", &format!("name=^/{}-", self.prefix)]);
        for id in names.lines() {
            docker(&["rm", "-f", "-v", id]);
        }
        docker(&["network", "rm", &self.network]);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn healthcheck() -> Healthcheck {
    Healthcheck { interval: Some(Duration::from_millis(100)), timeout: Some(Duration::from_secs(2)), ..Default::default() }
}

async fn baseline(engine: &Engine, bench: &Bench, round: usize) -> f64 {
    let name = format!("{}-baseline-{round}", bench.prefix);
    let mut spec = ContainerSpec::new(&name, IMAGE, "elm", "baseline", &bench.network);
    spec.healthcheck = Some(healthcheck());
    let clock = Instant::now();
    engine.create(&spec).await.unwrap();
    engine.start(&name).await.unwrap();
    engine.wait_healthy(&name, Duration::from_secs(30)).await.unwrap();
    let took = clock.elapsed().as_secs_f64() * 1e3;
    engine.remove(&name).await.unwrap();
    took
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(6);
    canopy_testkit::process::run_script("test-images.sh", &[]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run(rounds));
}

async fn run(rounds: usize) {
    let prefix = format!("bdep-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut bench = Bench { network: format!("{prefix}-net"), prefix: prefix.clone(), canopy: None, _dir: dir };
    let (proxy_port, admin_port) = (reserve(), reserve());
    let (proxy, admin) = (proxy_port.port(), admin_port.port());
    let config = format!(
        r#"
[proxy]
listen = "127.0.0.1:{proxy}"
threads = 1
[admin]
listen = "127.0.0.1:{admin}"
state-file = "state.json"
realtime = false
[releases]
address-template = "{prefix}-{{service}}--{{release}}"
validation-window = "100ms"
drain-timeout = "100ms"
[docker]
network = "{network}"
keep-releases = 0
stop-timeout = "1s"
[[service]]
name = "server"
port = 8080
image = "{IMAGE}"
routes = ["/"]
checks = [{{ kind = "http", path = "/health", timeout = "1s", retries = 0 }}]
[service.container]
healthcheck = {{ interval = "100ms", timeout = "2s" }}
"#,
        network = bench.network
    );
    std::fs::write(path.join("proxy.toml"), config).unwrap();
    let log = std::fs::File::create(path.join("canopy.log")).unwrap();
    proxy_port.release();
    admin_port.release();
    let child = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(["serve", "-c"])
        .arg(path.join("proxy.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    bench.canopy = Some(child);
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap();
    let base = format!("http://127.0.0.1:{admin}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "canopy did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let engine = Engine::connect(&Engine::default_socket()).await.unwrap();
    engine.ensure_network(&bench.network).await.unwrap();

    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut totals = Vec::new();
    let mut baselines = Vec::new();
    for round in 0..rounds {
        let release = RELEASES[round % RELEASES.len()];
        // a fresh container each round: wait until this release is retired, then remove what is left of it
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st: Value = http.get(format!("{base}/status")).send().await.unwrap().json().await.unwrap();
            let registered = st["releases"].as_array().unwrap().iter().any(|r| r["name"] == release);
            if !registered {
                break;
            }
            assert!(Instant::now() < deadline, "{release} was not retired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        docker(&["rm", "-f", &format!("{prefix}-server--{release}")]);
        baselines.push(baseline(&engine, &bench, round).await);
        let clock = Instant::now();
        let r = http.post(format!("{base}/deploy")).json(&json!({"release": release})).send().await.unwrap();
        let total = clock.elapsed().as_secs_f64() * 1e3;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(status.is_success(), "deploy {release}: {body:#}");
        totals.push(total);
        for step in body["steps"].as_array().unwrap() {
            phases.entry(step["step"].as_str().unwrap().to_string()).or_default().push(step["ms"].as_f64().unwrap());
        }
    }
    let baseline = median(baselines);
    let total = median(totals);
    println!("deploy phases, median of {rounds} rounds (one service, image present, healthcheck every 100ms):");
    let mut own = 0.0;
    for phase in ["network", "pull", "create", "start", "healthy", "register", "checks", "switch"] {
        if let Some(v) = phases.remove(phase) {
            let m = median(v);
            if !matches!(phase, "create" | "start" | "healthy") {
                own += m;
            }
            println!("  {phase:<9} {m:>8.1} ms");
        }
    }
    println!("  {:<9} {:>8.1} ms  (POST /deploy to its reply)", "total", total);
    println!("baseline: the engine alone, create + start + healthy: {baseline:.1} ms");
    println!("ratio deploy-to-live / baseline: {:.2}", total / baseline);
    println!("canopy's own steps (network, pull, register, checks, switch): {own:.1} ms = {:.1}% of the deploy", 100.0 * own / total);
}
