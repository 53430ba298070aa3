//! `canopy deploy` across a fleet: three canopy nodes (the real binary) with
//! a real 3-member etcd on loopback, each node running its release
//! containers on the real Docker engine through its own network and names
//! (as each host would on its own engine), from the test images
//! (scripts/test-images.sh). Every container, network and image tag the test
//! makes is removed on drop.

use std::process::Command;
use std::time::Duration;

use canopy_testkit::fleet::Fleet;
use canopy_testkit::process::{docker, run_script, unique_prefix};
use canopy_testkit::{client, eventually};
use serde_json::{json, Value};

/// The test's names: a prefix for containers and networks, and an image
/// repository of its own; all removed on drop.
struct Scope {
    prefix: String,
    /// The repository node n2 runs: `:juniper` works, `:elm` crashes at start.
    crashing: String,
}

impl Scope {
    fn new() -> Scope {
        run_script("test-images.sh", &[]);
        let prefix = unique_prefix("flt");
        let crashing = format!("canopy-test/{prefix}-crashing");
        Command::new("docker").args(["tag", "canopy-test/server:juniper", &format!("{crashing}:juniper")]).status().unwrap();
        Command::new("docker").args(["tag", "canopy-test/server:crash", &format!("{crashing}:elm")]).status().unwrap();
        Scope { prefix, crashing }
    }

    /// Node `node`'s proxy.toml: its own network and container names.
    fn config(&self, node: &str, image: &str) -> String {
        let head = canopy_testkit::configs::listeners("");
        format!(
            r#"{head}
[releases]
address-template = "{prefix}-{node}-{{service}}--{{release}}"
validation-window = "10m"

[docker]
network = "{prefix}-{node}-net"
deploy-timeout = "30s"
stop-timeout = "1s"

[[service]]
name = "server"
port = 8080
image = "{image}"
routes = ["/"]
checks = [{{ kind = "http", path = "/health", timeout = "1s", retries = 3, interval = "200ms" }}]

[service.container]
env = {{ CANOPY_SERVICE = "server" }}
"#,
            prefix = self.prefix
        )
    }

    /// This test's containers of `release`, on any node.
    fn containers(&self, release: &str) -> Vec<String> {
        let names = docker(&["ps", "-a", "--filter", &format!("name=^/{}-", self.prefix), "--format", "{{.Names}}"]);
        names.lines().filter(|n| n.ends_with(&format!("--{release}"))).map(str::to_string).collect()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let all = docker(&["ps", "-aq", "--filter", &format!("name=^/{}-", self.prefix)]);
        for id in all.lines() {
            docker(&["rm", "-f", id]);
        }
        for node in ["n1", "n2", "n3"] {
            docker(&["network", "rm", &format!("{}-{node}-net", self.prefix)]);
        }
        docker(&["rmi", &format!("{}:juniper", self.crashing), &format!("{}:elm", self.crashing)]);
    }
}

async fn deploy(fleet: &Fleet, node: usize, release: &str) -> (u16, Value) {
    let url = fleet.nodes[node].canopy.admin_url("/deploy");
    let r = client().post(url).json(&json!({"release": release})).timeout(Duration::from_secs(120)).send().await.expect("POST /deploy");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_deploy_prepares_every_node_and_one_crashing_container_refuses_it_everywhere_leaving_nothing_behind() {
    let scope = Scope::new();
    let configs = [scope.config("n1", "canopy-test/server"), scope.config("n2", &scope.crashing), scope.config("n3", "canopy-test/server")];
    let fleet = Fleet::start_nodes(3, &configs).await;

    // every node prepares juniper on its own engine and network, then one flip
    let (status, body) = deploy(&fleet, 0, "juniper").await;
    assert_eq!(status, 200, "deploy juniper: {body}\n{}", fleet.fleet_logs());
    let prepared: Vec<&str> =
        body["steps"].as_array().unwrap().iter().filter(|s| s["step"] == "prepared").map(|s| s["detail"].as_str().unwrap()).collect();
    assert!(
        prepared.iter().any(|d| d.starts_with("node n2 prepared")) && prepared.iter().any(|d| d.starts_with("node n3 prepared")),
        "{body}"
    );
    assert_eq!(scope.containers("juniper").len(), 3, "one juniper container per node: {:?}", scope.containers("juniper"));
    eventually("every node serves juniper", Duration::from_secs(2), || async {
        fleet.serving().await.iter().all(|r| r.as_deref() == Some("juniper"))
    })
    .await;

    // n2's elm container crashes at start: refused everywhere, nothing left anywhere
    let (status, body) = deploy(&fleet, 0, "elm").await;
    assert_eq!(status, 422, "deploy elm: {body}\n{}", fleet.fleet_logs());
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("on node n2") && error.contains("exited with code 3"), "the refusal names n2 and why: {error}");
    eventually("no elm container on any node", Duration::from_secs(10), || async { scope.containers("elm").is_empty() }).await;
    for node in &fleet.nodes {
        let r = client().get(node.canopy.admin_url("/releases/elm")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "elm is not registered on {}", node.name);
        assert_eq!(node.status().await["live"], "juniper", "{} keeps juniper live", node.name);
    }
    assert!(fleet.serving().await.iter().all(|r| r.as_deref() == Some("juniper")), "every node still serves juniper");
    let logs: String = fleet.nodes.iter().map(|n| format!("--- {} ---\n{}", n.name, n.canopy.log())).collect();
    assert_eq!(scope.containers("juniper").len(), 3, "the live release's containers are untouched\n{logs}");
}
