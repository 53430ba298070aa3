//! The hand-over between two processes during `serve --upgrade`: exactly
//! one of them changes the state at any time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Controller;
use crate::error::ControlError;

impl Controller {
    /// Stops this process from changing the state, for a graceful upgrade:
    /// waits for a running switch or rollback and any commit in progress, then
    /// refuses every later change with [`ControlError::Upgrading`] (503) and stops
    /// writing checkpoints. Called on SIGQUIT before the listening sockets are
    /// handed to the new process, which loads the state after it has them, so
    /// exactly one process owns the state at any time and every acknowledged
    /// change is in what the new one loads.
    pub async fn hand_over(&self) {
        let _flip = self.flip_lock_wait().await;
        let _state = self.state.lock().await;
        self.handed_over.store(true, Ordering::SeqCst);
        if let Some(fleet) = &self.fleet {
            fleet.set_quiet(true);
        }
        log::info!("state handed over: this process takes no more changes");
    }

    /// Takes changes again after a hand-over the new process never completed.
    pub fn resume(&self) {
        self.handed_over.store(false, Ordering::SeqCst);
        if let Some(fleet) = &self.fleet {
            fleet.set_quiet(false);
        }
        log::info!("hand-over abandoned: this process takes changes again");
    }

    /// Whether [`Self::hand_over`] has run (and [`Self::resume`] not since).
    pub fn is_handed_over(&self) -> bool {
        self.handed_over.load(Ordering::SeqCst)
    }

    /// Takes changes from now on, in the new process of an upgrade (started
    /// with [`super::Parts::hold_changes`]) once its predecessor has exited,
    /// so no request is routed by the old release table after a flip made here.
    pub fn release_hold(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.wake.notify_one();
        log::info!("upgrade complete: the previous process has exited; taking changes");
    }

    /// Waits (at most `limit`) until [`Self::release_hold`] if held; returns
    /// whether changes are allowed by then.
    pub async fn wait_released(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.held.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Refuses a change while handed over or held.
    pub(super) fn writable(&self) -> Result<(), ControlError> {
        if self.is_handed_over() || self.held.load(Ordering::SeqCst) {
            return Err(ControlError::Upgrading);
        }
        Ok(())
    }
}
