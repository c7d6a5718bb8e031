//! The controller's answers: each API request carried out, and the views
//! it is asked for (status, inspect, metrics, diff, history, logs, health
//! changes on the event stream). Apart from `handle` dispatching to the
//! acts, this part only reads.

use super::*;
use crate::serve::answer::{self, Answer};

impl<'a> Controller<'a> {
    /// Publishes each instance whose health changed since the last tick
    /// (and each that is gone).
    pub(super) fn publish_health(&mut self, now_ms: u64) -> Result<(), ServeError> {
        let threshold = |svc: &str| self.services.get(svc).map_or(1, |s| s.spec.release.health.healthy_threshold);
        let mut now: HashMap<String, (&'static str, String, String)> = HashMap::new();
        for r in self.all()?.iter().filter(|r| !r.state.is_exited() && self.services.contains_key(&r.service)) {
            let h = self.prober.health(r.id.as_str());
            let state = if self.services[&r.service].state.quarantined.contains_key(r.id.as_str()) {
                "quarantined"
            } else if h.fails > 0 {
                "unhealthy"
            } else if h.passes >= threshold(&r.service) {
                "healthy"
            } else {
                "starting"
            };
            now.insert(r.id.to_string(), (state, r.service.clone(), r.release.clone().unwrap_or_default()));
        }
        for (id, (state, service, release)) in &now {
            if self.health_seen.get(id) != Some(state) {
                self.health_seen.insert(id.clone(), state);
                let data = serde_json::json!({ "instance": id, "service": service, "release": release, "health": state, "at_ms": now_ms });
                self.events.publish("health", &data);
            }
        }
        let gone: Vec<String> = self.health_seen.keys().filter(|id| !now.contains_key(*id)).cloned().collect();
        for id in gone {
            self.health_seen.remove(&id);
            self.events.publish("health", &serde_json::json!({ "instance": id, "health": "gone", "at_ms": now_ms }));
        }
        Ok(())
    }

    /// `/metrics`: the counters, with gauges read now.
    pub(super) fn metrics(&self) -> Result<String, ServeError> {
        let mut g = crate::serve::metrics::Gauges::default();
        let all = self.all()?;
        for (name, svc) in &self.services {
            let (step, steps) = svc
                .state
                .rollout
                .as_ref()
                .map_or((0, 0), |a| (a.rollout.index as u32 + 1, a.rollout.steps.len() as u32));
            g.steps.push((name.clone(), step, steps));
            g.failing.push((name.clone(), self.failing.contains_key(name)));
            for e in svc.sent.iter().flatten() {
                g.weights.push((name.clone(), e.release.clone(), e.weight));
            }
            let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
            for r in all.iter().filter(|r| r.service == *name) {
                *by_state.entry(r.state.name()).or_default() += 1;
            }
            g.instances.extend(by_state.into_iter().map(|(s, n)| (name.clone(), s.to_owned(), n)));
        }
        Ok(crate::serve::metrics::render(&self.counters, &g))
    }

    /// Carries out one API request.
    pub fn handle(&mut self, req: Request, now_ms: u64) -> Result<Answer, ServeError> {
        self.changed();
        match req {
            Request::Deploy { service, image, file, actor } => {
                if let Some(given) = file {
                    let same = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
                    if same(&given) != same(&self.file) {
                        let running = same(&self.file);
                        return Err(ServeError::OtherFile { service, running, given });
                    }
                }
                self.load_services()?;
                let svc = self.service(&service)?;
                let reference = image.unwrap_or_else(|| svc.spec.image.clone());
                let (desc, _) = self.store.resolve(&reference).map_err(|e| match e {
                    crate::image::store::StoreError::NotFound(_) => {
                        ServeError::UnknownImage { service: service.clone(), reference: reference.clone() }
                    }
                    other => other.into(),
                })?;
                self.admit(&svc.spec, &desc.digest)?;
                self.bring_back(&service, now_ms)?;
                self.begin(&service, desc.digest, reference, &actor, Mode::Deploy, now_ms).map(Answer::Release)
            }
            Request::Metrics => Ok(Answer::Metrics(self.metrics()?)),
            Request::Status { service } => {
                if let Some(s) = &service {
                    self.service(s)?;
                }
                self.status(service.as_deref(), now_ms).map(Answer::Status)
            }
            Request::Promote { service, .. } => self.promote(&service, now_ms).map(Answer::Promote),
            Request::Abort { service, actor } => self.abort(&service, &actor, now_ms).map(Answer::Abort),
            Request::Rollback { service, to, actor } => {
                self.rollback(&service, to.as_deref(), &actor, now_ms).map(Answer::Release)
            }
            Request::Down { service, purge, actor } => self.down(&service, purge, &actor, now_ms).map(Answer::Down),
            Request::Quarantine { instance, reason, actor } => {
                let r = self.instance(&instance)?;
                let reason = reason.unwrap_or_else(|| format!("quarantined by {actor}"));
                self.quarantine(&r.service, r.id.as_str(), &reason, &actor, now_ms).map(Answer::Quarantine)
            }
            Request::ReleaseQuarantine { instance, actor } => {
                let r = self.instance(&instance)?;
                self.release_quarantine(&r.service, r.id.as_str(), &actor, now_ms)?;
                Ok(Answer::ReleaseQuarantine(answer::Unquarantined {
                    service: r.service,
                    instance: r.id.to_string(),
                    destroyed: true,
                }))
            }
            Request::Inspect { instance } => self.inspect(&instance, now_ms).map(|v| Answer::Inspect(Box::new(v))),
            Request::VerifyInstances { service } => {
                if let Some(s) = &service {
                    self.service(s)?;
                }
                let found = self.check_drift(service.as_deref())?;
                let instances = found
                    .into_iter()
                    .map(|(service, instance, drift)| answer::Drift { service, instance, drift })
                    .collect();
                Ok(Answer::VerifyInstances(answer::Drifts { instances }))
            }
            Request::Kill { service, max_share, actor } => {
                self.kill(&service, max_share, &actor, now_ms).map(Answer::Kill)
            }
            Request::Drill { service, window_ms, actor } => {
                self.drill(&service, window_ms, &actor, now_ms).map(Answer::Release)
            }
            Request::History { service, verify } => {
                if let Some(s) = &service {
                    self.service(s)?;
                }
                let entries = self.history.entries(service.as_deref())?;
                let verified = verify.then(|| match self.history.verify() {
                    Ok(n) => answer::Verified { ok: true, entries: Some(n), error: None },
                    Err(e) => answer::Verified { ok: false, entries: None, error: Some(e.to_string()) },
                });
                Ok(Answer::History(answer::HistoryAnswer { entries, verified }))
            }
            Request::Diff { service, from, to } => {
                self.service(&service)?;
                let (a, b) = (self.release_side(&service, &from)?, self.release_side(&service, &to)?);
                Ok(Answer::Diff(crate::release::diff::diff(&a, &b)))
            }
            Request::Logs { filter, limit } => {
                if let Some(s) = &filter.service {
                    self.service(s)?;
                }
                let logs = self.runtime().logs();
                let lines =
                    logs.query(&filter).map_err(|source| ServeError::Io { path: self.home.join("logs"), source })?;
                let skip = lines.len().saturating_sub(limit);
                Ok(Answer::Logs(answer::Logs { lines: lines[skip..].to_vec() }))
            }
        }
    }

    /// A release as [`crate::release::diff`] compares it: from its
    /// `started` entry, and its image's config if the store still has it.
    pub(super) fn release_side(&self, service: &str, release: &str) -> Result<crate::release::diff::Side, ServeError> {
        let started = self.history.entries(Some(service))?.into_iter().find_map(|e| match e.event {
            Event::Started { digest, tags, revision, .. } if e.release == release => Some((digest, tags, revision)),
            _ => None,
        });
        let Some((digest, tags, revision)) = started else {
            return Err(ServeError::UnknownRelease { service: service.to_owned(), release: release.to_owned() });
        };
        let image = crate::digest::Digest::parse(&digest).ok().and_then(|d| {
            let m: crate::oci::Manifest = self.store.read_json(&d).ok()?;
            let c: crate::oci::ImageConfig = self.store.read_json(&m.config.digest).ok()?;
            Some((c.config, m.layers.iter().map(|l| l.digest.to_string()).collect()))
        });
        let (config, layers) = image.map_or((None, Vec::new()), |(c, l)| (Some(c), l));
        Ok(crate::release::diff::Side { release: release.to_owned(), digest, revision, tags, config, layers })
    }

    /// An instance of a service this controller manages.
    pub(super) fn instance(&self, reference: &str) -> Result<InstanceRecord, ServeError> {
        let unknown = || ServeError::UnknownInstance(reference.to_owned());
        let r = self.runtime().find(reference).map_err(|_| unknown())?;
        if !self.services.contains_key(&r.service) {
            return Err(unknown());
        }
        Ok(r)
    }

    pub(super) fn inspect(&self, reference: &str, now_ms: u64) -> Result<answer::InstanceView, ServeError> {
        let mut r = self.instance(reference)?;
        let rt = self.runtime();
        rt.observe(&mut r)?;
        let svc = &self.services[&r.service];
        let started = if r.started_ms > 0 { r.started_ms as u64 } else { r.created as u64 * 1000 };
        Ok(answer::InstanceView {
            id: r.id.to_string(),
            service: r.service.clone(),
            release: r.release.clone(),
            digest: r.image.to_string(),
            image: r.image_ref.clone(),
            revision: r.revision.clone(),
            state: r.state.name().to_owned(),
            port: r.port,
            started_ms: started,
            age_s: now_ms.saturating_sub(started) / 1000,
            env: rt.env_names(&r),
            secrets: r.secrets.iter().map(|s| s.name.clone()).collect(),
            volumes: r.volumes.clone(),
            limits: r.limits,
            runc_root: crate::runtime::run_dir(&self.home).join("runc"),
            health: self.prober.health(r.id.as_str()),
            drift: self.drift.get(r.id.as_str()).cloned(),
            quarantine: svc.state.quarantined.get(r.id.as_str()).cloned(),
        })
    }

    pub(super) fn status(&self, only: Option<&str>, now_ms: u64) -> Result<answer::Status, ServeError> {
        let (all, _) = self.runtime().observe_all()?;
        let mut services = Vec::new();
        for (name, svc) in self.services.iter().filter(|(n, _)| only.is_none_or(|o| o == n.as_str())) {
            let table = svc.sent.clone().unwrap_or_default();
            let weight_of = |release: &str, a: SocketAddr| {
                table.iter().find(|e| e.release == release && e.backends.contains(&a)).map(|e| e.weight)
            };
            // Each routed instance's own share of the service's traffic:
            // its release's weight split over the release's backends.
            let share_of = |release: &str, a: SocketAddr| {
                let total: u32 = table.iter().map(|e| e.weight).sum();
                table.iter().find(|e| e.release == release && e.backends.contains(&a)).map(|e| {
                    let share = f64::from(e.weight) * 100.0 / f64::from(total.max(1)) / e.backends.len() as f64;
                    (share * 10.0).round() / 10.0
                })
            };
            let max_age = svc.spec.release.heal.max_age_ms;
            let instances = all
                .iter()
                .filter(|r| r.service == *name && !r.state.is_exited())
                .map(|r| {
                    let release = r.release.clone().unwrap_or_default();
                    let h = self.prober.health(r.id.as_str());
                    let started = if r.started_ms > 0 { r.started_ms as u64 } else { r.created as u64 * 1000 };
                    let recycle_in_s = max_age
                        .filter(|_| svc.state.stable.as_ref().is_some_and(|s| s.id == release))
                        .map(|m| (heal::recycle_at_ms(r.id.as_str(), started, m).saturating_sub(now_ms)) / 1000);
                    let retiring = self.retiring.contains_key(r.id.as_str());
                    answer::InstanceStatus {
                        health: answer::HealthView {
                            healthy: h.fails == 0 && h.healthy_since_ms.is_some(),
                            passes: h.passes,
                            fails: h.fails,
                            last_failure: h.last_failure,
                        },
                        quarantined: svc.state.quarantined.contains_key(r.id.as_str()),
                        draining: retiring,
                        leaving: retiring || r.stop_requested,
                        recycle_in_s,
                        drift: self.drift.get(r.id.as_str()).cloned(),
                        id: r.id.to_string(),
                        digest: r.image.to_string(),
                        revision: r.revision.clone(),
                        image: r.image_ref.clone(),
                        state: r.state.name().to_owned(),
                        port: r.port,
                        age_s: (now_ms / 1000) as i64 - r.created,
                        in_table: weight_of(&release, addr(r)).is_some(),
                        release_weight: weight_of(&release, addr(r)),
                        share_percent: share_of(&release, addr(r)),
                        secrets: r.secret_versions.clone(),
                        release,
                    }
                })
                .collect();
            let rollout = svc.state.rollout.as_ref().map(|a| {
                let r = &a.rollout;
                answer::RolloutView {
                    release: r.release.clone(),
                    digest: r.digest.to_string(),
                    image: r.image_ref.clone(),
                    step: r.index + 1,
                    steps: r.steps.len(),
                    current: r.steps.get(r.index).cloned(),
                    new_percent: r.new_percent,
                    paused: r.paused.clone(),
                    elapsed_ms: now_ms.saturating_sub(r.started_ms),
                }
            });
            let heal = &svc.state.heal;
            services.push(answer::ServiceStatus {
                service: name.clone(),
                listen: svc.dp.as_ref().map_or(svc.spec.release.listen, |d| Some(d.listen())).map(|l| l.to_string()),
                hosts: svc.spec.edge.hosts.clone(),
                tls: self.served_cert(name, &svc.spec).map(|cert| {
                    let not_after = crate::proxy::tls::not_after(&cert).ok();
                    answer::TlsStatus {
                        cert: cert.display().to_string(),
                        not_after: not_after.map(crate::time::rfc3339),
                        days_left: not_after.map(|n| (n - (now_ms / 1000) as i64).div_euclid(86_400)),
                    }
                }),
                proxy_pid: svc.dp.as_ref().and_then(|d| d.pid()),
                strategy: svc.spec.release.strategy.name().to_owned(),
                replicas: svc.spec.release.replicas,
                stable: svc.state.stable.clone(),
                previous: svc.state.previous.as_ref().map(|(p, until)| answer::Previous {
                    release: p.clone(),
                    warm_for_ms: until.saturating_sub(now_ms),
                }),
                rollout,
                last: svc.state.last.as_ref().map(|(id, o, reason)| answer::LastRelease {
                    release: id.clone(),
                    outcome: *o,
                    reason: reason.clone(),
                }),
                traffic: table.clone(),
                requests: svc.dp.as_ref().and_then(|d| d.totals().ok()),
                down: svc.state.down.clone(),
                instances,
                heal: answer::HealView {
                    failing: heal.crash_looping(&svc.spec.release),
                    failures_in_a_row: heal.failures,
                    next_start_in_ms: heal.backoff_until_ms(&svc.spec.release).saturating_sub(now_ms),
                    pending: heal.pending.clone(),
                    last_failures: heal.last_exits.clone(),
                },
                quarantined: svc.state.quarantined.clone(),
                reconcile: self.failing.get(name).cloned(),
            });
        }
        Ok(answer::Status { services })
    }
}
