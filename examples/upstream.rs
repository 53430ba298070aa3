//! Demo and benchmark upstream: `upstream RELEASE SERVICE=ADDR [SERVICE=ADDR...]`
//! serves one small HTTP server per service that says which release answered
//! (the test kit's upstream, `canopy_testkit::upstream`).

use canopy_testkit::upstream;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let release = args.next().expect("usage: upstream RELEASE SERVICE=ADDR...");
    for spec in args {
        let (service, addr) = spec.split_once('=').expect("SERVICE=ADDR");
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        upstream::serve(listener, &release, service);
        eprintln!("upstream {release}/{service} on {addr}");
    }
    std::future::pending::<()>().await;
}
