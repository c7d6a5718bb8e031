//! What a person's command makes of one fleet service's desired state:
//! `kiln deploy --cluster` (kiln.toml's service with a new image), and
//! `rollback`, `promote`, `abort` and `down` against a cluster. The
//! leading controller then places and rolls what this decided; the
//! command's process writes it, conditioned on the revision it read.
//!
//! For: deciding the next desired state, and turning a kiln.toml service
//! into one. Must never: do I/O, or decide placement ([`super::place`]
//! does).

use super::bluegreen::{self, BlueGreen, Phase};
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
    /// A rollback drill: a canary of the stable image at `weight` percent,
    /// judged after `window_secs`, failed (503) at every load balancer.
    Drill { weight: u32, window_secs: u64 },
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
    /// A drill's canary started.
    DrillStarted {
        image: String,
        weight: u32,
    },
    /// A blue-green release's set of `image` started beside the stable one.
    BlueGreenStarted {
        image: String,
    },
    /// A blue-green release of `image` stopped before its switch.
    BlueGreenAborted {
        image: String,
    },
    /// Back to the set kept warm after a blue-green switch, at once.
    SwitchedBack {
        to: String,
    },
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
            Applied::BlueGreenStarted { image } => {
                write!(f, "blue-green: the whole set of {image} started beside the stable one")
            }
            Applied::BlueGreenAborted { image } => write!(f, "blue-green release of {image} aborted before its switch"),
            Applied::SwitchedBack { to } => write!(f, "switched back to {to} at once (its set was kept warm)"),
            Applied::DrillStarted { image, weight } => {
                write!(f, "drill: a canary of {image} at {weight} %, failed at every load balancer")
            }
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
    /// A drill needs the service to itself.
    #[error("{service}: a canary is in progress; a drill waits until it ends")]
    CanaryInProgress { service: String },
    /// A drill's share or window out of range, by field.
    #[error("{service}: the drill's {field} {message}")]
    BadDrill { service: String, field: &'static str, message: String },
    /// A drill's canary only ever goes back.
    #[error("{service}: its canary is a drill, never promoted (kiln abort --cluster ends it)")]
    DrillNotPromoted { service: String },
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
            keep_obtained_certificate(current, &mut next);
            // kiln.toml's blue-green strategy, as a plan: the release
            // itself is made below.
            let blue_green = next.blue_green.take();
            let Some(cur) = current else {
                let image = next.image.clone();
                return Ok((Some(next), Applied::Created { image }));
            };
            // Which set is stable is the leader's, not kiln.toml's.
            next.color = cur.color;
            if next.image == cur.image {
                // The same image: a canary or blue-green release in
                // progress goes on; settings change in place.
                next.canary = cur.canary.clone();
                next.blue_green = cur.blue_green.clone();
                next.previous = cur.previous.clone();
                let changed = next != *cur;
                return Ok((Some(next), Applied::Updated { changed }));
            }
            if let (None, Some(BlueGreen { phase: Phase::Next { smoke, deadline_secs, keep_secs, .. }, .. })) =
                (&canary, blue_green)
            {
                // The whole other set of the new image beside what runs
                // now; the leader checks it and switches.
                let image = std::mem::replace(&mut next.image, cur.image.clone());
                next.previous = cur.previous.clone();
                next.canary = None;
                let phase = Phase::Next { smoke, since: now, deadline_secs, keep_secs };
                next.blue_green = Some(BlueGreen { image: image.clone(), phase });
                return Ok((Some(next), Applied::BlueGreenStarted { image }));
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
                        fault: None,
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
            match cur.blue_green.as_ref().map(|bg| (&bg.phase, bg.image.clone())) {
                Some((Phase::Next { .. }, image)) => {
                    let why = "aborted by a rollback".to_owned();
                    return Ok((Some(bluegreen::failed(cur, why)), Applied::BlueGreenAborted { image }));
                }
                // The previous set is still warm, and every load balancer
                // routes to it (at weight 0): switched back at once.
                Some((Phase::Kept { .. }, to)) => {
                    let next = Desired {
                        image: to.clone(),
                        color: cur.color.other(),
                        previous: Some(cur.image.clone()),
                        blue_green: None,
                        ..cur.clone()
                    };
                    return Ok((Some(next), Applied::SwitchedBack { to }));
                }
                _ => {}
            }
            let to = cur.previous.clone().ok_or_else(|| ChangeError::NoPrevious { service: service.to_owned() })?;
            let next = Desired { image: to.clone(), previous: Some(cur.image.clone()), ..cur.clone() };
            Ok((Some(next), Applied::RolledBack { to }))
        }
        Change::Abort => {
            let cur = current.ok_or_else(missing)?;
            if let Some(BlueGreen { image, phase: Phase::Next { .. } }) = &cur.blue_green {
                let (image, why) = (image.clone(), "aborted".to_owned());
                return Ok((Some(bluegreen::failed(cur, why)), Applied::BlueGreenAborted { image }));
            }
            let image = cur.canary.as_ref().ok_or_else(no_canary)?.image.clone();
            Ok((Some(Desired { canary: None, ..cur.clone() }), Applied::CanaryAborted { image }))
        }
        Change::Drill { weight, window_secs } => {
            let bad = |field, message: String| ChangeError::BadDrill { service: service.to_owned(), field, message };
            if !(1..=50).contains(&weight) {
                return Err(bad("weight", format!("{weight}: a share of 1 to 50 percent")));
            }
            if !(1..=60).contains(&window_secs) {
                return Err(bad("window_ms", format!("{} ms: 1 s to 60 s", window_secs * 1000)));
            }
            let cur = current.ok_or_else(missing)?;
            if cur.canary.is_some() {
                return Err(ChangeError::CanaryInProgress { service: service.to_owned() });
            }
            let canary = Canary {
                image: cur.image.clone(),
                replicas: 1,
                weight,
                steps: vec![weight],
                step_secs: window_secs,
                pauses: Default::default(),
                progress: None,
                max_error_rate: None,
                max_p99_ratio: None,
                fault: Some(503),
            };
            let applied = Applied::DrillStarted { image: cur.image.clone(), weight };
            Ok((Some(Desired { canary: Some(canary), ..cur.clone() }), applied))
        }
        Change::Promote => {
            let cur = current.ok_or_else(missing)?;
            let c = cur.canary.as_ref().ok_or_else(no_canary)?;
            if c.fault.is_some() {
                return Err(ChangeError::DrillNotPromoted { service: service.to_owned() });
            }
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
    /// A blue-green release's new set: `ready` of `want` run it (no
    /// request reaches them before the switch).
    BlueGreen { ready: u32, want: u32 },
    /// Waiting for a person (`kiln promote`, `abort` or `rollback`).
    Paused { why: String },
    /// Every replica runs the image, ready, and nothing else runs, but
    /// the load balancers of `hosts` do not route to it yet (their own
    /// health checks have not passed it).
    Routing { hosts: Vec<String> },
    /// Every replica runs the image, ready, nothing else runs, and every
    /// host's load balancer routes to it.
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
    match &d.blue_green {
        Some(BlueGreen { image, phase: Phase::Next { .. } }) if image == target => {
            let other = d.color.other();
            let ready = records
                .iter()
                .flat_map(|r| r.placed.iter())
                .filter(|p| p.service == service && bluegreen::Color::of(service, &p.slot) == Some(other))
                .filter(|p| image.rsplit_once('@').is_some_and(|(_, dg)| p.image.to_string() == dg))
                .count() as u32;
            return Rollout::BlueGreen { ready, want: d.replicas };
        }
        Some(BlueGreen { image, phase: Phase::Failed { why } }) if image == target && d.image != target => {
            return Rollout::Failed { why: format!("its blue-green release did not switch: {why}") };
        }
        _ => {}
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
    // The stable set's slots: not a canary's, nor a blue-green release's
    // other set (kept warm after a switch, or leaving).
    let canary_slot = format!("{service}-canary-");
    let replicas = records
        .iter()
        .flat_map(|r| r.placed.iter().map(move |p| (r, p)))
        .filter(|(_, p)| p.service == service && !p.slot.starts_with(&canary_slot))
        .filter(|(_, p)| bluegreen::role(service, d, &p.slot) == bluegreen::Role::Stable);
    let (mut ready, mut other) = (0u32, 0u32);
    let mut serving = Vec::new();
    for (host, p) in replicas {
        if p.release.as_ref() == Some(&release) {
            ready += 1;
            serving.extend(host.address.map(|ip| std::net::SocketAddr::new(ip, p.port)));
        } else {
            other += 1;
        }
    }
    if ready < d.replicas || other > 0 || d.canary.is_some() {
        return Rollout::Rolling { ready, want: d.replicas };
    }
    // A host runs a load balancer for a service that listens, on its
    // address: the release is done once each routes to one of its
    // replicas (a first deploy would otherwise answer 503 there until
    // that load balancer's own checks pass).
    let waiting: Vec<String> = match d.listen {
        Some(_) => records
            .iter()
            .filter(|r| r.address.is_some())
            .filter(|r| !r.routes.get(service).is_some_and(|routed| routed.iter().any(|a| serving.contains(a))))
            .map(|r| r.name.clone())
            .collect(),
        None => Vec::new(),
    };
    if waiting.is_empty() {
        Rollout::Done
    } else {
        Rollout::Routing { hosts: waiting }
    }
}

/// A deploy of a service whose certificate comes from ACME keeps the one
/// the leader obtained, while it asks the same CA for the same names: a
/// new image is no reason to ask again (CAs limit how often one may).
fn keep_obtained_certificate(current: Option<&Desired>, next: &mut Desired) {
    let Some(cur) = current.and_then(|c| c.edge.tls.as_ref().map(|t| (t, &c.edge.hosts))) else { return };
    if let Some(t) = &mut next.edge.tls {
        if t.cert.is_empty() && cur.0.same_order(cur.1, t, &next.edge.hosts) {
            t.cert.clone_from(&cur.0.cert);
            t.key.clone_from(&cur.0.key);
        }
    }
}

/// kiln.toml's `[service.NAME]` as a fleet's desired state running
/// `image` (by digest), and its canary plan when its strategy is one.
/// What a fleet cannot carry yet is refused, naming the key, rather than
/// dropped: a pause before the first weight, a step interval over a
/// minute.
pub fn from_service(spec: &ServiceSpec, image: String) -> Result<(Desired, Option<CanaryPlan>), SpecError> {
    let refuse = |key: &str, message: &str| SpecError {
        file: spec.file.clone(),
        line: Some(spec.line),
        key: format!("service.{}.{key}", spec.name),
        message: message.to_owned(),
    };
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
        // Rolling and recreate roll one slot at a time in a fleet, ready
        // before the old instance drains.
        _ => None,
    };
    // Blue-green: the whole other set, checked, then switched to (the
    // deploy's image and start time are filled in by `apply`).
    let blue_green = match &spec.release.strategy {
        Strategy::BlueGreen(bg) => Some(super::bluegreen::BlueGreen {
            image: String::new(),
            phase: super::bluegreen::Phase::Next {
                smoke: bg.smoke.clone(),
                since: 0,
                deadline_secs: spec.release.progress_deadline_ms.div_ceil(1000),
                keep_secs: spec.release.keep_previous_ms.div_ceil(1000),
            },
        }),
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
        color: Default::default(),
        blue_green,
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
                files: t.acme.is_none().then(|| (t.cert.clone(), t.key.clone())),
                // The CA file is read by the deploy too.
                acme: t.acme.as_ref().map(|a| super::place::FleetAcme {
                    directory: a.directory.clone(),
                    email: a.email.clone(),
                    ca_pem: None,
                    ca_file: a.ca.clone(),
                    renew_before_secs: a.renew_before_secs,
                }),
            }),
            redirect_http: spec.edge.redirect_http.map(|a| a.port()),
        },
    };
    Ok((desired, canary))
}

#[cfg(test)]
mod tests;
