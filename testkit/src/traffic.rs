//! Shoppers: many independent clients, each with its own cookie jar and,
//! if asked, its own loopback source address (127.0.x.y), sending GETs
//! through the proxy and recording every answer (status, release, time).
//! Unlike [`crate::load`], an error status is an answer to record, not a
//! failure: the guard tests make releases fail on purpose. Bounded in
//! requests per client and in time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most requests one shopper sends.
pub const MAX_PER_CLIENT: usize = 20_000;
/// Longest shoppers run.
pub const MAX_TIME: Duration = Duration::from_secs(300);

/// One answer a shopper got (or did not).
#[derive(Debug, Clone)]
pub struct Answer {
    /// Which shopper.
    pub client: usize,
    /// When it was sent.
    pub start: Instant,
    /// When the answer was complete.
    pub end: Instant,
    /// Its status (0: no answer: a transport error).
    pub status: u16,
    /// `x-canopy-release`.
    pub release: String,
}

/// How shoppers behave.
#[derive(Debug, Clone)]
pub struct Shoppers {
    /// How many.
    pub clients: usize,
    /// The path each GETs.
    pub path: String,
    /// The pause between a shopper's requests.
    pub pause: Duration,
    /// Each from its own address 127.0.x.y (as distinct shoppers are);
    /// else all from 127.0.0.1.
    pub distinct_addresses: bool,
}

impl Shoppers {
    /// `clients` shoppers GETting `path` with `pause` between requests, from one address.
    pub fn new(clients: usize, path: &str, pause: Duration) -> Shoppers {
        Shoppers { clients, path: path.to_string(), pause, distinct_addresses: false }
    }
}

/// Shoppers at work; [`Traffic::stop`] ends them.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The source address of shopper `i`: 127.0.1.1 onwards, skipping .0 and .255.
pub fn shopper_address(i: usize) -> IpAddr {
    let n = 256 + i + 1 + 2 * (i / 254);
    IpAddr::V4(Ipv4Addr::new(127, 0, (n / 256) as u8, (n % 256) as u8))
}

impl Traffic {
    /// Starts the shoppers against the proxy at `proxy`.
    pub fn start(proxy: SocketAddr, shoppers: &Shoppers) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let began = Instant::now();
        let tasks = (0..shoppers.clients)
            .map(|client| {
                let (stop, answers) = (stop.clone(), answers.clone());
                let url = format!("http://{proxy}{}", shoppers.path);
                let pause = shoppers.pause;
                let mut builder = reqwest::Client::builder().no_proxy().cookie_store(true).timeout(Duration::from_secs(10));
                if shoppers.distinct_addresses {
                    builder = builder.local_address(shopper_address(client));
                }
                let http = builder.build().expect("HTTP client");
                tokio::spawn(async move {
                    // spread the first requests over one pause
                    tokio::time::sleep(pause.mul_f64((client % 97) as f64 / 97.0)).await;
                    for _ in 0..MAX_PER_CLIENT {
                        if stop.load(Ordering::Relaxed) || began.elapsed() > MAX_TIME {
                            break;
                        }
                        let start = Instant::now();
                        let (status, release) = match http.get(&url).send().await {
                            Ok(r) => {
                                let release = r.headers().get("x-canopy-release").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                                let status = r.status().as_u16();
                                // the whole body, so the answer is complete
                                match r.bytes().await {
                                    Ok(_) => (status, release),
                                    Err(_) => (0, release),
                                }
                            }
                            Err(_) => (0, String::new()),
                        };
                        answers.lock().unwrap().push(Answer { client, start, end: Instant::now(), status, release });
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Traffic { stop, answers, tasks }
    }

    /// The answers so far.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    /// Stops every shopper and returns every answer, in the order they came.
    pub async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut answers = self.answers.lock().unwrap().clone();
        answers.sort_by_key(|a| a.end);
        answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shopper_addresses_are_distinct_loopback_hosts() {
        let addrs: std::collections::BTreeSet<IpAddr> = (0..1000).map(shopper_address).collect();
        assert_eq!(addrs.len(), 1000);
        for a in addrs {
            let IpAddr::V4(v4) = a else { panic!() };
            let [a, _, _, d] = v4.octets();
            assert!(a == 127 && d != 0 && d != 255, "{v4}");
        }
    }
}
