//! Loopback ports without the bind-then-close race: in-process servers get a
//! bound listener; a port that must be written into another process's config
//! is held by a [`Port`] until just before that process starts.
//!
//! How a held port is let go ([`Port::release`]): the holder accepts one
//! loopback connection on it and closes its end first, so the port is left
//! in TIME_WAIT. For the next 60 s the kernel hands it to no `bind(0)` and to
//! no outgoing connection, while a server that binds it by number with
//! `SO_REUSEADDR` (canopy and pingora, nginx, HAProxy, Go servers such as
//! Prometheus and pebble, chromedriver, tokio and std listeners all set it)
//! gets it at once. Ports this process handed out are also never handed out
//! again within the run, so two configs never share one.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Mutex;

/// Ports handed out by [`reserve`] in this process.
static ISSUED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port held (bound and listening) for a server another process
/// will run; see the module doc for how it is let go.
#[derive(Debug)]
pub struct Port {
    listener: Option<TcpListener>,
    addr: SocketAddr,
}

impl Port {
    /// The port number.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets the port go, for the process about to bind it: call it right
    /// before that process starts. The port stays out of the kernel's
    /// automatic choices for 60 s (TIME_WAIT). Returns the port number.
    pub fn release(mut self) -> u16 {
        self.let_go();
        self.addr.port()
    }

    fn let_go(&mut self) {
        let Some(listener) = self.listener.take() else { return };
        // One connection, whose accepted end closes first: that end (local
        // port = this port) goes to TIME_WAIT and keeps the port's bind
        // bucket for 60 s after the listener is gone.
        if let Ok(client) = TcpStream::connect(self.addr) {
            if let Ok((accepted, _)) = listener.accept() {
                drop(accepted);
            }
            drop(client);
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.let_go();
    }
}

/// A listener on 127.0.0.1:0 for a server in this process (it keeps the
/// port for as long as it lives).
pub fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// [`listener`] for tokio.
pub async fn tokio_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")
}

/// One loopback port, held until released, never handed out before in this process.
pub fn reserve() -> Port {
    let mut issued = ISSUED.lock().unwrap_or_else(|e| e.into_inner());
    let issued = issued.get_or_insert_with(HashSet::new);
    // ports issued earlier and free again: kept bound here until the loop
    // ends, so the kernel offers another one
    let mut skipped = Vec::new();
    loop {
        let listener = listener();
        let addr = listener.local_addr().expect("local address");
        if issued.insert(addr.port()) {
            return Port { listener: Some(listener), addr };
        }
        skipped.push(listener);
    }
}

/// `N` distinct loopback ports, each held until released.
pub fn reserve_many<const N: usize>() -> [Port; N] {
    std::array::from_fn(|_| reserve())
}

/// A port held for TCP and UDP alike (a DNS server binds both), with the
/// UDP socket that holds it; drop the socket and release the port right
/// before the server starts.
pub fn reserve_tcp_and_udp() -> (Port, UdpSocket) {
    let mut tried = Vec::new();
    loop {
        let port = reserve();
        match UdpSocket::bind(port.addr()) {
            Ok(udp) => return (port, udp),
            Err(_) => tried.push(port),
        }
    }
}

/// A loopback address where nothing listens (connections are refused). Its
/// port stays bound, without listening, for the life of this process, so no
/// other server can take it and answer.
pub fn dead_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind 127.0.0.1:0");
    let addr = socket.local_addr().expect("local address");
    std::mem::forget(socket);
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_held_and_never_reissued() {
        let ports: Vec<Port> = (0..20).map(|_| reserve()).collect();
        let numbers: HashSet<u16> = ports.iter().map(Port::port).collect();
        assert_eq!(numbers.len(), 20);
        for p in &ports {
            assert!(TcpListener::bind(p.addr()).is_err(), "port {} is not held", p.port());
        }
        drop(ports);
        for _ in 0..200 {
            let p = reserve();
            assert!(!numbers.contains(&p.port()), "port {} handed out twice", p.port());
        }
    }

    #[test]
    fn a_released_port_binds_with_reuseaddr_and_stays_out_of_automatic_choice() {
        let port = reserve().release();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // what bind(0) and connect() respect: the TIME_WAIT end still owns the port
        let plain = tokio::net::TcpSocket::new_v4().unwrap();
        assert!(plain.bind(addr).is_err(), "port {port} is free for any bind: the kernel may hand it out");
        // what the servers do: bind it by number with SO_REUSEADDR, and listen
        let server = TcpListener::bind(addr).expect("SO_REUSEADDR bind of a released port");
        assert_eq!(server.local_addr().unwrap().port(), port);
    }

    #[test]
    fn dead_addresses_refuse_connections() {
        let dead = dead_addr();
        assert!(TcpStream::connect(dead).is_err());
        assert!(TcpListener::bind(dead).is_err(), "the dead port is not held");
    }
}
