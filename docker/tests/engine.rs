//! canopy-docker against the real engine: real images (scripts/test-images.sh),
//! real containers on each test's own network, a real registry for pulls.
//! Traffic from the tests goes only to those networks and to 127.0.0.1.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant, SystemTime};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, RemoveImageOptions, TagImageOptions};
use canopy_docker::{
    ContainerSpec, ContainerState, DockerError, Engine, EventKind, Health, Healthcheck, ImageStatus, ManagedContainer, NetworkStatus,
    Readiness, LABEL_MANAGED, LABEL_RELEASE, LABEL_SERVICE,
};
use canopy_testkit::dead_addr;
use canopy_testkit::registry::Registry;
use futures_util::StreamExt;
use support::{engine, get_json, get_text, raw, Scope, REPO};

const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// Network, create, start, healthy: a release `release` of service `server` up in `scope`.
async fn up(engine: &Engine, scope: &Scope, release: &str) -> ContainerSpec {
    let spec = scope.spec(release);
    engine.ensure_network(&scope.network).await.unwrap();
    engine.create(&spec).await.unwrap();
    engine.start(&spec.name).await.unwrap();
    assert_eq!(engine.wait_healthy(&spec.name, HEALTHY_WITHIN).await.unwrap(), Readiness::Healthy);
    spec
}

async fn mine(engine: &Engine, scope: &Scope) -> Vec<ManagedContainer> {
    let all = engine.list_managed(&scope.network).await.unwrap();
    all.into_iter().filter(|container| container.name.starts_with(&scope.prefix)).collect()
}

#[tokio::test]
async fn a_release_comes_up_healthy_and_answers_with_its_release() {
    let scope = Scope::new("up");
    let engine = engine().await;
    assert_eq!(engine.ensure_network(&scope.network).await.unwrap(), NetworkStatus::Created);
    assert_eq!(engine.ensure_network(&scope.network).await.unwrap(), NetworkStatus::Existed);
    let mut progress = Vec::new();
    let image = engine.ensure_image(&format!("{REPO}:elm"), |line| progress.push(line)).await.unwrap();
    assert_eq!(image, ImageStatus::Present);
    assert!(progress.is_empty(), "a present image is not pulled: {progress:?}");

    let spec = scope.spec("elm");
    let clock = Instant::now();
    let created = engine.create(&spec).await.unwrap();
    let create = clock.elapsed();
    assert!(!created.adopted);
    assert_eq!(created.state, ContainerState::Created);
    let clock = Instant::now();
    engine.start(&spec.name).await.unwrap();
    let start = clock.elapsed();
    let clock = Instant::now();
    assert_eq!(engine.wait_healthy(&spec.name, HEALTHY_WITHIN).await.unwrap(), Readiness::Healthy);
    let healthy = clock.elapsed();
    eprintln!("timings: create {create:?}, start {start:?}, healthy {healthy:?} after start (HEALTHCHECK --interval=1s)");

    let ip = engine.address(&spec.name, &scope.network).await.unwrap();
    let body = get_json(ip, "/shop-api").await;
    assert_eq!(body["release"], "elm");
    assert_eq!(body["service"], "server");
    assert_eq!(body["path"], "/shop-api");
}

#[tokio::test]
async fn without_a_healthcheck_running_is_ready() {
    let scope = Scope::new("bare");
    let engine = engine().await;
    let spec = scope.spec("bare");
    engine.ensure_network(&scope.network).await.unwrap();
    engine.create(&spec).await.unwrap();
    engine.start(&spec.name).await.unwrap();
    assert_eq!(engine.wait_healthy(&spec.name, HEALTHY_WITHIN).await.unwrap(), Readiness::Running);
    let found = mine(&engine, &scope).await;
    assert_eq!((found[0].state, found[0].health), (ContainerState::Running, Health::None));
}

#[tokio::test]
async fn spec_settings_reach_the_container() {
    let scope = Scope::new("settings");
    let engine = engine().await;
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("hello"), "hello from the host\n").unwrap();
    std::fs::set_permissions(host_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut spec = scope.spec("oak");
    let env_file = "# shared by every release\nFROM_FILE=file\nOVERRIDDEN=file\n";
    spec.env.extend(canopy_docker::parse_env_file("server.env", env_file).unwrap());
    spec.env.push("OVERRIDDEN=env".to_string());
    spec.binds.push(format!("{}:/data:ro", host_dir.path().display()));
    spec.command = Some(vec!["--listen-as".to_string(), "oak".to_string()]);
    spec.user = Some("1234:1234".to_string());
    spec.memory_bytes = Some(64 * 1024 * 1024);
    spec.cpus = Some(0.5);
    spec.healthcheck = Some(Healthcheck { interval: Some(Duration::from_millis(200)), ..Default::default() });
    spec.aliases.push(format!("{}-alias", scope.prefix));
    engine.ensure_network(&scope.network).await.unwrap();
    engine.create(&spec).await.unwrap();
    engine.start(&spec.name).await.unwrap();
    let clock = Instant::now();
    assert_eq!(engine.wait_healthy(&spec.name, HEALTHY_WITHIN).await.unwrap(), Readiness::Healthy);
    eprintln!("healthy {:?} after start with the interval overridden to 200ms", clock.elapsed());

    let ip = engine.address(&spec.name, &scope.network).await.unwrap();
    let body = get_json(ip, "/").await;
    assert_eq!(body["uid"], 1234);
    assert_eq!(body["args"], serde_json::json!(["--listen-as", "oak"]));
    assert_eq!(get_json(ip, "/env/FROM_FILE").await["value"], "file");
    assert_eq!(get_json(ip, "/env/OVERRIDDEN").await["value"], "env");
    assert_eq!(get_text(ip, "/file/data/hello").await, "hello from the host\n");

    let inspect = raw().await.inspect_container(&spec.name, None).await.unwrap();
    let host = inspect.host_config.unwrap();
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    let endpoint = &inspect.network_settings.unwrap().networks.unwrap()[&scope.network];
    assert!(endpoint.aliases.as_ref().unwrap().contains(&format!("{}-alias", scope.prefix)));
}

#[tokio::test]
async fn a_second_create_adopts_the_container_and_a_foreign_one_is_refused() {
    let scope = Scope::new("adopt");
    let engine = engine().await;
    let spec = scope.spec("elm");
    engine.ensure_network(&scope.network).await.unwrap();
    let first = engine.create(&spec).await.unwrap();
    assert!(engine.start(&spec.name).await.unwrap(), "started by this call");
    let again = engine.create(&spec).await.unwrap();
    assert!(again.adopted);
    assert_eq!(again.id, first.id);
    assert_eq!(again.state, ContainerState::Running);
    assert!(!engine.start(&spec.name).await.unwrap(), "already running: fine, and said so");

    // Same name, made for another release: refused, not replaced.
    let mut other = spec.clone();
    other.release = "oak".to_string();
    other.image = format!("{REPO}:oak");
    let err = engine.create(&other).await.unwrap_err();
    assert_eq!(err.to_string(), format!("container `{}` exists with release `elm` where `oak` was asked for; remove it first", spec.name));

    // A container of that name that canopy did not make: never touched.
    let by_hand = scope.name("byhand");
    let body = ContainerCreateBody { image: Some(format!("{REPO}:elm")), ..Default::default() };
    let options = CreateContainerOptions { name: Some(by_hand.clone()), ..Default::default() };
    raw().await.create_container(Some(options), body).await.unwrap();
    let mut spec = scope.spec("byhand");
    spec.name = by_hand.clone();
    let refusal = format!("container `{by_hand}` exists but is not managed by canopy (no label canopy.managed=true); refusing to touch it");
    assert_eq!(engine.create(&spec).await.unwrap_err().to_string(), refusal);
    assert_eq!(engine.start(&by_hand).await.unwrap_err().to_string(), refusal);
    assert_eq!(engine.stop(&by_hand, Duration::from_secs(1)).await.unwrap_err().to_string(), refusal);
    assert_eq!(engine.remove(&by_hand).await.unwrap_err().to_string(), refusal);
    assert!(raw().await.inspect_container(&by_hand, None).await.is_ok(), "still there");
}

#[tokio::test]
async fn a_crash_at_start_reports_the_exit_code_and_the_log() {
    let scope = Scope::new("crash");
    let engine = engine().await;
    let spec = scope.spec("crash");
    engine.ensure_network(&scope.network).await.unwrap();
    engine.create(&spec).await.unwrap();
    engine.start(&spec.name).await.unwrap();
    let clock = Instant::now();
    let err = engine.wait_healthy(&spec.name, HEALTHY_WITHIN).await.unwrap_err();
    assert!(clock.elapsed() < Duration::from_secs(5), "noticed after {:?}", clock.elapsed());
    let DockerError::Exited { exit_code, logs, .. } = &err else { panic!("expected Exited, got {err}") };
    assert_eq!(*exit_code, 3);
    assert!(logs.iter().any(|line| line == "fatal: SERVER_CRASH=3 is set, exiting with code 3"), "{logs:?}");
    // stdout and stderr reach the engine through two pipes: their order in the log may vary.
    let text = err.to_string();
    let header = format!("container `{}` exited with code 3 before it was ready; its last log lines:\n    ", spec.name);
    assert!(text.starts_with(&header), "{text}");
    assert!(text.contains("\n    fatal: SERVER_CRASH=3 is set, exiting with code 3"), "{text}");
    assert!(text.contains("    starting release \"crash\" service \"server\""), "{text}");
}

#[tokio::test]
async fn never_healthy_times_out_with_the_log() {
    let scope = Scope::new("timeout");
    let engine = engine().await;
    let mut spec = scope.spec("sick");
    // Failures in the start period do not count: it stays `starting` until the wait runs out.
    spec.healthcheck = Some(Healthcheck { start_period: Some(Duration::from_secs(120)), ..Default::default() });
    engine.ensure_network(&scope.network).await.unwrap();
    engine.create(&spec).await.unwrap();
    engine.start(&spec.name).await.unwrap();
    let clock = Instant::now();
    let err = engine.wait_healthy(&spec.name, Duration::from_secs(2)).await.unwrap_err();
    let waited = clock.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(4), "waited {waited:?}");
    let DockerError::HealthTimeout { state, health, logs, .. } = &err else { panic!("expected HealthTimeout, got {err}") };
    assert_eq!((state.as_str(), health.as_str()), ("running", "starting"));
    assert!(logs.iter().any(|line| line == "SERVER_UNHEALTHY is set: /health answers 503"), "{logs:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("container `{}` not ready after 2.", spec.name)), "{text}");
    assert!(text.contains("s (state running, health starting); its last log lines:\n    starting release \"sick\""), "{text}");
}

#[tokio::test]
async fn unhealthy_is_reported_with_the_last_probe() {
    let scope = Scope::new("unhealthy");
    let engine = engine().await;
    let spec = scope.spec("sick");
    engine.ensure_network(&scope.network).await.unwrap();
    engine.create(&spec).await.unwrap();
    engine.start(&spec.name).await.unwrap();
    let err = engine.wait_healthy(&spec.name, HEALTHY_WITHIN).await.unwrap_err();
    let DockerError::Unhealthy { probe, .. } = &err else { panic!("expected Unhealthy, got {err}") };
    assert_eq!(probe, "exit code 1: health: HTTP/1.1 503 Service Unavailable");
    assert!(err.to_string().starts_with(&format!(
        "container `{}` is unhealthy (last probe: exit code 1: health: HTTP/1.1 503 Service Unavailable); its last log lines:",
        spec.name
    )));
}

#[tokio::test]
async fn a_missing_image_is_named_with_its_tag() {
    let scope = Scope::new("missing");
    let engine = engine().await;
    // A registry address where nothing listens: the pull fails without leaving the machine.
    let port = dead_addr().port();
    let reference = format!("127.0.0.1:{port}/canopy-test/missing:elm");
    let mut progress = Vec::new();
    let err = engine.ensure_image(&reference, |line| progress.push(line)).await.unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&format!("cannot pull image `127.0.0.1:{port}/canopy-test/missing` tag `elm`: ")), "{text}");
    assert!(text.contains("connection refused"), "{text}");

    let err = engine.ensure_image(REPO, |_| {}).await.unwrap_err();
    assert_eq!(err.to_string(), "image reference `canopy-test/server` has no tag: canopy needs repository:release");

    // create() does not pull: an image that is not local is the engine's "No such image".
    engine.ensure_network(&scope.network).await.unwrap();
    let spec = scope.spec("nowhere");
    let text = engine.create(&spec).await.unwrap_err().to_string();
    assert!(text.starts_with(&format!("container `{}`: create failed: ", spec.name)), "{text}");
    assert!(text.contains("No such image: canopy-test/server:nowhere"), "{text}");
}

#[tokio::test]
async fn an_image_tag_other_than_the_release_is_refused_and_reported() {
    let scope = Scope::new("mismatch");
    let engine = engine().await;
    engine.ensure_network(&scope.network).await.unwrap();
    let mut spec = scope.spec("elm");
    spec.image = format!("{REPO}:juniper");
    let err = engine.create(&spec).await.unwrap_err();
    let expected = format!(
        "container `{}` runs image `canopy-test/server:juniper` but is labelled release `elm`: the image tag must be the release name",
        spec.name
    );
    assert_eq!(err.to_string(), expected);
    assert!(mine(&engine, &scope).await.is_empty(), "nothing was created");

    // Made by hand with canopy's labels but the wrong tag: discovery reports it.
    let labels = [(LABEL_MANAGED, "true"), (LABEL_RELEASE, "elm"), (LABEL_SERVICE, "server")];
    let body = ContainerCreateBody {
        image: Some(format!("{REPO}:juniper")),
        labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..Default::default()
    };
    let options = CreateContainerOptions { name: Some(spec.name.clone()), ..Default::default() };
    raw().await.create_container(Some(options), body).await.unwrap();
    let found = mine(&engine, &scope).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].tag.as_deref(), Some("juniper"));
    assert_eq!(found[0].release, "elm");
    assert_eq!(found[0].check_tag().unwrap_err().to_string(), expected);
}

#[tokio::test]
async fn list_managed_shows_state_health_tag_and_address() {
    let scope = Scope::new("list");
    let engine = engine().await;
    let elm = up(&engine, &scope, "elm").await;
    let juniper = up(&engine, &scope, "juniper").await;
    engine.stop(&juniper.name, Duration::from_secs(5)).await.unwrap();
    let oak = scope.spec("oak");
    engine.create(&oak).await.unwrap();

    let found = mine(&engine, &scope).await;
    let names: Vec<&str> = found.iter().map(|container| container.name.as_str()).collect();
    assert_eq!(names, [elm.name.as_str(), juniper.name.as_str(), oak.name.as_str()]);
    let (elm_found, juniper_found, oak_found) = (&found[0], &found[1], &found[2]);

    assert_eq!((elm_found.state, elm_found.health), (ContainerState::Running, Health::Healthy));
    assert_eq!(elm_found.ip, Some(engine.address(&elm.name, &scope.network).await.unwrap()));
    assert_eq!((elm_found.release.as_str(), elm_found.service.as_str()), ("elm", "server"));
    assert_eq!((elm_found.image.as_str(), elm_found.tag.as_deref()), ("canopy-test/server:elm", Some("elm")));
    assert!(elm_found.check_tag().is_ok());

    assert_eq!(juniper_found.state, ContainerState::Exited);
    assert_eq!(juniper_found.exit_code, Some(0), "SIGTERM: a clean exit");
    assert_eq!(juniper_found.ip, None);
    assert_eq!(juniper_found.health, Health::None, "health is a running container's");

    assert_eq!((oak_found.state, oak_found.health, oak_found.ip), (ContainerState::Created, Health::None, None));
    assert_eq!(oak_found.tag.as_deref(), Some("oak"));
}

#[tokio::test]
async fn events_report_a_killed_container_within_a_second() {
    let scope = Scope::new("events");
    let engine = engine().await;
    let mut events = engine.events(Some(SystemTime::now()));
    let spec = up(&engine, &scope, "elm").await;

    // Replayed from `since`: the start and the health change.
    let mut seen = Vec::new();
    while !seen.contains(&EventKind::Health(Health::Healthy)) {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("events").unwrap().unwrap();
        if event.name == spec.name {
            assert_eq!((event.release.as_str(), event.service.as_str()), ("elm", "server"));
            seen.push(event.kind);
        }
    }
    assert_eq!(seen, [EventKind::Create, EventKind::Start, EventKind::Health(Health::Healthy)]);

    raw().await.kill_container(&spec.name, None).await.unwrap();
    let killed = Instant::now();
    let die = loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("a die event").unwrap().unwrap();
        if event.name == spec.name {
            break event;
        }
    };
    let latency = killed.elapsed();
    eprintln!("die event {latency:?} after the kill returned");
    assert_eq!(die.kind, EventKind::Die { exit_code: Some(137) });
    assert!(latency < Duration::from_secs(1), "die reported after {latency:?}");
    let found = mine(&engine, &scope).await;
    assert_eq!((found[0].state, found[0].exit_code, found[0].ip), (ContainerState::Exited, Some(137), None));
}

#[tokio::test]
async fn a_stopped_release_starts_again_fast() {
    let scope = Scope::new("restart");
    let engine = engine().await;
    let spec = up(&engine, &scope, "juniper").await;
    let id = engine.create(&spec).await.unwrap().id;

    let clock = Instant::now();
    engine.stop(&spec.name, Duration::from_secs(10)).await.unwrap();
    let stop = clock.elapsed();
    engine.stop(&spec.name, Duration::from_secs(10)).await.unwrap(); // already stopped: fine
    assert_eq!(
        engine.address(&spec.name, &scope.network).await.unwrap_err().to_string(),
        format!("container `{}` has no address on network `{}`", spec.name, scope.network)
    );

    // A redeploy of the kept release: adopt, start, healthy.
    let adopted = engine.create(&spec).await.unwrap();
    assert_eq!((adopted.adopted, adopted.state, adopted.id), (true, ContainerState::Exited, id));
    let clock = Instant::now();
    engine.start(&spec.name).await.unwrap();
    let start = clock.elapsed();
    assert_eq!(engine.wait_healthy(&spec.name, HEALTHY_WITHIN).await.unwrap(), Readiness::Healthy);
    let healthy = clock.elapsed();
    eprintln!("stop {stop:?}; start again {start:?}, healthy {healthy:?} after the start call");
    assert!(stop < Duration::from_secs(5), "SIGTERM ends the server at once, stop took {stop:?}");
    let ip = engine.address(&spec.name, &scope.network).await.unwrap();
    assert_eq!(get_json(ip, "/").await["release"], "juniper");
}

#[tokio::test]
async fn remove_is_idempotent() {
    let scope = Scope::new("remove");
    let engine = engine().await;
    let spec = up(&engine, &scope, "oak").await;
    assert!(engine.remove(&spec.name).await.unwrap(), "a running container is removed");
    assert!(!engine.remove(&spec.name).await.unwrap(), "already gone");
    assert!(mine(&engine, &scope).await.is_empty());
    assert_eq!(engine.start(&spec.name).await.unwrap_err().to_string(), format!("container `{}` does not exist", spec.name));
}

#[tokio::test]
async fn an_image_missing_locally_is_pulled_from_a_registry_with_progress() {
    let scope = Scope::new("pull");
    let registry = Registry::start().await;
    let docker = raw().await;
    let repository = format!("{}/canopy-test/server", registry.host);
    let reference = format!("{repository}:pull");
    scope.own_image(&reference);

    // Push the test image there, then delete both local tags: its layer is gone too.
    let tag = TagImageOptions { repo: Some(repository.clone()), tag: Some("pull".to_string()) };
    docker.tag_image(&format!("{REPO}:pull"), Some(tag)).await.unwrap();
    let mut push = docker.push_image(&reference, None::<bollard::query_parameters::PushImageOptions>, None);
    while let Some(line) = push.next().await {
        line.unwrap_or_else(|err| panic!("push {reference}: {err}"));
    }
    for local in [reference.as_str(), &format!("{REPO}:pull")] {
        docker.remove_image(local, None::<RemoveImageOptions>, None).await.unwrap();
    }

    let engine = engine().await;
    let mut progress = Vec::new();
    let clock = Instant::now();
    let status = engine.ensure_image(&reference, |line| progress.push(line)).await.unwrap();
    eprintln!("pulled in {:?}: {} progress lines", clock.elapsed(), progress.len());
    assert_eq!(status, ImageStatus::Pulled);
    let statuses: Vec<&str> = progress.iter().map(|line| line.status.as_str()).collect();
    assert!(statuses.contains(&"Pulling from canopy-test/server"), "{statuses:?}");
    assert!(statuses.contains(&"Pull complete"), "{statuses:?}");
    assert!(progress.iter().any(|line| line.status == "Downloading" && line.total.is_some()), "{progress:?}");
    assert_eq!(engine.ensure_image(&reference, |_| panic!("no pull")).await.unwrap(), ImageStatus::Present);

    // A tag the registry does not have.
    let text = engine.ensure_image(&format!("{repository}:nope"), |_| {}).await.unwrap_err().to_string();
    assert!(text.starts_with(&format!("cannot pull image `{repository}` tag `nope`: ")), "{text}");
    assert!(text.contains("manifest unknown"), "{text}");

    // And the pulled image runs.
    let mut spec = scope.spec("pull");
    spec.image = reference.clone();
    engine.ensure_network(&scope.network).await.unwrap();
    engine.create(&spec).await.unwrap();
    engine.start(&spec.name).await.unwrap();
    assert_eq!(engine.wait_healthy(&spec.name, HEALTHY_WITHIN).await.unwrap(), Readiness::Healthy);
    let ip = engine.address(&spec.name, &scope.network).await.unwrap();
    assert_eq!(get_json(ip, "/").await["release"], "pull");
    drop(registry);
}

#[tokio::test]
async fn an_unreachable_engine_is_a_clear_error() {
    let engine = engine().await;
    let api: Vec<u32> = engine.api_version().split('.').map(|part| part.parse().unwrap()).collect();
    assert!(api[0] == 1 && api[1] >= 41 && api[1] <= 53, "negotiated {}", engine.api_version());

    let err = Engine::connect("unix:///nonexistent/docker.sock").await.unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("cannot reach the Docker engine at unix:///nonexistent/docker.sock: "), "{text}");
    let port = dead_addr().port();
    let err = Engine::connect(&format!("tcp://127.0.0.1:{port}")).await.unwrap_err();
    assert!(err.to_string().starts_with(&format!("cannot reach the Docker engine at tcp://127.0.0.1:{port}: ")), "{err}");
    let err = Engine::connect("ssh://host").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid Docker socket `ssh://host`: expected unix:///path/to/docker.sock, tcp://host:port or http://host:port"
    );
}
