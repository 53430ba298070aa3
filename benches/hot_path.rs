//! Micro benchmark of canopy's per-request hot path: one `ArcSwap` load of the
//! release table plus routing (longest prefix + live/preview release), and
//! backend pick, against the Vendure topology from proxy.toml.
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;
use std::sync::Arc;

use canopy_proxy::{AddressTemplate, Release, ReleaseName, ReleaseTable, Route, Service, ServiceName, Snapshot, Topology, Tunables};
use criterion::{criterion_group, criterion_main, Criterion};

fn table() -> ReleaseTable {
    let svc = |n: &str, port| Service { name: ServiceName::parse(n).unwrap(), port, max_request_body: None };
    let routes = ["/shop-api", "/admin-api", "/assets", "/payments", "/health"]
        .iter()
        .map(|r| (0, Route::parse(r).unwrap()))
        .chain(std::iter::once((2, Route::parse("/").unwrap())))
        .collect();
    let topology = Arc::new(
        Topology::new(
            vec![svc("server", 3000), svc("worker", 3020), svc("storefront", 4000)],
            routes,
            AddressTemplate::parse("vendure-{service}--{release}").unwrap(),
        )
        .unwrap(),
    );
    let tunables = Arc::new(Tunables { preview: true, ..Tunables::default() });
    let table = ReleaseTable::new(topology.clone(), tunables.clone());
    let addr = |p: u16| vec![std::net::SocketAddr::from(([10, 0, 0, 1], p))];
    let releases = ["juniper", "elm", "oak"]
        .iter()
        .map(|n| Arc::new(Release::from_addrs(ReleaseName::parse(n).unwrap(), vec![addr(3000), addr(3020), addr(4000)], table.stats())))
        .collect();
    table.update(|_| Snapshot::new(1, topology, releases, Some(&ReleaseName::parse("juniper").unwrap()), tunables));
    table
}

fn bench(c: &mut Criterion) {
    let t = table();
    c.bench_function("load + route /shop-api (live)", |b| {
        b.iter(|| {
            let snap = t.load();
            let target = snap.route(Some(b"shop.example.com"), black_box(b"/shop-api"), None).unwrap();
            let backends = snap.release(target.release).backends(target.service);
            black_box(backends.pick(backends.start(), 0))
        })
    });
    c.bench_function("load + route /products/42 (fallthrough to /)", |b| {
        b.iter(|| {
            let snap = t.load();
            black_box(snap.route(None, black_box(b"/products/42"), None).unwrap())
        })
    });
    c.bench_function("load + route with preview header", |b| {
        b.iter(|| {
            let snap = t.load();
            black_box(snap.route(None, black_box(b"/shop-api"), Some(b"oak")).unwrap())
        })
    });
    c.bench_function("baseline: Arc clone only", |b| {
        let snap = t.load();
        b.iter(|| black_box(snap.clone()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
