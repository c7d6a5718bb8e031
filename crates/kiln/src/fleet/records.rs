//! What the fleet's history says of each change: a person's (deploy,
//! rollback, promote, abort, down, place, drain) and the leader's (canary
//! steps and verdicts, a lost host's slots moved). The same [`Event`]s one
//! host's history holds, so `kiln history` reads both alike; each release
//! is named by its image's short digest.
//!
//! For: turning a decided change into its history entries. Must never: do
//! I/O, or decide anything ([`super::change`] and [`super::canary`] do).

use std::collections::BTreeMap;

use super::change::{Applied, Change};
use super::history::{release_of, Record};
use super::place::{Canary, Desired};
use crate::release::analysis::Verdict;
use crate::serve::history::{Event, Outcome};

/// What `kiln plan --cluster` says a deploy would do: nothing written.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FleetPlan {
    pub service: String,
    /// What the change would be (`rolling A → B`, `canary …`, ...).
    pub summary: String,
    /// The settings it changes, by name (never a value).
    pub changed: Vec<String>,
    /// The desired state it would write (None: removed).
    pub desired: Option<Desired>,
    /// The history entries it would append.
    pub entries: Vec<Event>,
}

fn record(service: &str, image: &str, event: Event) -> Record {
    Record { service: service.to_owned(), release: release_of(image), event }
}

fn started(image: &str, strategy: &str, actor: &str, previous: Option<&str>, changed: Vec<String>) -> Event {
    Event::Started {
        digest: image.rsplit_once('@').map_or(image, |(_, d)| d).to_owned(),
        tags: Vec::new(),
        revision: None,
        strategy: strategy.to_owned(),
        actor: actor.to_owned(),
        previous: previous.map(release_of),
        changed,
    }
}

/// The settings `next` changes from `cur`, by name (an env value is never
/// shown).
pub fn changed(cur: &Desired, next: &Desired) -> Vec<String> {
    let mut out = Vec::new();
    if cur.replicas != next.replicas {
        out.push(format!("replicas {} → {}", cur.replicas, next.replicas));
    }
    let env = |d: &Desired| d.env.iter().cloned().collect::<BTreeMap<String, String>>();
    out.extend(diff(&env(cur), &env(next)).map(|(name, was, now)| match (was, now) {
        (Some(_), Some(_)) => format!("env.{name} changed"),
        (None, _) => format!("env.{name} added"),
        (_, None) => format!("env.{name} removed"),
    }));
    let fields: [(&str, bool); 10] = [
        ("tls", cur.edge.tls != next.edge.tls),
        ("redirect_http", cur.edge.redirect_http != next.edge.redirect_http),
        ("hosts", cur.edge.hosts != next.edge.hosts),
        ("paths", cur.edge.paths != next.edge.paths),
        ("memory", cur.memory_bytes != next.memory_bytes),
        ("cpus", cur.millicpus != next.millicpus),
        ("singleton", cur.singleton != next.singleton),
        ("listen", cur.listen != next.listen),
        ("health", cur.health != next.health),
        ("channel", cur.channel != next.channel),
    ];
    out.extend(fields.iter().filter(|(_, c)| *c).map(|(n, _)| format!("{n} changed")));
    // Secrets by name and version: a rotation is named, its value never.
    let versions =
        |d: &Desired| d.secrets.iter().map(|s| (s.name.clone(), s.version.clone())).collect::<BTreeMap<_, _>>();
    out.extend(diff(&versions(cur), &versions(next)).map(|(name, was, now)| match (was, now) {
        (Some(_), Some(v)) => format!("secret {name} version {v}"),
        (None, Some(v)) => format!("secret {name} version {v} added"),
        (_, None) => format!("secret {name} removed"),
    }));
    let volumes = |d: &Desired| d.volumes.iter().cloned().collect::<BTreeMap<String, String>>();
    out.extend(diff(&volumes(cur), &volumes(next)).map(|(name, was, now)| match (was, now) {
        (Some(w), Some(n)) => format!("volume {name} moved {w} → {n}"),
        (None, Some(n)) => format!("volume {name} added at {n}"),
        (_, None) => format!("volume {name} removed"),
    }));
    out
}

/// The keys of `a` and `b` whose value differs (added, removed or
/// changed), in key order, with the value before and after.
fn diff<'a>(
    a: &'a BTreeMap<String, String>,
    b: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = (&'a str, Option<&'a str>, Option<&'a str>)> {
    let keys: std::collections::BTreeSet<&'a String> = a.keys().chain(b.keys()).collect();
    keys.into_iter().filter_map(move |k| {
        let (was, now) = (a.get(k).map(String::as_str), b.get(k).map(String::as_str));
        (was != now).then_some((k.as_str(), was, now))
    })
}

/// The entries of a person's `change` to `service`, which `apply` decided
/// was `applied`, from `current` to `next`.
pub fn of_change(
    service: &str,
    change: &Change,
    current: Option<&Desired>,
    next: Option<&Desired>,
    applied: &Applied,
    actor: &str,
) -> Vec<Record> {
    let r = |image: &str, event| record(service, image, event);
    let mut out = Vec::new();
    // A canary in progress that this change replaces or ends.
    let old_canary = current.and_then(|c| c.canary.as_ref());
    let new_canary = next.and_then(|n| n.canary.as_ref());
    // A blue-green release not yet switched to that this change ends.
    let next_set = |d: Option<&Desired>| {
        d.and_then(|d| d.blue_green.as_ref())
            .filter(|bg| matches!(bg.phase, super::bluegreen::Phase::Next { .. }))
            .map(|bg| bg.image.clone())
    };
    if let Some(old) = next_set(current).filter(|o| next_set(next).as_ref() != Some(o)) {
        let (outcome, reason) = match change {
            Change::Rollback => (Outcome::RolledBack, format!("rolled back by {actor} before its switch")),
            Change::Abort => (Outcome::Aborted, format!("aborted by {actor} before its switch")),
            Change::Down => (Outcome::Aborted, format!("the service was taken down by {actor}")),
            _ => (Outcome::Superseded, format!("superseded by a deploy of {actor}")),
        };
        out.push(r(&old, Event::Finished { outcome, reason, deadline: false }));
    }
    if let Some(old) = old_canary.filter(|o| new_canary.is_none_or(|n| n.image != o.image)) {
        let (outcome, reason) = match (change, applied) {
            (_, Applied::Promoted { .. }) => (Outcome::Succeeded, format!("promoted by {actor}")),
            (Change::Rollback, _) => (Outcome::RolledBack, format!("rolled back by {actor}")),
            (Change::Abort, _) => (Outcome::Aborted, format!("aborted by {actor}")),
            (Change::Down, _) => (Outcome::Aborted, format!("the service was taken down by {actor}")),
            _ => (Outcome::Superseded, format!("superseded by a deploy of {actor}")),
        };
        out.push(r(&old.image, Event::Finished { outcome, reason, deadline: false }));
    }
    match (applied, current, next) {
        (Applied::Created { image }, _, _) => out.push(r(image, started(image, "rolling", actor, None, Vec::new()))),
        (Applied::Rolling { from, to }, _, _) => {
            out.push(r(to, started(to, "rolling", actor, Some(from), Vec::new())));
        }
        (Applied::CanaryStarted { image, .. }, Some(cur), _) => {
            out.push(r(image, started(image, "canary", actor, Some(&cur.image), Vec::new())));
        }
        (Applied::BlueGreenStarted { image }, Some(cur), _) => {
            out.push(r(image, started(image, "blue-green", actor, Some(&cur.image), Vec::new())));
        }
        (Applied::SwitchedBack { to }, Some(cur), _) => {
            out.push(r(to, started(to, "rollback", actor, Some(&cur.image), Vec::new())));
            let weights = BTreeMap::from([(release_of(to), 100), (release_of(&cur.image), 0)]);
            out.push(r(to, Event::Step { index: 0, weights }));
        }
        (Applied::DrillStarted { image, .. }, Some(cur), _) => {
            out.push(r(image, started(image, "drill", actor, Some(&cur.image), Vec::new())));
        }
        (Applied::RolledBack { to }, Some(cur), _) => {
            out.push(r(to, started(to, "rollback", actor, Some(&cur.image), Vec::new())));
        }
        (Applied::Updated { changed: true }, Some(cur), Some(next)) => {
            let what = changed(cur, next);
            let event = match what.as_slice() {
                [only] if only.starts_with("replicas ") => {
                    Event::Scaled { from: cur.replicas, to: next.replicas, actor: actor.to_owned() }
                }
                _ => started(&next.image, "rolling", actor, Some(&cur.image), what),
            };
            out.push(r(&next.image, event));
        }
        (Applied::Advanced { weight }, Some(cur), Some(next)) => {
            if let Some(c) = &next.canary {
                let index = c.progress.as_ref().map_or(0, |p| p.step) as u32;
                out.push(r(&c.image, Event::Step { index, weights: weights(&cur.image, c, *weight) }));
            }
        }
        (Applied::Removed, Some(cur), _) => {
            out.push(r(&cur.image, Event::Down { actor: actor.to_owned(), purge: false }));
        }
        _ => {}
    }
    out
}

/// The entries of `kiln place` (the desired state set as given).
pub fn of_place(service: &str, current: Option<&Desired>, next: Option<&Desired>, actor: &str) -> Vec<Record> {
    let r = |image: &str, event| record(service, image, event);
    // A canary the place ends or replaces, then the settings, then a
    // canary it starts: in the order a reader expects.
    let old_canary = current.and_then(|c| c.canary.as_ref());
    let new_canary = next.and_then(|n| n.canary.as_ref());
    let mut out = Vec::new();
    if let Some(old) = old_canary.filter(|o| new_canary.is_none_or(|n| n.image != o.image)) {
        let reason = format!("removed by a place of {actor}");
        out.push(r(&old.image, Event::Finished { outcome: Outcome::Superseded, reason, deadline: false }));
    }
    out.extend(of_place_settings(service, current, next, actor));
    if let (Some(n), Some(stable)) = (new_canary.filter(|n| old_canary.is_none_or(|o| o.image != n.image)), next) {
        out.push(r(&n.image, started(&n.image, "canary", actor, Some(&stable.image), Vec::new())));
    }
    out
}

fn of_place_settings(service: &str, current: Option<&Desired>, next: Option<&Desired>, actor: &str) -> Vec<Record> {
    let r = |image: &str, event| record(service, image, event);
    match (current, next) {
        (None, None) => Vec::new(),
        (Some(cur), None) => vec![r(&cur.image, Event::Down { actor: actor.to_owned(), purge: false })],
        (None, Some(n)) => vec![r(&n.image, started(&n.image, "place", actor, None, Vec::new()))],
        (Some(cur), Some(n)) if cur.image != n.image => {
            vec![r(&n.image, started(&n.image, "place", actor, Some(&cur.image), changed(cur, n)))]
        }
        (Some(cur), Some(n)) => match changed(cur, n).as_slice() {
            [] => Vec::new(),
            [only] if only.starts_with("replicas ") => {
                vec![r(&n.image, Event::Scaled { from: cur.replicas, to: n.replicas, actor: actor.to_owned() })]
            }
            what => vec![r(&n.image, started(&n.image, "place", actor, Some(&cur.image), what.to_vec()))],
        },
    }
}

/// The entry of `kiln drain-host` (on) or `--undo` (off): fleet-wide, no
/// service; the release names the host.
pub fn of_drain(host: &str, on: bool, actor: &str) -> Record {
    Record {
        service: String::new(),
        release: host.to_owned(),
        event: Event::Drain { host: host.to_owned(), on, actor: actor.to_owned() },
    }
}

/// The entry of an instance replaced for `cause` (an agent's drift check,
/// a chaos kill), with what it found or who asked; never a value.
pub fn of_replacing(service: &str, image: &str, instance: &str, cause: crate::heal::Cause, detail: String) -> Record {
    record(service, image, Event::Replacing { instance: instance.to_owned(), cause, detail })
}

/// The entries of a blue-green switch from `d` (before it): every
/// request to the new set, its release succeeded after `checks` smoke
/// checks passed.
pub fn of_switch(service: &str, d: &Desired, checks: usize) -> Vec<Record> {
    let Some(bg) = &d.blue_green else { return Vec::new() };
    let weights = BTreeMap::from([(release_of(&bg.image), 100), (release_of(&d.image), 0)]);
    let reason = format!("switched: {checks} smoke check(s) passed on the new set, every load balancer routing to it");
    vec![
        record(service, &bg.image, Event::Step { index: 0, weights }),
        record(service, &bg.image, Event::Finished { outcome: Outcome::Succeeded, reason, deadline: false }),
    ]
}

/// The entry of a blue-green release that failed before its switch (a
/// smoke check, or its deadline).
pub fn of_blue_green_failed(service: &str, image: &str, why: &str, deadline: bool) -> Record {
    record(service, image, Event::Finished { outcome: Outcome::Failed, reason: why.to_owned(), deadline })
}

/// The entry of a host lost with its lease, when the leader moves `slots`
/// off it.
pub fn of_lost_host(host: &str, slots: Vec<String>) -> Record {
    Record { service: String::new(), release: host.to_owned(), event: Event::HostLost { host: host.to_owned(), slots } }
}

fn weights(stable: &str, c: &Canary, weight: u32) -> BTreeMap<String, u32> {
    BTreeMap::from([(release_of(&c.image), weight), (release_of(stable), 100 - weight.min(100))])
}

/// What the leader did to a canary, for its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryAct {
    /// Its first step began.
    Start,
    /// The next step began.
    Advance,
    /// Judged again at the same step.
    Extend,
    /// It waits for a person.
    Pause,
    /// Every step passed: it is the service now.
    Promote,
    /// The analysis failed: removed.
    Abort,
}

/// The entries of the leader's step of `service`'s canary `c` (as it was
/// before the step), to `next` (None: promoted or aborted), with the
/// verdict that decided it.
pub fn of_canary(
    service: &str,
    stable: &str,
    c: &Canary,
    next: Option<&Canary>,
    act: CanaryAct,
    verdict: Option<&Verdict>,
) -> Vec<Record> {
    let r = |event| record(service, &c.image, event);
    let step = c.progress.as_ref().map_or(0, |p| p.step) as u32;
    let mut out = Vec::new();
    if let Some(v) = verdict {
        let paused = act == CanaryAct::Pause;
        out.push(r(Event::Verdict { step, verdict: v.clone(), paused }));
    }
    match (act, next) {
        (CanaryAct::Start | CanaryAct::Advance, Some(n)) => {
            let index = n.progress.as_ref().map_or(0, |p| p.step) as u32;
            out.push(r(Event::Step { index, weights: weights(stable, n, n.weight) }));
        }
        (CanaryAct::Promote, _) => out.push(r(Event::Finished {
            outcome: Outcome::Succeeded,
            reason: "every step's analysis passed: promoted".into(),
            deadline: false,
        })),
        (CanaryAct::Abort, _) => out.push(r(Event::Finished {
            outcome: Outcome::Failed,
            reason: format!("the analysis failed at step {}: aborted, traffic on stable", step + 1),
            deadline: false,
        })),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::change::apply;

    fn desired(image: &str) -> Desired {
        let image = format!("127.0.0.1:5000/web@sha256:{image:0<64}");
        Desired { env: vec![("MODE".into(), "a".into())], ..crate::fleet::fixtures::desired(&image) }
    }

    fn kinds(records: &[Record]) -> Vec<&'static str> {
        records.iter().map(|r| r.event.kind()).collect()
    }

    #[test]
    fn a_deploy_a_rollback_and_a_down_are_started_started_and_down() {
        let one = desired("1");
        let deploy = |d: &Desired| Change::Deploy { settings: Box::new(d.clone()), canary: None };
        let (next, applied) = apply("web", None, deploy(&one), 0).unwrap();
        let rs = of_change("web", &deploy(&one), None, next.as_ref(), &applied, "ops@a");
        assert_eq!(kinds(&rs), ["started"]);
        assert_eq!(rs[0].release, "100000000000");
        let two = desired("2");
        let (next2, applied) = apply("web", next.as_ref(), deploy(&two), 0).unwrap();
        let rs = of_change("web", &deploy(&two), next.as_ref(), next2.as_ref(), &applied, "ops@a");
        match &rs[0].event {
            Event::Started { strategy, previous, actor, .. } => {
                assert_eq!(
                    (strategy.as_str(), previous.as_deref(), actor.as_str()),
                    ("rolling", Some("100000000000"), "ops@a")
                );
            }
            e => panic!("{e:?}"),
        }
        let (back, applied) = apply("web", next2.as_ref(), Change::Rollback, 0).unwrap();
        let rs = of_change("web", &Change::Rollback, next2.as_ref(), back.as_ref(), &applied, "ops@a");
        assert!(matches!(&rs[0].event, Event::Started { strategy, .. } if strategy == "rollback"));
        assert_eq!(rs[0].release, "100000000000");
        let rs = of_change("web", &Change::Down, back.as_ref(), None, &Applied::Removed, "ops@a");
        assert_eq!(kinds(&rs), ["down"]);
    }

    #[test]
    fn settings_changes_are_named_and_a_replicas_change_alone_is_a_scale() {
        let cur = desired("1");
        let scaled = Desired { replicas: 3, ..cur.clone() };
        assert!(matches!(
            of_place("web", Some(&cur), Some(&scaled), "a")[0].event,
            Event::Scaled { from: 2, to: 3, .. }
        ));
        let mut env = scaled.clone();
        env.env = vec![("MODE".into(), "b".into()), ("NEW".into(), "secret-looking".into())];
        let what = changed(&cur, &env);
        assert_eq!(what, ["replicas 2 → 3", "env.MODE changed", "env.NEW added"]);
        assert!(!format!("{what:?}").contains("secret-looking"));
        assert!(of_place("web", Some(&cur), Some(&cur), "a").is_empty());
        let secret = |v: &str| crate::fleet::place::FleetSecret { name: "db".into(), env: None, version: v.into() };
        let with = Desired { secrets: vec![secret("v1")], ..cur.clone() };
        let rotated = Desired { secrets: vec![secret("v2")], ..cur.clone() };
        assert_eq!(changed(&cur, &with), ["secret db version v1 added"]);
        assert_eq!(changed(&with, &rotated), ["secret db version v2"]);
        assert_eq!(changed(&with, &Desired { env: vec![], ..cur.clone() }), ["env.MODE removed", "secret db removed"]);
        let data = Desired { volumes: vec![("data".into(), "/data".into())], ..cur.clone() };
        assert_eq!(changed(&cur, &data), ["volume data added at /data"]);
        assert_eq!(kinds(&of_place("web", Some(&cur), None, "a")), ["down"]);
        // A canary placed, placed again unchanged, then replaced by none.
        let canary: crate::fleet::place::Canary =
            serde_json::from_value(serde_json::json!({ "image": "r/web@sha256:9", "replicas": 1, "weight": 10 }))
                .unwrap();
        let with_canary = Desired { canary: Some(canary), ..cur.clone() };
        let rs = of_place("web", Some(&cur), Some(&with_canary), "a");
        assert!(
            matches!(&rs[..], [Record { event: Event::Started { strategy, previous: Some(_), .. }, .. }] if strategy == "canary")
        );
        assert!(of_place("web", Some(&with_canary), Some(&with_canary), "a").is_empty());
        let rs = of_place("web", Some(&with_canary), Some(&cur), "a");
        assert!(matches!(&rs[..], [Record { event: Event::Finished { outcome: Outcome::Superseded, .. }, .. }]));
    }

    #[test]
    fn a_canary_superseded_rolled_back_or_promoted_by_a_person_is_finished_with_that_outcome() {
        let stable = desired("1");
        let plan = crate::fleet::change::CanaryPlan {
            steps: vec![10, 50],
            step_secs: 5,
            pauses: BTreeMap::new(),
            max_error_rate: 0.01,
            max_p99_ratio: 2.0,
        };
        let canary = Change::Deploy { settings: Box::new(desired("2")), canary: Some(plan) };
        let (with, applied) = apply("web", Some(&stable), canary.clone(), 0).unwrap();
        let rs = of_change("web", &canary, Some(&stable), with.as_ref(), &applied, "a");
        assert!(matches!(&rs[0].event, Event::Started { strategy, .. } if strategy == "canary"));
        // A person's promote: the next step, with both releases' weights.
        let (stepped, applied) = apply("web", with.as_ref(), Change::Promote, 0).unwrap();
        let rs = of_change("web", &Change::Promote, with.as_ref(), stepped.as_ref(), &applied, "a");
        match &rs[0].event {
            Event::Step { weights, .. } => {
                assert_eq!(weights.get("200000000000"), Some(&10));
                assert_eq!(weights.get("100000000000"), Some(&90));
            }
            e => panic!("{e:?}"),
        }
        let outcome = |change: Change| {
            let (next, applied) = apply("web", with.as_ref(), change.clone(), 0).unwrap();
            match &of_change("web", &change, with.as_ref(), next.as_ref(), &applied, "a")[0].event {
                Event::Finished { outcome, .. } => *outcome,
                e => panic!("{e:?}"),
            }
        };
        assert_eq!(outcome(Change::Rollback), Outcome::RolledBack);
        assert_eq!(outcome(Change::Abort), Outcome::Aborted);
        let three = Change::Deploy { settings: Box::new(desired("3")), canary: None };
        assert_eq!(outcome(three), Outcome::Superseded);
    }

    #[test]
    fn the_leaders_steps_record_the_verdict_then_the_step_or_the_end() {
        let stable = desired("1");
        let c = Canary {
            image: desired("2").image,
            replicas: 1,
            weight: 10,
            steps: vec![10, 50],
            step_secs: 5,
            pauses: BTreeMap::new(),
            progress: Some(crate::fleet::canary::Progress { step: 0, since: 0, ..Default::default() }),
            max_error_rate: Some(0.01),
            max_p99_ratio: Some(2.0),
            fault: None,
        };
        let mut next = c.clone();
        next.weight = 50;
        next.progress = Some(crate::fleet::canary::Progress { step: 1, since: 5, ..Default::default() });
        let v = Verdict {
            outcome: crate::release::analysis::Outcome::Pass,
            canary_requests: 100,
            stable_requests: 900,
            min_requests: 50,
            confidence: 0.95,
            metrics: Vec::new(),
        };
        let rs = of_canary("web", &stable.image, &c, Some(&next), CanaryAct::Advance, Some(&v));
        assert_eq!(kinds(&rs), ["verdict", "step"]);
        assert!(matches!(&rs[1].event, Event::Step { index: 1, weights } if weights.get("200000000000") == Some(&50)));
        assert_eq!(
            kinds(&of_canary("web", &stable.image, &c, None, CanaryAct::Abort, Some(&v))),
            ["verdict", "finished"]
        );
        assert_eq!(kinds(&of_canary("web", &stable.image, &c, Some(&c), CanaryAct::Pause, Some(&v))), ["verdict"]);
        assert!(matches!(
            of_canary("web", &stable.image, &c, Some(&c), CanaryAct::Pause, Some(&v))[0].event,
            Event::Verdict { paused: true, .. }
        ));
        assert_eq!(of_drain("h2", true, "a").release, "h2");
    }
}
