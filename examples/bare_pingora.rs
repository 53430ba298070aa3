//! The smallest useful pingora pass-through proxy: every request goes to one
//! fixed upstream, nothing is routed, tagged, counted or logged. It is the
//! baseline that `benches/load.sh` measures canopy's per-request cost against.
//!
//! Usage: `bare_pingora LISTEN UPSTREAM [THREADS]`
//! e.g.   `bare_pingora 127.0.0.1:6188 127.0.0.1:4000 1`

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;

// Same allocator as the canopy binary, so the comparison measures the proxy
// logic and not the allocator.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let usage = "usage: bare_pingora LISTEN UPSTREAM [THREADS] [steal|nosteal]";
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let upstream: SocketAddr = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let threads: usize = args.next().map_or(1, |t| t.parse().expect(usage));
    let work_stealing = args.next().is_none_or(|s| s != "nosteal");

    let conf = ServerConf {
        threads,
        work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    eprintln!("bare_pingora on {listen} -> {upstream} ({threads} thread(s))");
    server.run_forever();
}
