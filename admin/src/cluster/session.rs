//! A node's session: a lease of `session-ttl` kept alive, the node's key
//! bound to it, and the node's readiness derived from both.
//!
//! etcd expires a lease `session-ttl` after the last keep-alive it
//! received. The node counts from when it *sent* the last keep-alive that
//! was answered, which is no later, so it turns itself not ready before
//! etcd can expire its session and the fleet can move on without it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Fleet;

/// How long to wait before trying etcd again after a failure.
const RETRY: Duration = Duration::from_millis(250);
/// Readiness ends this long before the lease could expire at the earliest
/// (clock rates differ a little between hosts).
const MARGIN: Duration = Duration::from_millis(200);

/// The node's view of its own session.
pub(crate) struct Session {
    ttl: Duration,
    /// The lease is alive at least until then (none: no session).
    alive_until: Mutex<Option<Instant>>,
    /// Bumped with each new lease.
    epoch: AtomicU64,
    /// The epoch in which the node last read the fleet's state whole.
    caught: AtomicU64,
    /// Wakes the session to publish the node's record (a new revision applied).
    pub changed: Notify,
    /// The current lease (0: none): what the node's keys are bound to.
    pub lease: std::sync::atomic::AtomicI64,
}

impl Session {
    pub fn new(ttl: Duration) -> Self {
        Session {
            ttl,
            alive_until: Mutex::new(None),
            epoch: AtomicU64::new(0),
            caught: AtomicU64::new(0),
            changed: Notify::new(),
            lease: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// The current session's number (0 before the first).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// A keep-alive (or the grant) sent at `sent` was answered.
    fn alive(&self, sent: Instant) {
        *self.alive_until.lock().expect("session lock") = Some(sent + self.ttl);
    }

    fn expired(&self) {
        *self.alive_until.lock().expect("session lock") = None;
    }

    /// Whether the lease is known alive now.
    pub fn live(&self) -> bool {
        !self.lapsed()
    }

    fn lapsed(&self) -> bool {
        self.alive_until.lock().expect("session lock").is_none_or(|until| Instant::now() + MARGIN >= until)
    }

    /// The node read the fleet's state whole during session `epoch`.
    pub fn caught_up(&self, epoch: u64) {
        self.caught.store(epoch, Ordering::SeqCst);
    }

    /// Ready: a live session, and the state read since it began.
    pub fn readiness(&self, endpoints: &[String]) -> Result<(), String> {
        let epoch = self.epoch();
        if epoch == 0 || self.lapsed() {
            return Err(format!(
                "no live session with etcd ({}): the fleet does not wait for this node, which serves its last applied state",
                endpoints.join(", ")
            ));
        }
        if self.caught.load(Ordering::SeqCst) != epoch {
            return Err("catching up on the fleet's state".into());
        }
        Ok(())
    }
}

/// Keeps the node's session for the life of the process: grant a lease,
/// put the node's record, keep the lease alive every third of its TTL and
/// put the record again when the node applies a revision; after a failure,
/// start over (a new lease, `reconnected` woken so the state is read again).
pub(super) async fn run(fleet: &Fleet, reconnected: &Notify) {
    let session = &fleet.session;
    let ttl_secs = session.ttl.as_secs().max(1) as i64;
    let period = session.ttl / 3;
    let mut down_since: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        let leases = fleet.client.lease_client();
        let granted = fleet.run(move || {
            let mut leases = leases.clone();
            async move { leases.grant(ttl_secs, None).await }
        });
        let lease = match granted.await {
            Ok(granted) => granted.id(),
            Err(e) => {
                if down_since.is_none() {
                    log::warn!("fleet: no session with etcd ({e}); serving the last applied state, refusing changes");
                    down_since = Some(Instant::now());
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        session.alive(sent);
        session.lease.store(lease, Ordering::SeqCst);
        let epoch = session.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        reconnected.notify_one();
        if let Some(since) = down_since.take() {
            log::info!("fleet: session with etcd again after {:?} (lease {lease:x})", since.elapsed());
        }
        if let Err(e) = fleet.put_record(lease).await {
            log::warn!("fleet: publishing this node's record: {e}");
        }
        keep_alive(fleet, lease, period).await;
        session.expired();
        log::warn!("fleet: session {epoch} with etcd lapsed; serving the last applied state, not ready");
        down_since = Some(Instant::now());
    }
}

/// Keeps `lease` alive and the node's record current until the lease
/// lapses (no answer within the TTL, or etcd says it expired). A broken
/// keep-alive stream (its etcd member died) is opened again, through
/// another member, for as long as the lease is alive.
async fn keep_alive(fleet: &Fleet, lease: i64, period: Duration) {
    let session = &fleet.session;
    // the oldest keep-alive not answered yet: an answer may be to it, so
    // the lease is only known alive from then on (never overestimated)
    let mut unanswered: Option<Instant> = None;
    while !session.lapsed() {
        let leases = fleet.client.lease_client();
        let opened = fleet
            .run(move || {
                let mut leases = leases.clone();
                async move { leases.keep_alive(lease).await }
            })
            .await;
        let Ok((mut keeper, mut answers)) = opened else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let sent = *unanswered.get_or_insert_with(Instant::now);
                    if keeper.keep_alive().await.is_err() {
                        break; // open another stream
                    }
                    match tokio::time::timeout(period, answers.message()).await {
                        Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                            session.alive(sent);
                            unanswered = None;
                            // the key stays this lease's (after an upgrade the
                            // predecessor's may have held it)
                            if let Err(e) = fleet.put_record(lease).await {
                                log::warn!("fleet: publishing this node's record: {e}");
                            }
                        }
                        Ok(Ok(Some(_))) => return, // etcd expired it
                        Ok(Ok(None)) | Ok(Err(_)) => break,
                        Err(_) if session.lapsed() => return,
                        Err(_) => {} // no answer yet: the next tick tries again
                    }
                }
                _ = session.changed.notified() => {
                    if let Err(e) = fleet.put_record(lease).await {
                        log::warn!("fleet: publishing this node's applied revision: {e}");
                    }
                }
            }
        }
    }
}
