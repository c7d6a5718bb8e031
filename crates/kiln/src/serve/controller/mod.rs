//! The release controller's acts: observe instances and the load
//! balancers, ask [`rollout::decide`] what to do, do it, record it.
//!
//! Every act is recorded before it is taken (a history event, then the
//! service's state in `state.db`) and is idempotent, because the decisions
//! name absolute targets: after a crash at any point the next controller
//! reads the state, observes what really runs, and the same decision
//! either finds the act done or does it. Instances a recorded release does
//! not own (a crash between starting and recording, a release that was
//! abandoned) are drained and removed. This module must never decide a
//! release's next step itself.
//!
//! Its parts: this file holds the controller, the tick, recording and
//! starting instances; `state` what is recorded per service; `retiring`
//! instances leaving and the traffic table; `releasing` the release acts;
//! `operator` a person's promote and abort; `healing` the healing acts;
//! `answers` the API's requests and views; `tests` the acts on a paused
//! clock with the fakes of every seam.

mod answers;
mod certs;
mod healing;
mod operator;
mod releasing;
mod retiring;
mod state;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::dataplane::{DataPlane, DataPlanes, ProxyProcesses};
use super::prober::{self, Probe, Prober};
use super::{api::Request, Conflict, ServeError};
use crate::digest::Digest;
use crate::heal::{self, Cause, HealAction, HealState, Seen};
use crate::image::store::Store;
use crate::proxy::TableEntry;
use crate::release::plan::{self, Current, Step};
use crate::release::rollout::{self, Action, Observed, Rollout};
use crate::runtime::driver::Driver;
use crate::runtime::{InstanceRecord, InstanceState, Launcher, RunRequest, Runtime};
use crate::serve::history::{Event, History, Outcome};
use crate::spec::{self, BlueGreenSpec, CanaryStep, ServiceSpec, SmokeCheck, Strategy};
pub use state::*;

/// How a release begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Deploy,
    /// A fast release of an archived digest: new instances first, no analysis.
    Rollback,
    /// A canary of the stable digest made to fail, judged over `window_ms`.
    Drill {
        window_ms: u64,
    },
}

/// The release settings a drill runs with: the service's own, as a canary
/// of its first step's share (10% when it is not a canary service), judged
/// by its analysis over `window_ms`, then a pause it never passes.
fn drill_spec(r: &spec::ReleaseSpec, window_ms: u64) -> spec::ReleaseSpec {
    let mut r = r.clone();
    let (weight, analysis) = match &r.strategy {
        Strategy::Canary(c) => (
            c.steps.iter().find_map(|s| match s {
                CanaryStep::Weight(w) if *w < 100 => Some(*w),
                _ => None,
            }),
            c.analysis.clone(),
        ),
        _ => (None, spec::release::AnalysisSpec::default()),
    };
    let steps = vec![CanaryStep::Weight(weight.unwrap_or(10)), CanaryStep::Pause(None), CanaryStep::Weight(100)];
    r.strategy = Strategy::Canary(spec::release::CanarySpec { steps, step_interval_ms: window_ms, analysis });
    r
}

/// The status a drill's canary is made to answer (at the load balancer).
pub const DRILL_FAULT: u16 = 503;

struct Svc {
    spec: ServiceSpec,
    /// Its load balancer; none once the service is down.
    dp: Option<Arc<dyn DataPlane>>,
    state: ServiceState,
    /// The table last sent to the proxy.
    sent: Option<Vec<TableEntry>>,
}

/// Test hooks: `KILN_CRASH_AT=<point>` kills the controller (SIGKILL) the
/// first time it reaches that point, to prove recovery from each one.
pub const CRASH_POINTS: &[&str] = &[
    "release-recorded",
    "instances-started",
    "step-recorded",
    "traffic-routed",
    "verdict-recorded",
    "old-drained",
    "finished-recorded",
];

pub(super) use crate::sys::faults::crash_point;

/// What happens to an instance once its drain at the load balancer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Stop,
    Pause,
}

/// An instance being drained (in a background thread, so that a long
/// drain never holds up the loop).
#[derive(Debug)]
struct Retiring {
    service: String,
    done: Arc<AtomicBool>,
    then: Then,
}

/// The controller: services, their load balancers, state and history.
pub struct Controller<'a> {
    home: PathBuf,
    file: PathBuf,
    store: &'a Store,
    driver: &'a dyn Driver,
    launcher: &'a dyn Launcher,
    history: History,
    services: BTreeMap<String, Svc>,
    /// The load balancers (one `kiln proxy` per service; a fake in tests).
    planes: Box<dyn DataPlanes + 'a>,
    /// The health checks of every instance (a fake in tests).
    prober: Box<dyn Probe + 'a>,
    /// When the controller first saw each stopping instance (for SIGKILL
    /// after its grace period).
    stopping: HashMap<String, u64>,
    retiring: HashMap<String, Retiring>,
    /// Instances `kiln chaos` killed (their exits are not failures).
    chaos: HashSet<String>,
    /// The last drift found per instance, and when each service is checked next.
    drift: HashMap<String, Vec<String>>,
    next_drift_ms: HashMap<String, u64>,
    /// Instances as observed this tick (cleared by every act on them).
    observed: RefCell<Option<Vec<InstanceRecord>>>,
    /// Counters for `/metrics`, fed by [`Controller::record`].
    counters: super::metrics::Counters,
    /// Webhook deliveries (`[[notify]]`), also fed by [`Controller::record`].
    notifier: crate::observe::notify::Notifier,
    hooks: Vec<crate::observe::notify::NotifySpec>,
    /// The live event stream (`/v1/events`), fed by [`Controller::record`]
    /// and by what each tick sees change.
    events: std::sync::Arc<super::events::Bus>,
    /// `[syslog]`: the thread shipping instance logs, if configured.
    shipper: Option<crate::observe::ship::Shipper>,
    /// Each instance's health as last published.
    health_seen: HashMap<String, &'static str>,
    /// When each service's analysis was last sampled for the stream.
    sampled_ms: HashMap<String, u64>,
    /// Services whose last reconcile failed, by name.
    failing: BTreeMap<String, Failing>,
    /// The last certificate-expiry warning of each service: `(not_after, at)`
    /// in Unix seconds; and when the files were last looked at.
    cert_warned: BTreeMap<String, (i64, i64)>,
    certs_checked_ms: Option<u64>,
    /// Certificates being obtained by ACME, and each service's retries.
    acme: BTreeMap<String, certs::Acme>,
}

impl std::fmt::Debug for Controller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("home", &self.home).field("file", &self.file).finish_non_exhaustive()
    }
}

/// One point of the dashboard's analysis charts: the canary's and
/// stable's error rate and p99 over the step's window, with the limits the
/// analysis holds them to.
fn analysis_sample(
    service: &str,
    r: &rollout::Rollout,
    spec: &crate::spec::ReleaseSpec,
    obs: &Observed,
    now_ms: u64,
) -> serde_json::Value {
    let a = match &spec.strategy {
        crate::spec::Strategy::Canary(c) => c.analysis.clone(),
        _ => Default::default(),
    };
    let side = |w: &Option<crate::proxy::metrics::WindowStats>| {
        w.as_ref().map(|w| {
            serde_json::json!({
                "requests": w.requests,
                "error_rate": w.error_rate,
                "p99_ms": crate::release::analysis::quantile_ms(&w.histogram, 0.99),
            })
        })
    };
    serde_json::json!({
        "service": service,
        "release": r.release,
        "stable_release": r.stable,
        "step": r.index + 1,
        "percent": r.new_percent,
        "at_ms": now_ms,
        "canary": side(&obs.canary),
        "stable": side(&obs.stable),
        "max_error_rate": a.max_error_rate,
        "max_p99_ratio": a.max_p99_ratio,
        "min_p99_increase_ms": a.min_p99_increase_ms,
    })
}

fn addr(r: &InstanceRecord) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], r.port))
}

impl<'a> Controller<'a> {
    /// Loads kiln.toml and the recorded state, and adopts (or starts) the
    /// load balancer of every service that has a `listen` address.
    pub fn new(
        home: &Path,
        file: &Path,
        store: &'a Store,
        driver: &'a dyn Driver,
        launcher: &'a dyn Launcher,
    ) -> Result<Self, ServeError> {
        let planes = Box::new(ProxyProcesses::new(home));
        Self::with_seams(home, file, store, driver, launcher, planes, Box::new(Prober::default()))
    }

    /// [`Controller::new`] with the load balancers and the health checks
    /// given: the real ones, or the fakes beside them
    /// ([`super::dataplane::RecordingDataPlanes`], [`super::prober::FixedProber`]).
    pub fn with_seams(
        home: &Path,
        file: &Path,
        store: &'a Store,
        driver: &'a dyn Driver,
        launcher: &'a dyn Launcher,
        planes: Box<dyn DataPlanes + 'a>,
        prober: Box<dyn Probe + 'a>,
    ) -> Result<Self, ServeError> {
        let history = History::open(&History::path_in(home))?;
        let mut c = Controller {
            home: home.to_owned(),
            file: file.to_owned(),
            store,
            driver,
            launcher,
            history,
            services: BTreeMap::new(),
            planes,
            prober,
            stopping: HashMap::new(),
            retiring: HashMap::new(),
            chaos: HashSet::new(),
            drift: HashMap::new(),
            next_drift_ms: HashMap::new(),
            observed: RefCell::new(None),
            counters: Default::default(),
            notifier: crate::observe::notify::Notifier::start(home)
                .map_err(|source| ServeError::Io { path: home.join("notify"), source })?,
            hooks: Vec::new(),
            events: Default::default(),
            health_seen: HashMap::new(),
            shipper: None,
            sampled_ms: HashMap::new(),
            failing: BTreeMap::new(),
            cert_warned: BTreeMap::new(),
            certs_checked_ms: None,
            acme: BTreeMap::new(),
        };
        c.load_services()?;
        Ok(c)
    }

    /// (Re-)reads kiln.toml: new services get a load balancer, changed
    /// settings apply from the next release on.
    fn load_services(&mut self) -> Result<(), ServeError> {
        let f = spec::load(&self.file)?;
        self.hooks = f.notify;
        // A changed [syslog] replaces the shipper (the old one stops).
        if self.shipper.as_ref().map(|s| &s.spec) != f.syslog.as_ref() {
            self.shipper = f.syslog.map(|s| crate::observe::ship::Shipper::start(&self.home, s));
        }
        // Each service on its own: one whose new listener cannot be bound
        // keeps its running one and its old settings, and the others still
        // take their changes; the first error is the answer.
        let mut first_err = None;
        for (name, s) in f.services {
            if s.release.listen.is_none() {
                continue;
            }
            if let Some(svc) = self.services.get_mut(&name) {
                if svc.dp.is_some() && (svc.spec.release.listen != s.release.listen || svc.spec.edge != s.edge) {
                    match self.planes.ensure(&s) {
                        Ok(dp) => {
                            svc.dp = Some(dp);
                            svc.sent = None;
                        }
                        Err(e) => {
                            first_err.get_or_insert(e);
                            continue;
                        }
                    }
                }
                svc.spec = s;
                continue;
            }
            let state: ServiceState = match self.history.load_service(&name)? {
                Some(json) => serde_json::from_str(&json).unwrap_or_default(),
                None => ServiceState::default(),
            };
            // A service that was taken down gets no load balancer until
            // it is deployed again.
            let dp = match state.down.as_ref().is_some_and(|d| d.done) {
                true => None,
                false => match self.planes.ensure(&s) {
                    Ok(dp) => Some(dp),
                    Err(e) => {
                        first_err.get_or_insert(e);
                        continue;
                    }
                },
            };
            self.services.insert(name, Svc { spec: s, dp, state, sent: None });
        }
        first_err.map_or(Ok(()), Err)
    }

    fn save(&mut self, name: &str, now_ms: u64) -> Result<(), ServeError> {
        let json = serde_json::to_string(&self.services[name].state).expect("state serializes");
        self.history.save_service(name, &json, now_ms as i64)?;
        Ok(())
    }

    /// Whether `release`'s last history entry already says it finished (a
    /// controller that died after recording the end, before saving state).
    fn finished_already(&self, service: &str, release: &str) -> Result<bool, ServeError> {
        let entries = self.history.entries(Some(service))?;
        Ok(entries
            .iter()
            .rev()
            .find(|e| e.release == release)
            .is_some_and(|e| matches!(e.event, Event::Finished { .. })))
    }

    /// The event stream, for the API threads.
    pub fn events(&self) -> std::sync::Arc<super::events::Bus> {
        self.events.clone()
    }

    fn record(&mut self, service: &str, release: &str, now_ms: u64, event: &Event) -> Result<(), ServeError> {
        let entry = self.history.append(service, release, now_ms as i64, event)?;
        self.counters.observe(service, release, event);
        self.events.publish(event.kind(), &serde_json::to_value(&entry).expect("entries serialize"));
        // Queued on disk (the worker thread sends it), after the history
        // has it: an alert is never about something not recorded.
        self.notifier
            .alert(&self.hooks, service, release, now_ms, event)
            .map_err(|source| ServeError::Io { path: self.home.join("notify"), source })?;
        Ok(())
    }

    fn runtime(&self) -> Runtime<'a> {
        Runtime::new(self.store, self.driver)
    }

    /// Every instance, observed once per tick (adopted through their shims).
    fn all(&self) -> Result<Vec<InstanceRecord>, ServeError> {
        if let Some(all) = self.observed.borrow().as_ref() {
            return Ok(all.clone());
        }
        let (all, _) = self.runtime().observe_all()?;
        *self.observed.borrow_mut() = Some(all.clone());
        Ok(all)
    }

    /// After an act on instances, the next question observes again.
    fn changed(&self) {
        *self.observed.borrow_mut() = None;
    }

    /// Live instances of `service`: not exited, not asked to stop, not
    /// quarantined.
    fn live(&self, service: &str) -> Result<Vec<InstanceRecord>, ServeError> {
        let q = &self.services[service].state.quarantined;
        Ok(self
            .all()?
            .into_iter()
            .filter(|r| r.service == service && !r.state.is_exited() && !r.stop_requested)
            .filter(|r| !q.contains_key(r.id.as_str()))
            .collect())
    }

    /// Starts one instance of `release`.
    fn start(&mut self, name: &str, release: &ReleaseRef, now_ms: u64) -> Result<InstanceRecord, ServeError> {
        let spec = &self.services[name].spec;
        self.admit(spec, &release.digest)?;
        let flags = RunRequest {
            reference: release.digest.to_string(),
            release: Some(release.id.clone()),
            release_fields: release.fields.clone(),
            ..RunRequest::default()
        };
        let req = RunRequest::for_service(spec, flags);
        let r = self.runtime().run(&req, self.launcher, (now_ms / 1000) as i64);
        self.changed();
        Ok(r?)
    }

    /// A service with a `channel` runs only digests promoted to it, with
    /// a signature that verifies: checked before every start.
    fn admit(&self, spec: &crate::spec::ServiceSpec, digest: &Digest) -> Result<(), ServeError> {
        match &spec.channel {
            Some(rule) => crate::verify::promote::admit(self.store, rule, digest)
                .map_err(|e| ServeError::Refused { service: spec.name.clone(), source: Box::new(e) }),
            None => Ok(()),
        }
    }

    /// Replaces every service's load balancer with one of this kiln
    /// binary, each taking its predecessor's listeners over (see
    /// [`DataPlanes::hand_over`]). One that cannot be handed over keeps
    /// serving as it is; that is reported, not fatal.
    pub fn hand_over_data_planes(&mut self) -> Vec<(String, Result<i32, ServeError>)> {
        let mut out = Vec::new();
        for (name, svc) in self.services.iter_mut() {
            if svc.dp.is_none() {
                continue;
            }
            let result = self.planes.hand_over(&svc.spec).map(|dp| {
                let pid = dp.pid().unwrap_or(0);
                svc.dp = Some(dp);
                svc.sent = None;
                pid
            });
            out.push((name.clone(), result));
        }
        out
    }

    /// Adopts each service's load balancer afresh from its record (after an
    /// upgrade that failed part-way, a successor may have replaced some).
    pub fn reload_data_planes(&mut self) -> Result<(), ServeError> {
        for svc in self.services.values_mut().filter(|s| s.dp.is_some()) {
            svc.dp = Some(self.planes.ensure(&svc.spec)?);
            svc.sent = None;
        }
        Ok(())
    }

    /// One reconcile pass over every service.
    pub fn tick(&mut self, now_ms: u64) -> Result<(), ServeError> {
        let started = std::time::Instant::now();
        // Each tick observes afresh.
        self.changed();
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            // Each service on its own: one that fails is reported and
            // retried with backoff; it never stops the others.
            if self.failing.get(&name).is_some_and(|f| now_ms < f.next_ms) {
                continue;
            }
            match self.tick_service(&name, now_ms) {
                Ok(()) => self.recovered(&name, now_ms),
                Err(e) => self.reconcile_failed(&name, &e, now_ms),
            }
        }
        self.check_certificates(now_ms);
        self.tick_acme(now_ms);
        self.counters.reconciled(started.elapsed().as_secs_f64());
        self.publish_health(now_ms)?;
        Ok(())
    }

    fn tick_service(&mut self, name: &str, now_ms: u64) -> Result<(), ServeError> {
        if self.services[name].state.down.is_some() {
            return self.tick_down(name, now_ms);
        }
        let svc = self.services.get_mut(name).expect("known service");
        match &svc.dp {
            Some(dp) if dp.is_alive() => {}
            dead => {
                // The load balancer died (killed, OOM): a new one starts from
                // the last table on disk, and the next sync sends the current one.
                if let Some(dp) = dead {
                    eprintln!(
                        "kiln serve: the load balancer of {name} (pid {}) is gone; starting another",
                        dp.pid().unwrap_or(0)
                    );
                }
                svc.dp = Some(self.planes.ensure(&svc.spec)?);
                svc.sent = None;
            }
        }
        self.finish_retiring(name, now_ms)?;
        let live = self.live(name)?;
        let st = self.services[name].state.clone();
        let known: HashSet<&str> = st
            .stable
            .iter()
            .map(|s| s.id.as_str())
            .chain(st.previous.iter().map(|(p, _)| p.id.as_str()))
            .chain(st.rollout.iter().map(|a| a.rollout.release.as_str()))
            .collect();
        // Instances of releases no record owns: left by a crash, or by a
        // release that was abandoned. Manual `kiln run`s (no release) stay.
        let drain_ms = self.services[name].spec.release.drain_timeout_ms;
        for r in live.iter().filter(|r| r.release.as_deref().is_some_and(|id| !known.contains(id))) {
            self.retire(name, r, drain_ms, Then::Stop);
        }
        // The previous release, once its warm time is over.
        if let Some((p, until)) = &st.previous {
            if now_ms >= *until {
                for r in live.iter().filter(|r| r.release.as_deref() == Some(p.id.as_str())) {
                    self.retire(name, r, drain_ms, Then::Stop);
                }
                crash_point("old-drained");
                self.services.get_mut(name).expect("known").state.previous = None;
                self.save(name, now_ms)?;
            }
        }
        // Health checks of every instance, in the background.
        let health = self.services[name].spec.release.health.clone();
        let targets: Vec<(String, SocketAddr)> = live
            .iter()
            .filter(|r| !self.retiring.contains_key(r.id.as_str()))
            .map(|r| (r.id.to_string(), addr(r)))
            .collect();
        self.prober.tick(name, &targets, &health, now_ms);
        self.finish_quarantines(name)?;
        self.expire_quarantines(name, now_ms)?;
        if let Some(every) = self.services[name].spec.release.heal.drift_interval_ms {
            let due = self.next_drift_ms.entry(name.to_owned()).or_insert(now_ms + every);
            if now_ms >= *due {
                *due = now_ms + every;
                self.check_drift(Some(name))?;
            }
        }
        match st.rollout {
            Some(a) => {
                let a = self.new_release_failures(name, a, now_ms)?;
                if let Some(stable) = &st.stable {
                    match self.services[name].spec.release.strategy {
                        // The stable set stays whole until the end.
                        Strategy::Canary(_) | Strategy::BlueGreen(_) => {
                            let replicas = self.services[name].spec.release.replicas;
                            self.heal(name, stable, replicas, now_ms)?;
                        }
                        // The rollout sizes the old set itself.
                        Strategy::Rolling(_) | Strategy::Recreate => self.remove_exited(name, &stable.id, now_ms)?,
                    }
                }
                self.step(name, a, now_ms)?
            }
            None => {
                if let Some(stable) = &st.stable {
                    let replicas = self.services[name].spec.release.replicas;
                    self.heal(name, stable, replicas, now_ms)?;
                }
            }
        }
        self.reap(name, now_ms)?;
        self.sync(name, false)
    }

    /// Records a failed reconcile of `name` and when to try again; the
    /// first failure of a run is a history event (and an alert).
    fn reconcile_failed(&mut self, name: &str, e: &ServeError, now_ms: u64) {
        self.counters.reconcile_failed(name);
        let error = e.to_string();
        let f = self.failing.entry(name.to_owned()).or_insert(Failing {
            error: error.clone(),
            since_ms: now_ms,
            attempts: 0,
            next_ms: now_ms,
        });
        f.attempts += 1;
        f.error = error.clone();
        let retry_ms = heal::reconcile_backoff_ms(f.attempts);
        f.next_ms = now_ms + retry_ms;
        let first = f.attempts == 1;
        eprintln!("kiln serve: service {name}: {error} (attempt {}, next in {retry_ms} ms)", f.attempts);
        if first {
            let release = self.release_of(name);
            if let Err(e) = self.record(name, &release, now_ms, &Event::Failing { error, retry_ms }) {
                eprintln!("kiln serve: service {name}: cannot record the failure: {e}");
            }
        }
    }

    /// A service that was failing reconciled: recorded once.
    fn recovered(&mut self, name: &str, now_ms: u64) {
        if let Some(f) = self.failing.remove(name) {
            let release = self.release_of(name);
            let event = Event::Recovered { failed_ms: now_ms.saturating_sub(f.since_ms), attempts: f.attempts };
            if let Err(e) = self.record(name, &release, now_ms, &event) {
                eprintln!("kiln serve: service {name}: cannot record the recovery: {e}");
            }
        }
    }

    /// The service's release fields as kiln.toml and the secret store have
    /// them now.
    fn release_fields(&self, name: &str) -> BTreeMap<String, String> {
        let spec = &self.services[name].spec;
        let secrets = crate::secrets::Secrets::new(&self.home);
        let versions =
            spec.secrets.iter().filter_map(|s| secrets.version(&s.name).ok().map(|v| (s.name.clone(), v))).collect();
        spec.release_fields(&versions)
    }

    /// The release a service-wide event is recorded under: the stable one.
    fn release_of(&self, name: &str) -> String {
        self.services[name].state.stable.as_ref().map(|s| s.id.clone()).unwrap_or_default()
    }

    /// The load balancer of a service that has one.
    fn dp(&self, name: &str) -> Result<&Arc<dyn DataPlane>, ServeError> {
        self.services[name].dp.as_ref().ok_or_else(|| ServeError::NoListen(name.to_owned()))
    }

    fn service(&self, name: &str) -> Result<&Svc, ServeError> {
        self.services.get(name).ok_or_else(|| ServeError::UnknownService(name.to_owned()))
    }
}
