//! Releases: register (or re-register with new backends), check, retire.

use std::time::{Duration, Instant};

use canopy_proxy::ReleaseName;

use super::{resolve, Controller};
use crate::checks::{run_program, substitute, Attempt};
use crate::error::ControlError;
use crate::replies::{HookResult, RetireReply};
use crate::report::Report;
use crate::state::{BackendMap, Command};
use crate::validate::Mode;
use crate::view::{release_view, ReleaseView};

impl Controller {
    /// Registers (or re-registers with new backends) a release. Returns its
    /// view and whether it was new. A host name that does not resolve is
    /// refused (nothing changes) unless `allow_unresolved` (containers that
    /// start after they are registered): then it is in the view, retried by
    /// the background re-resolver, and a failed check names it.
    pub async fn register(
        &self,
        name: ReleaseName,
        backends: BackendMap,
        allow_unresolved: bool,
        actor: &str,
    ) -> Result<(ReleaseView, bool), ControlError> {
        let topology = self.topology();
        for svc in backends.keys() {
            if topology.service_index(svc).is_none() {
                let known: Vec<&str> = topology.services().iter().map(|s| s.name.as_str()).collect();
                return Err(ControlError::Invalid(format!("unknown service `{svc}` (known: {})", known.join(", "))));
            }
        }
        if let Some((svc, _)) = backends.iter().find(|(_, v)| v.is_empty()) {
            return Err(ControlError::Invalid(format!("service `{svc}` has an empty backend list")));
        }
        let release = resolve(&topology, &self.table, &name, &backends).await?;
        let unresolved: Vec<String> = topology
            .services()
            .iter()
            .zip(release.all_backends())
            .flat_map(|(s, b)| b.unresolved().iter().map(move |e| format!("{}: {e}", s.name)))
            .collect();
        if !unresolved.is_empty() && !allow_unresolved {
            return Err(ControlError::Unresolved { release: name, unresolved });
        }
        let mut st = self.state.lock().await;
        let created = !st.releases.contains_key(&name);
        self.commit(
            &mut st,
            vec![Command::Register { name: name.clone(), backends, node: self.node().map(String::from) }],
            actor,
            std::slice::from_ref(&release),
        )
        .await?;
        let view = release_view(&st, &release, &topology);
        Ok((view, created))
    }

    /// Runs full validation of a registered release and remembers the report.
    pub async fn check(&self, name: &ReleaseName) -> Result<Report, ControlError> {
        let release = self.release(name)?;
        let report = self.run_validation(&release, Mode::Full).await;
        let mut st = self.state.lock().await;
        let record = Command::RecordCheck { report: report.clone() };
        if st.precheck(&record).is_ok() {
            self.commit(&mut st, vec![record], "", &[]).await?;
        }
        Ok(report)
    }

    /// Retires a release: drop it from the table (no new requests), wait for
    /// its in-flight requests (bounded by the drain timeout), run the retire
    /// hooks (each bounded), forget its counters, stop its containers.
    /// Refused for the live release.
    pub async fn retire(&self, name: &ReleaseName, actor: &str) -> Result<RetireReply, ControlError> {
        let stats = self.release(name)?.stats().clone();
        {
            let mut st = self.state.lock().await;
            self.commit(&mut st, vec![Command::Retire { name: name.clone() }], actor, &[]).await?;
        }
        self.wake.notify_one();
        let rt = self.rt();
        let deadline = Instant::now() + rt.settings.drain_timeout;
        while stats.inflight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let inflight_left = stats.inflight().max(0);
        let mut hooks = Vec::new();
        for argv in &rt.settings.retire_hooks {
            let argv = substitute(argv, name, None);
            let Attempt { passed, reason, output } = run_program(&argv, rt.settings.hook_timeout).await;
            if !passed {
                log::error!("retire hook {argv:?} for {name} failed: {reason}");
            }
            hooks.push(HookResult { argv, passed, reason, output });
        }
        self.table.stats().forget(name);
        self.metrics.forget(name);
        self.containers_retired(name, actor).await;
        if !hooks.is_empty() {
            let failed = hooks.iter().filter(|h| !h.passed).count();
            let detail = format!("{} hook(s), {failed} failed; drained: {}", hooks.len(), inflight_left == 0);
            let result = if failed == 0 { "ok" } else { "failed" };
            self.audit("retire-hooks", actor, Some(name.clone()), result, detail).await;
        }
        log::info!("retired {name} (drained: {})", inflight_left == 0);
        Ok(RetireReply { release: name.clone(), drained: inflight_left == 0, inflight_left, hooks })
    }
}
