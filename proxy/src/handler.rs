//! The pingora `ProxyHttp` implementation: load the snapshot once, route,
//! pick a backend of the chosen release, forward, tag the response, count.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::access_log::AccessRecord;
use crate::answer::{
    body_over_limit, redirect_to_canonical, redirect_to_https, refuse, refuse_body, respond_error, respond_json, respond_plain,
};
use crate::answer::{respond_maintenance, respond_paused, PREVIEW_HEADER, RELEASE_HEADER};
use crate::client_ip::{kept_request_id, new_request_id, Resolved, REQUEST_ID, X_FORWARDED_FOR};
use crate::front::{FrontDoor, ACME_CHALLENGE_PREFIX};
use crate::pause::Held;
use crate::routing::request_host;
use crate::settings::ProxySettings;
use crate::snapshot::{Miss, Snapshot, Target};
use crate::stats::UpstreamErrorKind;
use crate::table::ReleaseTable;

/// [`RELEASE_HEADER`] as a parsed name: lookups with it skip parsing a `&str`.
static RELEASE_NAME: http::HeaderName = http::HeaderName::from_static(RELEASE_HEADER);

/// The proxy logic; one instance serves every request of the proxy service.
/// Its settings and access log come with each request's snapshot
/// ([`crate::Tunables`]), so a config reload applies from the next request.
pub struct CanopyProxy {
    table: Arc<ReleaseTable>,
    front: Arc<FrontDoor>,
}

/// Per-request state: the snapshot loaded on arrival (kept through retries),
/// the routing decision and the bookkeeping for metrics.
#[derive(Default)]
pub struct RequestCtx {
    snapshot: Option<Arc<Snapshot>>,
    target: Option<Target>,
    rr_start: usize,
    attempts: usize,
    started: Option<Instant>,
    failure: Option<UpstreamErrorKind>,
    upstream: Option<std::net::SocketAddr>,
    tls: bool,
    /// A canary bucket the answer gives the shopper as a cookie (they had none).
    set_bucket: Option<u16>,
    /// Why a preview header was not followed, for [`PREVIEW_HEADER`].
    preview_ignored: Option<&'static str>,
    /// The client's address: the peer's, or from a trusted proxy's header.
    client: Option<IpAddr>,
    /// The request's `X-Request-ID` (when `request-id` is on).
    request_id: Option<http::HeaderValue>,
    /// How long a pause held it.
    held: Option<Duration>,
}

impl RequestCtx {
    fn release(&self) -> Option<(&Snapshot, Target)> {
        Some((self.snapshot.as_deref()?, self.target?))
    }
}

impl CanopyProxy {
    /// Builds the proxy over a shared release table (no certificates, no
    /// ACME answers: plaintext only).
    pub fn new(table: Arc<ReleaseTable>) -> Self {
        Self::with_front_door(table, FrontDoor::new())
    }

    /// Builds the proxy over a shared release table and front door (ACME
    /// answers, protocol counters).
    pub fn with_front_door(table: Arc<ReleaseTable>, front: Arc<FrontDoor>) -> Self {
        Self { table, front }
    }

    /// Resolves the request's client address (and, when `request-id` is on,
    /// its ID) into `ctx`; the resolution when `trusted-proxies` is set.
    fn client(&self, session: &Session, ctx: &mut RequestCtx, snapshot: &Snapshot) -> Option<Resolved> {
        let proxy = &snapshot.tunables().proxy;
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let headers = &session.req_header().headers;
        let from = proxy.client_ip.as_ref().zip(peer).map(|(source, peer)| source.resolve(peer, headers));
        ctx.client = from.map_or(peer, |r| Some(r.client));
        if proxy.request_id {
            let kept = from.filter(|r| r.trusted_peer).and_then(|_| kept_request_id(headers));
            ctx.request_id = Some(kept.unwrap_or_else(new_request_id));
        }
        from
    }

    fn peer(settings: &ProxySettings, addr: std::net::SocketAddr) -> Box<HttpPeer> {
        let mut peer = HttpPeer::new(addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(settings.connect_timeout);
        o.read_timeout = Some(settings.upstream_timeout);
        o.write_timeout = Some(settings.upstream_timeout);
        o.idle_timeout = Some(settings.upstream_idle_timeout);
        Box::new(peer)
    }
}

/// Rewrites the request head for the upstream: the standard forwarding
/// headers, no preview selector, one `Content-Length`.
///
/// Done on the downstream head once routing has succeeded, not in
/// `upstream_request_filter`: pingora copies the head for each upstream
/// attempt, and the parsed head has room for these headers while the
/// exactly-sized copy would be regrown (both its maps) on every request.
fn rewrite_for_upstream(session: &mut Session, ctx: &RequestCtx, from: Option<Resolved>) -> Result<()> {
    let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
    let source = ctx.snapshot.as_ref().and_then(|s| s.tunables().proxy.client_ip.as_ref());
    let req = session.req_header_mut();
    req.remove_header(&RELEASE_NAME);
    // pingora accepts identical duplicate lengths (`5, 5` or two lines; RFC
    // 9110 8.6) and forwards them as received; strict parsers such as
    // Node's refuse duplicates, so forward the one value it framed by.
    let lengths = req.headers.get_all(http::header::CONTENT_LENGTH);
    if lengths.iter().count() > 1 || lengths.iter().any(|v| v.as_bytes().contains(&b',')) {
        let first = lengths.iter().next().and_then(|v| v.to_str().ok()).and_then(|v| v.split(',').next());
        if let Some(n) = first.map(str::trim).and_then(|n| n.parse::<u64>().ok()) {
            req.insert_header(http::header::CONTENT_LENGTH, n.to_string())?;
        }
    }
    let xff = match (source, from, peer) {
        (Some(source), Some(from), Some(peer)) => {
            if !from.trusted_peer && source.header != X_FORWARDED_FOR {
                // an untrusted peer's claim (e.g. CF-Connecting-IP) does not reach the upstream either
                req.remove_header(&source.header);
            }
            Some(source.forwarded_for(&from, peer, &req.headers))
        }
        (_, _, Some(ip)) => Some(match req.headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => http::HeaderValue::try_from(format!("{prev}, {ip}")),
            None => crate::forwarded::ip_value(ip),
        }),
        _ => None,
    };
    if let Some(xff) = xff {
        req.insert_header("x-forwarded-for", xff.map_err(|_| Error::new(ErrorType::InternalError))?)?;
    }
    if let Some(id) = &ctx.request_id {
        req.insert_header(REQUEST_ID.clone(), id.clone())?;
    }
    let proto = if ctx.tls { "https" } else { "http" };
    req.insert_header("x-forwarded-proto", http::HeaderValue::from_static(proto))?;
    if let Some(host) = req.headers.get(http::header::HOST).cloned() {
        req.insert_header("x-forwarded-host", host)?;
    }
    Ok(())
}

fn classify(e: &Error) -> UpstreamErrorKind {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => UpstreamErrorKind::Timeout,
        ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError | ErrorType::SocketError | ErrorType::BindError => {
            UpstreamErrorKind::Connect
        }
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error | ErrorType::InvalidH2 => UpstreamErrorKind::Protocol,
        _ => UpstreamErrorKind::Closed,
    }
}

#[async_trait]
impl ProxyHttp for CanopyProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// Loads the release table once and routes; answers 404/503 itself when
    /// there is no route or no live release.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Some(Instant::now());
        crate::downstream::mark_head_seen();
        if self.table.drain().is_draining() {
            // answer this one, then close: the client reconnects to whoever accepts now
            session.set_keepalive(None);
        }
        if let Some((status, body)) = refuse(session) {
            respond_json(session, status, None, body).await?;
            return Ok(true);
        }
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        self.front.count_request(session.req_header().version, ctx.tls);
        let mut snapshot = self.table.load();
        if !ctx.tls {
            let path = session.req_header().uri.path();
            if path.starts_with(ACME_CHALLENGE_PREFIX) {
                if let Some(answer) = self.front.challenge(path) {
                    respond_plain(session, 200, None, answer.as_bytes().to_vec()).await?;
                    return Ok(true);
                }
            } else if let Some(port) = snapshot.tunables().proxy.https_redirect {
                redirect_to_https(session, port, snapshot.tunables().proxy.canonical_host.as_deref()).await?;
                return Ok(true);
            }
        }
        if let Some(canonical) = &snapshot.tunables().proxy.canonical_host {
            let acme = session.req_header().uri.path().starts_with(ACME_CHALLENGE_PREFIX);
            if !acme && redirect_to_canonical(session, canonical, ctx.tls).await? {
                return Ok(true);
            }
        }
        while let Some(pause) = snapshot.pause().filter(|_| !crate::pause::exempt(session.req_header().uri.path())) {
            if pause.hold().await != Held::Resumed {
                respond_paused(session, &snapshot.tunables().proxy.error_pages).await?;
                return Ok(true);
            }
            // routed by the table of the resume (a flip made while paused answers it)
            snapshot = self.table.load();
            // the release's figures (which the guard judges) start here; the access log has the hold apart
            let resumed = Instant::now();
            ctx.held = ctx.started.map(|s| resumed - s);
            ctx.started = Some(resumed);
        }
        if let Some(m) = snapshot.maintenance() {
            respond_maintenance(session, m).await?;
            return Ok(true);
        }
        let from = self.client(session, ctx, &snapshot);
        let req = session.req_header();
        let preview = req.headers.get(&RELEASE_NAME).map(|v| v.as_bytes());
        let routed = snapshot.route(request_host(req), req.uri.path().as_bytes(), preview);
        match routed {
            Ok(mut target) => {
                if let (Some(canary), false) = (snapshot.canary(), target.previewed) {
                    let bucket = crate::canary::bucket(&session.req_header().headers, ctx.client);
                    if !bucket.from_cookie {
                        ctx.set_bucket = Some(bucket.value);
                    }
                    if canary.takes(bucket.value) {
                        target.release = canary.release;
                    }
                }
                let release = snapshot.release(target.release);
                ctx.preview_ignored = match preview {
                    None => None,
                    Some(_) if !snapshot.preview() => Some("disabled"),
                    Some(want) if release.name().as_str().as_bytes() != want => Some("unknown-release"),
                    Some(_) => None,
                };
                if let Some(limit) = snapshot.topology().services()[target.service].max_request_body {
                    if body_over_limit(session, limit).await? {
                        self.front.count_body_too_large();
                        refuse_body(session, limit, &snapshot.tunables().proxy.error_pages).await?;
                        return Ok(true);
                    }
                }
                release.stats().start();
                ctx.rr_start = release.backends(target.service).start();
                ctx.target = Some(target);
                ctx.snapshot = Some(snapshot);
                rewrite_for_upstream(session, ctx, from)?;
                Ok(false)
            }
            Err(Miss::NoRoute) => {
                let pages = &snapshot.tunables().proxy.error_pages;
                respond_error(session, 404, None, r#"{"error":"no route for this path"}"#.into(), pages).await?;
                Ok(true)
            }
            Err(Miss::NoLiveRelease { service }) => {
                let svc = &snapshot.topology().services()[service].name;
                let body = format!(r#"{{"error":"no live release","service":"{svc}"}}"#);
                respond_error(session, 503, None, body, &snapshot.tunables().proxy.error_pages).await?;
                Ok(true)
            }
        }
    }

    /// The next backend of the request's release for its service, round robin;
    /// a retry moves on to the following backend.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let (snapshot, t) = ctx.release().ok_or_else(|| Error::new(ErrorType::InternalError))?;
        let backends = snapshot.release(t.release).backends(t.service);
        let Some(addr) = backends.pick(ctx.rr_start, ctx.attempts) else {
            ctx.failure = Some(UpstreamErrorKind::NoBackend);
            return Err(Error::explain(ErrorType::ConnectNoRoute, "release has no resolved backend"));
        };
        let peer = Self::peer(&snapshot.tunables().proxy, addr);
        ctx.attempts += 1;
        ctx.upstream = Some(addr);
        Ok(peer)
    }

    fn fail_to_connect(&self, _s: &mut Session, _p: &HttpPeer, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
        if let Some((snapshot, t)) = ctx.release() {
            let release = snapshot.release(t.release);
            release.stats().service(t.service).upstream_error(classify(&e));
            let backends = release.backends(t.service).addrs().len();
            // Another untried backend exists and the retry budget is not spent.
            if ctx.attempts < backends && ctx.attempts <= snapshot.tunables().proxy.max_retries {
                e.set_retry(true);
            }
        }
        e
    }

    /// Tags the response with the release that served it, and frames a body
    /// of unknown length for HTTP/1.0 clients by closing the connection.
    async fn response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        if let Some((snapshot, t)) = ctx.release() {
            resp.insert_header(RELEASE_HEADER, snapshot.release(t.release).header().clone())?;
            if let Some(why) = ctx.preview_ignored {
                resp.insert_header(PREVIEW_HEADER, http::HeaderValue::from_static(why))?;
            }
            if let (true, Some(hsts)) = (ctx.tls, &snapshot.tunables().proxy.hsts) {
                resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
            }
        }
        if let Some(id) = &ctx.request_id {
            resp.insert_header(REQUEST_ID.clone(), id.clone())?;
        }
        if let Some(bucket) = ctx.set_bucket {
            resp.append_header(http::header::SET_COOKIE, crate::canary::set_cookie(bucket, ctx.tls))?;
        }
        // pingora passes chunked upstream bodies on as chunked (and turns
        // close-delimited ones into chunked) whatever the client speaks; an
        // HTTP/1.0 client cannot read chunked framing (RFC 9112 §6.1), so
        // its body ends where the connection does
        if session.req_header().version < http::Version::HTTP_11 && resp.headers.contains_key(http::header::TRANSFER_ENCODING) {
            resp.remove_header(&http::header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        Ok(())
    }

    /// Upstream failures become a JSON 502 (504 on timeout) naming the release
    /// and service; nothing internal (addresses, error chains) is exposed.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let upstream_side = e.esource() == &ErrorSource::Upstream || ctx.failure.is_some();
        let code = match e.etype() {
            ErrorType::HTTPStatus(c) => *c,
            _ if upstream_side => {
                let kind = *ctx.failure.get_or_insert(classify(e));
                if kind == UpstreamErrorKind::Timeout {
                    504
                } else {
                    502
                }
            }
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed if e.esource() == &ErrorSource::Downstream => 0,
            _ if e.esource() == &ErrorSource::Downstream => 400,
            _ => 500,
        };
        if let (Some((snapshot, t)), Some(kind)) = (ctx.release(), ctx.failure) {
            if kind != UpstreamErrorKind::Connect {
                // connect failures were counted per attempt in fail_to_connect
                snapshot.release(t.release).stats().service(t.service).upstream_error(kind);
            }
        }
        if code > 0 && session.response_written().is_none() {
            let (header, body) = match ctx.release() {
                Some((snapshot, t)) => {
                    let release = snapshot.release(t.release);
                    let service = &snapshot.topology().services()[t.service].name;
                    let what = match (code, ctx.failure) {
                        (504, _) => "upstream timed out",
                        (_, Some(UpstreamErrorKind::NoBackend)) => "release has no resolved backend",
                        (502, _) => "upstream unavailable",
                        _ => "request failed",
                    };
                    (Some(release.header()), format!(r#"{{"error":"{what}","release":"{}","service":"{service}"}}"#, release.name()))
                }
                None => (None, format!(r#"{{"error":"request failed","status":{code}}}"#)),
            };
            let snapshot = ctx.snapshot.clone().unwrap_or_else(|| self.table.load());
            if let Err(err) = respond_error(session, code, header, body, &snapshot.tunables().proxy.error_pages).await {
                log::debug!("could not send error response: {err}");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    /// Counts the finished request and writes the access log line.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some((snapshot, t)) = ctx.release() else { return };
        let release = snapshot.release(t.release);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.map_or(Duration::ZERO, |s| s.elapsed());
        let tunables = snapshot.tunables();
        if tunables.proxy.metrics {
            release.stats().service(t.service).record(status, elapsed);
        }
        release.stats().finish();
        if let Some(log) = &tunables.access_log {
            let req = session.req_header();
            log.write(&AccessRecord {
                method: req.method.as_str(),
                path: req.uri.path(),
                release: release.name().as_str(),
                service: snapshot.topology().services()[t.service].name.as_str(),
                status,
                duration: elapsed,
                upstream: ctx.upstream,
                attempts: ctx.attempts,
                client: ctx.client,
                request_id: ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
                held: ctx.held,
            });
        }
    }
}
