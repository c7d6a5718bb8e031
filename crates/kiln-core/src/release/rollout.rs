//! A release in progress, and the pure decision of what to do next.
//!
//! [`decide`] is the controller's "decide" of observe → decide → act: the
//! rollout's recorded progress, what was observed this tick and the time
//! in, one [`Action`] out. It walks the [`plan`](super::plan) steps, so the
//! release does what `kiln plan` showed. Every target it names is absolute
//! ("4 new instances", "50% to the canary"), never a delta, so repeating an
//! action after a crash is harmless: the acts are idempotent because the
//! decisions are. This module must never do I/O or read the clock.

use serde::{Deserialize, Serialize};

use super::analysis::{self, Outcome, Verdict};
use super::plan::Step;
use crate::digest::Digest;
use crate::metrics::WindowStats;
use crate::spec::{AnalysisSpec, ReleaseSpec};

/// A release in progress, as recorded (in `state.db`) after each step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The new release's id.
    pub release: String,
    pub digest: Digest,
    pub image_ref: String,
    /// The release it replaces, if any.
    pub stable: Option<String>,
    pub steps: Vec<Step>,
    /// The step being carried out.
    pub index: usize,
    pub step_started_ms: u64,
    pub started_ms: u64,
    /// The canary's (new release's) share of traffic now, percent.
    pub new_percent: u32,
    /// Inconclusive verdicts waited out in this step.
    pub inconclusive: u32,
    /// A person said `kiln promote` for the current pause.
    pub promoted: bool,
    /// Paused for a person (a pause step, or analysis that stayed
    /// inconclusive); shown by `kiln status`.
    pub paused: Option<String>,
    /// Skip analysis (a rollback's fast release).
    pub skip_analysis: bool,
    /// The service settings it releases
    /// ([`crate::spec::ServiceSpec::release_fields`]); empty in older state.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
}

/// What was observed of the release this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Live instances of the new release, and how many of them are healthy.
    pub new_live: u32,
    pub new_healthy: u32,
    /// Live instances of the release being replaced.
    pub old_live: u32,
    /// Instances of the new release that failed by themselves (exited
    /// unasked) since it began, and the last one's exit.
    pub new_failures: u32,
    pub last_failure: Option<String>,
    /// The load balancer's windows for the step's analysis, when asked for.
    pub canary: Option<WindowStats>,
    pub stable: Option<WindowStats>,
}

/// The next thing to do; targets are absolute.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Nothing this tick.
    Wait,
    /// Start new instances until the new release has `count` live ones.
    EnsureNew { count: u32 },
    /// Run the smoke checks against the new set.
    Smoke,
    /// Route `new_percent` of traffic to the new release (the rest stable).
    Route { new_percent: u32 },
    /// Drain and destroy old instances until `count` are left.
    ShrinkOld { count: u32 },
    /// The current step is done; `verdict` if it was judged.
    Advance { verdict: Option<Verdict> },
    /// An inconclusive verdict: wait one more window.
    Extend { verdict: Verdict },
    /// Wait for a person.
    Pause { reason: String, verdict: Option<Verdict> },
    /// Give up: traffic back to stable, new instances removed.
    Fail { reason: String, verdict: Option<Verdict> },
    /// All steps done; keep the old set warm until `warm_until_ms`.
    Succeed { warm_until_ms: u64 },
}

/// The new instances the plan wants once step `index` is done, and the old
/// ones it leaves.
fn targets(steps: &[Step], index: usize, old_at_start: u32) -> (u32, u32) {
    let (mut new, mut stopped) = (0, 0);
    for s in &steps[..=index.min(steps.len().saturating_sub(1))] {
        match s {
            Step::Start { count, .. } => new += count,
            Step::StopOld { count, .. } => stopped += count,
            _ => {}
        }
    }
    (new, old_at_start.saturating_sub(stopped))
}

/// Whether `r`'s step has made no progress within `progress_deadline` (a
/// pause for a person never counts).
pub fn past_deadline(r: &Rollout, spec: &ReleaseSpec, now_ms: u64) -> bool {
    now_ms.saturating_sub(r.step_started_ms) > spec.progress_deadline_ms && r.paused.is_none()
}

/// Decides the next action of `r`. `old_at_start`: the old release's
/// instances when the rollout began (recorded with it).
pub fn decide(r: &Rollout, spec: &ReleaseSpec, obs: &Observed, old_at_start: u32, now_ms: u64) -> Action {
    let Some(step) = r.steps.get(r.index) else {
        return Action::Succeed { warm_until_ms: now_ms };
    };
    let elapsed = now_ms.saturating_sub(r.step_started_ms);
    if past_deadline(r, spec, now_ms) {
        return Action::Fail {
            reason: format!(
                "step {} made no progress for {} ms (progress_deadline)",
                r.index + 1,
                spec.progress_deadline_ms
            ),
            verdict: None,
        };
    }
    if obs.new_failures >= spec.heal.crash_loop {
        return Action::Fail {
            reason: format!(
                "crash loop: {} instances of the new release failed (heal.crash_loop = {}); last: {}",
                obs.new_failures,
                spec.heal.crash_loop,
                obs.last_failure.as_deref().unwrap_or("exited")
            ),
            verdict: None,
        };
    }
    let (want_new, want_old) = targets(&r.steps, r.index, old_at_start);
    match *step {
        Step::Start { start_deadline_ms, .. } => {
            if obs.new_healthy >= want_new {
                Action::Advance { verdict: None }
            } else if elapsed > start_deadline_ms {
                Action::Fail {
                    reason: format!(
                        "{} of {want_new} new instances healthy after {} ms (health.start_deadline)",
                        obs.new_healthy, start_deadline_ms
                    ),
                    verdict: None,
                }
            } else if obs.new_live < want_new {
                Action::EnsureNew { count: want_new }
            } else {
                Action::Wait
            }
        }
        Step::Smoke { .. } => Action::Smoke,
        Step::Shift { new_percent } => {
            if r.new_percent == new_percent {
                Action::Advance { verdict: None }
            } else {
                Action::Route { new_percent }
            }
        }
        Step::Analyse { window_ms } => {
            // A person promoted past an inconclusive pause: go on.
            if r.skip_analysis || r.promoted {
                return Action::Advance { verdict: None };
            }
            // Paused for a person: judging again every tick would record a
            // new verdict (and raise a new alert) each time.
            if r.paused.is_some() {
                return Action::Wait;
            }
            if elapsed < window_ms {
                return Action::Wait;
            }
            let Some(canary) = &obs.canary else { return Action::Wait };
            let analysis = match &spec.strategy {
                crate::spec::Strategy::Canary(c) => c.analysis.clone(),
                _ => AnalysisSpec::default(),
            };
            let verdict = analysis::judge(&analysis, canary, obs.stable.as_ref().filter(|_| r.new_percent < 100));
            match verdict.outcome {
                Outcome::Pass => Action::Advance { verdict: Some(verdict) },
                Outcome::Fail => Action::Fail {
                    reason: format!("canary analysis failed at {}%: {}", r.new_percent, verdict.failed()),
                    verdict: Some(verdict),
                },
                Outcome::Inconclusive if r.inconclusive < analysis.inconclusive_limit => Action::Extend { verdict },
                Outcome::Inconclusive => Action::Pause {
                    reason: format!(
                        "analysis inconclusive {} times at {}% ({} of {} requests needed): kiln promote or kiln abort",
                        r.inconclusive + 1,
                        r.new_percent,
                        verdict.canary_requests,
                        verdict.min_requests
                    ),
                    verdict: Some(verdict),
                },
            }
        }
        Step::Pause { for_ms } => {
            if r.promoted || for_ms.is_some_and(|ms| elapsed >= ms) {
                Action::Advance { verdict: None }
            } else if r.paused.is_none() {
                Action::Pause { reason: "paused: kiln promote to go on".into(), verdict: None }
            } else {
                Action::Wait
            }
        }
        Step::KeepWarm { for_ms } => Action::Succeed { warm_until_ms: now_ms + for_ms },
        Step::StopOld { .. } => {
            if obs.old_live > want_old {
                Action::ShrinkOld { count: want_old }
            } else {
                Action::Advance { verdict: None }
            }
        }
        Step::StopSame { .. } => Action::Advance { verdict: None },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::metrics::ReleaseMetrics;
    use crate::release::plan::{plan, Current};
    use crate::spec::parse;

    fn spec(body: &str) -> ReleaseSpec {
        let text = format!("[service.web]\nimage = \"hello:1\"\n{body}");
        parse(Path::new("kiln.toml"), &text).unwrap().services["web"].release.clone()
    }

    fn rollout(spec: &ReleaseSpec, old: u32) -> Rollout {
        let from = Current { digest: Digest::of(b"old"), instances: old, fields: Default::default() };
        let p = plan("web", spec, (old > 0).then_some(&from), &Digest::of(b"new"));
        Rollout {
            release: "web-2".into(),
            digest: Digest::of(b"new"),
            image_ref: "hello:2".into(),
            stable: (old > 0).then(|| "web-1".into()),
            steps: p.steps,
            index: 0,
            step_started_ms: 0,
            started_ms: 0,
            new_percent: 0,
            inconclusive: 0,
            promoted: false,
            paused: None,
            skip_analysis: false,
            fields: Default::default(),
        }
    }

    /// Applies what the controller's act would, on a paused clock.
    fn apply(r: &mut Rollout, a: &Action, now: u64) {
        match a {
            Action::Route { new_percent } => r.new_percent = *new_percent,
            Action::Advance { .. } => {
                r.index += 1;
                r.step_started_ms = now;
                r.inconclusive = 0;
                r.promoted = false;
                r.paused = None;
            }
            Action::Extend { .. } => {
                r.inconclusive += 1;
                r.step_started_ms = now;
            }
            Action::Pause { reason, .. } => r.paused = Some(reason.clone()),
            _ => {}
        }
    }

    fn window(requests: u64, errors: u64) -> WindowStats {
        let m = ReleaseMetrics::default();
        for i in 0..requests {
            m.record(if i < errors { 500 } else { 200 }, 400, 5);
        }
        m.window(30, 5)
    }

    #[test]
    fn a_canary_walks_start_route_analyse_and_pauses_for_a_person() {
        let s = spec(
            "replicas = 2\nstrategy = \"canary\"\ncanary = { steps = [10, \"pause\"], step_interval = \"10s\" }\n",
        );
        let mut r = rollout(&s, 2);
        let mut obs = Observed { old_live: 2, ..Observed::default() };
        assert_eq!(decide(&r, &s, &obs, 2, 0), Action::EnsureNew { count: 1 });
        obs.new_live = 1;
        assert_eq!(decide(&r, &s, &obs, 2, 100), Action::Wait, "started, not healthy yet");
        obs.new_healthy = 1;
        let a = decide(&r, &s, &obs, 2, 200);
        assert_eq!(a, Action::Advance { verdict: None });
        apply(&mut r, &a, 200);
        let a = decide(&r, &s, &obs, 2, 200);
        assert_eq!(a, Action::Route { new_percent: 10 });
        apply(&mut r, &a, 200);
        let a = decide(&r, &s, &obs, 2, 200);
        apply(&mut r, &a, 200);
        // Analysis waits out its window on the paused clock.
        assert_eq!(decide(&r, &s, &obs, 2, 5_000), Action::Wait);
        obs.canary = Some(window(100, 0));
        obs.stable = Some(window(900, 0));
        let a = decide(&r, &s, &obs, 2, 10_200);
        assert!(matches!(&a, Action::Advance { verdict: Some(v) } if v.outcome == Outcome::Pass), "{a:?}");
        apply(&mut r, &a, 10_200);
        let a = decide(&r, &s, &obs, 2, 10_300);
        assert!(matches!(a, Action::Pause { .. }), "{a:?}");
        apply(&mut r, &a, 10_300);
        assert_eq!(decide(&r, &s, &obs, 2, 900_000), Action::Wait, "a pause for a person has no deadline");
        r.promoted = true;
        assert_eq!(decide(&r, &s, &obs, 2, 900_000), Action::Advance { verdict: None });
    }

    #[test]
    fn a_failing_canary_fails_and_too_little_traffic_waits_then_pauses() {
        let s = spec("strategy = \"canary\"\ncanary = { steps = [50], analysis = { inconclusive_limit = 2 } }\n");
        let mut r = rollout(&s, 1);
        r.index = r.steps.iter().position(|s| matches!(s, Step::Analyse { .. })).unwrap();
        r.new_percent = 50;
        let mut obs = Observed {
            new_live: 1,
            new_healthy: 1,
            old_live: 1,
            canary: Some(window(200, 40)),
            stable: Some(window(200, 0)),
            ..Observed::default()
        };
        let a = decide(&r, &s, &obs, 1, 30_000);
        assert!(matches!(&a, Action::Fail { verdict: Some(v), .. } if v.outcome == Outcome::Fail), "{a:?}");

        obs.canary = Some(window(5, 5));
        for round in 0..2 {
            let now = 30_000 * (round + 1);
            let a = decide(&r, &s, &obs, 1, now);
            assert!(matches!(a, Action::Extend { .. }), "round {round}: {a:?}");
            apply(&mut r, &a, now);
        }
        let a = decide(&r, &s, &obs, 1, 90_000);
        assert!(matches!(&a, Action::Pause { reason, .. } if reason.contains("inconclusive 3 times")), "{a:?}");
        apply(&mut r, &a, 90_000);
        // Paused, it waits for a person and judges nothing more.
        for now in [90_100, 200_000, 900_000] {
            assert_eq!(decide(&r, &s, &obs, 1, now), Action::Wait, "at {now}");
        }
        // Without a person the pause lasts: no deadline fails it.
        // `kiln promote` (promoted, pause cleared, the step's clock restarted)
        // goes on past the step.
        r.promoted = true;
        r.paused = None;
        r.step_started_ms = 900_000;
        assert_eq!(decide(&r, &s, &obs, 1, 900_100), Action::Advance { verdict: None });
    }

    #[test]
    fn a_new_set_that_never_gets_healthy_fails_at_the_start_deadline() {
        let s = spec("strategy = \"blue-green\"\n[service.web.health]\nstart_deadline = \"5s\"\n");
        let r = rollout(&s, 1);
        let obs = Observed { new_live: 1, new_healthy: 0, old_live: 1, ..Observed::default() };
        assert_eq!(decide(&r, &s, &obs, 1, 4_000), Action::Wait);
        let a = decide(&r, &s, &obs, 1, 5_001);
        assert!(matches!(&a, Action::Fail { reason, .. } if reason.contains("0 of 1 new instances healthy")), "{a:?}");
        // A crashed new instance is started again until the deadline.
        let obs = Observed { new_live: 0, ..obs };
        assert_eq!(decide(&r, &s, &obs, 1, 1_000), Action::EnsureNew { count: 1 });
    }

    #[test]
    fn rolling_targets_are_absolute_so_a_repeat_after_a_crash_is_harmless() {
        let s = spec("replicas = 2\n");
        let mut r = rollout(&s, 2);
        // Step 3 of surge-first rolling: stop one old, leaving one.
        r.index = r.steps.iter().position(|s| matches!(s, Step::StopOld { .. })).unwrap();
        let obs = Observed { new_live: 1, new_healthy: 1, old_live: 2, ..Observed::default() };
        assert_eq!(decide(&r, &s, &obs, 2, 0), Action::ShrinkOld { count: 1 });
        // The act stopped it and the controller died before recording: the
        // same decision again asks for what is already true, and moves on.
        let obs = Observed { old_live: 1, ..obs };
        assert_eq!(decide(&r, &s, &obs, 2, 0), Action::Advance { verdict: None });
    }

    #[test]
    fn blue_green_smokes_then_switches_and_succeeds_keeping_the_old_warm() {
        let s = spec("strategy = \"blue-green\"\nkeep_previous = \"1m\"\n");
        let mut r = rollout(&s, 1);
        r.index = 1;
        assert_eq!(decide(&r, &s, &Observed::default(), 1, 0), Action::Smoke);
        r.index = 2;
        assert_eq!(decide(&r, &s, &Observed::default(), 1, 0), Action::Route { new_percent: 100 });
        r.new_percent = 100;
        r.index = 3;
        assert_eq!(decide(&r, &s, &Observed::default(), 1, 10), Action::Succeed { warm_until_ms: 60_010 });
    }

    #[test]
    fn a_stuck_step_fails_at_the_progress_deadline_but_a_pause_for_a_person_does_not() {
        let s = spec("strategy = \"canary\"\nprogress_deadline = \"1m\"\ncanary = { steps = [\"pause\", 50] }\n");
        let mut r = rollout(&s, 1);
        r.index = r.steps.iter().position(|s| matches!(s, Step::Start { .. })).unwrap();
        let obs = Observed { new_live: 1, new_healthy: 0, old_live: 1, ..Observed::default() };
        let a = decide(&r, &s, &obs, 1, 60_001);
        assert!(matches!(&a, Action::Fail { reason, .. } if reason.contains("progress_deadline")), "{a:?}");
        r.index = r.steps.iter().position(|s| matches!(s, Step::Pause { .. })).unwrap();
        r.paused = Some("paused".into());
        assert_eq!(decide(&r, &s, &obs, 1, 600_000), Action::Wait);
    }

    #[test]
    fn a_crash_loop_of_the_new_release_fails_it_whatever_the_step() {
        let s = spec("strategy = \"canary\"\n[service.web.heal]\ncrash_loop = 2\n");
        let r = rollout(&s, 2);
        let mut obs = Observed { old_live: 2, new_failures: 1, ..Observed::default() };
        assert_eq!(decide(&r, &s, &obs, 2, 0), Action::EnsureNew { count: 1 }, "one failure: start again");
        obs.new_failures = 2;
        obs.last_failure = Some("web-1a2b exited with code 3".into());
        let Action::Fail { reason, verdict: None } = decide(&r, &s, &obs, 2, 0) else { panic!() };
        assert!(reason.starts_with("crash loop: 2 instances") && reason.ends_with("code 3"), "{reason}");
    }
}
