//! Optional access log: one JSON line per request, written by a background
//! thread so the request path never blocks on I/O (lines are dropped, and
//! counted, if the writer falls behind).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;

/// Lines buffered between request threads and the writer before dropping.
const QUEUE: usize = 16 * 1024;

/// What one access log line says.
pub struct AccessRecord<'a> {
    /// Request method.
    pub method: &'a str,
    /// Request path (no query string: it may carry tokens).
    pub path: &'a str,
    /// Release that served the request.
    pub release: &'a str,
    /// Service the request was routed to.
    pub service: &'a str,
    /// Status sent downstream (0 if none).
    pub status: u16,
    /// Time from arrival to end of response.
    pub duration: Duration,
    /// The backend of the last attempt.
    pub upstream: Option<SocketAddr>,
    /// Connection attempts made.
    pub attempts: usize,
    /// The client's address (behind trusted proxies, the one they name).
    pub client: Option<std::net::IpAddr>,
    /// The request's `X-Request-ID`, when `request-id` is on.
    pub request_id: Option<&'a str>,
    /// How long a pause held it before it was routed (not in `duration`).
    pub held: Option<Duration>,
}

/// Handle to the access log writer; cheap to share.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: IntCounter,
}

impl AccessLog {
    /// The process-wide count of lines dropped because a writer fell behind
    /// (`canopy_access_log_dropped_lines_total`; every writer, old and
    /// reloaded, adds to it). Register a clone to export it.
    pub fn dropped_counter() -> IntCounter {
        static DROPPED: OnceLock<IntCounter> = OnceLock::new();
        DROPPED
            .get_or_init(|| {
                IntCounter::new("canopy_access_log_dropped_lines_total", "Access log lines dropped because the writer fell behind.")
                    .expect("valid metric options")
            })
            .clone()
    }

    /// Starts the writer thread over `sink` (a file or stdout).
    pub fn start(sink: Box<dyn Write + Send>) -> Self {
        let dropped = Self::dropped_counter();
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("canopy-access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(sink);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    // drain what is queued, then flush once
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(more.as_bytes());
                    }
                    let _ = out.flush();
                }
            })
            .expect("spawn access log thread");
        Self { tx, dropped }
    }

    /// Queues one line; never blocks.
    pub fn write(&self, r: &AccessRecord<'_>) {
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let line = serde_json::json!({
            "ts": ts,
            "method": r.method,
            "path": r.path,
            "release": r.release,
            "service": r.service,
            "status": r.status,
            "duration_ms": r.duration.as_secs_f64() * 1e3,
            "upstream": r.upstream.map(|a| a.to_string()),
            "attempts": r.attempts,
            "client": r.client.map(|a| a.to_string()),
            "request_id": r.request_id,
            "held_ms": r.held.map(|h| h.as_secs_f64() * 1e3),
        })
        .to_string()
            + "\n";
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.dropped.inc();
            let n = self.dropped.get();
            if n.is_power_of_two() {
                log::warn!("access log writer is behind: {n} lines dropped so far");
            }
        }
    }

    /// Lines dropped because the writer fell behind (all writers sharing the counter).
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("dropped", &self.dropped.get()).finish()
    }
}
