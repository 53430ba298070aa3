//! Health: waiting until a started container is ready, or saying why it never will be.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::discovery::{status_of_container, ContainerState, Health};
use crate::engine::Engine;
use crate::error::DockerError;

/// How many log lines a failed wait reports.
const LOG_LINES: usize = 20;
/// A stopped container whose last run began this long before a wait began
/// was not started for it ([`DockerError::NotStarted`]); the margin covers a
/// start followed by an immediate exit, and clock steps between the engine
/// and canopy.
const EARLIER_RUN: Duration = Duration::from_secs(2);
/// How often the container is inspected when no event wakes the wait earlier.
const POLL: Duration = Duration::from_secs(1);

/// Why [`Engine::wait_healthy`] considers a container ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Its healthcheck reports `healthy`.
    Healthy,
    /// It has no healthcheck and its process runs; nothing more is known (the
    /// validation checks that follow are all the evidence).
    Running,
}

impl Engine {
    /// Waits until the started container `name` is ready: `healthy` when it
    /// has a healthcheck (the image's or the spec's), running when it has
    /// none. Called after [`Engine::start`]; returns as soon as the engine
    /// reports the change (it listens to the container's events and inspects
    /// at least every second).
    ///
    /// Fails, with the last 20 lines of the container's log (of this run),
    /// when it exits first ([`DockerError::Exited`], with the exit code; also when a restart
    /// policy is restarting it), when Docker marks it `unhealthy`
    /// ([`DockerError::Unhealthy`], with the last probe's output), or when
    /// `timeout` passes first ([`DockerError::HealthTimeout`]). The container
    /// is left as it is; removing it is the caller's decision.
    pub async fn wait_healthy(&self, name: &str, timeout: Duration) -> Result<Readiness, DockerError> {
        let began = SystemTime::now();
        let started = Instant::now();
        let deadline = started + timeout;
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("container".to_string(), vec![name.to_string()]),
            ("event".to_string(), ["start", "die", "destroy", "health_status"].map(String::from).to_vec()),
        ]);
        // Events since a second ago: the subscription opens on first poll,
        // after the first inspect; replaying closes that gap (duplicates only wake us).
        let since = SystemTime::now().checked_sub(Duration::from_secs(1));
        let mut events = Some(self.container_events(filters, since));
        loop {
            let inspect = self.inspect(name).await?;
            let (state, health, exit_code) = status_of_container(&inspect);
            match (state, health) {
                (ContainerState::Running, Health::Healthy) => return Ok(Readiness::Healthy),
                (ContainerState::Running, Health::None) => return Ok(Readiness::Running),
                (ContainerState::Running, Health::Unhealthy) => {
                    let last = inspect.state.as_ref().and_then(|state| state.health.as_ref()).and_then(|health| health.log.as_ref());
                    let probe = last.and_then(|log| log.last()).map_or_else(
                        || "no probe result".to_string(),
                        |result| {
                            let output = result.output.as_deref().unwrap_or_default().trim().replace('\n', " / ");
                            format!("exit code {}: {output}", result.exit_code.unwrap_or(-1))
                        },
                    );
                    let logs = self.logs_tail(name, LOG_LINES).await.unwrap_or_default();
                    return Err(DockerError::Unhealthy { container: name.to_string(), probe, logs });
                }
                (ContainerState::Exited | ContainerState::Dead | ContainerState::Restarting, _) => {
                    let exit_code = exit_code.unwrap_or(-1);
                    let run = inspect.state.as_ref().map(|s| (s.started_at.clone(), s.finished_at.clone()));
                    let (started_at, finished_at) = run.unwrap_or_default();
                    let started_at = started_at.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok());
                    // the last run began well before this wait: nobody started it again
                    if started_at.is_some_and(|t| t + EARLIER_RUN < began) && state == ContainerState::Exited {
                        let finished_at = finished_at.unwrap_or_default();
                        return Err(DockerError::NotStarted { container: name.to_string(), exit_code, finished_at });
                    }
                    // only this run's lines, not an earlier run's
                    let since = started_at.unwrap_or(began);
                    let logs = self.logs_since(name, LOG_LINES, since).await.unwrap_or_default();
                    return Err(DockerError::Exited { container: name.to_string(), exit_code, logs });
                }
                // Starting, or created/paused/removing: wait for a change.
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                let logs = self.logs_tail(name, LOG_LINES).await.unwrap_or_default();
                return Err(DockerError::HealthTimeout {
                    container: name.to_string(),
                    waited: now - started,
                    state: state.to_string(),
                    health: health.to_string(),
                    logs,
                });
            }
            let wake = deadline.min(now + POLL);
            match events.as_mut() {
                Some(stream) => {
                    tokio::select! {
                        event = stream.next() => {
                            if !matches!(event, Some(Ok(_))) {
                                log::debug!("events stream for {name} ended ({event:?}); polling");
                                events = None;
                            }
                        }
                        () = tokio::time::sleep_until(wake) => {}
                    }
                }
                None => tokio::time::sleep_until(wake).await,
            }
        }
    }
}
