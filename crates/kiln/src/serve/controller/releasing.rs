//! The controller's release acts: a release begun, each step observed,
//! decided by `release::rollout::decide` (pure) and acted on, recorded
//! before it is taken; failure, success, rollback and drills. This part
//! must never decide a step itself.

use super::*;
use crate::serve::answer::{Released, Scaled, WentDown};

impl<'a> Controller<'a> {
    /// Observe → decide → act for the release in progress.
    pub(super) fn step(&mut self, name: &str, a: Active, now_ms: u64) -> Result<(), ServeError> {
        let spec = match a.drill {
            Some(window_ms) => drill_spec(&self.services[name].spec.release, window_ms),
            None => self.services[name].spec.release.clone(),
        };
        let live = self.live(name)?;
        let r = &a.rollout;
        let of = |id: &str| live.iter().filter(|x| x.release.as_deref() == Some(id)).collect::<Vec<_>>();
        let new = of(&r.release);
        let threshold = spec.health.healthy_threshold;
        let mut obs = Observed {
            new_live: new.len() as u32,
            new_healthy: new.iter().filter(|x| self.prober.health(x.id.as_str()).passes >= threshold).count() as u32,
            old_live: r
                .stable
                .as_deref()
                .map_or(0, |s| of(s).iter().filter(|x| !self.retiring.contains_key(x.id.as_str())).count() as u32),
            new_failures: a.failures,
            last_failure: a.last_failure.clone(),
            canary: None,
            stable: None,
        };
        if let Some(Step::Analyse { window_ms }) = r.steps.get(r.index) {
            let secs = (window_ms / 1000).clamp(1, 60);
            let dp = self.dp(name)?;
            obs.canary = Some(dp.stats(&r.release, secs)?);
            if let Some(s) = &r.stable {
                obs.stable = Some(dp.stats(s, secs)?);
            }
            if self.sampled_ms.get(name).is_none_or(|t| now_ms >= t + 1000) {
                self.sampled_ms.insert(name.to_owned(), now_ms);
                self.events.publish("analysis", &analysis_sample(name, r, &spec, &obs, now_ms));
            }
        }
        let action = rollout::decide(r, &spec, &obs, a.old_at_start, now_ms);
        self.act(name, a, action, now_ms)
    }

    pub(super) fn act(&mut self, name: &str, mut a: Active, action: Action, now_ms: u64) -> Result<(), ServeError> {
        let release = ReleaseRef {
            id: a.rollout.release.clone(),
            digest: a.rollout.digest.clone(),
            image_ref: a.rollout.image_ref.clone(),
            fields: a.rollout.fields.clone(),
        };
        match action {
            Action::Wait => return Ok(()),
            Action::EnsureNew { count } => {
                let have = self.live(name)?.iter().filter(|r| r.release.as_deref() == Some(release.id.as_str())).count()
                    as u32;
                for _ in have..count {
                    self.start(name, &release, now_ms)?;
                }
                crash_point("instances-started");
                return Ok(());
            }
            Action::Smoke => {
                let checks = match &self.services[name].spec.release.strategy {
                    Strategy::BlueGreen(BlueGreenSpec { smoke }) => smoke.clone(),
                    _ => Vec::new(),
                };
                let new: Vec<InstanceRecord> = self
                    .live(name)?
                    .into_iter()
                    .filter(|r| r.release.as_deref() == Some(release.id.as_str()))
                    .collect();
                let failed = self.smoke_through_preview(name, &release.id, &new, &checks)?;
                match failed {
                    Some(reason) => return self.fail(name, a, reason, None, Outcome::Failed, now_ms),
                    None => self.advance(&mut a, now_ms),
                }
            }
            Action::Route { new_percent } => {
                let mut weights = BTreeMap::from([(release.id.clone(), new_percent)]);
                if let Some(s) = &a.rollout.stable {
                    weights.insert(s.clone(), 100 - new_percent);
                }
                let index = a.rollout.index as u32;
                self.record(name, &release.id, now_ms, &Event::Step { index, weights })?;
                crash_point("step-recorded");
                a.rollout.new_percent = new_percent;
                self.services.get_mut(name).expect("known").state.rollout = Some(a);
                self.save(name, now_ms)?;
                self.sync(name, false)?;
                crash_point("traffic-routed");
                return Ok(());
            }
            Action::ShrinkOld { count } => {
                let old_id = a.rollout.stable.clone().unwrap_or_default();
                let mut old: Vec<InstanceRecord> =
                    self.live(name)?.into_iter().filter(|r| r.release.as_deref() == Some(old_id.as_str())).collect();
                old.sort_by_key(|r| r.created);
                old.retain(|r| !self.retiring.contains_key(r.id.as_str()));
                let n = old.len().saturating_sub(count as usize);
                let drain_ms = self.services[name].spec.release.drain_timeout_ms;
                for r in &old[..n] {
                    self.retire(name, r, drain_ms, Then::Stop);
                }
                crash_point("old-drained");
                return Ok(());
            }
            Action::Advance { verdict } => {
                if let Some(verdict) = verdict {
                    let step = a.rollout.index as u32;
                    self.record(name, &release.id, now_ms, &Event::Verdict { step, verdict, paused: false })?;
                    crash_point("verdict-recorded");
                }
                self.advance(&mut a, now_ms);
            }
            Action::Extend { verdict } => {
                let step = a.rollout.index as u32;
                self.record(name, &release.id, now_ms, &Event::Verdict { step, verdict, paused: false })?;
                a.rollout.inconclusive += 1;
                a.rollout.step_started_ms = now_ms;
            }
            Action::Pause { verdict, .. } if a.drill.is_some() => {
                // A drill never waits for a person: past its analysis it
                // has failed to prove anything.
                let why = match &verdict {
                    Some(v) => format!(
                        "drill inconclusive: {} canary requests of the {} needed to judge (send traffic during the drill)",
                        v.canary_requests, v.min_requests
                    ),
                    None => "drill not caught: analysis passed a canary that failed every request".into(),
                };
                return self.fail(name, a, why, verdict, Outcome::Aborted, now_ms);
            }
            Action::Succeed { .. } if a.drill.is_some() => {
                let why = "drill not caught: the faulty canary would have been promoted".to_owned();
                return self.fail(name, a, why, None, Outcome::Aborted, now_ms);
            }
            Action::Pause { reason, verdict } => {
                if let Some(verdict) = verdict {
                    let step = a.rollout.index as u32;
                    self.record(name, &release.id, now_ms, &Event::Verdict { step, verdict, paused: true })?;
                }
                a.rollout.paused = Some(reason);
            }
            Action::Fail { reason, verdict } => {
                let outcome = if a.rollout.stable.is_some() { Outcome::RolledBack } else { Outcome::Failed };
                return self.fail(name, a, reason, verdict, outcome, now_ms);
            }
            Action::Succeed { warm_until_ms } => return self.succeed(name, a, warm_until_ms, now_ms),
        }
        self.services.get_mut(name).expect("known").state.rollout = Some(a);
        self.save(name, now_ms)
    }

    /// Runs the smoke checks through a private preview load balancer that
    /// routes to the new set alone (each check once per instance, so the
    /// round robin asks every one); the preview is ended afterwards.
    /// `Some(reason)` when a check failed.
    pub(super) fn smoke_through_preview(
        &self,
        name: &str,
        release: &str,
        new: &[InstanceRecord],
        checks: &[SmokeCheck],
    ) -> Result<Option<String>, ServeError> {
        if checks.is_empty() {
            return Ok(None);
        }
        let spec = &self.services[name].spec;
        let table = vec![TableEntry {
            release: release.to_owned(),
            weight: 100,
            backends: new.iter().map(addr).collect(),
            fault: None,
        }];
        let preview = self.planes.preview(spec, &table)?;
        // The preview's own health checks admit the backends first.
        let deadline = std::time::Instant::now() + Duration::from_millis(spec.release.health.start_deadline_ms);
        let path = spec.release.health.path.as_deref().or(Some("/"));
        while prober::check(preview.listen(), path, Duration::from_secs(1)).is_err()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let failed = checks.iter().find_map(|c| {
            (0..new.len().max(1)).find_map(|_| {
                crate::serve::prober::smoke(preview.listen(), c)
                    .err()
                    .map(|e| format!("smoke check through the preview listener {}: {e}", preview.listen()))
            })
        });
        self.planes.stop_preview(name);
        Ok(failed)
    }

    pub(super) fn advance(&self, a: &mut Active, now_ms: u64) {
        a.rollout.index += 1;
        a.rollout.step_started_ms = now_ms;
        a.rollout.inconclusive = 0;
        a.rollout.promoted = false;
        a.rollout.paused = None;
    }

    /// Traffic back to stable at once, the new release's instances removed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fail(
        &mut self,
        name: &str,
        a: Active,
        reason: String,
        verdict: Option<crate::release::analysis::Verdict>,
        outcome: Outcome,
        now_ms: u64,
    ) -> Result<(), ServeError> {
        let id = a.rollout.release.clone();
        if let Some(verdict) = verdict {
            let step = a.rollout.index as u32;
            self.record(name, &id, now_ms, &Event::Verdict { step, verdict, paused: false })?;
        }
        if a.rollout.new_percent > 0 {
            let mut weights = BTreeMap::from([(id.clone(), 0)]);
            if let Some(s) = &a.rollout.stable {
                weights.insert(s.clone(), 100);
            }
            self.record(name, &id, now_ms, &Event::Step { index: a.rollout.index as u32, weights })?;
        }
        let mut stopped = a.clone();
        stopped.rollout.new_percent = 0;
        self.services.get_mut(name).expect("known").state.rollout = Some(stopped);
        self.sync(name, false)?;
        let new: Vec<InstanceRecord> =
            self.live(name)?.into_iter().filter(|r| r.release.as_deref() == Some(id.as_str())).collect();
        let (drain_ms, keep) = {
            let r = &self.services[name].spec.release;
            let canary = matches!(r.strategy, Strategy::Canary(_)) && r.heal.quarantine_failed_canary;
            let kept = outcome != Outcome::Superseded && outcome != Outcome::Aborted && a.drill.is_none();
            (r.drain_timeout_ms, canary && kept)
        };
        for r in &new {
            if keep {
                self.quarantine(name, r.id.as_str(), &format!("failed canary: {reason}"), "kiln", now_ms)?;
            } else {
                self.retire(name, r, drain_ms, Then::Stop);
            }
        }
        if !self.finished_already(name, &id)? {
            // decide() fails a rollout past its deadline before anything else.
            let deadline = outcome == Outcome::Failed
                && crate::release::rollout::past_deadline(&a.rollout, &self.services[name].spec.release, now_ms);
            self.record(name, &id, now_ms, &Event::Finished { outcome, reason: reason.clone(), deadline })?;
            crash_point("finished-recorded");
        }
        let st = &mut self.services.get_mut(name).expect("known").state;
        st.rollout = None;
        st.last = Some((id, outcome, reason));
        self.save(name, now_ms)
    }

    pub(super) fn succeed(&mut self, name: &str, a: Active, warm_until_ms: u64, now_ms: u64) -> Result<(), ServeError> {
        let r = &a.rollout;
        let new = ReleaseRef {
            id: r.release.clone(),
            digest: r.digest.clone(),
            image_ref: r.image_ref.clone(),
            fields: r.fields.clone(),
        };
        let reason = format!("{} steps done", r.steps.len());
        if !self.finished_already(name, &new.id)? {
            let event = Event::Finished { outcome: Outcome::Succeeded, reason: reason.clone(), deadline: false };
            self.record(name, &new.id, now_ms, &event)?;
            crash_point("finished-recorded");
        }
        let store_home = self.store.home().to_owned();
        let keep = self.services[name].spec.release.keep_releases as usize;
        self.history.archive(&store_home, name, &new.id, &new.digest, now_ms as i64, keep)?;
        let st = &mut self.services.get_mut(name).expect("known").state;
        let old = st.stable.take();
        st.previous = old.map(|o| (o, warm_until_ms));
        st.stable = Some(new.clone());
        st.rollout = None;
        st.last = Some((new.id, Outcome::Succeeded, reason));
        self.save(name, now_ms)
    }

    /// Starts a release of `digest` for `name` (recorded before anything
    /// runs). `fast`: a rollback's release, new set first, no analysis.
    pub(super) fn begin(
        &mut self,
        name: &str,
        digest: Digest,
        image_ref: String,
        actor: &str,
        mode: Mode,
        now_ms: u64,
    ) -> Result<Released, ServeError> {
        // A deploy supersedes the release in progress (its analysis starts over).
        if let Some(a) = self.services[name].state.rollout.clone() {
            let reason = format!("superseded by a new deploy of {image_ref}");
            self.fail(name, a, reason, None, Outcome::Superseded, now_ms)?;
        }
        let svc = &self.services[name];
        let live = self.live(name)?;
        let stable = svc.state.stable.clone();
        let old = stable
            .as_ref()
            .map_or(0, |s| live.iter().filter(|r| r.release.as_deref() == Some(s.id.as_str())).count() as u32);
        let drill = match mode {
            Mode::Drill { window_ms } => Some(window_ms),
            _ => None,
        };
        let release_spec = match mode {
            Mode::Deploy => svc.spec.release.clone(),
            Mode::Rollback => spec::ReleaseSpec {
                strategy: Strategy::BlueGreen(BlueGreenSpec { smoke: Vec::new() }),
                ..svc.spec.release.clone()
            },
            Mode::Drill { window_ms } => drill_spec(&svc.spec.release, window_ms),
        };
        // A drill's canary runs the stable digest as a release of its own:
        // the plan must see stable as the release it would replace.
        let from = stable.as_ref().map(|s| Current {
            digest: if drill.is_some() {
                Digest::of(b"kiln drill: stable is the old release")
            } else {
                s.digest.clone()
            },
            instances: old,
            fields: s.fields.clone(),
        });
        // A release is the image and the service's settings together: the
        // same pair at the same size is nothing to do, and what plan shows
        // is what is done.
        let fields = self.release_fields(name);
        let p = plan::plan_release(name, &release_spec, from.as_ref(), &digest, &fields);
        if drill.is_none() && p.steps.is_empty() {
            return Ok(Released {
                service: name.to_owned(),
                release: stable.map(|s| s.id),
                noop: true,
                ..Default::default()
            });
        }
        // The same release at another size: a scale of the stable release,
        // not a new one (its instances stay its own).
        if let (Mode::Deploy, Some(s)) = (mode, stable.as_ref()) {
            let same = s.digest == digest && (s.fields.is_empty() || s.fields == fields);
            if same && old != release_spec.replicas {
                return self.scale(name, s, old, release_spec.replicas, actor, p, now_ms);
            }
        }
        let n = self.history.releases_started(name)? + 1;
        let id = format!("{name}-{n}");
        let tags = self.store.resolve(digest.as_str()).map(|(_, t)| t).unwrap_or_default();
        let revision = self
            .store
            .read_json::<crate::oci::Manifest>(&digest)
            .ok()
            .and_then(|m| m.annotation(crate::oci::ANNOTATION_REVISION).map(str::to_owned));
        self.record(
            name,
            &id,
            now_ms,
            &Event::Started {
                digest: digest.to_string(),
                tags,
                revision,
                strategy: match mode {
                    Mode::Deploy => p.strategy.clone(),
                    Mode::Rollback => "rollback".into(),
                    Mode::Drill { .. } => "drill".into(),
                },
                actor: actor.to_owned(),
                previous: stable.as_ref().map(|s| s.id.clone()),
                changed: p.changed.clone(),
            },
        )?;
        let rollout = Rollout {
            release: id.clone(),
            digest,
            image_ref,
            stable: stable.map(|s| s.id),
            steps: p.steps.clone(),
            index: 0,
            step_started_ms: now_ms,
            started_ms: now_ms,
            new_percent: 0,
            inconclusive: 0,
            promoted: false,
            paused: None,
            skip_analysis: mode == Mode::Rollback,
            fields,
        };
        self.services.get_mut(name).expect("known").state.rollout =
            Some(Active { rollout, old_at_start: old, failures: 0, last_failure: None, drill });
        self.save(name, now_ms)?;
        crash_point("release-recorded");
        Ok(Released { service: name.to_owned(), release: Some(id), plan: Some(p), ..Default::default() })
    }

    /// A scale of the stable release from `from` to `to` instances:
    /// recorded, then the surplus drained and stopped (newest first); a
    /// shortfall is started by the heal loop, which keeps the stable
    /// release at `replicas`.
    #[allow(clippy::too_many_arguments)]
    fn scale(
        &mut self,
        name: &str,
        stable: &ReleaseRef,
        from: u32,
        to: u32,
        actor: &str,
        plan: plan::Plan,
        now_ms: u64,
    ) -> Result<Released, ServeError> {
        self.record(name, &stable.id, now_ms, &Event::Scaled { from, to, actor: actor.to_owned() })?;
        if to < from {
            let mut live: Vec<InstanceRecord> = self
                .live(name)?
                .into_iter()
                .filter(|r| {
                    r.release.as_deref() == Some(stable.id.as_str()) && !self.retiring.contains_key(r.id.as_str())
                })
                .collect();
            live.sort_by_key(|r| std::cmp::Reverse(r.created));
            let drain_ms = self.services[name].spec.release.drain_timeout_ms;
            for r in live.iter().take((from - to) as usize) {
                self.retire(name, r, drain_ms, Then::Stop);
            }
        }
        Ok(Released {
            service: name.to_owned(),
            release: Some(stable.id.clone()),
            scaled: Some(Scaled { from, to }),
            plan: Some(plan),
            ..Default::default()
        })
    }

    /// Starts a rollback drill (see [`Request::Drill`]) on a steady service.
    pub(super) fn drill(
        &mut self,
        name: &str,
        window_ms: Option<u64>,
        actor: &str,
        now_ms: u64,
    ) -> Result<Released, ServeError> {
        let svc = self.service(name)?;
        if let Some(a) = &svc.state.rollout {
            return Err(Conflict::Busy { service: name.to_owned(), release: a.rollout.release.clone() }.into());
        }
        let Some(stable) = svc.state.stable.clone() else {
            return Err(Conflict::NoStable { service: name.to_owned() }.into());
        };
        let window_ms = window_ms.unwrap_or(match &svc.spec.release.strategy {
            Strategy::Canary(c) => c.step_interval_ms,
            _ => 10_000,
        });
        let image_ref = format!("{} (drill)", stable.image_ref);
        let mut out = self.begin(name, stable.digest.clone(), image_ref, actor, Mode::Drill { window_ms }, now_ms)?;
        out.stable = Some(stable.id);
        out.window_ms = Some(window_ms);
        out.fault = Some(DRILL_FAULT);
        Ok(out)
    }

    /// Ends the release in progress as rolled back by `actor`.
    pub(super) fn roll_back_in_progress(
        &mut self,
        name: &str,
        a: Active,
        actor: &str,
        now_ms: u64,
    ) -> Result<(), ServeError> {
        let reason = format!("rolled back by {actor}");
        self.fail(name, a, reason, None, Outcome::RolledBack, now_ms)
    }

    pub(super) fn rollback(
        &mut self,
        name: &str,
        to: Option<&str>,
        actor: &str,
        now_ms: u64,
    ) -> Result<Released, ServeError> {
        let mut st = self.service(name)?.state.clone();
        if st.stable.as_ref().is_some_and(|s| Some(s.id.as_str()) == to) && st.rollout.is_none() {
            return Err(Conflict::AlreadyServes {
                service: name.to_owned(),
                release: to.unwrap_or_default().to_owned(),
            }
            .into());
        }
        if let (Some(a), Some(_)) = (st.rollout.clone(), to) {
            // Rolling back to a named release ends the one in progress first.
            self.roll_back_in_progress(name, a, actor, now_ms)?;
            st = self.services[name].state.clone();
            if st.stable.as_ref().is_some_and(|s| Some(s.id.as_str()) == to) {
                return Ok(Released {
                    service: name.to_owned(),
                    release: to.map(str::to_owned),
                    instant: true,
                    ..Default::default()
                });
            }
        }
        if let Some(a) = st.rollout {
            let id = a.rollout.release.clone();
            self.roll_back_in_progress(name, a, actor, now_ms)?;
            return Ok(Released {
                service: name.to_owned(),
                release: st.stable.map(|s| s.id),
                rolled_back: Some(id),
                instant: true,
                ..Default::default()
            });
        }
        let Some(current) = st.stable.clone() else {
            return Err(Conflict::NothingToRollBackFrom { service: name.to_owned() }.into());
        };
        let live = self.live(name)?;
        if let Some((prev, _)) = st.previous.filter(|(p, _)| {
            to.is_none_or(|t| t == p.id) && live.iter().any(|r| r.release.as_deref() == Some(p.id.as_str()))
        }) {
            // Still warm: one table swap. The rollback is a release of its
            // own in the history (its own id, naming what it went back to);
            // the instances it serves stay the previous release's.
            let id = format!("{name}-{}", self.history.releases_started(name)? + 1);
            let weights = BTreeMap::from([(prev.id.clone(), 100), (current.id.clone(), 0)]);
            self.record(
                name,
                &id,
                now_ms,
                &Event::Started {
                    digest: prev.digest.to_string(),
                    // What it runs, as a fresh release records it.
                    tags: self.store.resolve(prev.digest.as_str()).map(|(_, t)| t).unwrap_or_default(),
                    revision: self
                        .store
                        .read_json::<crate::oci::Manifest>(&prev.digest)
                        .ok()
                        .and_then(|m| m.annotation(crate::oci::ANNOTATION_REVISION).map(str::to_owned)),
                    strategy: "rollback".into(),
                    actor: actor.to_owned(),
                    previous: Some(current.id.clone()),
                    changed: Vec::new(),
                },
            )?;
            self.record(name, &id, now_ms, &Event::Step { index: 0, weights })?;
            let keep = self.services[name].spec.release.keep_previous_ms;
            let st = &mut self.services.get_mut(name).expect("known").state;
            st.stable = Some(prev.clone());
            st.previous = Some((current.clone(), now_ms + keep));
            self.sync(name, false)?;
            let reason = format!("instant rollback to {} from {}", prev.id, current.id);
            self.record(
                name,
                &id,
                now_ms,
                &Event::Finished { outcome: Outcome::Succeeded, reason: reason.clone(), deadline: false },
            )?;
            self.services.get_mut(name).expect("known").state.last = Some((id.clone(), Outcome::Succeeded, reason));
            self.save(name, now_ms)?;
            return Ok(Released {
                service: name.to_owned(),
                release: Some(prev.id),
                rollback: Some(id),
                instant: true,
                ..Default::default()
            });
        }
        // Cold: a fast release of the named release's digest, or of the
        // last good one before the current one.
        let entries = self.history.entries(Some(name))?;
        if let Some(to) = to {
            let digest = entries.iter().find_map(|e| match &e.event {
                Event::Started { digest, .. } if e.release == to => Digest::parse(digest).ok(),
                _ => None,
            });
            let Some(d) = digest else {
                return Err(ServeError::UnknownRelease { service: name.to_owned(), release: to.to_owned() });
            };
            return self.begin(name, d.clone(), d.to_string(), actor, Mode::Rollback, now_ms);
        }
        let mut digests: HashMap<String, String> = HashMap::new();
        let mut good = None;
        for e in &entries {
            match &e.event {
                Event::Started { digest, .. } => {
                    digests.insert(e.release.clone(), digest.clone());
                }
                Event::Finished { outcome: Outcome::Succeeded, .. } => {
                    if let Some(d) = digests.get(&e.release).filter(|d| **d != current.digest.as_str()) {
                        good = Some(d.clone());
                    }
                }
                _ => {}
            }
        }
        let Some(d) = good.and_then(|d| Digest::parse(&d).ok()) else {
            return Err(Conflict::NoEarlierRelease { service: name.to_owned() }.into());
        };
        self.begin(name, d.clone(), d.to_string(), actor, Mode::Rollback, now_ms)
    }
}

impl Controller<'_> {
    /// `kiln down`: recorded first, then the release in progress ends
    /// (aborted) and the service forgets its releases; the next ticks
    /// drain and destroy its instances and stop its load balancer (see
    /// [`Controller::tick_down`]). History and the archive are kept; with
    /// `purge` its volumes go too. Idempotent.
    pub(super) fn down(&mut self, name: &str, purge: bool, actor: &str, now_ms: u64) -> Result<WentDown, ServeError> {
        self.service(name)?;
        if let Some(d) = &self.services[name].state.down {
            return Ok(WentDown { service: name.to_owned(), down: d.clone(), already: true });
        }
        let release = self.release_of(name);
        self.record(name, &release, now_ms, &Event::Down { actor: actor.to_owned(), purge })?;
        if let Some(a) = self.services[name].state.rollout.clone() {
            let reason = format!("the service was taken down by {actor}");
            self.fail(name, a, reason, None, Outcome::Aborted, now_ms)?;
        }
        let st = &mut self.services.get_mut(name).expect("known").state;
        st.stable = None;
        st.previous = None;
        st.heal = Default::default();
        let down = Down { actor: actor.to_owned(), at_ms: now_ms, purge, done: false };
        st.down = Some(down.clone());
        self.save(name, now_ms)?;
        Ok(WentDown { service: name.to_owned(), down, already: false })
    }

    /// A deploy of a service that was taken down: it gets its load
    /// balancer again (on the address kiln.toml names now).
    pub(super) fn bring_back(&mut self, name: &str, now_ms: u64) -> Result<(), ServeError> {
        if self.services[name].state.down.is_none() {
            return Ok(());
        }
        let svc = self.services.get_mut(name).expect("known");
        if svc.dp.is_none() {
            svc.dp = Some(self.planes.ensure(&svc.spec)?);
            svc.sent = None;
        }
        svc.state.down = None;
        self.save(name, now_ms)
    }

    /// A service being taken down: each instance of a release drains (no
    /// new requests, those in flight get `drain_timeout`) and is stopped
    /// and removed; once none is left its load balancer stops (SIGTERM:
    /// it answers what it holds) and, with `purge`, its volumes go.
    /// Instances started by hand (`kiln run`, no release) are not kiln
    /// serve's to remove.
    pub(super) fn tick_down(&mut self, name: &str, now_ms: u64) -> Result<(), ServeError> {
        let Some(down) = self.services[name].state.down.clone() else { return Ok(()) };
        if down.done {
            return Ok(());
        }
        self.finish_retiring(name, now_ms)?;
        let drain_ms = self.services[name].spec.release.drain_timeout_ms;
        for r in self.live(name)?.iter().filter(|r| r.release.is_some()) {
            self.retire(name, r, drain_ms, Then::Stop);
        }
        self.reap(name, now_ms)?;
        let left = self.all()?.iter().filter(|r| r.service == name && r.release.is_some()).count();
        if left > 0 || self.retiring.values().any(|r| r.service == name) {
            return Ok(());
        }
        if self.services.get_mut(name).expect("known").dp.take().is_some() {
            self.planes.stop(name);
        }
        if down.purge {
            let dir = self.home.join("volumes").join(name);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ServeError::Io { path: dir, source: e });
                }
                _ => {}
            }
        }
        let svc = self.services.get_mut(name).expect("known");
        svc.sent = None;
        svc.state.down = Some(Down { done: true, ..down });
        self.save(name, now_ms)
    }
}
