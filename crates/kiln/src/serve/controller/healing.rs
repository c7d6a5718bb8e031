//! The controller's healing acts: failed, exited and drifted instances
//! replaced, quarantine and its expiry, chaos kills. What to do is
//! `crate::heal::decide`'s; this part only observes and acts.

use super::*;
use crate::serve::answer;

impl<'a> Controller<'a> {
    /// The instances of `release` that exited unasked (not quarantined).
    pub(super) fn exited_unasked(&self, name: &str, release: &str) -> Result<Vec<InstanceRecord>, ServeError> {
        let q = &self.services[name].state.quarantined;
        Ok(self
            .all()?
            .into_iter()
            .filter(|r| r.service == name && r.release.as_deref() == Some(release))
            .filter(|r| r.state.is_exited() && !r.stop_requested && !q.contains_key(r.id.as_str()))
            .collect())
    }

    pub(super) fn exit_detail(r: &InstanceRecord) -> String {
        match &r.state {
            InstanceState::Exited { reason, .. } => format!("{} {reason}", r.id),
            _ => r.id.to_string(),
        }
    }

    /// New instances that exited unasked during a release: each is an
    /// event and counts toward the release's crash loop (see
    /// [`rollout::decide`]); the rollout starts others in their place.
    pub(super) fn new_release_failures(
        &mut self,
        name: &str,
        mut a: Active,
        now_ms: u64,
    ) -> Result<Active, ServeError> {
        let id = a.rollout.release.clone();
        for r in self.exited_unasked(name, &id)? {
            let (code, signal) = match r.state {
                InstanceState::Exited { code, signal, .. } => (code, signal),
                _ => (None, None),
            };
            let chaos = self.chaos.remove(r.id.as_str());
            let cause = if chaos { Cause::Chaos } else { Cause::Exited { code, signal } };
            let detail = Self::exit_detail(&r);
            let event = Event::Replacing { instance: r.id.to_string(), cause, detail: detail.clone() };
            self.record(name, &id, now_ms, &event)?;
            if !chaos {
                a.failures += 1;
                a.last_failure = Some(detail);
            }
            self.services.get_mut(name).expect("known").state.rollout = Some(a.clone());
            self.save(name, now_ms)?;
            let _ = self.runtime().remove(r.id.as_str(), true);
            self.changed();
        }
        Ok(a)
    }

    /// Removes the exited instances of `release` with an event each (the
    /// rollout in progress sizes the set; it starts what is missing).
    pub(super) fn remove_exited(&mut self, name: &str, release: &str, now_ms: u64) -> Result<(), ServeError> {
        for r in self.exited_unasked(name, release)? {
            let (code, signal) = match r.state {
                InstanceState::Exited { code, signal, .. } => (code, signal),
                _ => (None, None),
            };
            let cause = if self.chaos.remove(r.id.as_str()) { Cause::Chaos } else { Cause::Exited { code, signal } };
            let event = Event::Replacing { instance: r.id.to_string(), cause, detail: Self::exit_detail(&r) };
            self.record(name, release, now_ms, &event)?;
            let _ = self.runtime().remove(r.id.as_str(), true);
            self.changed();
        }
        Ok(())
    }

    /// What heal sees of the serving release's instances.
    pub(super) fn seen(&self, name: &str, release: &str, now_ms: u64) -> Result<Vec<Seen>, ServeError> {
        let q = &self.services[name].state.quarantined;
        let rt = self.runtime();
        Ok(self
            .all()?
            .into_iter()
            .filter(|r| r.service == name && r.release.as_deref() == Some(release) && !r.stop_requested)
            .filter(|r| !q.contains_key(r.id.as_str()) && !self.retiring.contains_key(r.id.as_str()))
            .map(|r| {
                let exit = match r.state {
                    InstanceState::Exited { code, signal, .. } => {
                        let at = rt.exit_info(&r.id).map(|e| e.at_ms as u64).filter(|t| *t > 0).unwrap_or(now_ms);
                        Some((code, signal, at))
                    }
                    _ => None,
                };
                let started_ms = if r.started_ms > 0 { r.started_ms as u64 } else { r.created as u64 * 1000 };
                Seen {
                    id: r.id.to_string(),
                    started_ms,
                    exit,
                    health: self.prober.health(r.id.as_str()),
                    drift: self.drift.get(r.id.as_str()).cloned().unwrap_or_default(),
                    chaos: self.chaos.contains(r.id.as_str()),
                }
            })
            .collect())
    }

    /// Observe → decide ([`heal::decide`]) → act for the serving release:
    /// each action is recorded (history, then state) before it is done.
    pub(super) fn heal(
        &mut self,
        name: &str,
        stable: &ReleaseRef,
        replicas: u32,
        now_ms: u64,
    ) -> Result<(), ServeError> {
        let spec = self.services[name].spec.release.clone();
        let seen = self.seen(name, &stable.id, now_ms)?;
        let actions = heal::decide(&spec, replicas, &seen, &self.services[name].state.heal, now_ms);
        for action in actions {
            let mut started = Vec::new();
            match &action {
                HealAction::Replace { instance, cause, detail, .. } => {
                    let event =
                        Event::Replacing { instance: instance.clone(), cause: cause.clone(), detail: detail.clone() };
                    self.record(name, &stable.id, now_ms, &event)?;
                }
                HealAction::Replaced { old, replacement, took_ms, .. } => {
                    let event =
                        Event::Replaced { instance: old.clone(), replacement: replacement.clone(), took_ms: *took_ms };
                    self.record(name, &stable.id, now_ms, &event)?;
                }
                HealAction::Start { count } => {
                    for _ in 0..*count {
                        match self.start(name, stable, now_ms) {
                            Ok(r) => started.push(r.id.to_string()),
                            // A start that fails is a failure of its own; the
                            // next tick tries again (with the backoff).
                            Err(e) => {
                                eprintln!("kiln serve: {name}: starting a replacement: {e}");
                                break;
                            }
                        }
                    }
                }
                HealAction::Quarantine { .. } | HealAction::Stable => {}
            }
            let was_looping = self.services[name].state.heal.crash_looping(&spec);
            {
                let st = &mut self.services.get_mut(name).expect("known").state.heal;
                heal::apply(&spec, st, &action, &seen, &started);
            }
            let hs = self.services[name].state.heal.clone();
            if !was_looping && hs.crash_looping(&spec) {
                let backoff_ms = hs.backoff_until_ms(&spec).saturating_sub(now_ms);
                self.record(name, &stable.id, now_ms, &Event::CrashLoop { failures: hs.failures, backoff_ms })?;
            }
            if let HealAction::Replace { instance, .. } = &action {
                self.fill_exit_logs(name, instance);
            }
            self.save(name, now_ms)?;
            // The act, now that it is recorded.
            match action {
                HealAction::Replace { instance, cause, .. } => {
                    self.drift.remove(&instance);
                    let Some(r) = self.all()?.into_iter().find(|r| r.id.as_str() == instance) else {
                        self.chaos.remove(&instance);
                        continue;
                    };
                    // A chaos victim caught by its probes keeps its mark
                    // until its exit is seen, so that exit is no failure.
                    if r.state.is_exited() || cause != Cause::Chaos {
                        self.chaos.remove(&instance);
                    }
                    if r.state.is_exited() {
                        let _ = self.runtime().remove(&instance, true);
                        self.changed();
                    } else if matches!(cause, Cause::Unhealthy | Cause::Hung | Cause::NeverHealthy | Cause::Chaos) {
                        // Out at once: what it holds is cut (and retried elsewhere when safe).
                        self.retire(name, &r, 0, Then::Stop);
                    } else if cause == Cause::Drift {
                        self.set_aside_tampered_cache(&r, now_ms);
                    }
                }
                HealAction::Quarantine { instance, reason } => {
                    self.quarantine(name, &instance, &reason, "kiln", now_ms)?;
                }
                HealAction::Replaced { old, retire_old: true, .. } => {
                    if let Some(r) = self.all()?.into_iter().find(|r| r.id.as_str() == old) {
                        self.retire(name, &r, spec.drain_timeout_ms, Then::Stop);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Takes an instance out of traffic at once and freezes it for a
    /// post-mortem (recorded first); heal starts its replacement, since a
    /// quarantined instance counts against no capacity.
    pub(super) fn quarantine(
        &mut self,
        name: &str,
        instance: &str,
        reason: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<answer::Quarantined, ServeError> {
        let r = self.runtime().find(instance).map_err(|_| ServeError::UnknownInstance(instance.to_owned()))?;
        if r.service != name {
            return Err(ServeError::UnknownInstance(instance.to_owned()));
        }
        let id = r.id.to_string();
        if self.services[name].state.quarantined.contains_key(&id) {
            return Err(Conflict::Quarantined { instance: id }.into());
        }
        if r.state.is_exited() || r.stop_requested {
            return Err(Conflict::NothingToFreeze { instance: id, state: r.state.name().to_owned() }.into());
        }
        let release = r.release.clone().unwrap_or_default();
        self.record(
            name,
            &release,
            now_ms,
            &Event::Quarantined { instance: id.clone(), reason: reason.to_owned(), actor: actor.to_owned() },
        )?;
        let ttl = self.services[name].spec.release.heal.quarantine_ttl_ms;
        let dir = self.home.join("quarantine").join(&id);
        let q = Quarantine {
            release,
            reason: reason.to_owned(),
            actor: actor.to_owned(),
            at_ms: now_ms,
            until_ms: now_ms + ttl,
            dir: dir.clone(),
        };
        self.services.get_mut(name).expect("known").state.quarantined.insert(id.clone(), q);
        self.save(name, now_ms)?;
        // No new requests from now; those in flight get a short drain (a
        // frozen process would hold them until the backend timeout).
        let drain = self.services[name].spec.release.drain_timeout_ms.min(2000);
        self.retire(name, &r, drain, Then::Pause);
        self.changed();
        Ok(answer::Quarantined { service: name.to_owned(), instance: id, quarantined: true, dir })
    }

    /// Freezes a drained quarantined instance and copies what it changed.
    pub(super) fn freeze(&mut self, name: &str, id: &str, now_ms: u64) -> Result<(), ServeError> {
        let rt = self.runtime();
        let r = match rt.pause(id) {
            Ok(r) => r,
            // It exited meanwhile: there is still its record and logs to keep.
            Err(_) => rt.find(id)?,
        };
        let Some(q) = self.services[name].state.quarantined.get(id).cloned() else { return Ok(()) };
        match rt.keep_for_postmortem(&r, &q.dir) {
            Ok(kept) => {
                let meta = serde_json::json!({ "quarantine": q, "kept": kept, "frozen_at_ms": now_ms });
                let _ =
                    std::fs::write(q.dir.join("quarantine.json"), serde_json::to_vec_pretty(&meta).unwrap_or_default());
            }
            Err(e) => eprintln!("kiln serve: quarantine of {id}: {e}"),
        }
        Ok(())
    }

    /// Destroys a quarantined instance and what was kept of it.
    pub(super) fn release_quarantine(
        &mut self,
        name: &str,
        id: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<(), ServeError> {
        let Some(q) = self.services[name].state.quarantined.get(id).cloned() else {
            return Err(Conflict::NotQuarantined { instance: id.to_owned() }.into());
        };
        self.record(
            name,
            &q.release,
            now_ms,
            &Event::Unquarantined { instance: id.to_owned(), actor: actor.to_owned() },
        )?;
        self.services.get_mut(name).expect("known").state.quarantined.remove(id);
        self.save(name, now_ms)?;
        self.retiring.remove(id);
        let _ = self.runtime().request_stop(id, false);
        let _ = std::fs::remove_dir_all(&q.dir);
        self.changed();
        Ok(())
    }

    /// A quarantine recorded but not carried out (the controller went
    /// between the two): its instance still runs and is not leaving, so it
    /// is drained and frozen now, as the request would have. Idempotent: a
    /// frozen or leaving instance is left alone.
    pub(super) fn finish_quarantines(&mut self, name: &str) -> Result<(), ServeError> {
        let q = &self.services[name].state.quarantined;
        if q.keys().all(|id| self.retiring.contains_key(id.as_str())) {
            return Ok(());
        }
        let pending: Vec<InstanceRecord> = self
            .all()?
            .into_iter()
            .filter(|r| r.service == name && r.state == InstanceState::Running && !r.stop_requested)
            .filter(|r| q.contains_key(r.id.as_str()) && !self.retiring.contains_key(r.id.as_str()))
            .collect();
        let drain = self.services[name].spec.release.drain_timeout_ms.min(2000);
        for r in &pending {
            self.retire(name, r, drain, Then::Pause);
        }
        Ok(())
    }

    pub(super) fn expire_quarantines(&mut self, name: &str, now_ms: u64) -> Result<(), ServeError> {
        let due: Vec<String> = self.services[name]
            .state
            .quarantined
            .iter()
            .filter(|(_, q)| now_ms >= q.until_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.release_quarantine(name, &id, "kiln (quarantine_ttl)", now_ms)?;
        }
        Ok(())
    }

    /// The last log lines of a failed instance, for `kiln status`.
    pub(super) fn fill_exit_logs(&mut self, name: &str, instance: &str) {
        let rt = self.runtime();
        if let Ok(r) = rt.find(instance) {
            let _ = rt.logs().ingest(
                &rt.log_meta(&r),
                &self.home.join("instances").join(instance),
                crate::serve::now_ms() as i64,
                false,
            );
        }
        let filter = crate::runtime::logs::LogFilter { instance: Some(instance.to_owned()), ..Default::default() };
        let lines: Vec<String> = rt.logs().query(&filter).unwrap_or_default().into_iter().map(|l| l.line).collect();
        let tail = lines[lines.len().saturating_sub(5)..].to_vec();
        let st = &mut self.services.get_mut(name).expect("known").state.heal;
        if let Some(n) = st.last_exits.iter_mut().rev().find(|n| n.instance == instance) {
            n.logs = tail;
        }
    }

    /// A drifted instance whose image cache was tampered with: the cache
    /// moves aside, so that its replacement unpacks the image afresh.
    pub(super) fn set_aside_tampered_cache(&self, r: &InstanceRecord, now_ms: u64) {
        use crate::runtime::images;
        if images::verify_cache(self.store, &r.image).is_err() {
            match images::set_aside(self.store, &r.image, now_ms) {
                Ok(p) => eprintln!("kiln serve: image cache of {} moved aside to {}", r.image, p.display()),
                Err(e) => eprintln!("kiln serve: {e}"),
            }
        }
    }

    /// Checks instances (of `only`, or all) for drift; the next heal acts
    /// on what was found. Returns each instance checked and what differs.
    pub(super) fn check_drift(&mut self, only: Option<&str>) -> Result<Vec<(String, String, Vec<String>)>, ServeError> {
        let mut out = Vec::new();
        let names: Vec<String> =
            self.services.keys().filter(|n| only.is_none_or(|o| o == n.as_str())).cloned().collect();
        for name in names {
            for r in self.live(&name)? {
                if self.retiring.contains_key(r.id.as_str()) || r.state != InstanceState::Running {
                    continue;
                }
                let d = self.runtime().drift(&r);
                if d.is_empty() {
                    self.drift.remove(r.id.as_str());
                } else {
                    self.drift.insert(r.id.to_string(), d.clone());
                }
                out.push((name.clone(), r.id.to_string(), d));
            }
        }
        Ok(out)
    }

    /// Chaos: SIGKILL one random healthy instance of the serving release,
    /// unless `max_share` of the replicas are down already.
    pub(super) fn kill(
        &mut self,
        name: &str,
        max_share: f64,
        actor: &str,
        now_ms: u64,
    ) -> Result<answer::Killed, ServeError> {
        let svc = self.service(name)?;
        let replicas = svc.spec.release.replicas;
        let Some(stable) = svc.state.stable.clone() else {
            return Err(Conflict::NotServing { service: name.to_owned() }.into());
        };
        let serving: Vec<InstanceRecord> = self
            .live(name)?
            .into_iter()
            .filter(|r| r.release.as_deref() == Some(stable.id.as_str()) && !self.retiring.contains_key(r.id.as_str()))
            .filter(|r| {
                let h = self.prober.health(r.id.as_str());
                h.fails == 0 && h.healthy_since_ms.is_some() && !self.chaos.contains(r.id.as_str())
            })
            .collect();
        let down = replicas.saturating_sub(serving.len() as u32);
        let allowed = ((max_share * f64::from(replicas)).floor() as u32).max(1);
        if down + 1 > allowed || serving.is_empty() {
            return Err(Conflict::MaxShare { service: name.to_owned(), down, replicas, max_share }.into());
        }
        let mut b = [0u8; 4];
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
        let victim = &serving[u32::from_le_bytes(b) as usize % serving.len()];
        self.chaos.insert(victim.id.to_string());
        self.runtime().kill(victim.id.as_str())?;
        self.changed();
        eprintln!("kiln serve: chaos ({actor}) killed {}", victim.id);
        Ok(answer::Killed { service: name.to_owned(), instance: victim.id.to_string(), killed_at_ms: now_ms })
    }
}
