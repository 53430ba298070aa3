//! Test rig for the real engine: the test images and a per-test scope that
//! owns (and on drop removes) its network, containers and images. Ports and
//! the local registry come from the test kit.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, Once};

use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions, RemoveImageOptions};
use bollard::Docker;
use canopy_docker::{ContainerSpec, Engine};

/// The repository of the test images (scripts/test-images.sh).
pub const REPO: &str = "canopy-test/server";
/// The port the test server listens on in its container.
pub const PORT: u16 = 8080;

/// Builds the test images once per test process (the script skips those
/// already built from the same sources).
pub fn images() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-images.sh");
        let output = Command::new("bash").arg(&script).output().expect("run scripts/test-images.sh");
        assert!(
            output.status.success(),
            "scripts/test-images.sh failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

/// The engine the tests use: DOCKER_HOST or the default socket.
pub async fn engine() -> Engine {
    Engine::connect(&Engine::default_socket()).await.expect("a Docker engine answers (scripts/install-deps.sh --test)")
}

/// A raw bollard client, for what a test does behind canopy's back (kill,
/// a hand-made container, push).
pub async fn raw() -> Docker {
    let socket = Engine::default_socket();
    let docker = if socket.starts_with("unix://") || socket.starts_with('/') {
        Docker::connect_with_unix(&socket, 120, bollard::API_DEFAULT_VERSION)
    } else {
        Docker::connect_with_http(&socket, 120, bollard::API_DEFAULT_VERSION)
    };
    docker.expect("docker client").negotiate_version().await.expect("negotiate")
}

fn random_suffix() -> String {
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{:06x}", random & 0xff_ffff)
}

/// Everything one test makes in the engine, named `<test>-<random>…`, removed on drop (panics included).
pub struct Scope {
    /// `<test>-<random>`: the prefix of every container name.
    pub prefix: String,
    /// The test's own network.
    pub network: String,
    images: Mutex<Vec<String>>,
}

impl Scope {
    /// A scope for test `test`; builds the test images first.
    pub fn new(test: &str) -> Scope {
        images();
        let prefix = format!("{test}-{}", random_suffix());
        Scope { network: format!("canopy-test-{prefix}"), prefix, images: Mutex::new(Vec::new()) }
    }

    /// The container name of `release` in this scope (`<test>-<random>--elm`).
    pub fn name(&self, release: &str) -> String {
        format!("{}--{release}", self.prefix)
    }

    /// A spec for service `server` of `release` from the test images, with
    /// CANOPY_SERVICE set so the server names it.
    pub fn spec(&self, release: &str) -> ContainerSpec {
        let mut spec = ContainerSpec::new(&self.name(release), REPO, release, "server", &self.network);
        spec.env.push("CANOPY_SERVICE=server".to_string());
        spec
    }

    /// Removes this image reference too when the scope ends.
    pub fn own_image(&self, reference: &str) {
        self.images.lock().unwrap().push(reference.to_string());
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let network = self.network.clone();
        let images = std::mem::take(&mut *self.images.lock().unwrap());
        // Drop is not async: clean up on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let docker = raw().await;
                let filters = HashMap::from([("name".to_string(), vec![prefix.clone()])]);
                let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
                for container in docker.list_containers(Some(options)).await.unwrap_or_default() {
                    let names = container.names.unwrap_or_default();
                    if names.iter().any(|name| name.trim_start_matches('/').starts_with(&prefix)) {
                        let options = RemoveContainerOptions { force: true, v: true, link: false };
                        let _ = docker.remove_container(&container.id.unwrap_or_default(), Some(options)).await;
                    }
                }
                let _ = docker.remove_network(&network).await;
                for image in images {
                    let _ = docker.remove_image(&image, None::<RemoveImageOptions>, None).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// GETs `path` from the test server at `ip` and returns its JSON body.
pub async fn get_json(ip: IpAddr, path: &str) -> serde_json::Value {
    let url = format!("http://{ip}:{PORT}{path}");
    let response = reqwest::get(&url).await.unwrap_or_else(|err| panic!("GET {url}: {err}"));
    assert!(response.status().is_success(), "GET {url}: {}", response.status());
    response.json().await.unwrap_or_else(|err| panic!("GET {url}: {err}"))
}

/// GETs `path` and returns its body as text.
pub async fn get_text(ip: IpAddr, path: &str) -> String {
    let url = format!("http://{ip}:{PORT}{path}");
    let response = reqwest::get(&url).await.unwrap_or_else(|err| panic!("GET {url}: {err}"));
    assert!(response.status().is_success(), "GET {url}: {}", response.status());
    response.text().await.unwrap()
}
