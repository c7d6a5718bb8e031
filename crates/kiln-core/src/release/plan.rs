//! What a deploy would do: the steps that take a service from what runs now
//! to a new digest, under its strategy, and whether clients see downtime.
//!
//! Pure: the spec, what was observed and the target in, a [`Plan`] out.
//! `kiln plan` prints it; the controller will walk the same steps, so what
//! a user is shown is what happens. This module must never look at the
//! store, the instances or the clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::spec::{CanaryStep, ReleaseSpec, Strategy};

/// What runs now, as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    pub digest: Digest,
    /// Running instances of it.
    pub instances: u32,
    /// The release fields it was started with
    /// ([`crate::spec::ServiceSpec::release_fields`]); empty when unknown
    /// (instances of an older kiln), which counts as unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// One step of a release, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Start instances of the new digest and wait until they are healthy
    /// (failing the release past the start deadline).
    Start { count: u32, start_deadline_ms: u64 },
    /// Smoke requests through a private preview listener that routes to
    /// the new set alone, before it gets any traffic.
    Smoke { checks: usize },
    /// Move traffic: the new release's share, percent (old gets the rest).
    Shift { new_percent: u32 },
    /// Judge the step over this window (canary analysis).
    Analyse { window_ms: u64 },
    /// Wait for `kiln promote`, or this long.
    Pause { for_ms: Option<u64> },
    /// Keep the old instances warm (an instant rollback) this long.
    KeepWarm { for_ms: u64 },
    /// Drain old instances (no new requests; in-flight ones get the
    /// drain timeout) and destroy them.
    StopOld { count: u32, drain_timeout_ms: u64 },
    /// Stop instances of the digest already running (a scale-down).
    StopSame { count: u32, drain_timeout_ms: u64 },
}

impl Step {
    /// Its name as the wire spells it (the `step` tag).
    pub fn name(&self) -> &'static str {
        match self {
            Step::Start { .. } => "start",
            Step::Smoke { .. } => "smoke",
            Step::Shift { .. } => "shift",
            Step::Analyse { .. } => "analyse",
            Step::Pause { .. } => "pause",
            Step::KeepWarm { .. } => "keep_warm",
            Step::StopOld { .. } => "stop_old",
            Step::StopSame { .. } => "stop_same",
        }
    }
}

/// A whole release, as a user is shown it before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub service: String,
    pub strategy: String,
    pub from: Option<Current>,
    pub to: Digest,
    pub replicas: u32,
    pub steps: Vec<Step>,
    /// Whether some moment of the plan has no instance serving.
    pub downtime: bool,
    /// The fewest instances serving at any moment, and the most running.
    pub min_serving: u32,
    pub max_running: u32,
    /// The service's settings that changed with the same image (`env.X
    /// changed`, `secret.db changed`): a release of them, by replacement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// What a person should know before it runs (a privileged or
    /// unconfined sandbox), one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Plans the release of `to` for `service`, whatever settings run.
pub fn plan(service: &str, spec: &ReleaseSpec, from: Option<&Current>, to: &Digest) -> Plan {
    plan_release(service, spec, from, to, &BTreeMap::new())
}

/// Plans the release of (`to`, `to_fields`) for `service`: a release is an
/// image digest and the service's settings together, so the same digest
/// with other settings (env, volumes, secrets and their versions, limits,
/// health, strategy) is replaced like a new image; the same pair with
/// another `replicas` is a scale.
pub fn plan_release(
    service: &str,
    spec: &ReleaseSpec,
    from: Option<&Current>,
    to: &Digest,
    to_fields: &BTreeMap<String, String>,
) -> Plan {
    let r = spec.replicas;
    let drain = spec.drain_timeout_ms;
    let start = |count| Step::Start { count, start_deadline_ms: spec.health.start_deadline_ms };
    let known = |c: &Current| !c.fields.is_empty() && !to_fields.is_empty();
    let is_same = |c: &&Current| c.digest == *to && (!known(c) || c.fields == *to_fields);
    let changed = from
        .filter(|c| c.digest == *to && known(c))
        .map(|c| crate::spec::fields_diff(&c.fields, to_fields))
        .unwrap_or_default();
    let old = from.filter(|c| !is_same(c)).map_or(0, |c| c.instances);
    let same = from.filter(is_same).map_or(0, |c| c.instances);
    let mut steps = Vec::new();
    let mut sim = Sim { old, new: same, min_serving: old + same, max_running: old + same };

    if old == 0 {
        // Nothing else runs: a first deploy or a scale of the same digest.
        // Strategies only matter when one digest replaces another.
        if same < r {
            steps.push(start(r - same));
            sim.start(r - same);
            steps.push(Step::Shift { new_percent: 100 });
        } else if same > r {
            steps.push(Step::StopSame { count: same - r, drain_timeout_ms: drain });
            sim.stop_new(same - r);
        }
    } else {
        // The digest already running counts as new capacity.
        match &spec.strategy {
            Strategy::Recreate => {
                steps.push(Step::StopOld { count: old, drain_timeout_ms: drain });
                sim.stop_old(old);
                steps.push(start(r.saturating_sub(same)));
                sim.start(r.saturating_sub(same));
                steps.push(Step::Shift { new_percent: 100 });
            }
            Strategy::Rolling(rs) => {
                // Kubernetes' rule: never more than r + surge running, never
                // fewer than r - unavailable serving.
                let (max_total, min_avail) = (r + rs.max_surge, r.saturating_sub(rs.max_unavailable));
                while sim.old > 0 || sim.new < r {
                    let up = (r.saturating_sub(sim.new)).min(max_total.saturating_sub(sim.old + sim.new));
                    if up > 0 {
                        steps.push(start(up));
                        sim.start(up);
                        steps.push(Step::Shift { new_percent: share(sim.new, sim.old) });
                    }
                    let down = sim.old.min((sim.old + sim.new).saturating_sub(min_avail.max(1).min(r)));
                    let down = if up == 0 && down == 0 { sim.old.min(1) } else { down };
                    if down > 0 {
                        steps.push(Step::StopOld { count: down, drain_timeout_ms: drain });
                        sim.stop_old(down);
                        steps.push(Step::Shift { new_percent: share(sim.new, sim.old) });
                    }
                }
                if sim.new > r {
                    steps.push(Step::StopSame { count: sim.new - r, drain_timeout_ms: drain });
                    sim.stop_new(sim.new - r);
                }
            }
            Strategy::BlueGreen(bg) => {
                steps.push(start(r.saturating_sub(same)));
                sim.start(r.saturating_sub(same));
                steps.push(Step::Smoke { checks: bg.smoke.len() });
                steps.push(Step::Shift { new_percent: 100 });
                steps.push(Step::KeepWarm { for_ms: spec.keep_previous_ms });
                steps.push(Step::StopOld { count: old, drain_timeout_ms: drain });
                sim.stop_old(old);
            }
            Strategy::Canary(c) => {
                for step in &c.steps {
                    match *step {
                        CanaryStep::Weight(w) => {
                            // Enough canary instances for its share of the
                            // load; stable stays whole until the end, so an
                            // abort never touches it.
                            let need = (r * w).div_ceil(100).max(1);
                            if need > sim.new {
                                steps.push(start(need - sim.new));
                                sim.start(need - sim.new);
                            }
                            steps.push(Step::Shift { new_percent: w });
                            steps.push(Step::Analyse { window_ms: c.step_interval_ms });
                        }
                        CanaryStep::Pause(for_ms) => steps.push(Step::Pause { for_ms }),
                    }
                }
                steps.push(Step::KeepWarm { for_ms: spec.keep_previous_ms });
                steps.push(Step::StopOld { count: old, drain_timeout_ms: drain });
                sim.stop_old(old);
            }
        }
    }
    // Traffic needs somewhere to go at every moment; recreate (or a
    // rolling update allowed to take every instance) leaves a gap.
    Plan {
        service: service.to_owned(),
        strategy: spec.strategy.name().to_owned(),
        from: from.cloned(),
        to: to.clone(),
        replicas: r,
        downtime: sim.min_serving == 0 && (old + same) > 0,
        min_serving: sim.min_serving,
        max_running: sim.max_running,
        steps,
        changed,
        warnings: Vec::new(),
    }
}

/// The new release's traffic share, percent, when traffic follows
/// instance counts (rolling).
fn share(new: u32, old: u32) -> u32 {
    (new * 100).checked_div(new + old).unwrap_or(0)
}

/// Instance counts through the plan, to report capacity and downtime.
struct Sim {
    old: u32,
    new: u32,
    min_serving: u32,
    max_running: u32,
}

impl Sim {
    fn start(&mut self, n: u32) {
        self.new += n;
        self.max_running = self.max_running.max(self.old + self.new);
    }
    fn stop_old(&mut self, n: u32) {
        self.old -= n;
        self.min_serving = self.min_serving.min(self.old + self.new);
    }
    fn stop_new(&mut self, n: u32) {
        self.new -= n;
        self.min_serving = self.min_serving.min(self.old + self.new);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_step_is_named_as_its_wire_tag() {
        let all = [
            Step::Start { count: 1, start_deadline_ms: 1 },
            Step::Smoke { checks: 1 },
            Step::Shift { new_percent: 5 },
            Step::Analyse { window_ms: 1 },
            Step::Pause { for_ms: None },
            Step::KeepWarm { for_ms: 1 },
            Step::StopOld { count: 1, drain_timeout_ms: 1 },
            Step::StopSame { count: 1, drain_timeout_ms: 1 },
        ];
        for s in all {
            assert_eq!(serde_json::to_value(&s).unwrap()["step"], s.name(), "{s:?}");
        }
    }
    use crate::spec::parse;

    fn spec(body: &str) -> ReleaseSpec {
        let text = format!("[service.web]\nimage = \"hello:1\"\n{body}");
        parse(Path::new("kiln.toml"), &text).unwrap().services["web"].release.clone()
    }

    fn d(i: u8) -> Digest {
        Digest::of(&[i])
    }

    #[test]
    fn the_same_image_with_other_settings_is_a_release_and_replicas_alone_a_scale() {
        let fields =
            |v: &str| BTreeMap::from([("env.A".to_owned(), v.to_owned()), ("memory".to_owned(), "-".to_owned())]);
        let now = Current { digest: d(1), instances: 2, fields: fields("x") };
        let s = spec("replicas = 2\nstrategy = \"rolling\"\n");
        let p = plan_release("web", &s, Some(&now), &d(1), &fields("x"));
        assert!(p.steps.is_empty() && p.changed.is_empty(), "nothing changed: {p:?}");
        let p = plan_release("web", &s, Some(&now), &d(1), &fields("y"));
        assert_eq!(p.changed, ["env.A changed"]);
        let stopped: u32 = p.steps.iter().map(|s| if let Step::StopOld { count, .. } = s { *count } else { 0 }).sum();
        assert_eq!(stopped, 2, "both replaced: {p:?}");
        let p = plan_release("web", &spec("replicas = 3\n"), Some(&now), &d(1), &fields("x"));
        assert_eq!(p.steps.first(), Some(&Step::Start { count: 1, start_deadline_ms: 30_000 }), "a scale: {p:?}");
        assert!(!p.steps.iter().any(|s| matches!(s, Step::StopOld { .. })));
        // Instances of an older kiln carry no settings: not a release.
        let old = Current { digest: d(1), instances: 2, fields: BTreeMap::new() };
        assert!(plan_release("web", &s, Some(&old), &d(1), &fields("y")).steps.is_empty());
    }

    fn running(i: u8, n: u32) -> Current {
        Current { digest: d(i), instances: n, fields: BTreeMap::new() }
    }

    #[test]
    fn a_first_deploy_starts_the_replicas_and_sends_them_traffic() {
        let p = plan("web", &spec("replicas = 3\n"), None, &d(1));
        assert_eq!(
            p.steps,
            vec![Step::Start { count: 3, start_deadline_ms: 30_000 }, Step::Shift { new_percent: 100 }]
        );
        assert!(!p.downtime, "nothing served before, nothing lost");
        let same = plan("web", &spec("replicas = 2\n"), Some(&running(1, 2)), &d(1));
        assert!(same.steps.is_empty(), "already running: {:?}", same.steps);
        let down = plan("web", &spec("replicas = 1\n"), Some(&running(1, 3)), &d(1));
        assert_eq!(down.steps, vec![Step::StopSame { count: 2, drain_timeout_ms: 30_000 }]);
    }

    #[test]
    fn recreate_says_it_has_downtime() {
        let p = plan("web", &spec("replicas = 2\nstrategy = \"recreate\"\n"), Some(&running(1, 2)), &d(2));
        assert_eq!(p.steps[0], Step::StopOld { count: 2, drain_timeout_ms: 30_000 });
        assert!(matches!(p.steps[1], Step::Start { count: 2, .. }));
        assert!(p.downtime);
        assert_eq!(p.min_serving, 0);
    }

    #[test]
    fn rolling_is_surge_first_by_default_and_never_drops_capacity() {
        let p = plan("web", &spec("replicas = 3\n"), Some(&running(1, 3)), &d(2));
        let starts = p.steps.iter().filter(|s| matches!(s, Step::Start { count: 1, .. })).count();
        let stops = p.steps.iter().filter(|s| matches!(s, Step::StopOld { count: 1, .. })).count();
        assert_eq!((starts, stops), (3, 3));
        assert!(matches!(p.steps[0], Step::Start { .. }), "a replacement serves before an old one stops");
        assert_eq!((p.min_serving, p.max_running, p.downtime), (3, 4, false));
        assert_eq!(p.steps.last(), Some(&Step::Shift { new_percent: 100 }));

        // Stop-first (Swarm's default) dips, but is not downtime with 3.
        let p = plan(
            "web",
            &spec("replicas = 3\nrolling = { max_surge = 0, max_unavailable = 1 }\n"),
            Some(&running(1, 3)),
            &d(2),
        );
        assert!(matches!(p.steps[0], Step::StopOld { count: 1, .. }));
        assert_eq!((p.min_serving, p.max_running, p.downtime), (2, 3, false));
        // ... and is downtime with one replica.
        let p = plan("web", &spec("rolling = { max_surge = 0, max_unavailable = 1 }\n"), Some(&running(1, 1)), &d(2));
        assert!(p.downtime, "{:?}", p.steps);

        // A bigger surge goes faster.
        let p = plan("web", &spec("replicas = 4\nrolling = { max_surge = 2 }\n"), Some(&running(1, 4)), &d(2));
        assert!(matches!(p.steps[0], Step::Start { count: 2, .. }));
        assert_eq!(p.steps.iter().filter(|s| matches!(s, Step::Start { .. })).count(), 2);
        assert_eq!(p.max_running, 6);
    }

    #[test]
    fn blue_green_starts_the_whole_set_smokes_switches_and_keeps_the_old_warm() {
        let s =
            spec("replicas = 2\nstrategy = \"blue-green\"\nkeep_previous = \"1m\"\nblue_green = { smoke = [\"/\"] }\n");
        let p = plan("web", &s, Some(&running(1, 2)), &d(2));
        assert_eq!(
            p.steps,
            vec![
                Step::Start { count: 2, start_deadline_ms: 30_000 },
                Step::Smoke { checks: 1 },
                Step::Shift { new_percent: 100 },
                Step::KeepWarm { for_ms: 60_000 },
                Step::StopOld { count: 2, drain_timeout_ms: 30_000 },
            ]
        );
        assert_eq!((p.max_running, p.min_serving, p.downtime), (4, 2, false));
    }

    #[test]
    fn canary_walks_its_steps_with_analysis_and_pauses() {
        let s = spec(
            "replicas = 4\nstrategy = \"canary\"\ncanary = { steps = [5, \"pause\", 50], step_interval = \"10s\" }\n",
        );
        let p = plan("web", &s, Some(&running(1, 4)), &d(2));
        use Step::*;
        assert_eq!(
            p.steps,
            vec![
                Start { count: 1, start_deadline_ms: 30_000 },
                Shift { new_percent: 5 },
                Analyse { window_ms: 10_000 },
                Pause { for_ms: None },
                Start { count: 1, start_deadline_ms: 30_000 },
                Shift { new_percent: 50 },
                Analyse { window_ms: 10_000 },
                Start { count: 2, start_deadline_ms: 30_000 },
                Shift { new_percent: 100 },
                Analyse { window_ms: 10_000 },
                KeepWarm { for_ms: 300_000 },
                StopOld { count: 4, drain_timeout_ms: 30_000 },
            ]
        );
        assert_eq!((p.min_serving, p.max_running, p.downtime), (4, 8, false));
    }
}
