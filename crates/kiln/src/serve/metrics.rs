//! The controller's Prometheus metrics (`GET /metrics` on `kiln serve`):
//! counters fed by every history event as it is recorded (releases by
//! strategy and outcome, analysis verdicts, replacements by cause, crash
//! loops, quarantines), the reconcile duration, and gauges read at scrape
//! time (each service's step and weights, instances by state). Counters
//! start at zero with each controller process, as Prometheus counters may.
//! Pure: [`Counters::observe`] and [`render`] do no I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::serve::history::Event;

/// Reconcile-duration histogram bounds, in seconds.
const BOUNDS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Counters since this controller started.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// (service, strategy): releases begun.
    started: BTreeMap<(String, String), u64>,
    /// (service, strategy, outcome).
    releases: BTreeMap<(String, String, String), u64>,
    /// (service, outcome): pass, fail, inconclusive.
    verdicts: BTreeMap<(String, String), u64>,
    /// (service, cause).
    replacements: BTreeMap<(String, String), u64>,
    crash_loops: BTreeMap<String, u64>,
    quarantines: BTreeMap<String, u64>,
    /// Failed reconcile passes of one service (every retry counts).
    reconcile_errors: BTreeMap<String, u64>,
    /// The strategy of each release seen starting: (service, release).
    strategy: BTreeMap<(String, String), String>,
    /// Reconcile passes: per-bucket counts (one over the last bound), sum.
    reconcile: [u64; BOUNDS.len() + 1],
    reconcile_sum: f64,
}

/// What is read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// (service, step index, steps) of the rollout in progress.
    pub steps: Vec<(String, u32, u32)>,
    /// (service, release, weight) as the load balancer has them.
    pub weights: Vec<(String, String, u32)>,
    /// (service, state, count).
    pub instances: Vec<(String, String, u64)>,
    /// (service, whether it cannot be reconciled now).
    pub failing: Vec<(String, bool)>,
}

impl Counters {
    /// Counts one history event of `release` in `service`.
    pub fn observe(&mut self, service: &str, release: &str, event: &Event) {
        let s = service.to_owned();
        match event {
            Event::Started { strategy, .. } => {
                *self.started.entry((s.clone(), strategy.clone())).or_default() += 1;
                self.strategy.insert((s, release.to_owned()), strategy.clone());
            }
            Event::Finished { outcome, .. } => {
                // A release started before this process: its strategy is unknown here.
                let strategy =
                    self.strategy.remove(&(s.clone(), release.to_owned())).unwrap_or_else(|| "unknown".into());
                *self.releases.entry((s, strategy, outcome.name().to_owned())).or_default() += 1;
            }
            Event::Verdict { verdict, .. } => {
                *self.verdicts.entry((s, verdict.outcome.name().to_owned())).or_default() += 1;
            }
            Event::Replacing { cause, .. } => {
                *self.replacements.entry((s, cause.name().to_owned())).or_default() += 1;
            }
            Event::CrashLoop { .. } => *self.crash_loops.entry(s).or_default() += 1,
            Event::Quarantined { .. } => *self.quarantines.entry(s).or_default() += 1,
            Event::Step { .. }
            | Event::Replaced { .. }
            | Event::Unquarantined { .. }
            | Event::Failing { .. }
            | Event::Recovered { .. }
            | Event::Down { .. }
            | Event::CertExpiring { .. }
            | Event::CertObtained { .. }
            | Event::Drain { .. }
            | Event::HostLost { .. }
            | Event::Scaled { .. } => {}
        }
    }

    /// Counts one failed reconcile of `service`.
    pub fn reconcile_failed(&mut self, service: &str) {
        *self.reconcile_errors.entry(service.to_owned()).or_default() += 1;
    }

    /// Counts one reconcile pass that took `secs`.
    pub fn reconciled(&mut self, secs: f64) {
        let i = BOUNDS.iter().position(|b| secs <= *b).unwrap_or(BOUNDS.len());
        self.reconcile[i] += 1;
        self.reconcile_sum += secs;
    }
}

/// A label value as the exposition format wants it.
pub(crate) fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The Prometheus text exposition (version 0.0.4) of it all.
pub fn render(c: &Counters, g: &Gauges) -> String {
    let mut out = c.render_counters();
    family(&mut out, "kiln_reconcile_errors_total", "counter", "Failed reconcile passes of a service (each retry).");
    for (s, n) in &c.reconcile_errors {
        let _ = writeln!(out, "kiln_reconcile_errors_total{{service=\"{}\"}} {n}", esc(s));
    }
    gauges(&mut out, g);
    family(
        &mut out,
        "kiln_reconcile_duration_seconds",
        "histogram",
        "Time one reconcile pass over every service took.",
    );
    let mut cumulative = 0;
    for (i, b) in BOUNDS.iter().enumerate() {
        cumulative += c.reconcile[i];
        let _ = writeln!(out, "kiln_reconcile_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}");
    }
    cumulative += c.reconcile[BOUNDS.len()];
    let _ = writeln!(out, "kiln_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "kiln_reconcile_duration_seconds_sum {}", c.reconcile_sum);
    let _ = writeln!(out, "kiln_reconcile_duration_seconds_count {cumulative}");
    out
}

impl Counters {
    /// The counters that come from history events alone (a fleet counts
    /// them from its etcd history the same way).
    pub fn render_counters(&self) -> String {
        let c = self;
        let mut out = String::new();
        family(&mut out, "kiln_releases_started_total", "counter", "Releases begun, by strategy.");
        for ((s, strategy), n) in &c.started {
            let _ = writeln!(
                out,
                "kiln_releases_started_total{{service=\"{}\",strategy=\"{}\"}} {n}",
                esc(s),
                esc(strategy)
            );
        }
        family(&mut out, "kiln_releases_total", "counter", "Releases that ended, by strategy and outcome.");
        for ((s, strategy, outcome), n) in &c.releases {
            let _ = writeln!(
                out,
                "kiln_releases_total{{service=\"{}\",strategy=\"{}\",outcome=\"{}\"}} {n}",
                esc(s),
                esc(strategy),
                esc(outcome)
            );
        }
        family(&mut out, "kiln_analysis_verdicts_total", "counter", "Canary analysis verdicts, by outcome.");
        for ((s, v), n) in &c.verdicts {
            let _ = writeln!(out, "kiln_analysis_verdicts_total{{service=\"{}\",verdict=\"{}\"}} {n}", esc(s), esc(v));
        }
        family(&mut out, "kiln_replacements_total", "counter", "Instances replaced, by cause.");
        for ((s, cause), n) in &c.replacements {
            let _ = writeln!(out, "kiln_replacements_total{{service=\"{}\",cause=\"{}\"}} {n}", esc(s), esc(cause));
        }
        family(&mut out, "kiln_crash_loops_total", "counter", "Times a service's instances were found crash-looping.");
        for (s, n) in &c.crash_loops {
            let _ = writeln!(out, "kiln_crash_loops_total{{service=\"{}\"}} {n}", esc(s));
        }
        family(&mut out, "kiln_quarantines_total", "counter", "Instances quarantined for a post-mortem.");
        for (s, n) in &c.quarantines {
            let _ = writeln!(out, "kiln_quarantines_total{{service=\"{}\"}} {n}", esc(s));
        }
        out
    }
}

/// The gauges read at scrape time.
fn gauges(out: &mut String, g: &Gauges) {
    family(out, "kiln_service_failing", "gauge", "1 while a service cannot be reconciled.");
    for (s, f) in &g.failing {
        let _ = writeln!(out, "kiln_service_failing{{service=\"{}\"}} {}", esc(s), u8::from(*f));
    }
    family(out, "kiln_rollout_step", "gauge", "The step of the rollout in progress (1-based; 0 when none).");
    family(out, "kiln_rollout_steps", "gauge", "The steps of the rollout in progress.");
    for (s, step, steps) in &g.steps {
        let _ = writeln!(out, "kiln_rollout_step{{service=\"{}\"}} {step}", esc(s));
        let _ = writeln!(out, "kiln_rollout_steps{{service=\"{}\"}} {steps}", esc(s));
    }
    family(out, "kiln_release_weight", "gauge", "Each release's traffic weight at the load balancer.");
    for (s, r, w) in &g.weights {
        let _ = writeln!(out, "kiln_release_weight{{service=\"{}\",release=\"{}\"}} {w}", esc(s), esc(r));
    }
    family(out, "kiln_instances", "gauge", "Instances by state.");
    for (s, state, n) in &g.instances {
        let _ = writeln!(out, "kiln_instances{{service=\"{}\",state=\"{}\"}} {n}", esc(s), esc(state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heal::Cause;
    use crate::serve::history::Outcome;

    #[test]
    fn events_become_counters_and_the_text_is_the_exposition_format() {
        let mut c = Counters::default();
        let started = Event::Started {
            digest: "sha256:x".into(),
            tags: vec![],
            revision: None,
            strategy: "canary".into(),
            actor: "me".into(),
            previous: None,
            changed: Vec::new(),
        };
        c.observe("web", "web-2", &started);
        c.observe(
            "web",
            "web-2",
            &Event::Finished { outcome: Outcome::RolledBack, reason: "p99".into(), deadline: false },
        );
        c.observe(
            "web",
            "web-1",
            &Event::Finished { outcome: Outcome::Succeeded, reason: String::new(), deadline: false },
        );
        let replacing = |cause| Event::Replacing { instance: "i".into(), cause, detail: String::new() };
        c.observe("web", "web-1", &replacing(Cause::Chaos));
        c.observe("web", "web-1", &replacing(Cause::Chaos));
        c.observe("web", "web-1", &replacing(Cause::Drift));
        c.reconciled(0.003);
        c.reconciled(2.0);
        let g = Gauges {
            steps: vec![("web".into(), 1, 2)],
            weights: vec![("web".into(), "web-1".into(), 90), ("web".into(), "web-2".into(), 10)],
            instances: vec![("web".into(), "running".into(), 3)],
            failing: vec![("web".into(), false), ("api".into(), true)],
        };
        c.reconcile_failed("api");
        c.reconcile_failed("api");
        let text = render(&c, &g);
        for line in [
            "kiln_releases_total{service=\"web\",strategy=\"canary\",outcome=\"rolled-back\"} 1",
            "kiln_releases_total{service=\"web\",strategy=\"unknown\",outcome=\"succeeded\"} 1",
            "kiln_replacements_total{service=\"web\",cause=\"chaos\"} 2",
            "kiln_reconcile_errors_total{service=\"api\"} 2",
            "kiln_service_failing{service=\"api\"} 1",
            "kiln_service_failing{service=\"web\"} 0",
            "kiln_replacements_total{service=\"web\",cause=\"drift\"} 1",
            "kiln_release_weight{service=\"web\",release=\"web-2\"} 10",
            "kiln_rollout_step{service=\"web\"} 1",
            "kiln_instances{service=\"web\",state=\"running\"} 3",
            "kiln_reconcile_duration_seconds_bucket{le=\"0.005\"} 1",
            "kiln_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
            "kiln_reconcile_duration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
