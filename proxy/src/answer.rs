//! canopy's own answers, written without the upstream: JSON errors for API
//! clients and HTML pages for browsers, redirects, ACME answers, and the
//! requests refused before routing or before their body is forwarded.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::error_pages::{wants_html, ErrorPages, Maintenance};
use crate::routing::request_host;

/// Header naming the release: set on every response, and read from requests
/// to preview a registered release.
pub const RELEASE_HEADER: &str = "x-canopy-release";

/// Response header saying why a preview request was answered by the live
/// release: `disabled` (`preview = false`) or `unknown-release` (the named
/// release is not registered). Absent on every other response.
pub const PREVIEW_HEADER: &str = "x-canopy-preview";

/// Largest request header section (request line included) canopy forwards;
/// larger ones are answered 431. pingora's own limits are far higher (1 MiB,
/// 256 lines; answered 400) and Node upstreams such as Vendure refuse more
/// than 16 KiB anyway.
pub const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

/// Writes a small JSON error response (with the release header when known).
pub(crate) async fn respond_json(session: &mut Session, status: u16, release: Option<&http::HeaderValue>, body: String) -> Result<()> {
    respond(session, status, "application/json", release, None, Bytes::from(body)).await
}

/// Answers a request canopy could not (or would not) forward: the HTML page
/// for `status` to a browser (`Accept: text/html`), else the JSON `body`.
pub(crate) async fn respond_error(
    session: &mut Session,
    status: u16,
    release: Option<&http::HeaderValue>,
    body: String,
    pages: &ErrorPages,
) -> Result<()> {
    match pages.page(status).filter(|_| wants_html(&session.req_header().headers)) {
        Some(page) => respond(session, status, HTML, release, None, page.clone()).await,
        None => respond_json(session, status, release, body).await,
    }
}

/// Answers in maintenance mode: 503 with `Retry-After`, the page for
/// browsers, JSON for API clients.
pub(crate) async fn respond_maintenance(session: &mut Session, m: &Maintenance) -> Result<()> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let retry = Some(m.retry_after(now_ms));
    if wants_html(&session.req_header().headers) {
        respond(session, 503, HTML, None, retry, m.page.clone()).await
    } else {
        respond(session, 503, "application/json", None, retry, m.json.clone()).await
    }
}

/// Answers a request a pause could not hold (past its `max`, or beyond its
/// limit of held requests): 503 with `Retry-After`, page or JSON.
pub(crate) async fn respond_paused(session: &mut Session, pages: &ErrorPages) -> Result<()> {
    let retry = Some(crate::pause::PAUSE_RETRY_AFTER);
    match pages.page(503).filter(|_| wants_html(&session.req_header().headers)) {
        Some(page) => respond(session, 503, HTML, None, retry, page.clone()).await,
        None => {
            let body = Bytes::from_static(br#"{"error":"paused: the request could not be held longer"}"#);
            respond(session, 503, "application/json", None, retry, body).await
        }
    }
}

const HTML: &str = "text/html; charset=utf-8";

/// Writes a whole uncacheable response of canopy's own (with the release
/// header when known, `Retry-After` when given), then closes the connection.
async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &'static str,
    release: Option<&http::HeaderValue>,
    retry_after: Option<u64>,
    body: Bytes,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    if let Some(r) = release {
        resp.insert_header(RELEASE_HEADER, r.clone())?;
    }
    if let Some(secs) = retry_after {
        resp.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Writes a small response with `location` (a redirect) or a plain-text body.
pub(crate) async fn respond_plain(session: &mut Session, status: u16, location: Option<String>, body: Vec<u8>) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "text/plain")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    if let Some(l) = location {
        resp.insert_header("location", l)?;
    }
    session.write_response_header(Box::new(resp), body.is_empty()).await?;
    if !body.is_empty() {
        session.write_response_body(Some(Bytes::from(body)), true).await?;
    }
    Ok(())
}

/// Answers a plaintext request with `308 Permanent Redirect` to the same
/// host (its port replaced by `port`, left out when 443), path and query
/// over `https://`. 308 keeps the method and body.
pub(crate) async fn redirect_to_https(session: &mut Session, port: u16, canonical: Option<&str>) -> Result<()> {
    let req = session.req_header();
    let host = request_host(req).unwrap_or_default();
    // `request_host` drops the port; a bracketed IPv6 literal keeps its brackets
    let host = std::str::from_utf8(host).unwrap_or_default();
    // straight to the canonical host: one redirect, not two
    let host = canonical.filter(|_| !host.is_empty()).unwrap_or(host).to_string();
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 { format!("https://{host}{target}") } else { format!("https://{host}:{port}{target}") };
    if host.is_empty() {
        return respond_json(session, 400, None, r#"{"error":"HTTPS required and the request names no host"}"#.into()).await;
    }
    respond_plain(session, 308, Some(location), Vec::new()).await
}

/// Answers a request for another host than `canonical` (e.g. `www.`) with
/// `308` to the same path and query on `canonical` (the port the request
/// named kept); returns whether it did. Requests naming no host pass.
pub(crate) async fn redirect_to_canonical(session: &mut Session, canonical: &str, tls: bool) -> Result<bool> {
    let req = session.req_header();
    let Some(host) = request_host(req) else { return Ok(false) };
    if host.eq_ignore_ascii_case(canonical.as_bytes()) {
        return Ok(false);
    }
    let port = match req.uri.port_u16() {
        Some(p) => format!(":{p}"),
        None => {
            let raw = req.headers.get(http::header::HOST).map_or(&b""[..], |v| v.as_bytes());
            String::from_utf8_lossy(raw.get(host.len()..).unwrap_or_default()).into_owned()
        }
    };
    let scheme = if tls { "https" } else { "http" };
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    respond_plain(session, 308, Some(format!("{scheme}://{canonical}{port}{target}")), Vec::new()).await?;
    Ok(true)
}

/// A request canopy refuses before routing even though pingora parsed it:
/// returns the status and JSON body.
///
/// pingora accepts `Content-Length` together with `Transfer-Encoding` (it drops
/// the length and reads chunked, as RFC 9112 6.3 allows), but such a request
/// is the classic smuggling probe: no legitimate client sends both, and a
/// front proxy may have framed it by the length. It is refused here, before
/// anything is forwarded. pingora has already removed the `Content-Length`
/// from the parsed header, so the raw header bytes are consulted.
///
/// An HTTP/1.1 request without `Host` is refused too (RFC 9112 3.2: a server
/// MUST answer it with 400); pingora already refuses two `Host` lines.
///
/// HTTP/2 requests are not checked here: the h2 codec limits their header
/// lists (64 KiB, the same limit) and refuses `Transfer-Encoding` and
/// contradicting lengths itself, and rebuilding their head as HTTP/1 bytes
/// would cost an allocation per request.
pub(crate) fn refuse(session: &Session) -> Option<(u16, String)> {
    if session.as_downstream().is_http2() {
        return None;
    }
    let raw = session.as_downstream().to_h1_raw();
    if raw.len() > MAX_REQUEST_HEADER_BYTES {
        return Some((431, format!(r#"{{"error":"request header fields too large","limit_bytes":{MAX_REQUEST_HEADER_BYTES}}}"#)));
    }
    let req = session.req_header();
    if req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST) {
        return Some((400, r#"{"error":"HTTP/1.1 request without a Host header"}"#.to_string()));
    }
    // only requests that kept a Transfer-Encoding can have had both: the
    // common request costs no scan
    if !req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    let had_length = raw.split(|b| *b == b'\n').skip(1).any(|line| {
        let name = line.split(|b| *b == b':').next().unwrap_or_default();
        name.eq_ignore_ascii_case(b"content-length")
    });
    had_length.then(|| (400, r#"{"error":"request has both Content-Length and Transfer-Encoding"}"#.to_string()))
}

/// How long a refused request body is still read (and discarded) after the
/// answer, so a client still sending it reads the answer instead of a reset
/// (of its HTTP/1 connection or h2 stream).
const REFUSED_BODY_LINGER: Duration = Duration::from_secs(1);

/// Whether the request's body is larger than `limit` bytes, known before
/// anything is forwarded. A declared `Content-Length` (HTTP/1 framing, and
/// checked against the DATA frames by the h2 codec) is compared at once; a
/// body of unknown length (chunked, or h2 without a length) is read whole
/// first, kept (at most `limit` bytes) in the session's retry buffer, which
/// pingora sends upstream as the body once connected.
pub(crate) async fn body_over_limit(session: &mut Session, limit: u64) -> Result<bool> {
    if let Some(len) = session.req_header().headers.get(http::header::CONTENT_LENGTH) {
        let declared = len.to_str().ok().and_then(|v| v.split(',').next()).and_then(|v| v.trim().parse::<u64>().ok());
        return Ok(declared.unwrap_or(0) > limit);
    }
    if session.is_body_empty() {
        return Ok(false);
    }
    session.as_downstream_mut().enable_retry_buffering_up_to(usize::try_from(limit).unwrap_or(usize::MAX));
    let mut read = 0u64;
    // a bad chunk or a client gone is the client's fault (400 or nothing), not canopy's
    while let Some(chunk) = session.read_request_body().await.map_err(|e| e.into_down())? {
        read += chunk.len() as u64;
        if read > limit {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Answers 413 for a body over `limit`, then reads the rest of the body for
/// a moment (an HTTP/1 connection closes after).
pub(crate) async fn refuse_body(session: &mut Session, limit: u64, pages: &ErrorPages) -> Result<()> {
    let body = format!(r#"{{"error":"request body too large","limit_bytes":{limit}}}"#);
    respond_error(session, 413, None, body, pages).await?;
    let _ = tokio::time::timeout(REFUSED_BODY_LINGER, session.drain_request_body()).await;
    Ok(())
}
