//! What a person's command makes of one fleet service's desired state:
//! `kiln deploy --cluster` (kiln.toml's service with a new image), and
//! `rollback`, `promote`, `abort` and `down` against a cluster. The
//! leading controller then places and rolls what this decided; the
//! command's process writes it, conditioned on the revision it read.
//!
//! For: deciding the next desired state, and turning a kiln.toml service
//! into one. Must never: do I/O, or decide placement ([`super::place`]
//! does).

use super::canary::Progress;
use super::place::{Canary, Desired};
use crate::spec::{CanaryStep, ServiceSpec, SpecError, Strategy};

/// A person's change to one fleet service.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Release `settings.image` with kiln.toml's settings; with `canary`,
    /// as an analysed canary against what runs now.
    Deploy { settings: Box<Desired>, canary: Option<CanaryPlan> },
    /// Abort a canary in progress; else back to the previous image.
    Rollback,
    /// A canary's next step now (promoted after its last).
    Promote,
    /// The canary removed; traffic all on stable.
    Abort,
    /// The service removed from the fleet.
    Down,
}

/// kiln.toml's canary strategy, as the fleet runs it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryPlan {
    /// Weights, percent; the last is below 100 (promotion follows it).
    pub steps: Vec<u32>,
    pub step_secs: u64,
    /// Pauses after steps, by index, in seconds (0: until promoted).
    #[serde(default)]
    pub pauses: std::collections::BTreeMap<usize, u64>,
    pub max_error_rate: f64,
    pub max_p99_ratio: f64,
}

/// What a change did, for the person who asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The first release of the service.
    Created {
        image: String,
    },
    /// A new image, rolled one slot at a time.
    Rolling {
        from: String,
        to: String,
    },
    /// A canary started (or replaced the one in progress).
    CanaryStarted {
        image: String,
        weight: u32,
    },
    /// Same image: settings (replicas, limits, env, ...) changed, or none.
    Updated {
        changed: bool,
    },
    /// Back to `to`, rolled one slot at a time.
    RolledBack {
        to: String,
    },
    /// The canary was removed: traffic all on stable.
    CanaryAborted {
        image: String,
    },
    /// The canary moved to its next step.
    Advanced {
        weight: u32,
    },
    /// The canary's image is now the service's.
    Promoted {
        image: String,
    },
    Removed,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Applied::Created { image } => write!(f, "{image} placed"),
            Applied::Rolling { from, to } => write!(f, "{from} → {to}, one slot at a time"),
            Applied::CanaryStarted { image, weight } => write!(f, "canary {image} at {weight} %"),
            Applied::Updated { changed: true } => write!(f, "settings changed, same image"),
            Applied::Updated { changed: false } => write!(f, "unchanged"),
            Applied::RolledBack { to } => write!(f, "rolled back to {to}, one slot at a time"),
            Applied::CanaryAborted { image } => write!(f, "canary {image} aborted: traffic all on stable"),
            Applied::Advanced { weight } => write!(f, "canary moved on to {weight} %"),
            Applied::Promoted { image } => write!(f, "{image} promoted"),
            Applied::Removed => write!(f, "removed from the fleet"),
        }
    }
}

/// Why a change cannot be made, by what is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("{service}: not in the fleet (kiln deploy --cluster places it)")]
    NoService { service: String },
    #[error("{service}: no previous image to roll back to")]
    NoPrevious { service: String },
    #[error("{service}: no canary in progress")]
    NoCanary { service: String },
    /// The release followed did not complete: its canary failed, another
    /// change replaced it, or not every replica was ready in time.
    #[error("{service}: the release failed: {why}")]
    Failed { service: String, why: String },
    /// The release followed waits for a person.
    #[error("{service}: paused ({why}); kiln promote, abort or rollback --cluster decides")]
    Paused { service: String, why: String },
    /// Others (the leader stepping a canary) kept changing the service
    /// between this command's read and its write.
    #[error("{service}: changed by others {tries} times while this change was written; try again")]
    Contended { service: String, tries: u32 },
}

/// The next desired state of `service` after `change`, and what it did;
/// `now` (Unix seconds, the caller's one clock) starts a step. Pure.
pub fn apply(
    service: &str,
    current: Option<&Desired>,
    change: Change,
    now: i64,
) -> Result<(Option<Desired>, Applied), ChangeError> {
    let missing = || ChangeError::NoService { service: service.to_owned() };
    let no_canary = || ChangeError::NoCanary { service: service.to_owned() };
    match change {
        Change::Down => {
            current.ok_or_else(missing)?;
            Ok((None, Applied::Removed))
        }
        Change::Deploy { settings, canary } => {
            let mut next = *settings;
            let Some(cur) = current else {
                let image = next.image.clone();
                return Ok((Some(next), Applied::Created { image }));
            };
            if next.image == cur.image {
                // The same image: a canary in progress goes on; settings
                // change in place.
                next.canary = cur.canary.clone();
                next.previous = cur.previous.clone();
                let changed = next != *cur;
                return Ok((Some(next), Applied::Updated { changed }));
            }
            match canary {
                // Against what runs now: stable stays, the new image is the
                // canary (a canary already in progress is superseded).
                Some(plan) => {
                    let image = std::mem::replace(&mut next.image, cur.image.clone());
                    let weight = plan.steps.first().copied().unwrap_or(0);
                    next.previous = cur.previous.clone();
                    next.canary = Some(Canary {
                        image: image.clone(),
                        replicas: 1,
                        weight,
                        steps: plan.steps,
                        step_secs: plan.step_secs,
                        pauses: plan.pauses,
                        progress: None,
                        max_error_rate: Some(plan.max_error_rate),
                        max_p99_ratio: Some(plan.max_p99_ratio),
                    });
                    Ok((Some(next), Applied::CanaryStarted { image, weight }))
                }
                None => {
                    next.previous = Some(cur.image.clone());
                    next.canary = None;
                    let (from, to) = (cur.image.clone(), next.image.clone());
                    Ok((Some(next), Applied::Rolling { from, to }))
                }
            }
        }
        Change::Rollback => {
            let cur = current.ok_or_else(missing)?;
            if let Some(c) = &cur.canary {
                let image = c.image.clone();
                return Ok((Some(Desired { canary: None, ..cur.clone() }), Applied::CanaryAborted { image }));
            }
            let to = cur.previous.clone().ok_or_else(|| ChangeError::NoPrevious { service: service.to_owned() })?;
            let next = Desired { image: to.clone(), previous: Some(cur.image.clone()), ..cur.clone() };
            Ok((Some(next), Applied::RolledBack { to }))
        }
        Change::Abort => {
            let cur = current.ok_or_else(missing)?;
            let image = cur.canary.as_ref().ok_or_else(no_canary)?.image.clone();
            Ok((Some(Desired { canary: None, ..cur.clone() }), Applied::CanaryAborted { image }))
        }
        Change::Promote => {
            let cur = current.ok_or_else(missing)?;
            let c = cur.canary.as_ref().ok_or_else(no_canary)?;
            // The step after the current one (a paused canary's too), if
            // there is one; else the canary becomes the service.
            let at = c.progress.as_ref().map_or(0, |p| p.step + usize::from(c.progress.is_some()));
            let next_step = if c.steps.is_empty() { None } else { c.steps.get(at).copied() };
            match next_step {
                Some(weight) => {
                    let progress = Progress { step: at, since: now, ..Progress::default() };
                    let canary = Canary { weight, progress: Some(progress), ..c.clone() };
                    Ok((Some(Desired { canary: Some(canary), ..cur.clone() }), Applied::Advanced { weight }))
                }
                None => {
                    let image = c.image.clone();
                    let next = Desired {
                        image: image.clone(),
                        previous: Some(cur.image.clone()),
                        canary: None,
                        ..cur.clone()
                    };
                    Ok((Some(next), Applied::Promoted { image }))
                }
            }
        }
    }
}

/// Where a fleet release of one image stands, as `kiln deploy --cluster`
/// follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// `ready` of `want` replicas run the image, ready; others remain.
    Rolling { ready: u32, want: u32 },
    /// An analysed canary at `weight` percent.
    Canary { weight: u32 },
    /// Waiting for a person (`kiln promote`, `abort` or `rollback`).
    Paused { why: String },
    /// Every replica runs the image, ready, and nothing else runs.
    Done,
    /// The image is no longer wanted: its canary failed, or another
    /// change replaced it.
    Failed { why: String },
}

/// Where the release of `target` (by digest) stands, from the service's
/// desired state, its last verdict and the live hosts' records. Pure.
pub fn rollout(
    service: &str,
    desired: Option<&Desired>,
    verdict: Option<&super::canary::FleetVerdict>,
    records: &[super::HostRecord],
    target: &str,
) -> Rollout {
    let Some(d) = desired else { return Rollout::Failed { why: format!("{service} was removed from the fleet") } };
    if let Some(c) = d.canary.as_ref().filter(|c| c.image == target) {
        return match c.progress.as_ref().and_then(|p| p.paused.clone()) {
            Some(why) => Rollout::Paused { why },
            None => Rollout::Canary { weight: c.weight },
        };
    }
    if d.image != target {
        let why = match verdict {
            Some(v) if v.image == target && v.action == "abort" => {
                format!("the canary failed its analysis at {} %: {}", v.weight, v.verdict.failed())
            }
            _ => format!("replaced by another change: {service} now wants {}", d.image),
        };
        return Rollout::Failed { why };
    }
    // Ready: running this release of the image (its env and limits too).
    let release = d.assignment(service, target).release();
    let canary_slot = format!("{service}-canary-");
    let replicas =
        records.iter().flat_map(|r| &r.placed).filter(|p| p.service == service && !p.slot.starts_with(&canary_slot));
    let (mut ready, mut other) = (0u32, 0u32);
    for p in replicas {
        if p.release.as_ref() == Some(&release) {
            ready += 1;
        } else {
            other += 1;
        }
    }
    if ready >= d.replicas && other == 0 && d.canary.is_none() {
        Rollout::Done
    } else {
        Rollout::Rolling { ready, want: d.replicas }
    }
}

/// kiln.toml's `[service.NAME]` as a fleet's desired state running
/// `image` (by digest), and its canary plan when its strategy is one.
/// What a fleet cannot carry yet is refused, naming the key, rather than
/// dropped: edge settings, a pause before the first weight.
pub fn from_service(spec: &ServiceSpec, image: String) -> Result<(Desired, Option<CanaryPlan>), SpecError> {
    let refuse = |key: &str, message: &str| SpecError {
        file: spec.file.clone(),
        line: Some(spec.line),
        key: format!("service.{}.{key}", spec.name),
        message: message.to_owned(),
    };
    if spec.edge.tls.as_ref().is_some_and(|t| t.acme.is_some()) {
        return Err(refuse("tls.acme", "a fleet takes a certificate's files; ACME is not done across hosts yet"));
    }
    let canary = match &spec.release.strategy {
        Strategy::Canary(c) => {
            let mut steps = Vec::new();
            let mut pauses = std::collections::BTreeMap::new();
            for s in &c.steps {
                match s {
                    CanaryStep::Weight(100) => {}
                    CanaryStep::Weight(w) => steps.push(*w),
                    // After the step before it; a pause before any weight
                    // would hold nothing.
                    CanaryStep::Pause(ms) => match steps.len().checked_sub(1) {
                        Some(at) => {
                            pauses.insert(at, ms.map_or(0, |ms| ms.div_ceil(1000).max(1)));
                        }
                        None => return Err(refuse("canary.steps", "a fleet canary's first step is a weight")),
                    },
                }
            }
            let step_secs = c.step_interval_ms.div_ceil(1000);
            if !(1..=60).contains(&step_secs) {
                return Err(refuse(
                    "canary.step_interval",
                    "1 s to 60 s in a fleet: each step is judged on the load balancers' last minute at most",
                ));
            }
            (!steps.is_empty()).then_some(CanaryPlan {
                steps,
                step_secs,
                pauses,
                max_error_rate: c.analysis.max_error_rate,
                max_p99_ratio: c.analysis.max_p99_ratio,
            })
        }
        // Rolling, blue-green and recreate all roll one slot at a time in
        // a fleet, ready before the old instance drains.
        _ => None,
    };
    let desired = Desired {
        image,
        replicas: spec.release.replicas,
        env: spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        memory_bytes: spec.memory_bytes,
        millicpus: spec.cpus.map(|c| (c * 1000.0).round() as u64),
        singleton: false,
        listen: spec.release.listen.map(|a| a.port()),
        health: spec.release.health.path.clone(),
        canary: None,
        channel: spec.channel.as_ref().map(|r| r.channel.clone()),
        previous: None,
        // Versions are resolved when the deploy is written.
        secrets: spec
            .secrets
            .iter()
            .map(|s| super::place::FleetSecret { name: s.name.clone(), env: s.env.clone(), version: String::new() })
            .collect(),
        volumes: spec.volumes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        edge: super::place::FleetEdge {
            hosts: spec.edge.hosts.clone(),
            paths: spec.edge.paths.clone(),
            // Read, checked and its key sealed by the deploy, on the
            // deploying machine.
            tls: spec.edge.tls.as_ref().map(|t| super::place::FleetTls {
                cert: String::new(),
                key: super::place::FleetSecret { name: String::new(), env: None, version: String::new() },
                files: Some((t.cert.clone(), t.key.clone())),
            }),
            redirect_http: spec.edge.redirect_http.map(|a| a.port()),
        },
    };
    Ok((desired, canary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(c: char) -> String {
        format!("registry.test/team/web@sha256:{}", c.to_string().repeat(64))
    }

    fn desired(image: String) -> Desired {
        Desired {
            image,
            replicas: 3,
            env: vec![],
            memory_bytes: None,
            millicpus: None,
            singleton: false,
            listen: Some(8080),
            health: Some("/".into()),
            canary: None,
            channel: None,
            previous: None,
            secrets: Vec::new(),
            volumes: Vec::new(),
            edge: Default::default(),
        }
    }

    fn plan() -> CanaryPlan {
        CanaryPlan {
            steps: vec![10, 50],
            step_secs: 30,
            pauses: Default::default(),
            max_error_rate: 0.01,
            max_p99_ratio: 1.5,
        }
    }

    fn deploy(image: String, canary: Option<CanaryPlan>) -> Change {
        Change::Deploy { settings: Box::new(desired(image)), canary }
    }

    #[test]
    fn a_first_deploy_places_and_a_new_image_rolls_keeping_the_old_one_for_rollback() {
        let (d, what) = apply("web", None, deploy(img('a'), None), 0).unwrap();
        let d = d.unwrap();
        assert_eq!(what, Applied::Created { image: img('a') });
        let (d2, what) = apply("web", Some(&d), deploy(img('b'), None), 0).unwrap();
        let d2 = d2.unwrap();
        assert_eq!(what, Applied::Rolling { from: img('a'), to: img('b') });
        assert_eq!((d2.image.as_str(), d2.previous.as_deref()), (img('b').as_str(), Some(img('a').as_str())));
        // Back, and back again (to b).
        let (d3, what) = apply("web", Some(&d2), Change::Rollback, 0).unwrap();
        let d3 = d3.unwrap();
        assert_eq!(what, Applied::RolledBack { to: img('a') });
        assert_eq!(d3.previous, Some(img('b')));
        let (d4, _) = apply("web", Some(&d3), Change::Rollback, 0).unwrap();
        assert_eq!(d4.unwrap().image, img('b'));
        // Nothing before the first image.
        assert_eq!(apply("web", Some(&d), Change::Rollback, 0), Err(ChangeError::NoPrevious { service: "web".into() }));
    }

    #[test]
    fn the_same_image_changes_settings_in_place_and_keeps_the_canary_in_progress() {
        let (d, _) = apply("web", Some(&desired(img('a'))), deploy(img('b'), Some(plan())), 0).unwrap();
        let d = d.unwrap();
        let mut more = desired(img('a'));
        more.replicas = 5;
        let change = Change::Deploy { settings: Box::new(more), canary: Some(plan()) };
        let (next, what) = apply("web", Some(&d), change, 0).unwrap();
        let next = next.unwrap();
        assert_eq!(what, Applied::Updated { changed: true });
        assert_eq!(next.replicas, 5);
        assert_eq!(next.canary, d.canary, "the canary goes on");
        let (_, what) = apply("web", Some(&next), deploy(img('a'), None), 0).unwrap();
        assert_eq!(what, Applied::Updated { changed: true }, "replicas back to 3");
    }

    #[test]
    fn a_canary_deploy_keeps_stable_and_steps_through_promote_to_promotion() {
        let cur = desired(img('a'));
        let (d, what) = apply("web", Some(&cur), deploy(img('b'), Some(plan())), 0).unwrap();
        let d = d.unwrap();
        assert_eq!(what, Applied::CanaryStarted { image: img('b'), weight: 10 });
        assert_eq!(d.image, img('a'), "stable stays");
        let c = d.canary.clone().unwrap();
        assert_eq!(
            (c.image.as_str(), c.weight, c.steps.as_slice(), c.progress),
            (img('b').as_str(), 10, &[10, 50][..], None)
        );
        // The leader started it at step 0; promote moves it to 50 %.
        let started = Desired {
            canary: Some(Canary { progress: Some(Progress { step: 0, since: 5, ..Progress::default() }), ..c }),
            ..d.clone()
        };
        let (d, what) = apply("web", Some(&started), Change::Promote, 100).unwrap();
        let d = d.unwrap();
        assert_eq!(what, Applied::Advanced { weight: 50 });
        let p = d.canary.as_ref().unwrap().progress.clone().unwrap();
        assert_eq!((p.step, p.since, d.canary.as_ref().unwrap().weight), (1, 100, 50));
        // A paused last step: promote promotes.
        let mut paused = d.clone();
        paused.canary.as_mut().unwrap().progress.as_mut().unwrap().paused = Some("inconclusive".into());
        let (d, what) = apply("web", Some(&paused), Change::Promote, 200).unwrap();
        let d = d.unwrap();
        assert_eq!(what, Applied::Promoted { image: img('b') });
        assert_eq!((d.image, d.previous, d.canary), (img('b'), Some(img('a')), None));
        // Not started yet: promote goes to the first step.
        let (_, what) = apply(
            "web",
            Some(&Desired {
                canary: started.canary.clone().map(|c| Canary { progress: None, ..c }),
                ..started.clone()
            }),
            Change::Promote,
            0,
        )
        .unwrap();
        assert_eq!(what, Applied::Advanced { weight: 10 });
    }

    #[test]
    fn rollback_or_abort_of_a_canary_leaves_stable_and_a_new_deploy_supersedes_it() {
        let cur = desired(img('a'));
        let (d, _) = apply("web", Some(&cur), deploy(img('b'), Some(plan())), 0).unwrap();
        let d = d.unwrap();
        for change in [Change::Rollback, Change::Abort] {
            let (next, what) = apply("web", Some(&d), change, 0).unwrap();
            assert_eq!(what, Applied::CanaryAborted { image: img('b') });
            assert_eq!(next.unwrap(), cur);
        }
        let (next, what) = apply("web", Some(&d), deploy(img('c'), Some(plan())), 0).unwrap();
        assert_eq!(what, Applied::CanaryStarted { image: img('c'), weight: 10 });
        let next = next.unwrap();
        assert_eq!((next.image, next.canary.unwrap().image), (img('a'), img('c')));
        // Rolling instead: the canary is dropped and the new image rolls.
        let (next, _) = apply("web", Some(&d), deploy(img('c'), None), 0).unwrap();
        let next = next.unwrap();
        assert_eq!((next.image, next.previous, next.canary), (img('c'), Some(img('a')), None));
    }

    #[test]
    fn changes_to_what_is_not_there_are_refused_by_kind() {
        let none = |c: Change| apply("web", None, c, 0).unwrap_err();
        for c in [Change::Rollback, Change::Promote, Change::Abort, Change::Down] {
            assert_eq!(none(c), ChangeError::NoService { service: "web".into() });
        }
        let cur = desired(img('a'));
        assert_eq!(
            apply("web", Some(&cur), Change::Abort, 0).unwrap_err(),
            ChangeError::NoCanary { service: "web".into() }
        );
        assert_eq!(
            apply("web", Some(&cur), Change::Promote, 0).unwrap_err(),
            ChangeError::NoCanary { service: "web".into() }
        );
        assert_eq!(apply("web", Some(&cur), Change::Down, 0).unwrap(), (None, Applied::Removed));
    }

    fn record(placed: &[(&str, char)]) -> crate::fleet::HostRecord {
        use crate::fleet::fixtures;
        let release = |c: char| Some(desired(img(c)).assignment("web", &img(c)).release());
        let placed = placed.iter().map(|(slot, c)| fixtures::placed(slot, "web", 1, *c, release(*c)));
        fixtures::host("h1", placed.collect())
    }

    #[test]
    fn a_rollout_is_done_when_every_replica_runs_the_image_and_nothing_else_does() {
        let d = Desired { replicas: 2, ..desired(img('b')) };
        let at = |placed: &[(&str, char)]| rollout("web", Some(&d), None, &[record(placed)], &img('b'));
        assert_eq!(at(&[("web-0", 'a'), ("web-1", 'a')]), Rollout::Rolling { ready: 0, want: 2 });
        assert_eq!(at(&[("web-0", 'b'), ("web-1", 'a')]), Rollout::Rolling { ready: 1, want: 2 });
        assert_eq!(at(&[("web-0", 'b'), ("web-1", 'b')]), Rollout::Done);
        // Another service's slots, or a canary's, are not this release's.
        let mut r = record(&[("web-0", 'b'), ("web-1", 'b'), ("web-canary-0", 'c')]);
        r.placed.push(crate::fleet::Placed { service: "api".into(), ..r.placed[0].clone() });
        assert_eq!(rollout("web", Some(&d), None, &[r], &img('b')), Rollout::Done);
        assert!(matches!(rollout("web", None, None, &[], &img('b')), Rollout::Failed { .. }));
        // The same image with another env: rolling until every replica
        // runs the new env, not done at once because the digest matches.
        let changed = Desired { env: vec![("MODE".into(), "b".into())], ..d.clone() };
        let at = |placed: &[(&str, char)]| rollout("web", Some(&changed), None, &[record(placed)], &img('b'));
        assert_eq!(at(&[("web-0", 'b'), ("web-1", 'b')]), Rollout::Rolling { ready: 0, want: 2 });
        let mut r = record(&[("web-0", 'b'), ("web-1", 'b')]);
        for p in &mut r.placed {
            p.release = Some(changed.assignment("web", &img('b')).release());
        }
        assert_eq!(rollout("web", Some(&changed), None, &[r], &img('b')), Rollout::Done);
    }

    #[test]
    fn a_canary_rollout_follows_its_steps_pauses_fails_by_the_verdict_and_is_done_once_promoted() {
        let (d, _) = apply("web", Some(&desired(img('a'))), deploy(img('b'), Some(plan())), 0).unwrap();
        let d = d.unwrap();
        assert_eq!(rollout("web", Some(&d), None, &[], &img('b')), Rollout::Canary { weight: 10 });
        let mut paused = d.clone();
        paused.canary.as_mut().unwrap().progress =
            Some(Progress { inconclusive: 3, paused: Some("inconclusive 3 times".into()), ..Progress::default() });
        assert_eq!(
            rollout("web", Some(&paused), None, &[], &img('b')),
            Rollout::Paused { why: "inconclusive 3 times".into() }
        );
        // Aborted by the leader: failed, with the verdict.
        let verdict = crate::fleet::canary::FleetVerdict {
            at: 0,
            action: "abort".into(),
            image: img('b'),
            weight: 10,
            verdict: crate::release::analysis::Verdict {
                outcome: crate::release::analysis::Outcome::Fail,
                canary_requests: 100,
                stable_requests: 900,
                min_requests: 50,
                confidence: 0.95,
                metrics: vec![],
            },
            hosts: Default::default(),
        };
        let aborted = desired(img('a'));
        let Rollout::Failed { why } = rollout("web", Some(&aborted), Some(&verdict), &[], &img('b')) else {
            panic!("failed")
        };
        assert!(why.contains("failed its analysis at 10 %"), "{why}");
        // Promoted, and running everywhere: done.
        let promoted = Desired { image: img('b'), previous: Some(img('a')), ..desired(img('a')) };
        let placed = [("web-0", 'b'), ("web-1", 'b'), ("web-2", 'b')];
        assert_eq!(rollout("web", Some(&promoted), None, &[record(&placed)], &img('b')), Rollout::Done);
    }

    fn spec(extra: &str) -> ServiceSpec {
        let text = format!(
            "[service.web]\nimage = \"registry.test/team/web:1\"\nlisten = \"127.0.0.1:8080\"\nreplicas = 2\nmemory = \"64M\"\ncpus = 0.5\nenv = {{ A = \"1\" }}\n{extra}"
        );
        crate::spec::parse(std::path::Path::new("/x/kiln.toml"), &text).unwrap().services.remove("web").unwrap()
    }

    #[test]
    fn a_kiln_toml_service_becomes_desired_state_and_what_a_fleet_cannot_carry_is_refused_naming_the_key() {
        let (d, plan) = from_service(&spec(""), img('a')).unwrap();
        assert_eq!(
            (d.replicas, d.listen, d.memory_bytes, d.millicpus, d.env.clone()),
            (2, Some(8080), Some(64 << 20), Some(500), vec![("A".to_owned(), "1".to_owned())])
        );
        assert!(plan.is_none(), "rolling by default");
        let (_, plan) = from_service(
            &spec("strategy = \"canary\"\n[service.web.canary]\nsteps = [10, 40]\nstep_interval = \"20s\"\n"),
            img('a'),
        )
        .unwrap();
        let plan = plan.unwrap();
        assert_eq!((plan.steps, plan.step_secs), (vec![10, 40], 20));
        // Secrets carry over by name; their versions are resolved when
        // the deploy is written.
        let (d, _) =
            from_service(&spec("secrets = [\"api\", { name = \"db\", env = \"DB_PASSWORD\" }]\n"), img('a')).unwrap();
        let named: Vec<(&str, Option<&str>, &str)> =
            d.secrets.iter().map(|s| (s.name.as_str(), s.env.as_deref(), s.version.as_str())).collect();
        assert_eq!(named, [("api", None, ""), ("db", Some("DB_PASSWORD"), "")]);
        let (d, _) = from_service(&spec("volumes = { data = \"/data\" }\n"), img('a')).unwrap();
        assert_eq!(d.volumes, [("data".to_owned(), "/data".to_owned())]);
        assert_eq!(d.assignment("web", &d.image).volumes, d.volumes, "carried to every slot");
        // Pauses: after the weight before them, in seconds (0: a person's).
        let (_, plan) = from_service(
            &spec(
                "strategy = \"canary\"\n[service.web.canary]\nsteps = [10, \"pause\", 40, { pause = \"90s\" }, 70]\nstep_interval = \"20s\"\n",
            ),
            img('a'),
        )
        .unwrap();
        let plan = plan.unwrap();
        assert_eq!((plan.steps, plan.pauses), (vec![10, 40, 70], std::collections::BTreeMap::from([(0, 0), (1, 90)])));
        let e = from_service(
            &spec("strategy = \"canary\"\n[service.web.canary]\nsteps = [\"pause\", 10]\nstep_interval = \"20s\"\n"),
            img('a'),
        )
        .unwrap_err();
        assert_eq!(e.key, "service.web.canary.steps", "{e}");
        let e = from_service(
            &spec("strategy = \"canary\"\n[service.web.canary]\nsteps = [10]\nstep_interval = \"5m\"\n"),
            img('a'),
        )
        .unwrap_err();
        assert_eq!(e.key, "service.web.canary.step_interval", "{e}");
    }
}
