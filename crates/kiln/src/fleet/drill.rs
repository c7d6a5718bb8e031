//! A fleet rollback drill (`kiln chaos --drill canary --cluster`),
//! followed to its end: a canary of the stable digest that every host's
//! load balancer fails (each request it is chosen for counted as a 503
//! and sent on to stable), which the leader's analysis must judge on the
//! whole fleet's counts and abort. [`Watch`] turns what the caller
//! observes (the service's desired state, its last verdict, the hosts'
//! records, at a time it passes in) into the [`DrillReport`].
//!
//! For: judging a drill from observations. Must never: do I/O or read the
//! clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::canary::FleetVerdict;
use super::place::Desired;
use super::HostRecord;
use crate::release::analysis::Outcome;

/// What a fleet drill showed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub service: String,
    /// The stable image the drill's canary ran.
    pub image: String,
    pub window_ms: u64,
    /// The drill's canary share, percent.
    pub canary_percent: u32,
    /// The leader's analysis failed the canary and took it out.
    pub caught: bool,
    /// `caught`, `not caught`, `inconclusive`, `ended by a person`,
    /// `replaced` or `unfinished`.
    pub outcome: String,
    pub reason: String,
    /// From the canary's first routed step to the failing verdict seen.
    pub detect_ms: Option<u64>,
    /// From the start to the canary out of the desired state (every load
    /// balancer's next round sends all to stable).
    pub rollback_ms: Option<u64>,
    /// From the start to the canary's instances gone from every host.
    pub cleaned_ms: Option<u64>,
    /// Faulted canary requests the verdict counted, over the fleet.
    pub canary_requests: u64,
    /// Each host's load balancer's canary and stable requests in the
    /// judged window: the fleet judged as one.
    pub hosts: BTreeMap<String, (u64, u64)>,
    /// The same stable image and instances before and after.
    pub stable_untouched: bool,
    /// The clients' requests in the judged window, over the fleet: every
    /// one stable answered (a faulted canary pick is sent on to stable).
    #[serde(default)]
    pub requests: u64,
    /// Those answered with an error (stable's error rate in the window,
    /// as the load balancers counted it): what clients saw fail.
    #[serde(default)]
    pub failed_requests: u64,
}

impl DrillReport {
    /// Whether the drill proved what it is for: caught, stable untouched,
    /// no client request failed.
    pub fn passed(&self) -> bool {
        self.caught && self.stable_untouched && self.failed_requests == 0
    }
}

/// A drill being followed.
#[derive(Debug, Clone)]
pub struct Watch {
    report: DrillReport,
    started_ms: u64,
    /// The verdict on record before the drill: a later one is the drill's.
    before: Option<FleetVerdict>,
    stable: Vec<String>,
    routed_ms: Option<u64>,
    seen_drill: bool,
}

/// The instances of `service`'s stable slots in `records`, sorted.
pub fn stable_instances(service: &str, records: &[HostRecord]) -> Vec<String> {
    let canary = format!("{service}-canary-");
    let mut ids: Vec<String> = records
        .iter()
        .flat_map(|r| &r.placed)
        .filter(|p| p.service == service && !p.slot.starts_with(&canary))
        .map(|p| p.instance.clone())
        .collect();
    ids.sort();
    ids
}

impl Watch {
    /// A drill of `service` (running `image`, with `stable` its stable
    /// instances) started at `now_ms`, `before` the verdict on record then.
    pub fn new(
        service: &str,
        image: &str,
        window_ms: u64,
        before: Option<FleetVerdict>,
        stable: Vec<String>,
        now_ms: u64,
    ) -> Watch {
        let report =
            DrillReport { service: service.to_owned(), image: image.to_owned(), window_ms, ..DrillReport::default() };
        Watch { report, started_ms: now_ms, before, stable, routed_ms: None, seen_drill: false }
    }

    /// Takes one observation at `now_ms`; true once the drill is over and
    /// its canary's instances are gone.
    pub fn observe(
        &mut self,
        desired: Option<&Desired>,
        verdict: Option<&FleetVerdict>,
        records: &[HostRecord],
        now_ms: u64,
    ) -> bool {
        let since = |t: u64| Some(t.saturating_sub(self.started_ms));
        let drill = desired.and_then(|d| d.canary.as_ref()).filter(|c| c.fault.is_some());
        if let Some(c) = drill {
            self.seen_drill = true;
            self.report.canary_percent = c.weight;
            if c.progress.is_some() && self.routed_ms.is_none() {
                self.routed_ms = Some(now_ms);
            }
        }
        let new_verdict = verdict.filter(|v| Some(*v) != self.before.as_ref() && v.image == self.report.image);
        if let Some(v) = new_verdict.filter(|v| v.action == "abort") {
            if self.report.outcome.is_empty() {
                self.report.canary_requests = v.verdict.canary_requests;
                self.report.hosts = v.hosts.clone();
                self.report.requests = v.verdict.stable_requests;
                let stable_rate =
                    v.verdict.metrics.iter().find(|m| m.name == "error_rate").and_then(|m| m.stable).unwrap_or(0.0);
                self.report.failed_requests = (stable_rate * v.verdict.stable_requests as f64).round() as u64;
                self.report.reason = v.verdict.failed();
                let (caught, outcome) = match v.verdict.outcome {
                    Outcome::Fail => (true, "caught"),
                    Outcome::Pass => (false, "not caught"),
                    Outcome::Inconclusive => (false, "inconclusive"),
                };
                self.report.caught = caught;
                self.report.outcome = outcome.into();
                if caught {
                    self.report.detect_ms = self.routed_ms.map(|r| now_ms.saturating_sub(r));
                }
            }
        }
        if drill.is_none() && self.report.rollback_ms.is_none() {
            let gone = desired.is_none_or(|d| d.canary.is_none());
            if gone {
                self.report.rollback_ms = since(now_ms);
            }
            if self.report.outcome.is_empty() {
                // Out without the leader's verdict: a person ended it, or
                // another change took its place.
                let (outcome, reason) = match desired.and_then(|d| d.canary.as_ref()) {
                    Some(c) => ("replaced", format!("a canary of {} took its place", c.image)),
                    None => ("ended by a person", "kiln abort or rollback --cluster ended it".to_owned()),
                };
                self.report.outcome = outcome.into();
                self.report.reason = reason;
            }
        }
        let canary_slot = format!("{}-canary-", self.report.service);
        let left = records.iter().flat_map(|r| &r.placed).any(|p| p.slot.starts_with(&canary_slot));
        if self.report.rollback_ms.is_some() && !left && self.report.cleaned_ms.is_none() {
            self.report.cleaned_ms = since(now_ms);
        }
        if self.report.rollback_ms.is_some() {
            let image_kept = desired.is_some_and(|d| d.image == self.report.image);
            self.report.stable_untouched = image_kept && stable_instances(&self.report.service, records) == self.stable;
        }
        self.report.cleaned_ms.is_some()
    }

    /// What the drill showed; `unfinished` when it never ended.
    pub fn report(mut self, waited_secs: u64) -> DrillReport {
        if self.report.outcome.is_empty() {
            self.report.outcome = "unfinished".into();
            self.report.reason = format!("the drill had not ended after {waited_secs} s");
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::canary::FleetVerdict;
    use crate::fleet::fixtures;
    use crate::fleet::place::Canary;
    use crate::release::analysis::Verdict;

    fn desired(canary: Option<Canary>) -> Desired {
        Desired { canary, ..fixtures::desired("r/web@sha256:a") }
    }

    fn drill(started: bool) -> Canary {
        Canary {
            image: "r/web@sha256:a".into(),
            replicas: 1,
            weight: 10,
            steps: vec![10],
            step_secs: 2,
            pauses: Default::default(),
            progress: started.then(crate::fleet::canary::Progress::default),
            max_error_rate: None,
            max_p99_ratio: None,
            fault: Some(503),
        }
    }

    fn verdict(at: i64, outcome: Outcome) -> FleetVerdict {
        FleetVerdict {
            at,
            action: "abort".into(),
            image: "r/web@sha256:a".into(),
            weight: 10,
            verdict: Verdict {
                outcome,
                canary_requests: 40,
                stable_requests: 360,
                min_requests: 20,
                confidence: 0.95,
                metrics: Vec::new(),
            },
            hosts: [("h1".to_owned(), (20, 180)), ("h2".to_owned(), (20, 180))].into(),
        }
    }

    fn hosts(slots: &[(&str, &str)]) -> Vec<HostRecord> {
        let placed = slots.iter().map(|(slot, id)| crate::fleet::Placed {
            instance: (*id).into(),
            ..fixtures::placed(slot, "web", 1, 'a', None)
        });
        vec![fixtures::host("h1", placed.collect())]
    }

    #[test]
    fn a_caught_drill_reports_its_detection_rollback_and_cleanup_and_stable_untouched() {
        let stable = hosts(&[("web-0", "i0"), ("web-1", "i1")]);
        let with_canary = hosts(&[("web-0", "i0"), ("web-1", "i1"), ("web-canary-0", "c0")]);
        let old = verdict(1, Outcome::Pass);
        let mut w =
            Watch::new("web", "r/web@sha256:a", 2000, Some(old.clone()), stable_instances("web", &stable), 1_000);
        assert_eq!(stable_instances("web", &with_canary), ["i0", "i1"], "canary slots are not stable's");
        assert!(!w.observe(Some(&desired(Some(drill(false)))), Some(&old), &stable, 1_100));
        assert!(!w.observe(Some(&desired(Some(drill(true)))), Some(&old), &with_canary, 1_500));
        // The leader's abort: caught 2.5 s after the canary was routed.
        let caught = verdict(9, Outcome::Fail);
        assert!(!w.observe(Some(&desired(None)), Some(&caught), &with_canary, 4_000));
        assert!(w.observe(Some(&desired(None)), Some(&caught), &stable, 4_600));
        let r = w.report(60);
        assert_eq!((r.outcome.as_str(), r.caught, r.canary_percent), ("caught", true, 10));
        assert_eq!((r.detect_ms, r.rollback_ms, r.cleaned_ms), (Some(2_500), Some(3_000), Some(3_600)));
        assert_eq!((r.canary_requests, r.hosts.len()), (40, 2));
        assert_eq!((r.requests, r.failed_requests), (360, 0));
        assert!(r.stable_untouched && r.passed(), "{r:?}");
        // Caught, but clients saw stable fail meanwhile: not passed.
        let mut failing = verdict(9, Outcome::Fail);
        failing.verdict.metrics.push(crate::release::analysis::Metric {
            name: "error_rate".into(),
            canary: 1.0,
            stable: Some(0.025),
            limit: 0.035,
            test: "two-proportion z-test".into(),
            p_value: Some(0.0),
            passed: false,
            inconclusive: false,
        });
        let mut w = Watch::new("web", "r/web@sha256:a", 2000, Some(old), stable_instances("web", &stable), 1_000);
        w.observe(Some(&desired(Some(drill(true)))), None, &with_canary, 1_500);
        w.observe(Some(&desired(None)), Some(&failing), &stable, 4_000);
        let r = w.report(60);
        assert_eq!((r.caught, r.failed_requests), (true, 9), "2.5 % of 360");
        assert!(!r.passed());
    }

    #[test]
    fn a_drill_not_caught_ended_by_a_person_or_that_changed_stable_does_not_pass() {
        let stable = hosts(&[("web-0", "i0")]);
        let start = |before| Watch::new("web", "r/web@sha256:a", 2000, before, vec!["i0".into()], 0);
        // Analysis passed it: ended, not caught.
        let mut w = start(None);
        w.observe(Some(&desired(Some(drill(true)))), None, &stable, 100);
        assert!(w.observe(Some(&desired(None)), Some(&verdict(5, Outcome::Pass)), &stable, 3_000));
        let r = w.report(60);
        assert_eq!((r.outcome.as_str(), r.caught, r.detect_ms), ("not caught", false, None));
        assert!(!r.passed());
        // The verdict on record before is not the drill's: a person's abort.
        let old = verdict(1, Outcome::Fail);
        let mut w = start(Some(old.clone()));
        w.observe(Some(&desired(Some(drill(true)))), Some(&old), &stable, 100);
        assert!(w.observe(Some(&desired(None)), Some(&old), &stable, 900));
        let r = w.report(60);
        assert_eq!((r.outcome.as_str(), r.caught), ("ended by a person", false));
        // Caught, but a stable instance was replaced meanwhile.
        let mut w = start(None);
        w.observe(Some(&desired(Some(drill(true)))), None, &stable, 100);
        let replaced = hosts(&[("web-0", "i9")]);
        assert!(w.observe(Some(&desired(None)), Some(&verdict(5, Outcome::Fail)), &replaced, 3_000));
        let r = w.report(60);
        assert!(r.caught && !r.stable_untouched && !r.passed(), "{r:?}");
        // Never ended.
        let mut w = start(None);
        assert!(!w.observe(Some(&desired(Some(drill(true)))), None, &stable, 100));
        assert_eq!(w.report(60).outcome, "unfinished");
    }
}
