//! The state machine's rules, without sockets or files.
use super::*;

fn n(s: &str) -> ReleaseName {
    ReleaseName::parse(s).unwrap()
}

fn reg(s: State, name: &str) -> State {
    s.apply(Command::Register { name: n(name), backends: BackendMap::new(), node: None }, 1, "t").unwrap()
}

fn switch(to: &str, expect: Option<u64>) -> Command {
    Command::Switch { to: n(to), expect_generation: expect, forced: false, window_ms: 1000, detail: String::new(), action: None }
}

fn two() -> State {
    let s = reg(reg(State::empty(), "juniper"), "elm");
    s.apply(switch("juniper", None), 10, "t").unwrap()
}

#[test]
fn switch_moves_live_and_keeps_previous_warm() {
    let s = two().apply(switch("elm", Some(1)), 100, "ops").unwrap();
    assert_eq!(s.live, Some(n("elm")));
    assert_eq!(s.previous, Some(Previous { release: n("juniper"), retire_at: 1100 }));
    assert_eq!(s.generation, 2);
    let e = s.events.back().unwrap();
    assert_eq!((e.action.as_str(), e.actor.as_str(), e.result.as_str()), ("switch", "ops", "ok"));
    assert_eq!((e.from.clone(), e.to.clone()), (Some(n("juniper")), Some(n("elm"))));
}

#[test]
fn refusals_leave_state_alone() {
    let s = two();
    assert_eq!(s.apply(switch("oak", None), 5, "t"), Err(StateError::NotFound { name: n("oak") }));
    assert_eq!(s.apply(switch("juniper", None), 5, "t"), Err(StateError::AlreadyLive { name: n("juniper") }));
    assert_eq!(s.apply(switch("elm", Some(0)), 5, "t"), Err(StateError::StaleGeneration { expected: 0, current: 1 }));
    assert_eq!(s.apply(Command::Retire { name: n("juniper") }, 5, "t"), Err(StateError::RetireLive { name: n("juniper") }));
    let fresh = reg(State::empty(), "elm");
    let rb = Command::Rollback { expect_generation: None, forced: false, window_ms: 0, detail: String::new(), action: None };
    assert_eq!(fresh.apply(rb, 5, "t"), Err(StateError::NoPrevious));
}

#[test]
fn rollback_swaps_live_and_previous() {
    let s = two().apply(switch("elm", None), 100, "t").unwrap();
    let rb = Command::Rollback { expect_generation: Some(2), forced: false, window_ms: 50, detail: String::new(), action: None };
    let r = s.apply(rb, 200, "t").unwrap();
    assert_eq!(r.live, Some(n("juniper")));
    assert_eq!(r.previous, Some(Previous { release: n("elm"), retire_at: 250 }));
    assert_eq!(r.generation, 3);
}

#[test]
fn retiring_previous_clears_it() {
    let s = two().apply(switch("elm", None), 100, "t").unwrap();
    let r = s.apply(Command::Retire { name: n("juniper") }, 200, "t").unwrap();
    assert!(r.previous.is_none());
    assert!(!r.releases.contains_key(&n("juniper")));
    let rb = Command::Rollback { expect_generation: None, forced: false, window_ms: 0, detail: String::new(), action: None };
    assert_eq!(r.apply(rb, 300, "t"), Err(StateError::NoPrevious));
}

#[test]
fn reregistering_keeps_registration_time_and_drops_report() {
    let s = reg(State::empty(), "elm");
    let mut b = BackendMap::new();
    b.insert(ServiceName::parse("server").unwrap(), vec![Endpoint::parse("127.0.0.1:1").unwrap()]);
    let s2 = s.apply(Command::Register { name: n("elm"), backends: b.clone(), node: None }, 99, "t").unwrap();
    assert_eq!(s2.releases[&n("elm")].registered_at, 1);
    assert_eq!(s2.releases[&n("elm")].backends, b);
}

#[test]
fn audit_log_is_bounded() {
    let mut s = State::empty();
    for i in 0..(MAX_EVENTS + 10) {
        s = reg(s, if i % 2 == 0 { "elm" } else { "oak" });
    }
    assert_eq!(s.events.len(), MAX_EVENTS);
}

#[test]
fn one_deploy_at_a_time_and_its_end_is_audited() {
    let s = two();
    let s = s.apply(Command::DeployStarted { release: n("oak") }, 20, "ops").unwrap();
    assert_eq!(s.deploying, Some(n("oak")));
    assert_eq!(s.apply(Command::DeployStarted { release: n("elm") }, 21, "ops"), Err(StateError::DeployRunning { name: n("oak") }));
    let end = Command::DeployEnded { release: n("oak"), result: "failed".into(), detail: "crashed".into() };
    let s = s.apply(end, 22, "ops").unwrap();
    assert_eq!(s.deploying, None);
    let e = s.events.back().unwrap();
    assert_eq!((e.action.as_str(), e.result.as_str(), e.detail.as_str()), ("deploy", "failed", "crashed"));
}

#[test]
fn stopped_releases_are_kept_oldest_first() {
    let stop = |r: &str| Command::Containers { release: n(r), change: ContainerChange::Stopped };
    let s = two().apply(stop("juniper"), 1, "t").unwrap().apply(stop("elm"), 2, "t").unwrap();
    assert_eq!(s.stopped, vec![n("juniper"), n("elm")]);
    let s = s.apply(stop("juniper"), 3, "t").unwrap();
    assert_eq!(s.stopped, vec![n("elm"), n("juniper")]);
    let s = s.apply(Command::Containers { release: n("elm"), change: ContainerChange::Started }, 4, "t").unwrap();
    assert_eq!(s.stopped, vec![n("juniper")]);
    let s = s.apply(Command::Containers { release: n("juniper"), change: ContainerChange::Removed }, 5, "t").unwrap();
    assert!(s.stopped.is_empty());
    assert_eq!(s.events.back().unwrap().action, "remove-containers");
}

#[test]
fn state_files_without_deploy_fields_still_load() {
    let mut json = serde_json::to_value(two()).unwrap();
    json.as_object_mut().unwrap().remove("deploying");
    json.as_object_mut().unwrap().remove("stopped");
    assert_eq!(serde_json::from_value::<State>(json).unwrap(), two());
}

fn canary(release: &str) -> Command {
    let canary = CanaryState {
        release: n(release),
        steps: vec![1000, 5000],
        step: 0,
        step_ms: 60_000,
        step_started_at: 0,
        guarded: true,
        node: None,
    };
    Command::CanaryStart { canary }
}

#[test]
fn a_canary_holds_other_flips_and_ends_in_its_switch_or_an_abort() {
    let s = two().apply(canary("elm"), 20, "ops").unwrap();
    assert_eq!(s.canary.as_ref().unwrap().weight(), 1000);
    assert_eq!(s.apply(canary("elm"), 21, "t"), Err(StateError::CanaryRunning { name: n("elm") }));
    let oak = reg(s.clone(), "oak");
    assert_eq!(oak.apply(switch("oak", None), 21, "t"), Err(StateError::CanaryRunning { name: n("elm") }));
    assert_eq!(s.apply(Command::Retire { name: n("elm") }, 21, "t"), Err(StateError::CanaryRunning { name: n("elm") }));
    let stepped = s.apply(Command::CanaryStep { step: 1 }, 30, "canopy").unwrap();
    assert_eq!((stepped.canary.as_ref().unwrap().weight(), stepped.canary.as_ref().unwrap().step_started_at), (5000, 30));
    assert_eq!(stepped.apply(Command::CanaryStep { step: 2 }, 31, "t"), Err(StateError::NoCanary));
    // promotion: the end, then the switch to the candidate, in one commit
    let ended = stepped.apply(Command::CanaryEnd { result: "promoted".into(), detail: String::new() }, 40, "canopy").unwrap();
    assert_eq!(ended.events.back().unwrap().action, "canary-promote");
    let promoted = ended.apply(switch("elm", None), 40, "canopy").unwrap();
    assert_eq!((promoted.live.clone(), promoted.canary.clone()), (Some(n("elm")), None));
    let aborted = stepped.apply(Command::CanaryEnd { result: "aborted".into(), detail: "error ratio".into() }, 40, "canopy").unwrap();
    assert_eq!((aborted.live.clone(), aborted.canary.clone()), (Some(n("juniper")), None));
    assert_eq!(aborted.events.back().unwrap().action, "canary-abort");
    assert_eq!(
        State::empty().apply(Command::CanaryEnd { result: "aborted".into(), detail: String::new() }, 1, "t"),
        Err(StateError::NoCanary)
    );
    assert_eq!(reg(reg(State::empty(), "elm"), "oak").apply(canary("elm"), 1, "t"), Err(StateError::NoLive));
}

#[test]
fn a_failed_mark_survives_re_registration() {
    let failure = Failure { at: 5, action: "auto-rollback".into(), detail: "error ratio 20%".into() };
    let s = two().apply(Command::MarkFailed { release: n("elm"), failure: failure.clone() }, 5, "canopy").unwrap();
    let s = reg(s, "elm");
    assert_eq!(s.releases[&n("elm")].failed, Some(failure));
}

#[test]
fn round_trips_through_json() {
    let s = two();
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
}
