//! The smallest useful pingora pass-through proxy: every request goes to one
//! fixed upstream, nothing is routed, tagged, counted or logged. It is the
//! baseline that `benches/load.sh` measures canopy's per-request cost against.
//!
//! With `forward` it also does what any production pingora proxy has to:
//! the `X-Forwarded-*` headers (the textbook way, in
//! `upstream_request_filter`) and connect/read/write timeouts on the
//! upstream, as canopy does. That variant separates the cost of the
//! forwarding job from the cost of canopy's own logic.
//!
//! Usage: `bare_pingora LISTEN UPSTREAM [THREADS] [steal|nosteal] [forward]`
//! e.g.   `bare_pingora 127.0.0.1:6188 127.0.0.1:4000 1`

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::http::RequestHeader;
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
    forward: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.forward {
            // the same timeouts canopy sets by default
            let d = canopy_proxy::ProxySettings::default();
            peer.options.connection_timeout = Some(d.connect_timeout);
            peer.options.read_timeout = Some(d.upstream_timeout);
            peer.options.write_timeout = Some(d.upstream_timeout);
            peer.options.idle_timeout = Some(d.upstream_idle_timeout);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(&self, session: &mut Session, upstream: &mut RequestHeader, _ctx: &mut ()) -> Result<()> {
        if !self.forward {
            return Ok(());
        }
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            upstream.insert_header("x-forwarded-for", ip.to_string())?;
        }
        upstream.insert_header("x-forwarded-proto", "http")?;
        if let Some(host) = session.req_header().headers.get("host").cloned() {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        Ok(())
    }
}

fn main() {
    let usage = "usage: bare_pingora LISTEN UPSTREAM [THREADS] [steal|nosteal] [forward]";
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let upstream: SocketAddr = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let threads: usize = args.next().map_or(1, |t| t.parse().expect(usage));
    let work_stealing = args.next().is_none_or(|s| s != "nosteal");
    let forward = args.next().is_some_and(|s| s == "forward");

    let conf = ServerConf {
        threads,
        work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare { upstream, forward });
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    eprintln!("bare_pingora on {listen} -> {upstream} ({threads} thread(s))");
    server.run_forever();
}
