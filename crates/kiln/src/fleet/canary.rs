//! A fleet canary's analysed steps: the pure decision of the leading
//! controller, from the canary's desired state and progress, how many of
//! its instances run, and every host's load balancer counts. The counts
//! are judged together, as one sample ([`WindowStats::sum`]), so a
//! canary is promoted or aborted on the fleet's traffic, never on one
//! host's. The progress lives in the service's desired state: a new
//! leader goes on where the old one stopped.
//!
//! For: deciding. Must never: do I/O or read the clock (`now` comes in).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::place::Canary;
use crate::proxy::metrics::WindowStats;
use crate::release::analysis::{self, Outcome, Verdict};
use crate::spec::AnalysisSpec;

/// The leader's place in an analysed canary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// Index into the canary's steps.
    pub step: usize,
    /// Unix seconds the step (or its extension) began, on the leader's clock.
    pub since: i64,
    /// Inconclusive verdicts in a row at this step.
    #[serde(default)]
    pub inconclusive: u32,
    /// Why it waits for a person (`kiln promote --cluster` moves it on,
    /// `abort` or the next deploy or `kiln place` decides otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// In the timed pause after this step (kiln.toml's `{ pause = "1m" }`):
    /// judged again at its end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// What one host's load balancer counted for a service over the step's
/// window (`/kiln/stats/SERVICE/HOST`, under the host's lease).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    pub canary: WindowStats,
    pub stable: WindowStats,
}

/// What the leader sees of a canary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The canary's instances its hosts report running.
    pub running: u32,
    /// Each live host's counts.
    pub hosts: BTreeMap<String, HostStats>,
}

/// What to do about a canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Wait,
    /// The canary's new state: started, advanced, extended or paused.
    Set {
        canary: Canary,
        verdict: Option<Verdict>,
    },
    /// Every step passed: the canary's image becomes the service's.
    Promote {
        verdict: Verdict,
    },
    /// A step failed: the canary is removed.
    Abort {
        verdict: Verdict,
    },
}

/// Errors that fail a canary on their own, at a rate over stable's plus
/// the margin, when its sample is under `min_requests`: load balancers
/// eject a backend that fails request after request, so a canary broken
/// through and through never reaches the sample the tests need.
pub const ERRORS_ALONE: u64 = 3;

/// The fleet's counts of a canary, judged as one sample.
pub fn judge(analysis: &AnalysisSpec, obs: &Observed) -> Verdict {
    let canary = WindowStats::sum(obs.hosts.values().map(|h| &h.canary));
    let stable = WindowStats::sum(obs.hosts.values().map(|h| &h.stable));
    let mut v = analysis::judge(analysis, &canary, Some(&stable));
    let limit = stable.error_rate + analysis.max_error_rate;
    if v.outcome == Outcome::Inconclusive && canary.errors >= ERRORS_ALONE && canary.error_rate > limit {
        v.outcome = Outcome::Fail;
        v.metrics.push(analysis::Metric {
            name: "errors".into(),
            canary: canary.errors as f64,
            stable: Some(stable.errors as f64),
            limit: (ERRORS_ALONE - 1) as f64,
            test: format!(
                "{ERRORS_ALONE} or more errors at a rate over {limit:.4} in a sample the load balancers' ejections kept under min_requests"
            ),
            p_value: None,
            passed: false,
            inconclusive: false,
        });
    }
    v
}

/// The next move of an analysed canary (one with steps) at `now` (unix
/// seconds). It starts once all its instances run; each step lasts
/// `step_secs`, then the fleet's counts are judged: a pass moves to the
/// next weight (or, after the last, promotes), a failure aborts, an
/// inconclusive verdict extends the step up to the analysis's limit and
/// then pauses for a person. A step followed by a pause (`pauses`), once
/// passed, pauses for a person (0 s), or holds its weight that long and is
/// judged again.
pub fn decide(c: &Canary, analysis: &AnalysisSpec, obs: &Observed, now: i64) -> Decision {
    if c.steps.is_empty() {
        return Decision::Wait;
    }
    let Some(p) = &c.progress else {
        if obs.running < c.replicas {
            return Decision::Wait;
        }
        let canary = Canary {
            weight: c.steps[0],
            progress: Some(Progress { step: 0, since: now, ..Progress::default() }),
            ..c.clone()
        };
        return Decision::Set { canary, verdict: None };
    };
    let lasts = match p.held {
        true => c.pauses.get(&p.step).copied().unwrap_or(0),
        false => c.step_secs,
    };
    if p.paused.is_some() || now - p.since < lasts as i64 {
        return Decision::Wait;
    }
    let verdict = judge(analysis, obs);
    let pause = if p.held { None } else { c.pauses.get(&p.step).copied() };
    match verdict.outcome {
        Outcome::Fail => Decision::Abort { verdict },
        Outcome::Pass if pause == Some(0) => {
            let why = format!("a pause step after {} %: kiln promote --cluster moves it on", c.weight);
            let progress = Progress { paused: Some(why), inconclusive: 0, ..p.clone() };
            Decision::Set { canary: Canary { progress: Some(progress), ..c.clone() }, verdict: Some(verdict) }
        }
        Outcome::Pass if pause.is_some() => {
            let progress = Progress { since: now, inconclusive: 0, held: true, ..p.clone() };
            Decision::Set { canary: Canary { progress: Some(progress), ..c.clone() }, verdict: Some(verdict) }
        }
        // A drill is never promoted: passing its analysis ends it (the
        // drill was not caught).
        Outcome::Pass if p.step + 1 >= c.steps.len() && c.fault.is_some() => Decision::Abort { verdict },
        Outcome::Pass if p.step + 1 >= c.steps.len() => Decision::Promote { verdict },
        Outcome::Pass => {
            let step = p.step + 1;
            let canary = Canary {
                weight: c.steps[step],
                progress: Some(Progress { step, since: now, ..Progress::default() }),
                ..c.clone()
            };
            Decision::Set { canary, verdict: Some(verdict) }
        }
        // A drill without the traffic to judge ends by itself.
        Outcome::Inconclusive if c.fault.is_some() && p.inconclusive >= analysis.inconclusive_limit => {
            Decision::Abort { verdict }
        }
        Outcome::Inconclusive => {
            let progress = if p.inconclusive < analysis.inconclusive_limit {
                Progress { since: now, inconclusive: p.inconclusive + 1, ..p.clone() }
            } else {
                Progress {
                    paused: Some(format!(
                        "inconclusive {} times at {} % ({} of {} canary requests needed): kiln place decides",
                        p.inconclusive + 1,
                        c.weight,
                        verdict.canary_requests,
                        verdict.min_requests
                    )),
                    ..p.clone()
                }
            };
            Decision::Set { canary: Canary { progress: Some(progress), ..c.clone() }, verdict: Some(verdict) }
        }
    }
}

/// The record of a judged step (`/kiln/verdicts/SERVICE`), written in
/// the same transaction as what it decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetVerdict {
    /// Unix seconds, on the leader's clock.
    pub at: i64,
    /// `advance`, `extend`, `pause`, `promote` or `abort`.
    pub action: String,
    pub image: String,
    pub weight: u32,
    pub verdict: Verdict,
    /// Each host's canary and stable requests in the judged window.
    pub hosts: BTreeMap<String, (u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(progress: Option<Progress>) -> Canary {
        Canary {
            image: "r/web@sha256:bb".into(),
            replicas: 2,
            weight: 0,
            steps: vec![20, 50],
            step_secs: 10,
            pauses: Default::default(),
            progress,
            max_error_rate: None,
            max_p99_ratio: None,
            fault: None,
        }
    }

    fn stats(requests: u64, errors: u64) -> WindowStats {
        let mut hist = [0u64; crate::proxy::metrics::NB];
        hist[3] = requests;
        WindowStats::of(requests, errors, hist)
    }

    fn fleet(per_host: &[(u64, u64, u64)]) -> Observed {
        Observed {
            running: 2,
            hosts: per_host
                .iter()
                .enumerate()
                .map(|(i, (cr, ce, sr))| {
                    (format!("h{i}"), HostStats { canary: stats(*cr, *ce), stable: stats(*sr, 0) })
                })
                .collect(),
        }
    }

    fn at(step: usize, since: i64) -> Option<Progress> {
        Some(Progress { step, since, ..Progress::default() })
    }

    #[test]
    fn starts_when_running_advances_on_a_pass_and_promotes_after_the_last_step() {
        let a = AnalysisSpec::default();
        // Not all running: waits.
        let few = Observed { running: 1, ..Observed::default() };
        assert_eq!(decide(&canary(None), &a, &few, 100), Decision::Wait);
        // All running: the first step's weight, from now.
        let Decision::Set { canary: c, verdict: None } = decide(&canary(None), &a, &fleet(&[]), 100) else {
            panic!("started")
        };
        assert_eq!((c.weight, c.progress), (20, at(0, 100)));
        // Within the step: waits, on a paused clock.
        let healthy = fleet(&[(300, 0, 1200), (300, 0, 1200), (300, 0, 1200)]);
        assert_eq!(decide(&canary(at(0, 100)), &a, &healthy, 109), Decision::Wait);
        // The step is over and the fleet passes: the next weight.
        let Decision::Set { canary: c, verdict: Some(v) } = decide(&canary(at(0, 100)), &a, &healthy, 110) else {
            panic!("advanced")
        };
        assert_eq!((c.weight, c.progress.unwrap().step), (50, 1));
        assert_eq!(v.canary_requests, 900, "the fleet's counts together");
        // After the last step: promoted.
        assert!(matches!(decide(&canary(at(1, 110)), &a, &healthy, 120), Decision::Promote { .. }));
        // Steps absent: the weight is a person's, never moved.
        let manual = Canary { steps: vec![], ..canary(None) };
        assert_eq!(decide(&manual, &a, &healthy, 1000), Decision::Wait);
    }

    #[test]
    fn one_host_s_errors_are_judged_with_the_fleet_s_counts() {
        let a = AnalysisSpec::default();
        // One host's canary fails 30 of 300; the others none: 10 % of its
        // traffic, 3.3 % of the fleet's, over the 1-point margin.
        let obs = fleet(&[(300, 30, 1200), (300, 0, 1200), (300, 0, 1200)]);
        let Decision::Abort { verdict } = decide(&canary(at(0, 0)), &a, &obs, 10) else { panic!("aborted") };
        assert_eq!(verdict.canary_requests, 900);
        // Three errors in 900 (0.33 %) are within the margin: a pass.
        let obs = fleet(&[(300, 3, 1200), (300, 0, 1200), (300, 0, 1200)]);
        assert!(matches!(decide(&canary(at(0, 0)), &a, &obs, 10), Decision::Set { .. }));
    }

    #[test]
    fn a_canary_ejected_for_its_errors_fails_on_them_alone() {
        let a = AnalysisSpec::default();
        // Ejected by every load balancer after a few failures: 4 requests,
        // all failed, far under min_requests.
        let obs = fleet(&[(2, 2, 900), (1, 1, 900), (1, 1, 900)]);
        let Decision::Abort { verdict } = decide(&canary(at(0, 0)), &a, &obs, 10) else { panic!("aborted") };
        assert!(verdict.failed().contains("errors"), "{verdict:?}");
        // Two errors are not enough to say.
        let obs = fleet(&[(2, 2, 900)]);
        assert!(matches!(decide(&canary(at(0, 0)), &a, &obs, 10), Decision::Set { .. }));
    }

    #[test]
    fn a_drill_is_aborted_when_caught_and_never_promoted_or_paused() {
        let a = AnalysisSpec::default();
        let drill = |progress| Canary { steps: vec![10], fault: Some(503), ..canary(progress) };
        // Every canary request counted as a 503 on every host: caught.
        let faulted = fleet(&[(100, 100, 900), (100, 100, 900)]);
        let Decision::Abort { verdict } = decide(&drill(at(0, 0)), &a, &faulted, 10) else { panic!("caught") };
        assert_eq!(verdict.outcome, Outcome::Fail);
        // Passed (the fault not applied): ended, not promoted.
        let healthy = fleet(&[(300, 0, 1200), (300, 0, 1200)]);
        let Decision::Abort { verdict } = decide(&drill(at(0, 0)), &a, &healthy, 10) else { panic!("ended") };
        assert_eq!(verdict.outcome, Outcome::Pass);
        // Without the traffic to judge: extended, then ended, not paused.
        let thin = fleet(&[(2, 2, 20)]);
        let Decision::Set { canary: c, .. } = decide(&drill(at(0, 0)), &a, &thin, 10) else { panic!("extended") };
        assert_eq!(c.progress.as_ref().map(|p| p.inconclusive), Some(1));
        let limit = Some(Progress { inconclusive: a.inconclusive_limit, ..c.progress.unwrap() });
        let Decision::Abort { verdict } = decide(&drill(limit), &a, &thin, 30) else { panic!("ended") };
        assert_eq!(verdict.outcome, Outcome::Inconclusive);
    }

    #[test]
    fn too_few_requests_extend_the_step_then_pause() {
        let a = AnalysisSpec::default();
        let thin = fleet(&[(5, 0, 20)]);
        let Decision::Set { canary: c, .. } = decide(&canary(at(0, 0)), &a, &thin, 10) else { panic!("extended") };
        let p = c.progress.clone().unwrap();
        assert_eq!((p.step, p.since, p.inconclusive, p.paused.is_none()), (0, 10, 1, true));
        let limit = Some(Progress { inconclusive: a.inconclusive_limit, ..p });
        let Decision::Set { canary: c, .. } = decide(&canary(limit), &a, &thin, 30) else { panic!("paused") };
        assert!(c.progress.as_ref().unwrap().paused.as_deref().unwrap().contains("inconclusive"));
        // Paused: nothing more until a person decides.
        assert_eq!(decide(&c, &a, &thin, 1000), Decision::Wait);
    }

    #[test]
    fn a_pause_step_waits_for_a_person_and_a_timed_one_holds_the_weight_then_judges_again() {
        let a = AnalysisSpec::default();
        let healthy = fleet(&[(300, 0, 1200), (300, 0, 1200), (300, 0, 1200)]);
        // kiln.toml's [20, "pause", 50]: step 0 passes, then waits.
        let manual = Canary { pauses: BTreeMap::from([(0, 0)]), weight: 20, ..canary(at(0, 100)) };
        let Decision::Set { canary: c, verdict: Some(_) } = decide(&manual, &a, &healthy, 110) else {
            panic!("paused")
        };
        let p = c.progress.clone().unwrap();
        assert_eq!((p.step, c.weight), (0, 20), "the weight stays");
        assert!(p.paused.as_deref().is_some_and(|w| w.contains("kiln promote --cluster")), "{p:?}");
        assert_eq!(decide(&c, &a, &healthy, 10_000), Decision::Wait, "until a person decides");
        // [20, { pause = "30s" }, 50]: step 0 passes and holds 30 s more.
        let timed = Canary { pauses: BTreeMap::from([(0, 30)]), weight: 20, ..canary(at(0, 100)) };
        let Decision::Set { canary: c, .. } = decide(&timed, &a, &healthy, 110) else { panic!("held") };
        let p = c.progress.clone().unwrap();
        assert_eq!((p.step, p.since, p.held, c.weight), (0, 110, true, 20));
        assert_eq!(decide(&c, &a, &healthy, 139), Decision::Wait, "held 30 s, not the step's 10");
        // Judged again at its end: a pass moves on to 50 %.
        let Decision::Set { canary: c, .. } = decide(&c, &a, &healthy, 140) else { panic!("advanced") };
        let p = c.progress.clone().unwrap();
        assert_eq!((p.step, p.held, c.weight), (1, false, 50));
        // A failure during the hold still aborts.
        let held = Canary { progress: Some(Progress { held: true, ..at(0, 100).unwrap() }), ..timed };
        let bad = fleet(&[(300, 60, 1200)]);
        assert!(matches!(decide(&held, &a, &bad, 130), Decision::Abort { .. }));
    }
}
