//! The release table flipped programmatically under a real pingora server:
//! new requests go to the new release at once, in-flight ones finish on the
//! release they started on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_proxy::{
    AddressTemplate, CanopyProxy, Release, ReleaseName, ReleaseTable, Route, Service, ServiceName, Snapshot, Topology, Tunables,
};
use canopy_testkit::{client, reserve, upstream, wait_listening};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

fn name(s: &str) -> ReleaseName {
    ReleaseName::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_moves_new_requests_and_lets_inflight_finish() {
    let juniper = upstream::spawn("juniper", "storefront").await;
    let elm = upstream::spawn("elm", "storefront").await;
    let topology = Arc::new(
        Topology::new(
            vec![Service { name: ServiceName::parse("storefront").unwrap(), port: 4000, max_request_body: None }],
            vec![(0, Route::parse("/").unwrap())],
            AddressTemplate::parse("x-{release}").unwrap(),
        )
        .unwrap(),
    );
    let tunables = Arc::new(Tunables::default());
    let table = Arc::new(ReleaseTable::new(topology.clone(), tunables.clone()));
    let releases = vec![
        Arc::new(Release::from_addrs(name("juniper"), vec![vec![juniper.addr]], table.stats())),
        Arc::new(Release::from_addrs(name("elm"), vec![vec![elm.addr]], table.stats())),
    ];
    let publish = |generation: u64, live: &str| {
        table.update(|_| Snapshot::new(generation, topology.clone(), releases.clone(), Some(&name(live)), tunables.clone()));
    };
    publish(1, "juniper");

    // held until the server starts; pingora binds it by number
    let reserved = reserve();
    let port = reserved.port();
    let server_table = table.clone();
    reserved.release();
    std::thread::spawn(move || {
        let conf = ServerConf { threads: 2, grace_period_seconds: Some(0), ..ServerConf::default() };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, CanopyProxy::new(server_table));
        proxy.add_tcp(&format!("127.0.0.1:{port}"));
        server.add_service(proxy);
        server.run_forever();
    });
    wait_listening(std::process::id(), port, Duration::from_secs(10), "the in-process proxy");
    let base = format!("http://127.0.0.1:{port}");
    let client = client();
    let release_of = |r: &reqwest::Response| r.headers()["x-canopy-release"].to_str().unwrap().to_string();

    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(release_of(&r), "juniper");

    // three slow requests in flight on juniper across the flip
    let mut slow = Vec::new();
    for _ in 0..3 {
        let url = format!("{base}/products?ms=600");
        let c = client.clone();
        slow.push(tokio::spawn(async move { c.get(url).send().await.unwrap() }));
    }
    let stats = table.stats().get(&name("juniper")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.inflight() < 3 {
        assert!(Instant::now() < deadline, "slow requests never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    publish(2, "elm");
    for _ in 0..20 {
        let r = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(release_of(&r), "elm", "a request after the flip went to the old release");
    }
    for s in slow {
        let r = s.await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(release_of(&r), "juniper");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["release"], "juniper");
    }
    // the response reaches the client just before pingora's logging hook runs
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.inflight() != 0 {
        assert!(Instant::now() < deadline, "in-flight gauge stuck at {}", stats.inflight());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // and back: a flip is symmetric and instant
    publish(3, "juniper");
    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(release_of(&r), "juniper");
}
