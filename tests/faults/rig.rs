//! What the fault tests share: canopy's descriptors and connections, a raw
//! upstream acting out one fault, the rig (juniper live, `oak` on a fake), and
//! raw client requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_testkit::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// measuring canopy
// ---------------------------------------------------------------------------

/// canopy's open file descriptors.
pub(crate) fn fds(c: &Canopy) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", c.child.id())).map(|d| d.count()).unwrap_or(0)
}

/// canopy's open connections on the proxy listener (accepted client sockets).
pub(crate) fn client_conns(c: &Canopy) -> usize {
    tcp_states(c.child.id(), c.proxy.port()).iter().filter(|s| *s != "0A").count()
}

/// Extra descriptors tolerated over the baseline: pooled upstream keep-alive
/// connections and the admin connection used to read metrics. Faults are
/// repeated more often than this, so a per-fault leak cannot hide in it.
pub(crate) const FD_SLACK: usize = 3;
pub(crate) const REPEAT: usize = 6;

/// Waits until the in-flight gauge is 0, no client connection is open and
/// the descriptor count is back near `base`.
pub(crate) async fn no_leaks(c: &Canopy, base: usize, after: &str) {
    eventually(&format!("in-flight gauge back to 0 after {after}"), Duration::from_secs(5), || async { inflight(c).await == 0 }).await;
    eventually(&format!("client connections closed after {after}"), Duration::from_secs(5), || std::future::ready(client_conns(c) == 0))
        .await;
    eventually(&format!("fd count back to baseline {base} (+{FD_SLACK}) after {after}"), Duration::from_secs(5), || {
        std::future::ready(fds(c) <= base + FD_SLACK)
    })
    .await;
}

/// Normal requests to both routed services of the live release are served.
pub(crate) async fn served_normally(c: &Canopy) {
    let (code, release, body) = get(c, "/products").await;
    assert_eq!((code, release.as_str()), (200, "juniper"), "{body}");
    let (code, release, body) = get(c, "/shop-api/next").await;
    assert_eq!((code, release.as_str()), (200, "juniper"), "{body}");
}

// ---------------------------------------------------------------------------
// a raw upstream that misbehaves on purpose
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Act {
    /// Reads the request, answers 200 `ok` with `connection: close`.
    Answer,
    /// Reads the request, then closes without a byte.
    CloseBeforeResponse,
    /// Headers with `content-length: 1000`, 100 bytes, then RST.
    ResetMidBody,
    /// Chunked headers, one 100-byte chunk, then RST (no final chunk).
    ResetMidChunked,
    /// Headers with `content-length: 100`, then FIN.
    CloseAfterHeaders,
    /// Reads the request and never answers.
    Silent,
    /// A complete response written one byte every 10 ms.
    Drip,
    /// A close-delimited body, then shuts down its write half (keeps reading).
    HalfCloseAfterBody,
    /// Reads the request, shuts down its write half without answering.
    HalfCloseEarly,
    /// Answers with something that is not HTTP.
    Garbage,
    /// A complete chunked body (`hello world` in two chunks), `connection: close`.
    Chunked,
}

pub(crate) const DRIP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 26\r\nconnection: close\r\n\r\nabcdefghijklmnopqrstuvwxyz";

/// A raw TCP upstream acting out one fault.
pub(crate) struct Fake {
    pub(crate) addr: SocketAddr,
    /// Connections accepted.
    pub(crate) conns: Arc<AtomicUsize>,
    /// Requests read completely (headers and framed body).
    pub(crate) complete: Arc<AtomicUsize>,
    /// Connections that ended (EOF or error) before a complete request.
    pub(crate) aborted: Arc<AtomicUsize>,
    /// Connections canopy closed after the fault was acted out.
    pub(crate) closed: Arc<AtomicUsize>,
    /// Every byte received, all connections appended.
    pub(crate) received: Arc<Mutex<Vec<u8>>>,
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request (headers, then a content-length or chunked body).
/// Returns false if the peer went away first.
pub(crate) async fn read_request(s: &mut TcpStream, log: &Mutex<Vec<u8>>) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body = &buf[end + 4..];
            let cl = head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse::<usize>().unwrap());
            let done = if head.lines().any(|l| l.starts_with("transfer-encoding:")) {
                body.ends_with(b"0\r\n\r\n")
            } else {
                body.len() >= cl.unwrap_or(0)
            };
            if done {
                return true;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                log.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        }
    }
}

impl Fake {
    pub(crate) async fn spawn(act: Act) -> Fake {
        let listener = ports::tokio_listener().await;
        let fake = Fake {
            addr: listener.local_addr().unwrap(),
            conns: Default::default(),
            complete: Default::default(),
            aborted: Default::default(),
            closed: Default::default(),
            received: Default::default(),
        };
        let (conns, complete, aborted, closed, received) =
            (fake.conns.clone(), fake.complete.clone(), fake.aborted.clone(), fake.closed.clone(), fake.received.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { continue };
                conns.fetch_add(1, Ordering::SeqCst);
                let (complete, aborted, closed, received) = (complete.clone(), aborted.clone(), closed.clone(), received.clone());
                tokio::spawn(async move {
                    if !read_request(&mut s, &received).await {
                        aborted.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    complete.fetch_add(1, Ordering::SeqCst);
                    match act {
                        Act::Answer => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                        }
                        Act::CloseBeforeResponse => return,
                        Act::ResetMidBody | Act::ResetMidChunked => {
                            let head: &[u8] = if act == Act::ResetMidBody {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
                            } else {
                                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n64\r\n"
                            };
                            let _ = s.write_all(head).await;
                            let _ = s.write_all(&[b'x'; 100]).await;
                            if act == Act::ResetMidChunked {
                                let _ = s.write_all(b"\r\n").await;
                            }
                            let _ = s.flush().await;
                            // let canopy read the partial body before the reset discards it
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            #[allow(deprecated)] // linger 0 does not block: it resets
                            let _ = s.set_linger(Some(Duration::ZERO));
                            return; // drop with linger 0: RST
                        }
                        Act::CloseAfterHeaders => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n").await;
                            return;
                        }
                        Act::Silent => {}
                        Act::Drip => {
                            for b in DRIP_RESPONSE {
                                if s.write_all(&[*b]).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                        Act::HalfCloseAfterBody => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nclose-delimited body").await;
                            let _ = s.shutdown().await;
                        }
                        Act::HalfCloseEarly => {
                            let _ = s.shutdown().await;
                        }
                        Act::Garbage => {
                            let _ = s.write_all(b"SPDY/9 what is this\r\n\r\n").await;
                        }
                        Act::Chunked => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await;
                        }
                    }
                    // hold the connection until canopy closes it
                    let mut sink = [0u8; 4096];
                    loop {
                        match s.read(&mut sink).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => received.lock().unwrap().extend_from_slice(&sink[..n]),
                        }
                    }
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        fake
    }

    pub(crate) fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------
// the rig: juniper live, `oak` registered with its server service on a fake
// ---------------------------------------------------------------------------

pub(crate) struct Rig {
    pub(crate) c: Canopy,
    pub(crate) juniper: Stack,
    pub(crate) _elm: Stack,
    /// Descriptor count after warm-up.
    pub(crate) base: usize,
}

/// Registers `oak` whose `server` backends are `server` and whose other
/// services are juniper's healthy upstreams.
pub(crate) async fn register_oak(c: &Canopy, juniper: &Stack, server: &[SocketAddr]) {
    let server: Vec<String> = server.iter().map(|a| a.to_string()).collect();
    let body = json!({"backends": {
        "server": server,
        "worker": [juniper.worker.addr.to_string()],
        "storefront": [juniper.storefront.addr.to_string()]}});
    let r = client().put(c.admin_url("/releases/oak")).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "register oak: {}", r.status());
}

impl Rig {
    /// A fresh fake acting out `act`, registered as oak's only `server` backend.
    pub(crate) async fn oak_on(&self, act: Act) -> Fake {
        let fake = Fake::spawn(act).await;
        register_oak(&self.c, &self.juniper, &[fake.addr]).await;
        fake
    }
}

pub(crate) async fn rig() -> Rig {
    let (c, juniper, elm) = two_releases("", "").await;
    for _ in 0..3 {
        served_normally(&c).await;
    }
    eventually("in-flight 0 after warm-up", Duration::from_secs(5), || async { inflight(&c).await == 0 }).await;
    let base = fds(&c);
    Rig { c, juniper, _elm: elm, base }
}

/// A proxied response: status, `x-canopy-release`, body (or why it broke);
/// `Err` when no response arrived at all.
pub(crate) type Outcome = Result<(u16, String, Result<Vec<u8>, String>), String>;

/// GET through the preview release `oak` (whose server is the fake).
pub(crate) async fn get_oak(c: &Canopy, path: &str) -> Outcome {
    let r = client().get(c.url(path)).header("x-canopy-release", "oak").send().await.map_err(|e| e.to_string())?;
    let code = r.status().as_u16();
    let rel = r.headers().get("x-canopy-release").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = r.bytes().await.map(|b| b.to_vec()).map_err(|e| e.to_string());
    Ok((code, rel, body))
}

/// Runs `act` against a fresh fake REPEAT times (`times` overrides), checks each
/// outcome with `expect`, then that the next requests are served and nothing leaked.
pub(crate) async fn upstream_fault(act: Act, times: usize, expect: impl Fn(&Outcome)) -> Rig {
    let r = rig().await;
    let fake = r.oak_on(act).await;
    for _ in 0..times {
        let out = get_oak(&r.c, "/shop-api/fault").await;
        expect(&out);
        served_normally(&r.c).await;
    }
    assert_eq!(fake.conns.load(Ordering::SeqCst), times, "{act:?}: one upstream connection per request (no retry of a sent request)");
    // canopy let go of every connection to the fake. Its own sockets say so
    // for every kind of fault: none of them has the fake's address as its
    // peer any more, in any state (a connection the fake closed first and
    // canopy never closed would sit in CLOSE_WAIT). Where the fake waits for
    // canopy to close (it answered, or holds the connection open), the fake
    // also saw each one closed.
    eventually(&format!("{act:?}: canopy holds no connection to the upstream"), Duration::from_secs(5), || {
        std::future::ready(sockets_to(r.c.child.id(), fake.addr).is_empty())
    })
    .await;
    if !matches!(act, Act::CloseBeforeResponse | Act::ResetMidBody | Act::ResetMidChunked | Act::CloseAfterHeaders) {
        eventually(&format!("{act:?}: the upstream saw each connection closed by canopy"), Duration::from_secs(5), || {
            std::future::ready(fake.closed.load(Ordering::SeqCst) + fake.aborted.load(Ordering::SeqCst) >= times)
        })
        .await;
    }
    no_leaks(&r.c, r.base, &format!("{act:?}")).await;
    served_normally(&r.c).await;
    r
}

pub(crate) fn status_of(out: &Outcome) -> (u16, String, String) {
    let (code, rel, body) = out.as_ref().expect("a response");
    let text = match body {
        Ok(b) => String::from_utf8_lossy(b).into_owned(),
        Err(e) => format!("<body error: {e}>"),
    };
    (*code, rel.clone(), text)
}

// ---------------------------------------------------------------------------
// raw client requests
// ---------------------------------------------------------------------------

/// Writes `req` on a fresh connection and reads until canopy closes it (or 5 s).
/// Write errors are ignored: canopy may refuse before reading everything.
pub(crate) async fn raw(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(req).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                out.extend_from_slice(b"<still open after 5s>");
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 response (0 if none).
pub(crate) fn code(resp: &str) -> u16 {
    resp.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// One admin request on a raw connection (so paths like `/releases/..` are
/// sent as written, not normalised by a URL parser). Returns status and JSON.
pub(crate) async fn send(c: &Canopy, method: &str, path: &str, body: &str) -> (u16, Value) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        c.admin,
        body.len()
    );
    let resp = raw(c.admin, req.as_bytes()).await;
    let (head, json) = resp.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{method} {path}: no response: {resp:?}"));
    assert!(head.to_ascii_lowercase().contains("\r\ncontent-type: application/json"), "{method} {path}: {head}");
    (code(&resp), serde_json::from_str(json).unwrap_or(Value::Null))
}
