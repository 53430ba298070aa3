//! A small real HTTP/1.1 upstream for tests, benchmarks and the demo
//! (examples/upstream.rs, and in a container for tests/deploy.rs): it reports
//! which release and service answered (JSON `release`, or `x-release` on
//! echoed bodies), echoes bodies byte for byte, answers health and GraphQL
//! probes, sleeps on request (`?ms=N`), and echoes WebSocket messages. Serves
//! whatever listener it is given (tests pass 127.0.0.1:0).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// Header on every response: when the request reached this upstream, in
/// microseconds since [`epoch`] (comparable with the test's own `Instant`s).
pub const RECEIVED_HEADER: &str = "x-upstream-received-us";

/// Header on echoed bodies (`/echo...`): the release that answered (other
/// answers say it in their JSON body's `release`).
pub const RELEASE_HEADER: &str = "x-release";

/// Header added when the environment has `UPSTREAM_UNIX_RECEIVED=1` (the
/// container image of tests/deploy.rs): when the request arrived, in
/// microseconds since the Unix epoch, for a test in another process (the
/// host's clock is the container's).
pub const UNIX_RECEIVED_HEADER: &str = "x-upstream-received-unix-us";

/// The shared time origin for [`RECEIVED_HEADER`].
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The start of the user agent of canopy's validation checks.
const CHECKS_USER_AGENT: &[u8] = b"canopy-validator/";

/// Behaviour switches shared with the running server (flip them live).
#[derive(Debug, Default)]
pub struct Knobs {
    /// GraphQL answers carry an `errors` array (like Vendure after a failed migration).
    pub graphql_errors: AtomicBool,
    /// `/health` answers 503.
    pub unhealthy: AtomicBool,
    /// Answer 500 to this many of every 1,000 requests (spread evenly; the
    /// `/health` and GraphQL probes excepted, so checks still pass: a release
    /// that is sick only under traffic).
    pub error_permille: AtomicU32,
    /// Wait this many milliseconds before answering (probes excepted)...
    pub delay_ms: AtomicU64,
    /// ...plus up to this many more, spread evenly.
    pub jitter_ms: AtomicU64,
}

impl Knobs {
    /// Knobs from `UPSTREAM_FAULTS` for `release` (containers, where a test
    /// cannot reach the knobs): `oak:error=200,delay=40,jitter=10;elm:...`
    /// sets them for the releases it names.
    pub fn from_env(release: &str) -> Knobs {
        let knobs = Knobs::default();
        let faults = std::env::var("UPSTREAM_FAULTS").unwrap_or_default();
        for spec in faults.split(';') {
            let Some((name, settings)) = spec.split_once(':') else { continue };
            if name.trim() != release {
                continue;
            }
            for setting in settings.split(',') {
                let (key, value) = setting.split_once('=').unwrap_or((setting, "0"));
                let n: u64 = value.trim().parse().unwrap_or(0);
                match key.trim() {
                    "error" => knobs.error_permille.store(n as u32, Ordering::Relaxed),
                    "delay" => knobs.delay_ms.store(n, Ordering::Relaxed),
                    "jitter" => knobs.jitter_ms.store(n, Ordering::Relaxed),
                    _ => {}
                }
            }
        }
        knobs
    }

    /// Whether the `n`th request gets a 500, and how long it waits first.
    fn fault(&self, n: usize) -> (bool, Duration) {
        let permille = u64::from(self.error_permille.load(Ordering::Relaxed));
        // a fixed scramble of the request number: errors and jitter spread evenly, not in runs
        let r = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let fail = permille > 0 && r % 1000 < permille;
        let jitter = self.jitter_ms.load(Ordering::Relaxed);
        let extra = if jitter > 0 { (r >> 10) % (jitter + 1) } else { 0 };
        (fail, Duration::from_millis(self.delay_ms.load(Ordering::Relaxed) + extra))
    }
}

/// A running upstream.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered, canopy's own checks not counted: its live and
    /// warm watches check every release they watch every second, so counting
    /// them would make the count depend on timing.
    pub hits: Arc<AtomicUsize>,
    /// canopy's checks answered (user agent `canopy-validator/...`).
    pub checks: Arc<AtomicUsize>,
    /// Live behaviour switches.
    pub knobs: Arc<Knobs>,
}

struct Ctx {
    release: String,
    service: String,
    hits: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    knobs: Arc<Knobs>,
}

fn query_ms(req: &Request<Incoming>) -> u64 {
    req.uri().query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("ms="))).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn json(status: u16, v: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", "application/json").body(Full::new(Bytes::from(v.to_string()))).unwrap()
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    static UNIX: OnceLock<bool> = OnceLock::new();
    let received = epoch().elapsed().as_micros().to_string();
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros().to_string();
    let mut resp = respond(ctx, req).await?;
    resp.headers_mut().insert(RECEIVED_HEADER, received.parse().unwrap());
    if *UNIX.get_or_init(|| std::env::var_os("UPSTREAM_UNIX_RECEIVED").is_some()) {
        resp.headers_mut().insert(UNIX_RECEIVED_HEADER, unix.parse().unwrap());
    }
    Ok(resp)
}

async fn respond(ctx: Arc<Ctx>, mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let from_canopy = req.headers().get(hyper::header::USER_AGENT).is_some_and(|ua| ua.as_bytes().starts_with(CHECKS_USER_AGENT));
    let n = if from_canopy { &ctx.checks } else { &ctx.hits }.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let probe = path == "/health" || ((path == "/shop-api" || path == "/admin-api") && req.method() == hyper::Method::POST);
    if !probe {
        let (fail, wait) = ctx.knobs.fault(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if fail {
            return Ok(json(500, serde_json::json!({"error": "induced failure", "release": ctx.release})));
        }
    }
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    if path == "/ws" && header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        let key = header("sec-websocket-key").unwrap_or_default();
        let accept = derive_accept_key(key.as_bytes());
        let release = ctx.release.clone();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let reply = format!("{release}:{}", msg.into_text().unwrap());
                        if ws.send(reply.into()).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let method = req.method().clone();
    let ms = query_ms(&req);
    let xff = header("x-forwarded-for");
    let xfp = header("x-forwarded-proto");
    let xfh = header("x-forwarded-host");
    let preview = header("x-canopy-release");
    let (request_id, cf_ip) = (header("x-request-id"), header("cf-connecting-ip"));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(json(400, serde_json::json!({"error": "body"}))),
    };
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let resp = match path.as_str() {
        "/health" if ctx.knobs.unhealthy.load(Ordering::Relaxed) => json(503, serde_json::json!({"status": "down"})),
        "/health" => json(200, serde_json::json!({"status": "ok", "release": ctx.release})),
        p if p.starts_with("/echo") => Response::builder()
            .status(200)
            .header("content-type", "application/octet-stream")
            .header(RELEASE_HEADER, ctx.release.as_str())
            .body(Full::new(body))
            .unwrap(),
        "/shop-api" | "/admin-api" if method == hyper::Method::POST => {
            if ctx.knobs.graphql_errors.load(Ordering::Relaxed) {
                json(200, serde_json::json!({"data": null, "errors": [{"message": "relation \"product\" does not exist"}]}))
            } else {
                json(200, serde_json::json!({"data": {"products": {"totalItems": 1}}, "release": ctx.release}))
            }
        }
        _ => json(
            200,
            serde_json::json!({
                "release": ctx.release,
                "service": ctx.service,
                "method": method.as_str(),
                "path": path,
                "body_len": body.len(),
                "x_forwarded_for": xff,
                "x_forwarded_proto": xfp,
                "x_forwarded_host": xfh,
                "x_canopy_release": preview,
                "x_request_id": request_id,
                "cf_connecting_ip": cf_ip,
            }),
        ),
    };
    Ok(resp)
}

/// Serves on `listener` until the runtime ends, answering as `release`/`service`.
pub fn serve(listener: TcpListener, release: &str, service: &str) -> Upstream {
    let addr = listener.local_addr().unwrap();
    let (hits, checks) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let knobs = Arc::new(Knobs::from_env(release));
    let ctx = Arc::new(Ctx {
        release: release.into(),
        service: service.into(),
        hits: hits.clone(),
        checks: checks.clone(),
        knobs: knobs.clone(),
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(ctx.clone(), req));
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
            });
        }
    });
    Upstream { addr, hits, checks, knobs }
}

/// Binds 127.0.0.1:0 and serves.
pub async fn spawn(release: &str, service: &str) -> Upstream {
    serve(crate::ports::tokio_listener().await, release, service)
}

/// An upstream that can die and come back on the same address, like a
/// backend process killed and restarted: [`Killable::kill`] closes its
/// listener and cuts every open connection (new ones are refused),
/// [`Killable::restart`] listens again.
pub struct Killable {
    /// Where it listens (while alive).
    pub addr: SocketAddr,
    release: String,
    service: String,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Killable {
    /// Binds 127.0.0.1:0 and serves as `release`/`service`.
    pub async fn spawn(release: &str, service: &str) -> Killable {
        let listener = crate::ports::tokio_listener().await;
        let mut k = Killable { addr: listener.local_addr().unwrap(), release: release.into(), service: service.into(), server: None };
        k.serve(listener);
        k
    }

    fn serve(&mut self, listener: TcpListener) {
        let ctx = Arc::new(Ctx {
            release: self.release.clone(),
            service: self.service.clone(),
            hits: Arc::new(AtomicUsize::new(0)),
            checks: Arc::new(AtomicUsize::new(0)),
            knobs: Arc::new(Knobs::default()),
        });
        self.server = Some(tokio::spawn(async move {
            // the connections live in this task's set: aborting the task drops them all
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let ctx = ctx.clone();
                connections.spawn(async move {
                    let svc = service_fn(move |req| handle(ctx.clone(), req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    /// Dies: the listener closes (connections are refused) and every open
    /// connection is cut.
    pub fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Comes back on the same address (waits until the old listener is gone).
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "restart of an upstream that was not killed");
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => panic!("rebinding {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}
