//! A deploy across the fleet: the node that takes `canopy deploy` prepares
//! the release on its own engine while every other live node prepares it on
//! theirs; once all have, one validated flip; if any fails (or its session
//! ends) nothing flips and every node removes what it created.

use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_docker::Engine;

use super::deploy::{Steps, Stop, Touched};
use super::Controller;
use crate::cluster::{PrepareAnswer, PrepareRequest};
use crate::requests::DeployRequest;
use crate::stack::Docker;

/// Longest wait for the other nodes to say they cleaned up a failed deploy.
const UNDO_LIMIT: Duration = Duration::from_secs(60);

impl Controller {
    /// Prepares `req.release` here (see [`Controller::prepare_here`]) and, in
    /// a fleet, on every other node with a live session at once; each
    /// node's outcome is a step. On any failure the other nodes undo theirs
    /// before this returns (this node's own undo is the caller's). Returns
    /// the fleet deploy's id and the nodes asked.
    pub(super) async fn prepare_everywhere(
        &self,
        docker: &Docker,
        engine: &Engine,
        req: &DeployRequest,
        actor: &str,
        steps: &mut Steps,
        touched: &mut Vec<Touched>,
    ) -> Result<Option<(String, Vec<String>)>, Stop> {
        let asked = match &self.fleet {
            Some(fleet) => Some(fleet.ask_prepare(&req.release, req.keep_failed).await.map_err(Stop::refused)?),
            None => None,
        };
        let here = self.prepare_here(docker, engine, &req.release, actor, steps, touched).await;
        let (Some(fleet), Some((id, others))) = (&self.fleet, asked) else { return here.map(|()| None) };
        let clock = Instant::now();
        let limit = docker.settings.deploy_timeout + fleet.settings().apply_timeout;
        let prepared = fleet.prepared(&id, &others, limit).await;
        for (node, a) in &prepared.answers {
            let detail = match &a.error {
                None => format!("node {node} prepared in {:.0} ms", a.ms),
                Some(e) => format!("node {node} FAILED: {e}"),
            };
            steps.record("prepared", None, detail, clock.elapsed());
        }
        for node in &prepared.silent {
            steps.record(
                "prepared",
                None,
                format!("node {node} did not prepare (no answer within {limit:?}, or its session ended)"),
                clock.elapsed(),
            );
        }
        let failed = prepared.answers.iter().find(|(_, a)| a.error.is_some());
        let stop = match (here, failed, prepared.silent.first()) {
            (Err(stop), _, _) => Some(stop),
            (Ok(()), Some((node, a)), _) => Some(Stop {
                engine_failed: false,
                error: format!("on node {node}: {}", a.error.clone().unwrap_or_default()),
                logs: a.logs.clone(),
                report: None,
            }),
            (Ok(()), None, Some(node)) => {
                Some(Stop::refused(format!("node {node} did not prepare within {limit:?} (or its session with etcd ended)")))
            }
            (Ok(()), None, None) => None,
        };
        if let Some(stop) = stop {
            self.end_everywhere(&id, &others, false).await;
            return Err(stop);
        }
        Ok(Some((id, others)))
    }

    /// Tells every node how fleet deploy `id` ended, and waits until each
    /// has heard it (when it did not flip: has removed what it created).
    pub(super) async fn end_everywhere(&self, id: &str, others: &[String], flipped: bool) {
        let Some(fleet) = &self.fleet else { return };
        fleet.end_prepare(id, flipped).await;
        let left = fleet.done(id, others, UNDO_LIMIT).await;
        if !left.is_empty() {
            log::error!("fleet: deploy {id} ended (flipped: {flipped}), but {} did not say they were done", left.join(", "));
        }
    }

    /// Another node's deploy: prepare the release here, answer, wait for
    /// its outcome, and undo unless it flipped (also when the coordinating
    /// node left the fleet or said nothing in time: nothing stays
    /// half-deployed). The coordinator unregisters the release.
    pub(super) async fn prepare_for_fleet(self: Arc<Self>, req: PrepareRequest) {
        let Some(fleet) = self.fleet.clone() else { return };
        let started = Instant::now();
        let answer = |error: Option<String>, logs: Vec<String>| PrepareAnswer {
            node: fleet.node().to_string(),
            error,
            logs,
            ms: started.elapsed().as_secs_f64() * 1e3,
        };
        let Ok(docker) = self.docker() else {
            let why = format!("node {} runs without [docker]", fleet.node());
            return fleet.answer_prepare(&req.id, &answer(Some(why), Vec::new())).await;
        };
        let limit = docker.settings.deploy_timeout + fleet.settings().apply_timeout;
        // the deploy's start (its `deploying` mark) applied here first
        while fleet.applied() < req.revision && started.elapsed() < fleet.settings().apply_timeout {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let actor = format!("canopy (deploy by node {})", req.by);
        let _containers = self.containers.lock().await;
        let engine = match Engine::connect(&docker.settings.socket).await {
            Ok(engine) => engine,
            Err(e) => return fleet.answer_prepare(&req.id, &answer(Some(e.to_string()), Vec::new())).await,
        };
        let (mut steps, mut touched) = (Steps::default(), Vec::new());
        let here = self.prepare_here(docker, &engine, &req.release, &actor, &mut steps, &mut touched).await;
        let (error, logs) = match &here {
            Ok(()) => (None, Vec::new()),
            Err(stop) => (Some(stop.error.clone()), stop.logs.clone()),
        };
        fleet.answer_prepare(&req.id, &answer(error, logs)).await;
        let flipped = match fleet.outcome(&req.id, &req.by, limit).await {
            Some(flipped) => flipped,
            // no outcome (the coordinator died or went silent): the fleet's
            // state says whether its flip was committed before that
            None => fleet.read().await.ok().flatten().is_some_and(|(st, _)| {
                st.live.as_ref() == Some(&req.release) || st.canary.as_ref().is_some_and(|c| c.release == req.release)
            }),
        };
        if !flipped {
            self.undo(&engine, &req.release, true, &touched, req.keep_failed, &actor).await;
            log::info!("fleet: deploy of {} by node {} did not flip: removed what this node created", req.release, req.by);
        }
        fleet.say_done(&req.id).await;
    }
}
