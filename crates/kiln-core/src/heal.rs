//! Healing a service's serving release: which instances to replace, when
//! to start their replacements, when an old one is recycled, when a run of
//! failures is a crash loop.
//!
//! [`decide`] is the "decide" of the controller's observe → decide → act
//! for a service that is not being released: what was seen of each
//! instance this tick, the recorded [`HealState`], the time in; a list of
//! [`HealAction`]s out. [`apply`] is the state change each action makes,
//! also pure, so that the controller records it (history, then state)
//! before it acts. Targets are absolute (the replica count), so a repeated
//! decision after a crash starts nothing twice. This module must never do
//! I/O or read the clock.

use serde::{Deserialize, Serialize};

use crate::spec::ReleaseSpec;

/// How long a service whose reconcile failed `attempts` times in a row
/// waits before the next try: 500 ms doubling, at most 30 s. Pure.
pub fn reconcile_backoff_ms(attempts: u32) -> u64 {
    500u64.saturating_mul(1 << attempts.saturating_sub(1).min(6)).min(30_000)
}

/// Why an instance is replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Cause {
    /// It exited without being asked to.
    Exited { code: Option<i32>, signal: Option<i32> },
    /// `kiln chaos` killed it.
    Chaos,
    /// Its health check failed past the threshold (it answered, badly, or
    /// refused connections).
    Unhealthy,
    /// Its health check timed out past the threshold: it accepts
    /// connections but never answers, or stopped reading.
    Hung,
    /// It never passed a health check within the start deadline.
    NeverHealthy,
    /// It no longer is what its release says.
    Drift,
    /// Older than `max_age`.
    MaxAge,
}

impl Cause {
    pub fn name(&self) -> &'static str {
        match self {
            Cause::Exited { .. } => "exited",
            Cause::Chaos => "chaos",
            Cause::Unhealthy => "unhealthy",
            Cause::Hung => "hung",
            Cause::NeverHealthy => "never-healthy",
            Cause::Drift => "drift",
            Cause::MaxAge => "max-age",
        }
    }

    /// Whether this failure may be part of a crash loop: the instance
    /// failed by itself (not killed by chaos, not retired by kiln).
    fn is_failure(&self) -> bool {
        matches!(self, Cause::Exited { .. } | Cause::Unhealthy | Cause::Hung | Cause::NeverHealthy)
    }
}

/// How a health probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeFailure {
    Refused,
    Timeout,
    Status(u16),
}

/// The controller's probes of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Consecutive passes and failures.
    pub passes: u32,
    pub fails: u32,
    /// Since when it has been healthy (passes ≥ the healthy threshold).
    pub healthy_since_ms: Option<u64>,
    pub last_failure: Option<ProbeFailure>,
}

/// One instance of the serving release, as observed this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub started_ms: u64,
    /// Exit code, signal and when (ms), once it has exited.
    pub exit: Option<(Option<i32>, Option<i32>, u64)>,
    pub health: Health,
    /// What differs from its release (empty: no drift found).
    pub drift: Vec<String>,
    /// `kiln chaos` killed it on purpose.
    pub chaos: bool,
}

/// A replacement under way: `old` left (or, recycled, is leaving) and
/// `replacement` was started for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub old: String,
    pub cause: Cause,
    pub detail: String,
    /// When the failure happened (the exit's time for an exit).
    pub since_ms: u64,
    pub replacement: Option<String>,
    /// Whether `old` still serves until its replacement is healthy
    /// (a recycle is surge-first).
    pub old_serves: bool,
}

/// What healing records per service (in its state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealState {
    pub pending: Vec<Pending>,
    /// Failures in a row (instances that failed before `min_uptime`).
    pub failures: u32,
    pub last_failure_ms: u64,
    /// The last failures' exits, newest last (at most [`KEEP_EXITS`]).
    pub last_exits: Vec<ExitNote>,
}

/// One failure, for `kiln status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitNote {
    pub instance: String,
    pub cause: Cause,
    pub at_ms: u64,
    /// The instance's last log lines (filled in by the act).
    #[serde(default)]
    pub logs: Vec<String>,
}

pub const KEEP_EXITS: usize = 5;

impl HealState {
    /// Whether the service's instances keep failing.
    pub fn crash_looping(&self, spec: &ReleaseSpec) -> bool {
        self.failures >= spec.heal.crash_loop
    }

    /// When the next replacement may start: at once until a crash loop,
    /// then after 1 s, doubling with each further failure, up to the cap.
    pub fn backoff_until_ms(&self, spec: &ReleaseSpec) -> u64 {
        if !self.crash_looping(spec) {
            return 0;
        }
        let doublings = (self.failures - spec.heal.crash_loop).min(20);
        let delay = (1000u64 << doublings).min(spec.heal.backoff_cap_ms);
        self.last_failure_ms + delay
    }
}

/// One thing to do; the controller records each before doing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum HealAction {
    /// Take `instance` out of traffic now (unless `cause` is a recycle)
    /// and replace it.
    Replace { instance: String, cause: Cause, detail: String, since_ms: u64 },
    /// Freeze `instance` for a post-mortem and replace it.
    Quarantine { instance: String, reason: String },
    /// Start this many instances; they become the replacements of the
    /// pending entries without a live one, in order.
    Start { count: u32 },
    /// A replacement serves: record how long it took; a recycled old
    /// instance now drains.
    Replaced { old: String, replacement: String, took_ms: u64, retire_old: bool },
    /// The crash count starts over: an instance served past `min_uptime`.
    Stable,
}

/// When an instance of this id is recycled: at `max_age` less up to a
/// tenth, spread by its id, so instances started together leave apart.
pub fn recycle_at_ms(id: &str, started_ms: u64, max_age_ms: u64) -> u64 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let jitter = (h % 1000) * (max_age_ms / 10) / 1000;
    started_ms + max_age_ms - jitter
}

/// What to do for the serving release's instances (`seen`; quarantined
/// ones are left out by the caller), `replicas` of them wanted.
pub fn decide(spec: &ReleaseSpec, replicas: u32, seen: &[Seen], state: &HealState, now_ms: u64) -> Vec<HealAction> {
    let h = &spec.health;
    let mut out = Vec::new();
    let pending_old = |id: &str| state.pending.iter().any(|p| p.old == id);
    let healthy = |s: &Seen| s.exit.is_none() && s.health.healthy_since_ms.is_some() && s.health.fails == 0;
    // Replacements that now serve. An entry whose replacement is not known
    // (its start was not assigned, or the one assigned died) takes a
    // healthy instance started after the failure that no entry claims.
    let mut claimed: Vec<&str> = state.pending.iter().filter_map(|p| p.replacement.as_deref()).collect();
    for p in &state.pending {
        let assigned = p.replacement.as_deref().filter(|r| seen.iter().any(|s| s.id == *r && s.exit.is_none()));
        let r = match assigned {
            Some(r) => r,
            None => {
                let Some(s) = seen.iter().find(|s| {
                    healthy(s) && s.started_ms >= p.since_ms && !claimed.contains(&s.id.as_str()) && !pending_old(&s.id)
                }) else {
                    continue;
                };
                claimed.push(&s.id);
                &s.id
            }
        };
        if let Some(s) = seen.iter().find(|s| s.id == r && healthy(s)) {
            let took = s.health.healthy_since_ms.unwrap_or(now_ms).saturating_sub(p.since_ms);
            out.push(HealAction::Replaced {
                old: p.old.clone(),
                replacement: r.to_owned(),
                took_ms: took,
                retire_old: p.old_serves,
            });
        }
    }
    // Instances that failed.
    let mut leaving = 0u32;
    for s in seen.iter().filter(|s| !pending_old(&s.id)) {
        let fail = if let Some((code, signal, at)) = s.exit {
            let cause = if s.chaos { Cause::Chaos } else { Cause::Exited { code, signal } };
            let detail = match (code, signal) {
                (Some(c), _) => format!("exited with code {c}"),
                (_, Some(9)) if s.chaos => "killed (SIGKILL) by kiln chaos".to_owned(),
                (_, Some(sig)) => format!("killed by signal {sig}"),
                _ => "exited".to_owned(),
            };
            Some((cause, detail, at))
        } else if !s.drift.is_empty() {
            if spec.heal.quarantine_drift {
                out.push(HealAction::Quarantine {
                    instance: s.id.clone(),
                    reason: format!("drift: {}", s.drift.join("; ")),
                });
                leaving += 1;
                continue;
            }
            Some((Cause::Drift, s.drift.join("; "), now_ms))
        } else if s.health.fails >= h.unhealthy_threshold && s.health.healthy_since_ms.is_none() {
            // Never healthy: only past the start deadline.
            (now_ms.saturating_sub(s.started_ms) > h.start_deadline_ms).then(|| {
                let detail = format!("not healthy {} s after it started", h.start_deadline_ms / 1000);
                (Cause::NeverHealthy, detail, now_ms)
            })
        } else if s.health.fails >= h.unhealthy_threshold {
            let what = match s.health.last_failure {
                Some(ProbeFailure::Timeout) => "timed out",
                Some(ProbeFailure::Refused) => "could not connect",
                Some(ProbeFailure::Status(_)) | None => "failed",
            };
            let detail = format!("{} health checks in a row {what}", s.health.fails);
            // A chaos victim's probes fail before its exit is seen: still chaos.
            let cause = match s.health.last_failure {
                _ if s.chaos => Cause::Chaos,
                Some(ProbeFailure::Timeout) => Cause::Hung,
                _ => Cause::Unhealthy,
            };
            Some((cause, detail, now_ms))
        } else {
            None
        };
        if let Some((cause, detail, since_ms)) = fail {
            out.push(HealAction::Replace { instance: s.id.clone(), cause, detail, since_ms });
            leaving += 1;
        }
    }
    // The crash count starts over once an instance started after the last
    // failure has served past `min_uptime`.
    if state.failures > 0
        && seen.iter().any(|s| {
            healthy(s)
                && s.health
                    .healthy_since_ms
                    .is_some_and(|t| t >= state.last_failure_ms && now_ms.saturating_sub(t) >= spec.heal.min_uptime_ms)
        })
    {
        out.push(HealAction::Stable);
    }
    // Capacity: every instance that is alive and not leaving serves (or
    // will, once healthy); the rest are started, unless backing off.
    let serving = seen.iter().filter(|s| s.exit.is_none() && !pending_old(&s.id)).count() as u32;
    // Those leaving this tick that had not exited served until now.
    let serving = serving.saturating_sub(leaving - out_exited(&out, seen));
    let want = replicas.saturating_sub(serving);
    // This tick's failures count toward the backoff of its own start.
    let mut projected = state.clone();
    for a in &out {
        apply(spec, &mut projected, a, seen, &[]);
    }
    if want > 0 && now_ms >= projected.backoff_until_ms(spec) {
        out.push(HealAction::Start { count: want });
    }
    // Recycling: one at a time, only at full, healthy capacity.
    if let Some(max_age) = spec.heal.max_age_ms {
        let all_healthy = seen.iter().filter(|s| s.exit.is_none()).all(healthy);
        if state.pending.is_empty() && leaving == 0 && want == 0 && all_healthy && serving >= replicas {
            let due = seen
                .iter()
                .map(|s| (recycle_at_ms(&s.id, s.started_ms, max_age), s))
                .filter(|(at, _)| now_ms >= *at)
                .min_by_key(|(at, _)| *at);
            if let Some((_, s)) = due {
                let age_s = now_ms.saturating_sub(s.started_ms) / 1000;
                out.push(HealAction::Replace {
                    instance: s.id.clone(),
                    cause: Cause::MaxAge,
                    detail: format!("{age_s} s old; max_age is {} s", max_age / 1000),
                    since_ms: now_ms,
                });
                // Surge-first: the old one serves until this one is healthy.
                out.push(HealAction::Start { count: 1 });
            }
        }
    }
    out
}

/// Of the instances leaving this tick, those that had exited already
/// (not counted as serving in the first place).
fn out_exited(out: &[HealAction], seen: &[Seen]) -> u32 {
    out.iter()
        .filter(|a| match a {
            HealAction::Replace { instance, .. } | HealAction::Quarantine { instance, .. } => {
                seen.iter().any(|s| s.id == *instance && s.exit.is_some())
            }
            _ => false,
        })
        .count() as u32
}

/// The state after `action` (`started`: the ids a `Start` started; `seen`
/// for the uptime of a failed instance). Pure.
pub fn apply(spec: &ReleaseSpec, state: &mut HealState, action: &HealAction, seen: &[Seen], started: &[String]) {
    match action {
        HealAction::Replace { instance, cause, detail, since_ms } => {
            // A failed replacement takes over its predecessor's entry, so
            // the time to replacement runs from the first failure.
            let mut since = *since_ms;
            if let Some(i) = state.pending.iter().position(|p| p.replacement.as_deref() == Some(instance)) {
                since = since.min(state.pending[i].since_ms);
                state.pending.remove(i);
            }
            state.pending.push(Pending {
                old: instance.clone(),
                cause: cause.clone(),
                detail: detail.clone(),
                since_ms: since,
                replacement: None,
                old_serves: matches!(cause, Cause::MaxAge | Cause::Drift),
            });
            let s = seen.iter().find(|s| s.id == *instance);
            let early = s.is_none_or(|s| {
                s.health.healthy_since_ms.is_none_or(|t| since_ms.saturating_sub(t) < spec.heal.min_uptime_ms)
            });
            if cause.is_failure() && early {
                state.failures += 1;
                state.last_failure_ms = *since_ms;
            }
            if cause.is_failure() || *cause == Cause::Chaos {
                state.last_exits.push(ExitNote {
                    instance: instance.clone(),
                    cause: cause.clone(),
                    at_ms: *since_ms,
                    logs: Vec::new(),
                });
                let n = state.last_exits.len();
                if n > KEEP_EXITS {
                    state.last_exits.drain(..n - KEEP_EXITS);
                }
            }
        }
        HealAction::Quarantine { instance, .. } => {
            if let Some(i) = state.pending.iter().position(|p| p.replacement.as_deref() == Some(instance)) {
                state.pending[i].replacement = None;
            }
        }
        HealAction::Start { .. } => {
            let mut ids = started.iter();
            let live = |id: &str| seen.iter().any(|s| s.id == id && s.exit.is_none());
            for p in state.pending.iter_mut().filter(|p| p.replacement.as_deref().is_none_or(|r| !live(r))) {
                match ids.next() {
                    Some(id) => p.replacement = Some(id.clone()),
                    None => break,
                }
            }
        }
        HealAction::Replaced { old, .. } => state.pending.retain(|p| p.old != *old),
        HealAction::Stable => state.failures = 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failing_service_is_retried_with_a_doubling_capped_backoff() {
        let b: Vec<u64> = (1..=9).map(super::reconcile_backoff_ms).collect();
        assert_eq!(b, [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
        assert_eq!(super::reconcile_backoff_ms(u32::MAX), 30_000);
    }

    use super::*;

    fn spec(extra: &str) -> ReleaseSpec {
        let text = format!(
            "[image.web]\nfrom = \"scratch\"\n[service.web]\nimage = \"web:1\"\nlisten = \"127.0.0.1:9\"\nreplicas = 2\n[service.web.health]\npath = \"/healthz\"\ninterval = \"250ms\"\nunhealthy_threshold = 2\nstart_deadline = \"5s\"\n{extra}"
        );
        crate::spec::parse(std::path::Path::new("kiln.toml"), &text).unwrap().services["web"].release.clone()
    }

    fn up(id: &str, started: u64, healthy_since: u64) -> Seen {
        Seen {
            id: id.into(),
            started_ms: started,
            exit: None,
            health: Health { passes: 3, fails: 0, healthy_since_ms: Some(healthy_since), last_failure: None },
            drift: Vec::new(),
            chaos: false,
        }
    }

    /// Runs decide and applies every action, the controller's way (a Start
    /// "starts" instances named n1, n2, ...).
    fn step(spec: &ReleaseSpec, seen: &mut Vec<Seen>, st: &mut HealState, now: u64) -> Vec<HealAction> {
        let acts = decide(spec, spec.replicas, seen, st, now);
        for a in &acts {
            let mut started = Vec::new();
            if let HealAction::Start { count } = a {
                for _ in 0..*count {
                    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
                    started.push(format!("n{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
                }
            }
            apply(spec, st, a, seen, &started);
            for id in started {
                let mut s = up(&id, now, 0);
                s.health = Health::default();
                seen.push(s);
            }
            if let HealAction::Replaced { old, retire_old: true, .. } = a {
                seen.retain(|s| s.id != *old);
            }
        }
        acts
    }

    #[test]
    fn an_exited_instance_is_replaced_at_once_and_the_time_runs_from_its_exit() {
        let sp = spec("");
        let mut seen = vec![up("a", 0, 100), up("b", 0, 100)];
        let mut st = HealState::default();
        assert!(step(&sp, &mut seen, &mut st, 50_000).is_empty(), "all is well: nothing to do");
        seen[0].exit = Some((None, Some(9), 60_000));
        let acts = step(&sp, &mut seen, &mut st, 60_050);
        assert_eq!(
            acts,
            vec![
                HealAction::Replace {
                    instance: "a".into(),
                    cause: Cause::Exited { code: None, signal: Some(9) },
                    detail: "killed by signal 9".into(),
                    since_ms: 60_000
                },
                HealAction::Start { count: 1 },
            ]
        );
        let n3 = st.pending[0].replacement.clone().unwrap();
        // The same tick again (a crash before the act): nothing twice.
        let again = decide(&sp, 2, &seen, &st, 60_100);
        assert!(!again.iter().any(|a| matches!(a, HealAction::Start { .. } | HealAction::Replace { .. })), "{again:?}");
        seen[2].health = Health { passes: 1, fails: 0, healthy_since_ms: Some(60_400), last_failure: None };
        let acts = step(&sp, &mut seen, &mut st, 60_450);
        assert_eq!(
            acts,
            vec![HealAction::Replaced { old: "a".into(), replacement: n3, took_ms: 400, retire_old: false }]
        );
        assert!(st.pending.is_empty());
    }

    #[test]
    fn a_hung_instance_is_told_from_an_unhealthy_one_and_a_slow_starter_is_given_its_deadline() {
        let sp = spec("");
        let mut hung = up("a", 0, 100);
        hung.health =
            Health { passes: 0, fails: 2, healthy_since_ms: Some(100), last_failure: Some(ProbeFailure::Timeout) };
        let mut sick = up("b", 0, 100);
        sick.health.fails = 1;
        sick.health.last_failure = Some(ProbeFailure::Status(503));
        let mut slow = up("c", 9_000, 0);
        slow.health = Health { passes: 0, fails: 4, healthy_since_ms: None, last_failure: Some(ProbeFailure::Refused) };
        let acts = decide(&sp, 3, &[hung.clone(), sick.clone(), slow.clone()], &HealState::default(), 10_000);
        assert!(matches!(&acts[0], HealAction::Replace { instance, cause: Cause::Hung, .. } if instance == "a"));
        assert_eq!(acts.len(), 2, "b failed once (threshold 2), c is within its 5 s: {acts:?}");
        assert_eq!(acts[1], HealAction::Start { count: 1 });
        sick.health.fails = 2;
        let acts = decide(&sp, 3, &[hung, sick, slow], &HealState::default(), 14_500);
        let causes: Vec<_> = acts
            .iter()
            .filter_map(|a| match a {
                HealAction::Replace { instance, cause, .. } => Some((instance.as_str(), cause.name())),
                _ => None,
            })
            .collect();
        assert_eq!(causes, vec![("a", "hung"), ("b", "unhealthy"), ("c", "never-healthy")]);
        assert!(acts.contains(&HealAction::Start { count: 3 }));
    }

    #[test]
    fn a_crash_loop_backs_off_exponentially_up_to_the_cap_and_ends_once_an_instance_serves() {
        let sp = spec("[service.web.heal]\ncrash_loop = 3\nbackoff_cap = \"4s\"\nmin_uptime = \"10s\"\n");
        let mut st = HealState::default();
        let mut now = 1_000u64;
        let mut seen = vec![up("a", 0, 100)];
        let mut starts = Vec::new();
        for round in 0..6 {
            // The newest instance crashes 200 ms after it started.
            let id = seen.last().unwrap().id.clone();
            let s = seen.iter_mut().find(|s| s.id == id).unwrap();
            s.exit = Some((Some(3), None, now));
            s.health.healthy_since_ms = None;
            // Tick every 100 ms until a replacement starts.
            let t0 = now;
            loop {
                now += 100;
                let acts = step(&sp, &mut seen, &mut st, now);
                seen.retain(|s| s.exit.is_none());
                if acts.iter().any(|a| matches!(a, HealAction::Start { .. })) {
                    starts.push(now - t0);
                    break;
                }
                assert!(now - t0 < 10_000, "round {round}: no start");
            }
            now += 200;
        }
        // Failures 1, 2 restart at once; from the third (a crash loop) 1 s,
        // 2 s, 4 s, then the cap.
        assert_eq!(starts, vec![100, 100, 1000, 2000, 4000, 4000]);
        assert!(st.crash_looping(&sp));
        assert_eq!(st.last_exits.len(), KEEP_EXITS);
        // The last replacement serves for min_uptime: the loop is over.
        let id = seen.last().unwrap().id.clone();
        seen.iter_mut().find(|s| s.id == id).unwrap().health =
            Health { passes: 50, fails: 0, healthy_since_ms: Some(now + 300), last_failure: None };
        step(&sp, &mut seen, &mut st, now + 1000);
        assert!(st.crash_looping(&sp), "served 0.7 s only");
        let acts = step(&sp, &mut seen, &mut st, now + 10_400);
        assert!(acts.contains(&HealAction::Stable), "{acts:?}");
        assert!(!st.crash_looping(&sp));
    }

    #[test]
    fn chaos_kills_are_replaced_at_once_and_never_make_a_crash_loop() {
        let sp = spec("");
        let mut st = HealState::default();
        let mut seen = vec![up("a", 0, 100), up("b", 0, 100)];
        let mut now = 1000;
        for _ in 0..10 {
            let victim = seen.iter_mut().find(|s| s.exit.is_none()).unwrap();
            victim.exit = Some((None, Some(9), now));
            victim.chaos = true;
            let acts = step(&sp, &mut seen, &mut st, now + 50);
            assert!(acts.contains(&HealAction::Start { count: 1 }), "{acts:?} {seen:?} {st:?}");
            seen.retain(|s| s.exit.is_none());
            for s in &mut seen {
                s.health.healthy_since_ms.get_or_insert(now + 300);
            }
            step(&sp, &mut seen, &mut st, now + 350);
            now += 1000;
        }
        assert_eq!(st.failures, 0);
        assert!(st.pending.is_empty(), "{:?}", st.pending);
        // Killed, and its probes failing before the exit is observed.
        let mut seen = vec![up("a", 0, 100), up("b", 0, 100)];
        seen[0].chaos = true;
        seen[0].health.fails = sp.health.unhealthy_threshold;
        seen[0].health.last_failure = Some(ProbeFailure::Refused);
        let acts = step(&sp, &mut seen, &mut st, now);
        assert!(
            acts.iter().any(|a| matches!(a, HealAction::Replace { cause: Cause::Chaos, .. })),
            "a chaos victim found by its probes is chaos, not unhealthy: {acts:?}"
        );
        assert_eq!(st.failures, 0);
    }

    #[test]
    fn recycling_is_one_at_a_time_surge_first_at_full_capacity_and_spread_by_jitter() {
        let sp = spec("[service.web.heal]\nmax_age = \"60s\"\n");
        let mut st = HealState::default();
        let mut seen = vec![up("a", 0, 100), up("b", 0, 100)];
        let (ra, rb) = (recycle_at_ms("a", 0, 60_000), recycle_at_ms("b", 0, 60_000));
        assert!(ra != rb && (54_000..=60_000).contains(&ra) && (54_000..=60_000).contains(&rb), "{ra} {rb}");
        let first = ra.min(rb);
        assert!(decide(&sp, 2, &seen, &st, first - 1).is_empty());
        let acts = step(&sp, &mut seen, &mut st, first.max(ra.max(rb)));
        let HealAction::Replace { instance, cause: Cause::MaxAge, .. } = &acts[0] else { panic!("{acts:?}") };
        let oldest = if ra <= rb { "a" } else { "b" };
        assert_eq!(instance, oldest, "the one due first, alone");
        assert_eq!(acts[1], HealAction::Start { count: 1 }, "surge: the old one still serves");
        assert_eq!(acts.len(), 2);
        assert_eq!(seen.len(), 3);
        // While the replacement starts, nothing else is recycled.
        assert_eq!(decide(&sp, 2, &seen, &st, 61_000), vec![]);
        seen[2].health = Health { passes: 1, fails: 0, healthy_since_ms: Some(61_200), last_failure: None };
        let acts = step(&sp, &mut seen, &mut st, 61_300);
        assert!(matches!(&acts[0], HealAction::Replaced { old, retire_old: true, .. } if old == oldest));
        assert_eq!(seen.len(), 2);
        // Then the other one.
        let acts = step(&sp, &mut seen, &mut st, 61_400);
        assert!(matches!(&acts[0], HealAction::Replace { cause: Cause::MaxAge, .. }), "{acts:?}");
    }

    #[test]
    fn drift_replaces_or_quarantines_by_setting() {
        let mut d = up("a", 0, 100);
        d.drift = vec!["config.json: sha256:1 != sha256:2".into()];
        let acts = decide(&spec(""), 1, &[d.clone()], &HealState::default(), 5000);
        assert!(
            matches!(&acts[0], HealAction::Replace { cause: Cause::Drift, detail, .. } if detail.contains("config.json"))
        );
        assert_eq!(acts[1], HealAction::Start { count: 1 });
        let acts =
            decide(&spec("[service.web.heal]\non_drift = \"quarantine\"\n"), 1, &[d], &HealState::default(), 5000);
        assert!(matches!(&acts[0], HealAction::Quarantine { reason, .. } if reason.starts_with("drift: ")));
        assert_eq!(acts[1], HealAction::Start { count: 1 });
    }
}
