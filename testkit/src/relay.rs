//! A cuttable TCP relay for network faults on loopback: put one between a
//! client and a server (a canopy node and one etcd member, say) and cut,
//! blackhole or heal the path between them while both keep running.
//!
//! The relay runs on its own thread with its own tokio runtime, so sync
//! tests and tokio tests alike can use it, and its methods block only until
//! the new mode is in force.
//!
//! Modes ([`Mode`]):
//! - [`Mode::Forward`]: bytes flow both ways; a half-close is passed on.
//! - [`Mode::Cut`] ([`Relay::cut`]): every open connection is reset (RST to
//!   both ends), and every new connection is accepted and reset at once, so
//!   the client sees its connection refused or reset.
//! - [`Mode::Blackhole`] ([`Relay::blackhole`]): like a dropped network.
//!   Open connections are held but nothing more is read or forwarded either
//!   way (nor is an end's close passed on); new connections are accepted and
//!   held the same way without dialing the target (the client's connect
//!   succeeds, the server sees nothing).
//!
//! [`Relay::heal`] forwards again: new connections dial the target, and
//! connections held by a blackhole resume where they stopped, with whatever
//! the ends sent meanwhile (as TCP would after a partition heals, before
//! either end timed out). Connections a cut reset stay gone.
//!
//! Bytes the relay had already read when the mode changed may still be
//! delivered (packets in flight); nothing sent after a `cut()` or
//! `blackhole()` call returns is.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How long [`Relay::cut`] waits for the open connections to be reset.
pub const CUT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the relay does with connections (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow both ways.
    Forward,
    /// Open connections are reset, new ones are reset on accept.
    Cut,
    /// Connections are held open; nothing is read or forwarded.
    Blackhole,
}

/// What the relay's connections share.
#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Connections open now (held or forwarding).
    open: AtomicUsize,
    /// Connections accepted so far.
    accepted: AtomicUsize,
}

/// A request to the relay's thread.
#[derive(Debug)]
enum Request {
    /// Switch to a mode; answered once it is in force.
    Set(Mode, std::sync::mpsc::Sender<()>),
}

/// A TCP relay on `127.0.0.1:<port>` to one target; stopped on drop (its
/// connections are closed).
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropped to stop the relay's thread.
    requests: Option<mpsc::UnboundedSender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay to `target`, listening on 127.0.0.1:0, forwarding.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = crate::ports::listener();
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let (mode, _) = watch::channel(Mode::Forward);
        let shared = Arc::new(Shared { target, mode, open: AtomicUsize::new(0), accepted: AtomicUsize::new(0) });
        let (requests, rx) = mpsc::unbounded_channel();
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("relay {addr} -> {target}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("relay runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    run(listener, for_thread, rx).await;
                });
            })
            .expect("relay thread");
        Relay { addr, shared, requests: Some(requests), thread: Some(thread) }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// `http://127.0.0.1:<port>`, for a client that takes URLs (etcd's).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Resets every open connection and every new one (a partition that
    /// refuses); returns once the open ones are gone (at most [`CUT_TIMEOUT`]).
    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    /// Holds every open and new connection without reading or forwarding
    /// (a partition that drops packets).
    pub fn blackhole(&self) {
        self.set(Mode::Blackhole);
    }

    /// Forwards again (see the module doc for held connections).
    pub fn heal(&self) {
        self.set(Mode::Forward);
    }

    /// Connections open now (held or forwarding).
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since it started.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    fn set(&self, mode: Mode) {
        let (done, wait) = std::sync::mpsc::channel();
        let sent = self.requests.as_ref().is_some_and(|r| r.send(Request::Set(mode, done)).is_ok());
        assert!(sent, "relay {} is gone", self.addr);
        wait.recv().unwrap_or_else(|_| panic!("relay {} stopped while switching to {mode:?}", self.addr));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The relay's thread: accepts connections and switches modes until the
/// [`Relay`] is dropped.
async fn run(listener: TcpListener, shared: Arc<Shared>, mut requests: mpsc::UnboundedReceiver<Request>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // forward each write at once (Nagle's delay against the peer's
                // delayed ACK stalls a request/response exchange by ~40 ms)
                let _ = stream.set_nodelay(true);
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                shared.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, shared.clone()));
            }
            request = requests.recv() => match request {
                Some(Request::Set(mode, done)) => {
                    shared.mode.send_replace(mode);
                    if mode == Mode::Cut {
                        all_closed(&shared).await;
                    }
                    let _ = done.send(());
                }
                None => return,
            },
        }
    }
}

/// Waits until no connection is open, at most [`CUT_TIMEOUT`].
async fn all_closed(shared: &Shared) {
    let deadline = Instant::now() + CUT_TIMEOUT;
    while shared.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One client connection, from accept to close; counted in `open` until it ends.
async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    if !relay(&mut client, &shared).await {
        reset(&client);
    }
    drop(client);
    shared.open.fetch_sub(1, Ordering::SeqCst);
}

/// Dials the target once forwarding and pumps both ways; whether the
/// connection ended cleanly (both ends closed) rather than by a cut or an
/// error (then both ends are to be reset).
async fn relay(client: &mut TcpStream, shared: &Shared) -> bool {
    let dial = async {
        forwarding(&mut shared.mode.subscribe()).await?;
        TcpStream::connect(shared.target).await
    };
    let mut upstream = tokio::select! {
        up = dial => match up {
            Ok(up) => {
                let _ = up.set_nodelay(true);
                up
            }
            Err(_) => return false,
        },
        () = until_cut(shared) => return false,
    };
    let clean = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let both =
            async { tokio::try_join!(pump(&mut cr, &mut uw, shared.mode.subscribe()), pump(&mut ur, &mut cw, shared.mode.subscribe())) };
        tokio::select! {
            pumped = both => pumped.is_ok(),
            () = until_cut(shared) => false,
        }
    };
    if !clean {
        reset(&upstream);
    }
    clean
}

/// Copies `from` to `to` while forwarding, until `from` ends (then shuts
/// `to` down for writing); stops reading while blackholed.
async fn pump(from: &mut ReadHalf<'_>, to: &mut WriteHalf<'_>, mut mode: watch::Receiver<Mode>) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        forwarding(&mut mode).await?;
        let n = tokio::select! {
            read = from.read(&mut buf) => read?,
            _ = mode.changed() => continue,
        };
        // the mode may have changed while the read completed: bytes read
        // after a blackhole wait for the heal
        forwarding(&mut mode).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Waits until the relay forwards; an error if the relay is gone. (A cut
/// never ends the wait: [`until_cut`] ends the connection.)
async fn forwarding(mode: &mut watch::Receiver<Mode>) -> io::Result<()> {
    match mode.wait_for(|m| *m == Mode::Forward).await {
        Ok(_) => Ok(()),
        Err(_) => Err(io::Error::other("relay stopped")),
    }
}

/// Waits until the relay is cut (forever if it is gone: dropping the
/// runtime ends the connection).
async fn until_cut(shared: &Shared) {
    if shared.mode.subscribe().wait_for(|m| *m == Mode::Cut).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Makes closing `stream` send a reset (linger 0) instead of a FIN.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;

    /// An echo server on a std thread; counts the connections it accepted.
    fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = crate::ports::listener();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn connect(relay: &Relay) -> StdStream {
        let s = StdStream::connect(relay.addr()).expect("connect to the relay");
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    }

    /// Sends `msg` and reads the echo: `Ok(bytes)` (empty at EOF), or the
    /// read's error (a reset, or a timeout when nothing came).
    fn exchange(s: &mut StdStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(msg)?;
        read_some(s)
    }

    fn read_some(s: &mut StdStream) -> io::Result<Vec<u8>> {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].to_vec())
    }

    fn timed_out(r: &io::Result<Vec<u8>>) -> bool {
        matches!(r, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }

    /// Whether a read found the connection closed: EOF or an error other
    /// than a timeout.
    fn closed(r: &io::Result<Vec<u8>>) -> bool {
        match r {
            Ok(bytes) => bytes.is_empty(),
            Err(_) => !timed_out(r),
        }
    }

    #[test]
    fn a_cut_resets_open_and_new_connections_until_healed() {
        let (echo, _) = echo_server();
        let relay = Relay::start(echo);
        let mut before = connect(&relay);
        assert_eq!(exchange(&mut before, b"hello").unwrap(), b"hello");

        relay.cut();
        assert_eq!(relay.open_connections(), 0);
        assert!(closed(&read_some(&mut before)), "an open connection survived the cut");
        let mut during = connect(&relay);
        let r = exchange(&mut during, b"anyone?");
        assert!(closed(&r), "a cut relay forwarded or held a new connection: {r:?}");

        relay.heal();
        let mut after = connect(&relay);
        assert_eq!(exchange(&mut after, b"back").unwrap(), b"back");
    }

    #[test]
    fn a_blackhole_holds_connections_silently_and_a_heal_resumes_them() {
        let (echo, echo_accepted) = echo_server();
        let relay = Relay::start(echo);
        let mut before = connect(&relay);
        assert_eq!(exchange(&mut before, b"hello").unwrap(), b"hello");

        relay.blackhole();
        assert!(timed_out(&exchange(&mut before, b"lost?")), "a blackholed connection answered");
        let mut during = connect(&relay);
        assert!(timed_out(&exchange(&mut during, b"anyone?")), "a new blackholed connection answered");
        assert_eq!(relay.open_connections(), 2);
        assert_eq!(echo_accepted.load(Ordering::SeqCst), 1, "a blackholed connection reached the target");

        relay.heal();
        before.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        during.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_some(&mut before).unwrap(), b"lost?");
        assert_eq!(read_some(&mut during).unwrap(), b"anyone?");

        // a cut also ends the connections a blackhole held
        relay.blackhole();
        relay.cut();
        assert_eq!(relay.open_connections(), 0);
        assert!(closed(&read_some(&mut before)), "a held connection survived the cut");
    }

    #[test]
    fn a_close_is_passed_on_and_the_relay_usable_from_async_tests() {
        let (echo, _) = echo_server();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let relay = Relay::start(echo);
            let mut s = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("EOF passed on").unwrap();
            assert_eq!(got, b"ping");
            relay.cut();
            drop(relay);
        });
    }
}
