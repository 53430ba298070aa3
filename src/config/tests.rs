//! Whole-file tests of the parser: defaults, every rule's message with its
//! line and column, and the hints that say the fix.

use std::path::Path;
use std::time::Duration;

use super::docker::memory;
use super::*;

const MINIMAL: &str = r#"
[proxy]
listen = "127.0.0.1:8080"

[releases]
address-template = "app-{service}--{release}"

[[service]]
name = "server"
port = 3000
routes = ["/"]
"#;

fn err(text: &str) -> String {
    parse(Path::new("proxy.toml"), text).unwrap_err().to_string()
}

#[test]
fn minimal_config_loads_with_defaults() {
    let c = parse(Path::new("/etc/canopy/proxy.toml"), MINIMAL).unwrap();
    assert_eq!(c.fixed.admin_listen, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.fixed.state_file, Path::new("/etc/canopy/canopy-state.json"));
    assert_eq!(c.fixed.pid_file, Path::new("/etc/canopy/canopy-state.json.pid"));
    assert_eq!(c.fixed.upgrade_socket, Path::new("/etc/canopy/canopy-state.json.upgrade.sock"));
    assert_eq!(c.live.releases.validation_window, Duration::from_secs(600));
    assert_eq!(c.fixed.shutdown_grace, Duration::from_secs(30));
    let control = c.control();
    assert_eq!((control.state_file, control.validation_window), (c.fixed.state_file.clone(), Duration::from_secs(600)));
}

#[test]
fn unknown_key_names_line_and_column() {
    let text = MINIMAL.replace("port = 3000", "port = 3000\nprot = 1");
    let e = err(&text);
    assert!(e.starts_with("proxy.toml:11:1: unknown field `prot`"), "{e}");
    assert!(e.contains("11 | prot = 1"), "{e}");
}

#[test]
fn duplicate_service_points_at_second_name() {
    let text = format!("{MINIMAL}\n[[service]]\nname = \"server\"\nport = 3001\n");
    let e = err(&text);
    assert!(e.starts_with("proxy.toml:14:8: duplicate service name `server`"), "{e}");
}

#[test]
fn duplicate_route_is_refused() {
    let text = format!("{MINIMAL}\n[[service]]\nname = \"web\"\nport = 3001\nroutes = [\"/\"]\n");
    let e = err(&text);
    assert!(e.starts_with("proxy.toml:16:11: route `/` of service `web` is already routed to service `server`"), "{e}");
}

#[test]
fn bad_duration_and_address() {
    let e = err(&MINIMAL.replace("[releases]", "[releases]\nvalidation-window = \"ten minutes\""));
    assert!(e.starts_with("proxy.toml:6:21: invalid duration `ten minutes`"), "{e}");
    let e = err(&MINIMAL.replace("127.0.0.1:8080", "localhost:http"));
    assert!(e.starts_with("proxy.toml:3:10: invalid listen address `localhost:http`"), "{e}");
    let e = err(&MINIMAL.replace("[releases]", "[releases]\nwarm-check-interval = \"10ms\""));
    assert!(e.starts_with("proxy.toml:6:23: warm-check-interval must be at least 100ms"), "{e}");
    let e = err(&format!("{MINIMAL}\n[admin]\nnice = -21\n"));
    assert!(e.contains(":8: nice must be between -20 and 19"), "{e}");
    let e = err(&format!("{MINIMAL}\n[admin]\nrealtime = \"yes\"\n"));
    assert!(e.starts_with("proxy.toml:14:12: invalid type: string \"yes\", expected a boolean"), "{e}");
}

#[test]
fn check_fields_must_fit_kind() {
    let text =
        MINIMAL.replace("routes = [\"/\"]", "routes = [\"/\"]\nchecks = [{ kind = \"http\", path = \"/health\", query = \"{ x }\" }]");
    let e = err(&text);
    assert!(e.contains("`query` does not apply to http checks"), "{e}");
}

#[test]
fn listen_addresses_must_not_overlap() {
    let e = err(&format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:8080\"\n"));
    assert!(e.starts_with("proxy.toml:14:10: admin listen 127.0.0.1:8080 overlaps proxy listen 127.0.0.1:8080"), "{e}");
    let e = err(&MINIMAL.replace("\"127.0.0.1:8080\"", "\"0.0.0.0:9901\""));
    assert!(e.starts_with("proxy.toml:3:10: the default admin listen address 127.0.0.1:9901 overlaps proxy listen 0.0.0.0:9901"), "{e}");
    let e = err(&MINIMAL.replace("\"127.0.0.1:8080\"", "[\"[::]:8080\", \"127.0.0.1:8080\"]"));
    assert!(e.starts_with("proxy.toml:3:10: listen addresses [::]:8080 and 127.0.0.1:8080 overlap"), "{e}");
    // distinct IPs, ports or families are fine
    for (a, b) in [("127.0.0.1:8080", "127.0.0.2:8080"), ("127.0.0.1:8080", "127.0.0.1:8081"), ("0.0.0.0:8080", "[::1]:8080")] {
        let text = MINIMAL.replace("\"127.0.0.1:8080\"", &format!("[\"{a}\", \"{b}\"]"));
        assert!(parse(Path::new("proxy.toml"), &text).is_ok(), "{a} {b}");
    }
}

const DOCKER: &str = r#"
[docker]
network = "shop"
keep-releases = 2
deploy-timeout = "90s"

[[service]]
name = "worker"
port = 3020
image = "ghcr.io/acme/worker"
overlap = false

[service.container]
env = { NODE_ENV = "production" }
volumes = ["assets:/data", "/srv/conf:/conf:ro"]
command = ["node", "worker.js"]
memory = "512m"
cpus = 1.5
healthcheck = { test = ["/bin/probe"], interval = "2s", retries = 5 }
"#;

#[test]
fn docker_section_and_service_containers() {
    let c = parse(Path::new("proxy.toml"), &format!("{MINIMAL}{DOCKER}")).unwrap();
    let d = c.fixed.deploy.expect("[docker] set");
    assert_eq!((d.network.as_str(), d.keep_releases), ("shop", 2));
    assert_eq!((d.deploy_timeout, d.stop_timeout), (Duration::from_secs(90), Duration::from_secs(10)));
    assert!(d.services[0].is_none(), "server has no image: backends from the template");
    let w = d.services[1].as_ref().unwrap();
    assert_eq!(w.repository, "ghcr.io/acme/worker");
    assert_eq!(w.env, ["NODE_ENV=production"]);
    assert_eq!(w.volumes, ["assets:/data", "/srv/conf:/conf:ro"]);
    assert_eq!(w.memory_bytes, Some(512 << 20));
    assert_eq!(w.cpus, Some(1.5));
    assert!(!w.overlap);
    let h = w.healthcheck.as_ref().unwrap();
    assert_eq!((h.test.clone(), h.interval, h.retries), (vec!["/bin/probe".to_string()], Some(Duration::from_secs(2)), Some(5)));
    // without [docker] nothing is deployed
    assert!(parse(Path::new("proxy.toml"), MINIMAL).unwrap().fixed.deploy.is_none());
}

#[test]
fn docker_errors_point_at_the_value() {
    let full = format!("{MINIMAL}{DOCKER}");
    let e = err(&full.replace("ghcr.io/acme/worker", "ghcr.io/acme/worker:elm"));
    assert!(e.starts_with("proxy.toml:21:9: image `ghcr.io/acme/worker:elm` has a tag (`elm`): the tag is the release name"), "{e}");
    let e = err(&full.replace("\"512m\"", "\"lots\""));
    assert!(e.starts_with("proxy.toml:28:10: invalid memory limit `lots`"), "{e}");
    let e = err(&full.replace("cpus = 1.5", "cpus = 0.0"));
    assert!(e.starts_with("proxy.toml:29:8: cpus must be a positive number"), "{e}");
    let e = err(&full.replace("\"/srv/conf:/conf:ro\"", "\"conf\""));
    assert!(e.starts_with("proxy.toml:26:28: invalid volume `conf`"), "{e}");
    let e = err(&full.replace("network = \"shop\"", "network = \"shop net\""));
    assert!(e.starts_with("proxy.toml:14:11: invalid Docker network name `shop net`"), "{e}");
    let e = err(&full.replace("network = \"shop\"", "network = \"shop\"\nsocket = \"docker.sock\""));
    assert!(e.starts_with("proxy.toml:15:10: invalid Docker socket `docker.sock`"), "{e}");
    let e = err(&full.replace("keep-releases = 2", "keep-release = 2"));
    assert!(e.starts_with("proxy.toml:15:1: unknown field `keep-release`"), "{e}");
    let e = err(&full.replace("cpus = 1.5", "cpu = 1.5"));
    assert!(e.starts_with("proxy.toml:29:1: unknown field `cpu`"), "{e}");
    let e = err(&full.replace("deploy-timeout = \"90s\"", "deploy-timeout = \"soon\""));
    assert!(e.starts_with("proxy.toml:16:18: invalid duration `soon`"), "{e}");
    // image without [docker]
    let without = full.replace("[docker]\nnetwork = \"shop\"\nkeep-releases = 2\ndeploy-timeout = \"90s\"\n", "");
    let e = err(&without);
    assert!(e.contains("service `worker` sets how canopy runs its containers, but there is no [docker] section"), "{e}");
    // container table without image
    let e = err(&full.replace("image = \"ghcr.io/acme/worker\"\n", ""));
    assert!(e.contains("[service.container] of service `worker` needs `image`"), "{e}");
    // env file: missing, then a bad line with its line number
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let text = full.replace("env = {", "env-file = \"worker.env\"\nenv = {");
    let e = parse(&path, &text).unwrap_err().to_string();
    assert!(e.contains("cannot read env file") && e.contains("worker.env"), "{e}");
    std::fs::write(dir.path().join("worker.env"), "DB=postgres\nBAD KEY=1\n").unwrap();
    let e = parse(&path, &text).unwrap_err().to_string();
    assert!(e.contains("line 2: variable name `BAD KEY` contains whitespace"), "{e}");
    std::fs::write(dir.path().join("worker.env"), "DB=postgres\n").unwrap();
    let c = parse(&path, &text).unwrap();
    assert_eq!(c.fixed.deploy.unwrap().services[1].as_ref().unwrap().env, ["DB=postgres", "NODE_ENV=production"]);
}

#[test]
fn memory_limits() {
    assert_eq!(memory("512m"), Some(512 << 20));
    assert_eq!(memory("2G"), Some(2 << 30));
    assert_eq!(memory("8388608"), Some(8 << 20));
    assert_eq!(memory("1m"), None, "Docker refuses less than 6 MiB");
    assert_eq!(memory("m"), None);
}

#[test]
fn public_admin_needs_token() {
    let text = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9901\"\n");
    let e = err(&text);
    assert!(e.contains("set `token-file`"), "{e}");
}

#[test]
fn misspelt_keys_say_did_you_mean() {
    let e = err(&MINIMAL.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\nlisten_tls = \"127.0.0.1:8443\""));
    assert!(
        e.starts_with("proxy.toml:4:1: unknown field `listen_tls` (did you mean `listen-tls`?), expected one of `listen`, `listen-tls`"),
        "{e}"
    );
    assert!(e.contains("4 | listen_tls = \"127.0.0.1:8443\"\n  | ^"), "{e}");
    let e = err(&MINIMAL.replace("[releases]", "[releases]\nvalidation-windows = \"5m\""));
    assert!(e.starts_with("proxy.toml:6:1: unknown field `validation-windows` (did you mean `validation-window`?)"), "{e}");
    let e =
        err(&MINIMAL
            .replace("routes = [\"/\"]", "routes = [\"/\"]\nchecks = [{ kind = \"http\", path = \"/health\", expect_status = 204 }]"));
    assert!(e.starts_with("proxy.toml:12:46: unknown field `expect_status` (did you mean `expect-status`?)"), "{e}");
    let e = err(&MINIMAL.replace("routes = [\"/\"]", "routes = [\"/\"]\nchecks = [{ kind = \"htpp\", path = \"/health\" }]"));
    assert!(e.starts_with("proxy.toml:12:20: unknown variant `htpp` (did you mean `http`?), expected one of `http`, `graphql`"), "{e}");
    let e = err(&format!("{MINIMAL}\n[admin]\ntoken_file = \"token\"\n"));
    assert!(e.starts_with("proxy.toml:14:1: unknown field `token_file` (did you mean `token-file`?)"), "{e}");
    let e = err(&MINIMAL.replace("[proxy]", "[proxi]"));
    assert!(e.starts_with("proxy.toml:2:2: unknown field `proxi` (did you mean `proxy`?)"), "{e}");
    // nothing close: the message stays as it was
    let e = err(&MINIMAL.replace("port = 3000", "port = 3000\nreplicas = 2"));
    assert!(e.starts_with("proxy.toml:11:1: unknown field `replicas`, expected one of `name`, `port`"), "{e}");
}

#[test]
fn tables_with_the_wrong_brackets_say_which_to_write() {
    // `[release]` written for `[releases]`
    let e = err(&MINIMAL.replace("[releases]", "[release]"));
    assert!(e.starts_with("proxy.toml:5:1: invalid type: map, expected a sequence: the release settings"), "{e}");
    assert!(e.contains("are the section `[releases]`; `[[release]]` (double brackets) adds one seed release"), "{e}");
    assert!(e.contains("5 | [release]\n  | ^"), "{e}");
    let e = err(&MINIMAL.replace("[[service]]", "[service]"));
    assert!(
        e.starts_with("proxy.toml:8:1: invalid type: map, expected a sequence: `service` is a list of tables, write `[[service]]`"),
        "{e}"
    );
    let e = err(&MINIMAL.replace("[releases]", "[[releases]]"));
    assert!(e.starts_with("proxy.toml:5:1: ") && e.contains("`releases` is a single table, write `[releases]` (single brackets)"), "{e}");
}

/// The text of `MINIMAL` with `edit` applied, parsed.
fn edited(edit: impl FnOnce(&str) -> String) -> Config {
    parse(Path::new("/etc/canopy/proxy.toml"), &edit(MINIMAL)).unwrap()
}

#[test]
fn the_typed_diff_names_each_change_in_its_class() {
    let base = edited(str::to_string);
    let same = edited(|t| format!("# a comment\n{t}"));
    assert_eq!((base.fixed.changes(&same.fixed), base.live.changes(&same.live)), (vec![], vec![]));
    assert_eq!((&base.fixed, &base.live), (&same.fixed, &same.live));

    // needs `serve --upgrade`, named with old -> new
    let moved = edited(|t| t.replace("127.0.0.1:8080", "127.0.0.1:8081").replace("[proxy]", "[proxy]\nthreads = 3\nh2c = true"));
    let threads_before = base.fixed.threads;
    assert_eq!(
        base.fixed.changes(&moved.fixed),
        [
            "[proxy] listen ([127.0.0.1:8080] -> [127.0.0.1:8081])".to_string(),
            "[proxy] h2c (false -> true)".to_string(),
            format!("[proxy] threads ({threads_before} -> 3)"),
        ]
    );
    assert_eq!(base.live.changes(&moved.live), Vec::<&str>::new());
    let state = edited(|t| format!("{t}\n[admin]\nstate-file = \"/var/lib/canopy/state.json\"\n"));
    assert_eq!(
        base.fixed.changes(&state.fixed),
        [
            "[admin] state-file (/etc/canopy/canopy-state.json -> /var/lib/canopy/state.json)",
            "[admin] upgrade-socket (/etc/canopy/canopy-state.json.upgrade.sock -> /var/lib/canopy/state.json.upgrade.sock)",
        ],
        "the pid file moves with the state file and is named by it"
    );

    // applied in place, named by area
    let live = edited(|t| {
        t.replace("routes = [\"/\"]", "routes = [\"/\", \"/api\"]\nchecks = [{ kind = \"http\", path = \"/health\" }]")
            .replace("[proxy]", "[proxy]\nconnect-timeout = \"1s\"\naccess-log = \"stdout\"")
            .replace("[releases]", "[releases]\npreview = true\nhook-timeout = \"5s\"\nvalidation-window = \"1m\"")
    });
    assert_eq!(base.fixed.changes(&live.fixed), Vec::<String>::new());
    assert_eq!(
        base.live.changes(&live.live),
        [
            "services, routes and address template",
            "checks",
            "proxy timeouts, retries, HTTPS redirect and HSTS",
            "preview",
            "validation window",
            "retire hooks",
            "access log"
        ]
    );
}

#[test]
fn a_new_admin_token_is_a_change_even_when_one_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let text = format!("{MINIMAL}\n[admin]\ntoken-file = \"token\"\n");
    std::fs::write(dir.path().join("token"), "first-token-0123456789").unwrap();
    let first = parse(&path, &text).unwrap();
    std::fs::write(dir.path().join("token"), "second-token-0123456789").unwrap();
    let second = parse(&path, &text).unwrap();
    assert_eq!(first.live.changes(&second.live), ["admin token"]);
    assert!(!format!("{:?}", first.live.changes(&second.live)).contains("second-token"), "the reply never shows the token");
}

#[test]
fn a_refused_container_change_names_variables_but_not_their_values() {
    let docker = |password: &str| {
        format!("{MINIMAL}[docker]\nnetwork = \"shop\"\n\n[[service]]\nname = \"worker\"\nport = 3020\nimage = \"ghcr.io/acme/worker\"\n\n[service.container]\nenv = {{ DB_PASSWORD = \"{password}\" }}\n")
    };
    let old = parse(Path::new("proxy.toml"), &docker("hunter2")).unwrap();
    let new = parse(Path::new("proxy.toml"), &docker("correct-horse")).unwrap();
    let changes = old.fixed.changes(&new.fixed);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(
        changes[0].starts_with("[docker] and the services' image / container / overlap (") && changes[0].contains("DB_PASSWORD=…"),
        "{changes:?}"
    );
    assert!(!changes[0].contains("hunter2") && !changes[0].contains("correct-horse"), "{changes:?}");
}

#[test]
fn body_limits_default_inherit_and_override() {
    let limits = |c: &Config| c.live.topology.services().iter().map(|s| s.max_request_body).collect::<Vec<_>>();
    let c = parse(Path::new("proxy.toml"), MINIMAL).unwrap();
    assert_eq!(limits(&c), [Some(10 << 20)], "the documented default");
    let text = MINIMAL.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\nmax-request-body = \"512k\"");
    assert_eq!(limits(&parse(Path::new("proxy.toml"), &text).unwrap()), [Some(512 << 10)]);
    let text = text.replace("port = 3000", "port = 3000\nmax-request-body = \"off\"");
    assert_eq!(limits(&parse(Path::new("proxy.toml"), &text).unwrap()), [None]);
    let e = err(&text.replace("\"off\"", "\"ten megs\""));
    assert!(e.contains("proxy.toml:") && e.contains("invalid max-request-body `ten megs`"), "{e}");
}

#[test]
fn error_pages_directory_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let text = MINIMAL.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\nerror-pages = \"pages\"");
    let e = parse(&path, &text).unwrap_err().to_string();
    assert!(e.contains("proxy.toml:4:") && e.contains("is not a directory"), "{e}");
    std::fs::create_dir(dir.path().join("pages")).unwrap();
    let e = parse(&path, &text).unwrap_err().to_string();
    assert!(e.contains("holds none of 404.html, 413.html, 502.html, 503.html, 504.html"), "{e}");
    std::fs::write(dir.path().join("pages/502.html"), "<h1>ours</h1>").unwrap();
    let c = parse(&path, &text).unwrap();
    assert_eq!(c.live.proxy.error_pages.page(502).unwrap().as_ref(), b"<h1>ours</h1>");
}

#[test]
fn trusted_proxies_and_client_ip_header_are_checked() {
    let with = |lines: &str| MINIMAL.replace("listen = \"127.0.0.1:8080\"", &format!("listen = \"127.0.0.1:8080\"\n{lines}"));
    let e = err(&with("client-ip-header = \"CF-Connecting-IP\""));
    assert!(e.contains("proxy.toml:4:") && e.contains("needs `trusted-proxies`"), "{e}");
    let e = err(&with("trusted-proxies = [\"10.0.0.0/8\", \"10.0.0.0/40\"]"));
    assert!(e.contains("proxy.toml:4:") && e.contains("invalid address block `10.0.0.0/40`"), "{e}");
    let e = err(&with("trusted-proxies = []"));
    assert!(e.contains("trusted-proxies is empty"), "{e}");
    let c = parse(Path::new("proxy.toml"), &with("trusted-proxies = [\"10.0.0.0/8\"]\nclient-ip-header = \"CF-Connecting-IP\"")).unwrap();
    let source = c.live.proxy.client_ip.unwrap();
    assert_eq!((source.header.as_str(), source.trusted.len()), ("cf-connecting-ip", 1));
}

#[test]
fn canonical_host_is_a_host_name_alone() {
    let with = |v: &str| MINIMAL.replace("listen = \"127.0.0.1:8080\"", &format!("listen = \"127.0.0.1:8080\"\ncanonical-host = \"{v}\""));
    let c = parse(Path::new("proxy.toml"), &with("Shop.Example")).unwrap();
    assert_eq!(c.live.proxy.canonical_host.as_deref(), Some("shop.example"));
    for bad in ["https://shop.example", "shop.example:443", "shop.example/", ""] {
        let e = err(&with(bad));
        assert!(e.contains("proxy.toml:4:") && e.contains("invalid canonical-host"), "{bad}: {e}");
    }
}

#[test]
fn cluster_section_parses_with_defaults_and_refuses_what_cannot_work() {
    let with = |cluster: &str| format!("{MINIMAL}\n[cluster]\n{cluster}\n");
    let c = parse(Path::new("proxy.toml"), &with("etcd = [\"http://10.0.0.1:2379\"]\nnode = \"web-1\"")).unwrap();
    let cluster = c.fixed.cluster.expect("[cluster]");
    assert_eq!((cluster.node.as_str(), cluster.prefix.as_str()), ("web-1", "/canopy"));
    assert_eq!((cluster.session_ttl, cluster.apply_timeout), (Duration::from_secs(5), Duration::from_secs(10)));
    let e = err(&with("etcd = []"));
    assert!(e.contains("`etcd` lists no endpoint"), "{e}");
    let e = err(&with("etcd = [\"10.0.0.1:2379\"]"));
    assert!(e.contains("is not an http:// URL"), "{e}");
    let e = err(&with("etcd = [\"http://a:2379\"]\nsession-ttl = \"1500ms\""));
    assert!(e.contains("whole seconds, at least 2s"), "{e}");
    let e = err(&with("etcd = [\"http://a:2379\"]\nsession-ttl = \"10s\""));
    assert!(e.contains("apply-timeout (10s) must be longer than session-ttl (10s)"), "{e}");
    let e = err(&with("etcd = [\"http://a:2379\"]\nnode = \"web 1\""));
    assert!(e.contains("node name `web 1`"), "{e}");
    let e = err(&with("etcd = [\"http://a:2379\"]\nprefix = \"canopy\""));
    assert!(e.contains("must start with `/`"), "{e}");
}

#[test]
fn the_fleet_example_config_parses() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123").unwrap();
    let text = include_str!("../../deploy/proxy.fleet.toml").replace("/run/secrets/canopy-admin-token", token.to_str().unwrap());
    let c = parse(&dir.path().join("proxy.toml"), &text).unwrap();
    let cluster = c.fixed.cluster.expect("[cluster]");
    assert_eq!(cluster.endpoints.len(), 3);
    assert_eq!(cluster.prefix, "/canopy/shop");
}
