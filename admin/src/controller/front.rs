//! Front-door state the control plane owns: maintenance mode (durable like
//! the releases: a [`Command`] in the state) and pauses (held requests live
//! in this process only, so a pause is not durable). Both reach the data
//! plane in the snapshot, so every request sees one consistent answer.

use std::sync::Arc;
use std::time::Duration;

use canopy_proxy::{MaintenanceAnswer, Pause};

use super::{Controller, FlipGuard};
use crate::checks::{run_program, substitute};
use crate::clock::{now_ms, UnixMillis};
use crate::error::ControlError;
use crate::replies::FlipReply;
use crate::state::{Command, Maintenance};
use crate::view::PauseView;

/// Held requests a pause takes at most unless told otherwise (then 503).
pub const PAUSE_MAX_HELD: usize = 1000;

impl Controller {
    /// Turns maintenance mode on with `message` (expected to end at `until`)
    /// or off (`None`); returns it as it now is. Idempotent.
    pub async fn set_maintenance(
        &self,
        on: Option<(String, Option<UnixMillis>)>,
        actor: &str,
    ) -> Result<Option<Maintenance>, ControlError> {
        self.writable()?;
        let mut st = self.state.lock().await;
        let on = on.map(|(message, until)| {
            // turning it on again keeps its start, and changes the message or end
            let since = st.maintenance.as_ref().map_or_else(now_ms, |m| m.since);
            Maintenance { message, until, since }
        });
        if st.maintenance == on {
            return Ok(on);
        }
        self.commit(&mut st, vec![Command::Maintenance { on: on.clone() }], actor, &[]).await?;
        match &on {
            Some(m) => log::warn!("maintenance mode on by {actor}: every routed request is answered 503 ({})", m.message),
            None => log::info!("maintenance mode off by {actor}"),
        }
        Ok(on)
    }
}

impl Controller {
    /// Pauses: new requests are held (up to `max_held`) until [`Self::resume_traffic`]
    /// or until `max` has passed (then 503). Pausing while paused refuses (409).
    pub async fn pause(&self, max: Duration, max_held: usize, actor: &str) -> Result<PauseView, ControlError> {
        self.writable()?;
        let mut st = self.state.lock().await;
        if self.table.load().pause().is_some() {
            return Err(ControlError::Conflict("already paused: `canopy resume` first".into()));
        }
        let pause = Pause::new(max, max_held);
        self.table.update(|cur| {
            super::snapshot_of(&st, cur.topology().clone(), cur.releases().to_vec(), cur.tunables().clone()).with_pause(Some(pause.clone()))
        });
        let detail = format!("max {}, at most {max_held} held", humantime::format_duration(max));
        let event = super::event(&st, "pause", actor, None, "ok", detail);
        if let Err(e) = self.commit(&mut st, vec![Command::Audit { event }], actor, &[]).await {
            log::error!("recording the pause in the audit log: {e}");
        }
        log::warn!("paused by {actor}: new requests are held for at most {}", humantime::format_duration(max));
        Ok(PauseView::of(&pause))
    }

    /// Resumes: every held request is routed by the table as it is now.
    /// Returns the pause's final figures (`None`: nothing was paused).
    pub async fn resume_traffic(&self, actor: &str) -> Result<Option<PauseView>, ControlError> {
        let mut st = self.state.lock().await;
        let Some(pause) = self.table.load().pause().cloned() else { return Ok(None) };
        self.table.update(|cur| super::snapshot_of(&st, cur.topology().clone(), cur.releases().to_vec(), cur.tunables().clone()));
        // after the table without the pause is published: woken requests load it
        pause.resume();
        let view = PauseView::of(&pause);
        let detail = format!("{} request(s) held, {} refused", view.held_total, view.refused);
        let event = super::event(&st, "resume", actor, None, "ok", detail.clone());
        if let Err(e) = self.commit(&mut st, vec![Command::Audit { event }], actor, &[]).await {
            log::error!("recording the resume in the audit log: {e}");
        }
        log::info!("resumed by {actor}: {detail}");
        Ok(Some(view))
    }

    /// A switch with traffic held around it: pause, run `[releases]
    /// migrate`, validate, flip, resume. Any failure resumes on the release
    /// that was live before.
    pub(super) async fn paused_flip(
        &self,
        one: &FlipGuard<'_>,
        flip: super::flip::Flip,
        release: &canopy_proxy::ReleaseName,
        max: Duration,
        actor: &str,
    ) -> Result<FlipReply, ControlError> {
        self.pause(max, PAUSE_MAX_HELD, actor).await?;
        let result = async {
            let rt = self.rt();
            if !rt.settings.migrate.is_empty() {
                let argv = substitute(&rt.settings.migrate, release, None);
                let attempt = run_program(&argv, rt.settings.hook_timeout).await;
                let detail = format!("{argv:?}: {}", attempt.reason);
                let result = if attempt.passed { "ok" } else { "failed" };
                self.audit("migrate", actor, Some(release.clone()), result, detail.clone()).await;
                if !attempt.passed {
                    let output = attempt.output.unwrap_or_default();
                    return Err(ControlError::Conflict(format!("migrate failed, still live on the old release: {detail}\n{output}")));
                }
            }
            self.validated_flip(one, flip, actor).await
        }
        .await;
        self.resume_traffic(actor).await?;
        result
    }
}

/// The data plane's answers for `m`.
pub(super) fn maintenance_answer(m: &Maintenance) -> Arc<MaintenanceAnswer> {
    let until = m.until.map(|ms| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        // minutes are enough for shoppers: `2026-12-06 10:00 UTC`
        let s = humantime::format_rfc3339_seconds(t).to_string();
        format!("{} UTC", s.get(..16).unwrap_or(&s).replace('T', " "))
    });
    Arc::new(MaintenanceAnswer::new(&m.message, m.until, until.as_deref()))
}
