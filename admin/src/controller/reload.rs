//! Config reload (`canopy reload`, `POST /reload`, SIGHUP): the file is read
//! again by the server's [`ConfigSource`], and what it may change in place
//! is applied here: topology, checks, settings, tunables. The release table
//! is rebuilt whole (every release re-resolved for the new topology); live,
//! previous and generation stay.

use std::sync::Arc;

use canopy_proxy::Topology;

use super::{resolve, Controller, Runtime};
use crate::error::ControlError;
use crate::replies::ReloadReply;
use crate::sources::ConfigSource;
use crate::state::Command;

impl Controller {
    /// Reads the config file again and applies it in place: services, routes,
    /// address template, checks, timeouts, validation window, retire hooks,
    /// access log, token. Every registered release is re-resolved for the new
    /// topology and the release table replaced whole, so requests in flight
    /// finish on the old routes and the next one takes the new; live,
    /// previous and generation stay. A bad file or a change that needs a new
    /// socket is refused and nothing changes. Waits for a running switch or
    /// rollback; one reload at a time.
    pub async fn reload(&self, actor: &str) -> Result<ReloadReply, ControlError> {
        let Some(source) = self.source.as_deref() else {
            return Err(ControlError::NotEnabled("this canopy was started without a config file to reload".into()));
        };
        let _flip = self.flip_lock_wait().await;
        self.writable()?;
        let result = self.apply_reload(source, actor).await;
        self.metrics.reloaded(if result.is_ok() { "ok" } else { "refused" });
        result
    }

    /// The config file this canopy runs with, for messages that tell the
    /// operator what to change ("its config" without one).
    pub(super) fn config_file(&self) -> String {
        self.source.as_ref().map_or_else(|| "its config".to_string(), |s| s.file())
    }

    async fn apply_reload(&self, source: &dyn ConfigSource, actor: &str) -> Result<ReloadReply, ControlError> {
        let refused = |e: &dyn std::fmt::Display| ControlError::Config(format!("config reload refused, nothing changed: {e}"));
        let new = source.read().map_err(|e| {
            log::error!("config reload refused: {e}");
            refused(&e)
        })?;
        let topology = Arc::new(new.topology);
        let mut st = self.state.lock().await;
        for (name, record) in &st.releases {
            if let Some(svc) = record.backends.keys().find(|svc| topology.service_index(svc).is_none()) {
                return Err(refused(&format!(
                    "release `{name}` has backends for service `{svc}`, which the new config no longer has; retire it first"
                )));
            }
        }
        // counters follow the new services from here (kept for the ones that stay)
        let services_of = |t: &Topology| t.services().iter().map(|s| s.name.clone()).collect();
        self.table.stats().set_services(services_of(&topology));
        let restore = || self.table.stats().set_services(services_of(&self.topology()));
        let resolving = st.releases.iter().map(|(n, r)| resolve(&topology, &self.table, n, r.backends_for(self.node())));
        let releases = match futures_util::future::try_join_all(resolving).await {
            Ok(r) => r,
            Err(e) => {
                restore();
                return Err(refused(&e));
            }
        };
        let detail = if new.changes.is_empty() { "no change".to_string() } else { new.changes.join("; ") };
        let event = super::event(&st, "reload", actor, None, "ok", detail.clone());
        self.commit(&mut st, vec![Command::Audit { event }], actor, &[]).await.inspect_err(|_| restore())?;
        let tunables = Arc::new(new.tunables);
        self.table.update(|cur| super::snapshot_of(&st, topology, releases, tunables).with_pause(cur.pause().cloned()));
        self.runtime.store(Arc::new(Runtime { validator: new.validator, settings: new.settings }));
        (new.on_applied)();
        self.wake.notify_one();
        self.warm_wake.notify_one();
        log::info!("config reloaded by {actor}: {detail}");
        Ok(ReloadReply { changed: !new.changes.is_empty(), changes: new.changes, generation: st.generation })
    }
}
