//! Front-door state the control plane owns: maintenance mode. Durable like
//! the releases (a [`Command`] in the state), it reaches the data plane in
//! the snapshot, so every request sees one consistent answer.

use std::sync::Arc;

use canopy_proxy::MaintenanceAnswer;

use super::Controller;
use crate::clock::{now_ms, UnixMillis};
use crate::error::ControlError;
use crate::state::{Command, Maintenance};

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
        self.commit(&mut st, vec![Command::Maintenance { on: on.clone() }], actor, &[])?;
        match &on {
            Some(m) => log::warn!("maintenance mode on by {actor}: every routed request is answered 503 ({})", m.message),
            None => log::info!("maintenance mode off by {actor}"),
        }
        Ok(on)
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
