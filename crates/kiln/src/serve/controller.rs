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

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::dataplane::DataPlane;
use super::prober::{self, Prober};
use super::{api::Request, ServeError};
use crate::digest::Digest;
use crate::heal::{self, Cause, HealAction, HealState, Seen};
use crate::history::{Event, History, Outcome};
use crate::proxy::ReleaseSpec as TableEntry;
use crate::release::plan::{self, Current, Step};
use crate::release::rollout::{self, Action, Observed, Rollout};
use crate::runtime::driver::Driver;
use crate::runtime::{InstanceRecord, InstanceState, Launcher, RunRequest, Runtime};
use crate::spec::{self, BlueGreenSpec, CanaryStep, ServiceSpec, SmokeCheck, Strategy};
use crate::store::Store;

/// A release that serves (or served).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub id: String,
    pub digest: Digest,
    pub image_ref: String,
}

/// What the controller records per service (in `state.db`, as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    pub stable: Option<ReleaseRef>,
    /// The release replaced last, kept warm until `warm_until_ms`.
    pub previous: Option<(ReleaseRef, u64)>,
    pub rollout: Option<Active>,
    /// The last release that ended: id, outcome, reason.
    pub last: Option<(String, Outcome, String)>,
    /// Replacements under way and the crash count of the stable release.
    #[serde(default)]
    pub heal: HealState,
    /// Frozen instances kept for a post-mortem, by id.
    #[serde(default)]
    pub quarantined: BTreeMap<String, Quarantine>,
}

/// Why and until when an instance is kept frozen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantine {
    pub release: String,
    pub reason: String,
    pub actor: String,
    pub at_ms: u64,
    pub until_ms: u64,
    /// Where its logs, tmpfs and volume contents were copied.
    pub dir: PathBuf,
}

/// A rollout and the old release's size when it began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Active {
    pub rollout: Rollout,
    pub old_at_start: u32,
    /// New instances that failed by themselves, and the last one's exit.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub last_failure: Option<String>,
    /// A rollback drill (`kiln chaos --drill canary`) with its analysis
    /// window: the load balancer injects [`DRILL_FAULT`] for this release,
    /// which must fail and roll back; it is never promoted.
    #[serde(default)]
    pub drill: Option<u64>,
}

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
    dp: DataPlane,
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

pub(super) use crate::faults::crash_point;

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
    prober: Prober,
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
    notifier: crate::notify::Notifier,
    hooks: Vec<crate::notify::NotifySpec>,
    /// The live event stream (`/v1/events`), fed by [`Controller::record`]
    /// and by what each tick sees change.
    events: std::sync::Arc<super::events::Bus>,
    /// `[syslog]`: the thread shipping instance logs, if configured.
    shipper: Option<crate::ship::Shipper>,
    /// Each instance's health as last published.
    health_seen: HashMap<String, &'static str>,
    /// When each service's analysis was last sampled for the stream.
    sampled_ms: HashMap<String, u64>,
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

/// One smoke check against one instance; `Err` says what was wrong.
fn smoke(addr: SocketAddr, c: &SmokeCheck) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let r = super::http::exchange(s, &c.method, &c.path, b"").map_err(|e| e.to_string())?;
    match c.judge(r.status, &r.body) {
        Some(why) => Err(format!("{} {}: {why}", c.method, c.path)),
        None => Ok(()),
    }
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
        let history = History::open(&History::path_in(home))?;
        let mut c = Controller {
            home: home.to_owned(),
            file: file.to_owned(),
            store,
            driver,
            launcher,
            history,
            services: BTreeMap::new(),
            prober: Prober::default(),
            stopping: HashMap::new(),
            retiring: HashMap::new(),
            chaos: HashSet::new(),
            drift: HashMap::new(),
            next_drift_ms: HashMap::new(),
            observed: RefCell::new(None),
            counters: Default::default(),
            notifier: crate::notify::Notifier::start(home)
                .map_err(|source| ServeError::Io { path: home.join("notify"), source })?,
            hooks: Vec::new(),
            events: Default::default(),
            health_seen: HashMap::new(),
            shipper: None,
            sampled_ms: HashMap::new(),
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
            self.shipper = f.syslog.map(|s| crate::ship::Shipper::start(&self.home, s));
        }
        for (name, s) in f.services {
            if s.release.listen.is_none() {
                continue;
            }
            if let Some(svc) = self.services.get_mut(&name) {
                if svc.spec.release.listen != s.release.listen {
                    svc.dp = DataPlane::ensure(&self.home, &s)?;
                    svc.sent = None;
                }
                svc.spec = s;
                continue;
            }
            let dp = DataPlane::ensure(&self.home, &s)?;
            let state = match self.history.load_service(&name)? {
                Some(json) => serde_json::from_str(&json).unwrap_or_default(),
                None => ServiceState::default(),
            };
            self.services.insert(name, Svc { spec: s, dp, state, sent: None });
        }
        Ok(())
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

    /// Drains an instance at the load balancer (it gets no new requests at
    /// once; those in flight have `deadline_ms`, then are cut, and an
    /// idempotent one that had no answer yet is retried elsewhere), in a
    /// background thread. Once drained it is asked to stop (or, in
    /// quarantine, frozen): see [`Controller::finish_retiring`]. Idempotent.
    fn retire(&mut self, name: &str, r: &InstanceRecord, deadline_ms: u64, then: Then) {
        if self.retiring.contains_key(r.id.as_str()) {
            return;
        }
        let dp = self.services[name].dp.clone();
        let done = Arc::new(AtomicBool::new(false));
        let (flag, a) = (done.clone(), addr(r));
        std::thread::spawn(move || {
            // A backend the proxy never knew (or retired already) has nothing to drain.
            let _ = dp.drain(a, deadline_ms);
            flag.store(true, Ordering::SeqCst);
        });
        self.retiring.insert(r.id.to_string(), Retiring { service: name.to_owned(), done, then });
    }

    /// Waits (up to `deadline`) for the drains in flight and carries out
    /// what follows them, so that a successor controller inherits no
    /// half-retired instance (`kiln serve --upgrade`).
    pub fn settle(&mut self, deadline: std::time::Instant, now_ms: impl Fn() -> u64) {
        while !self.retiring.is_empty() && std::time::Instant::now() < deadline {
            let names: Vec<String> = self.services.keys().cloned().collect();
            for name in names {
                if let Err(e) = self.finish_retiring(&name, now_ms()) {
                    eprintln!("kiln serve: {e}");
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Replaces every service's load balancer with one of this kiln
    /// binary, each taking its predecessor's listeners over (see
    /// [`DataPlane::hand_over`]). One that cannot be handed over keeps
    /// serving as it is; that is reported, not fatal.
    pub fn hand_over_data_planes(&mut self) -> Vec<(String, Result<i32, ServeError>)> {
        let mut out = Vec::new();
        for (name, svc) in self.services.iter_mut() {
            let result = svc.dp.hand_over(&self.home, &svc.spec).map(|dp| {
                svc.dp = dp;
                svc.sent = None;
                svc.dp.pid
            });
            out.push((name.clone(), result));
        }
        out
    }

    /// Adopts each service's load balancer afresh from its record (after an
    /// upgrade that failed part-way, a successor may have replaced some).
    pub fn reload_data_planes(&mut self) -> Result<(), ServeError> {
        for svc in self.services.values_mut() {
            svc.dp = DataPlane::ensure(&self.home, &svc.spec)?;
            svc.sent = None;
        }
        Ok(())
    }

    /// Stops (or freezes) the instances whose drain has ended.
    fn finish_retiring(&mut self, name: &str, now_ms: u64) -> Result<(), ServeError> {
        let done: Vec<(String, Then)> = self
            .retiring
            .iter()
            .filter(|(_, r)| r.service == name && r.done.load(Ordering::SeqCst))
            .map(|(id, r)| (id.clone(), r.then))
            .collect();
        for (id, then) in done {
            self.retiring.remove(&id);
            match then {
                Then::Stop => {
                    let _ = self.runtime().request_stop(&id, false);
                }
                Then::Pause => self.freeze(name, &id, now_ms)?,
            }
            self.changed();
        }
        Ok(())
    }

    /// Removes the service's instances that were asked to stop and have
    /// exited; kills those still running past their grace period.
    fn reap(&mut self, name: &str, now_ms: u64) -> Result<(), ServeError> {
        let all = self.all()?;
        let rt = self.runtime();
        for r in all.iter().filter(|r| r.service == name && r.stop_requested && r.release.is_some()) {
            if r.state.is_exited() {
                let _ = rt.remove(r.id.as_str(), true);
                self.stopping.remove(r.id.as_str());
                self.changed();
                continue;
            }
            let since = *self.stopping.entry(r.id.to_string()).or_insert(now_ms);
            if now_ms.saturating_sub(since) > r.stop_grace_secs * 1000 {
                let _ = rt.request_stop(r.id.as_str(), true);
            }
        }
        Ok(())
    }

    /// The routing table the state asks for, from what runs.
    fn table(&self, name: &str, live: &[InstanceRecord]) -> Vec<TableEntry> {
        let svc = &self.services[name];
        let st = &svc.state;
        let of = |id: &str, only_healthy: bool| -> Vec<SocketAddr> {
            let threshold = svc.spec.release.health.healthy_threshold;
            let mut v: Vec<SocketAddr> = live
                .iter()
                .filter(|r| r.release.as_deref() == Some(id))
                .filter(|r| !only_healthy || self.prober.health(r.id.as_str()).passes >= threshold)
                .map(addr)
                .collect();
            v.sort();
            v
        };
        let new_percent = st.rollout.as_ref().map_or(0, |a| a.rollout.new_percent);
        let mut t = Vec::new();
        if let Some(s) = &st.stable {
            let w = if st.rollout.is_some() { 100 - new_percent } else { 100 };
            t.push(TableEntry { release: s.id.clone(), weight: w, backends: of(&s.id, false), fault: None });
        }
        if let Some(a) = &st.rollout {
            if st.stable.as_ref().is_none_or(|s| s.id != a.rollout.release) {
                t.push(TableEntry {
                    release: a.rollout.release.clone(),
                    weight: new_percent,
                    backends: of(&a.rollout.release, true),
                    fault: a.drill.map(|_| DRILL_FAULT),
                });
            }
        }
        if let Some((p, _)) = &st.previous {
            if t.iter().all(|e| e.release != p.id) {
                t.push(TableEntry { release: p.id.clone(), weight: 0, backends: of(&p.id, false), fault: None });
            }
        }
        t
    }

    /// Sends the table to the proxy when it changed (or always, `force`).
    fn sync(&mut self, name: &str, force: bool) -> Result<(), ServeError> {
        let mut live = self.live(name)?;
        // A quarantined instance stays listed (draining: no new requests)
        // until its drain ends, so that the drain can cut what it holds.
        let q = &self.services[name].state.quarantined;
        live.extend(self.all()?.into_iter().filter(|r| {
            q.contains_key(r.id.as_str()) && self.retiring.contains_key(r.id.as_str()) && !r.state.is_exited()
        }));
        let t = self.table(name, &live);
        let svc = self.services.get_mut(name).expect("known service");
        if force || svc.sent.as_ref() != Some(&t) {
            svc.dp.set_table(&self.home, &t)?;
            svc.sent = Some(t);
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
            self.tick_service(&name, now_ms)?;
        }
        self.counters.reconciled(started.elapsed().as_secs_f64());
        self.publish_health(now_ms)?;
        Ok(())
    }

    /// Publishes each instance whose health changed since the last tick
    /// (and each that is gone).
    fn publish_health(&mut self, now_ms: u64) -> Result<(), ServeError> {
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
    fn metrics(&self) -> Result<String, ServeError> {
        let mut g = super::metrics::Gauges::default();
        let all = self.all()?;
        for (name, svc) in &self.services {
            let (step, steps) = svc
                .state
                .rollout
                .as_ref()
                .map_or((0, 0), |a| (a.rollout.index as u32 + 1, a.rollout.steps.len() as u32));
            g.steps.push((name.clone(), step, steps));
            for e in svc.sent.iter().flatten() {
                g.weights.push((name.clone(), e.release.clone(), e.weight));
            }
            let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
            for r in all.iter().filter(|r| r.service == *name) {
                *by_state.entry(r.state.name()).or_default() += 1;
            }
            g.instances.extend(by_state.into_iter().map(|(s, n)| (name.clone(), s.to_owned(), n)));
        }
        Ok(super::metrics::render(&self.counters, &g))
    }

    fn tick_service(&mut self, name: &str, now_ms: u64) -> Result<(), ServeError> {
        if !self.services[name].dp.is_alive() {
            // The load balancer died (killed, OOM): a new one starts from
            // the last table on disk, and the next sync sends the current one.
            let svc = self.services.get_mut(name).expect("known service");
            eprintln!("kiln serve: the load balancer of {name} (pid {}) is gone; starting another", svc.dp.pid);
            svc.dp = DataPlane::ensure(&self.home, &svc.spec)?;
            svc.sent = None;
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
        self.prober.tick(&targets, &health, now_ms);
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

    /// The instances of `release` that exited unasked (not quarantined).
    fn exited_unasked(&self, name: &str, release: &str) -> Result<Vec<InstanceRecord>, ServeError> {
        let q = &self.services[name].state.quarantined;
        Ok(self
            .all()?
            .into_iter()
            .filter(|r| r.service == name && r.release.as_deref() == Some(release))
            .filter(|r| r.state.is_exited() && !r.stop_requested && !q.contains_key(r.id.as_str()))
            .collect())
    }

    fn exit_detail(r: &InstanceRecord) -> String {
        match &r.state {
            InstanceState::Exited { reason, .. } => format!("{} {reason}", r.id),
            _ => r.id.to_string(),
        }
    }

    /// New instances that exited unasked during a release: each is an
    /// event and counts toward the release's crash loop (see
    /// [`rollout::decide`]); the rollout starts others in their place.
    fn new_release_failures(&mut self, name: &str, mut a: Active, now_ms: u64) -> Result<Active, ServeError> {
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
    fn remove_exited(&mut self, name: &str, release: &str, now_ms: u64) -> Result<(), ServeError> {
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
    fn seen(&self, name: &str, release: &str, now_ms: u64) -> Result<Vec<Seen>, ServeError> {
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
    fn heal(&mut self, name: &str, stable: &ReleaseRef, replicas: u32, now_ms: u64) -> Result<(), ServeError> {
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
    fn quarantine(
        &mut self,
        name: &str,
        instance: &str,
        reason: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<serde_json::Value, ServeError> {
        let r = self.runtime().find(instance).map_err(|_| ServeError::UnknownInstance(instance.to_owned()))?;
        if r.service != name {
            return Err(ServeError::UnknownInstance(instance.to_owned()));
        }
        let id = r.id.to_string();
        if self.services[name].state.quarantined.contains_key(&id) {
            return Err(ServeError::Conflict(format!("instance {id} is quarantined already")));
        }
        if r.state.is_exited() || r.stop_requested {
            return Err(ServeError::Conflict(format!(
                "instance {id} is {}; there is nothing to freeze",
                r.state.name()
            )));
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
        Ok(serde_json::json!({ "service": name, "instance": id, "quarantined": true, "dir": dir }))
    }

    /// Freezes a drained quarantined instance and copies what it changed.
    fn freeze(&mut self, name: &str, id: &str, now_ms: u64) -> Result<(), ServeError> {
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
    fn release_quarantine(&mut self, name: &str, id: &str, actor: &str, now_ms: u64) -> Result<(), ServeError> {
        let Some(q) = self.services[name].state.quarantined.get(id).cloned() else {
            return Err(ServeError::Conflict(format!("instance {id} is not quarantined")));
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

    fn expire_quarantines(&mut self, name: &str, now_ms: u64) -> Result<(), ServeError> {
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
    fn fill_exit_logs(&mut self, name: &str, instance: &str) {
        let rt = self.runtime();
        if let Ok(r) = rt.find(instance) {
            let _ = rt.logs().ingest(
                &rt.log_meta(&r),
                &self.home.join("instances").join(instance),
                super::now_ms() as i64,
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
    fn set_aside_tampered_cache(&self, r: &InstanceRecord, now_ms: u64) {
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
    fn check_drift(&mut self, only: Option<&str>) -> Result<Vec<(String, String, Vec<String>)>, ServeError> {
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

    /// Observe → decide → act for the release in progress.
    fn step(&mut self, name: &str, a: Active, now_ms: u64) -> Result<(), ServeError> {
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
            let dp = &self.services[name].dp;
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

    fn act(&mut self, name: &str, mut a: Active, action: Action, now_ms: u64) -> Result<(), ServeError> {
        let release = ReleaseRef {
            id: a.rollout.release.clone(),
            digest: a.rollout.digest.clone(),
            image_ref: a.rollout.image_ref.clone(),
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
    fn smoke_through_preview(
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
        let preview = DataPlane::preview(&self.home, spec, &table)?;
        // The preview's own health checks admit the backends first.
        let deadline = std::time::Instant::now() + Duration::from_millis(spec.release.health.start_deadline_ms);
        let path = spec.release.health.path.as_deref().or(Some("/"));
        while prober::check(preview.listen, path, Duration::from_secs(1)).is_err()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let failed = checks.iter().find_map(|c| {
            (0..new.len().max(1)).find_map(|_| {
                smoke(preview.listen, c)
                    .err()
                    .map(|e| format!("smoke check through the preview listener {}: {e}", preview.listen))
            })
        });
        preview.stop_preview(&self.home, name);
        Ok(failed)
    }

    fn advance(&self, a: &mut Active, now_ms: u64) {
        a.rollout.index += 1;
        a.rollout.step_started_ms = now_ms;
        a.rollout.inconclusive = 0;
        a.rollout.promoted = false;
        a.rollout.paused = None;
    }

    /// Traffic back to stable at once, the new release's instances removed.
    #[allow(clippy::too_many_arguments)]
    fn fail(
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

    fn succeed(&mut self, name: &str, a: Active, warm_until_ms: u64, now_ms: u64) -> Result<(), ServeError> {
        let r = &a.rollout;
        let new = ReleaseRef { id: r.release.clone(), digest: r.digest.clone(), image_ref: r.image_ref.clone() };
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
    fn begin(
        &mut self,
        name: &str,
        digest: Digest,
        image_ref: String,
        actor: &str,
        mode: Mode,
        now_ms: u64,
    ) -> Result<serde_json::Value, ServeError> {
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
        if drill.is_none() && stable.as_ref().is_some_and(|s| s.digest == digest) && old >= svc.spec.release.replicas {
            return Ok(serde_json::json!({ "service": name, "release": stable.map(|s| s.id), "noop": true }));
        }
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
        });
        let p = plan::plan(name, &release_spec, from.as_ref(), &digest);
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
        };
        self.services.get_mut(name).expect("known").state.rollout =
            Some(Active { rollout, old_at_start: old, failures: 0, last_failure: None, drill });
        self.save(name, now_ms)?;
        crash_point("release-recorded");
        Ok(serde_json::json!({ "service": name, "release": id, "plan": p }))
    }

    fn service(&self, name: &str) -> Result<&Svc, ServeError> {
        self.services.get(name).ok_or_else(|| ServeError::UnknownService(name.to_owned()))
    }

    /// Carries out one API request.
    pub fn handle(&mut self, req: Request, now_ms: u64) -> Result<serde_json::Value, ServeError> {
        self.changed();
        match req {
            Request::Deploy { service, image, actor } => {
                self.load_services()?;
                let svc = self.service(&service)?;
                let reference = image.unwrap_or_else(|| svc.spec.image.clone());
                let (desc, _) = self.store.resolve(&reference).map_err(|e| match e {
                    crate::store::StoreError::NotFound(_) => {
                        ServeError::UnknownImage { service: service.clone(), reference: reference.clone() }
                    }
                    other => other.into(),
                })?;
                self.admit(&svc.spec, &desc.digest)?;
                self.begin(&service, desc.digest, reference, &actor, Mode::Deploy, now_ms)
            }
            Request::Metrics => Ok(serde_json::Value::String(self.metrics()?)),
            Request::Status { service } => {
                if let Some(s) = &service {
                    self.service(s)?;
                }
                self.status(service.as_deref(), now_ms)
            }
            Request::Promote { service, .. } => {
                let svc = self.services.get_mut(&service).ok_or_else(|| ServeError::UnknownService(service.clone()))?;
                match svc.state.rollout.as_mut() {
                    Some(a) if a.drill.is_some() => Err(ServeError::Conflict(format!(
                        "release {} of {service} is a drill: it is never promoted",
                        a.rollout.release
                    ))),
                    Some(a) if a.rollout.paused.is_some() => {
                        a.rollout.promoted = true;
                        a.rollout.paused = None;
                        let id = a.rollout.release.clone();
                        self.save(&service, now_ms)?;
                        Ok(serde_json::json!({ "service": service, "release": id, "promoted": true }))
                    }
                    Some(a) => Err(ServeError::Conflict(format!(
                        "release {} of {service} is not paused (step {} of {})",
                        a.rollout.release,
                        a.rollout.index + 1,
                        a.rollout.steps.len()
                    ))),
                    None => Err(ServeError::Conflict(format!("service {service} has no release in progress"))),
                }
            }
            Request::Abort { service, actor } => {
                let a = self.service(&service)?.state.rollout.clone();
                let Some(a) = a else {
                    return Err(ServeError::Conflict(format!("service {service} has no release in progress")));
                };
                let id = a.rollout.release.clone();
                self.fail(&service, a, format!("aborted by {actor}"), None, Outcome::Aborted, now_ms)?;
                Ok(serde_json::json!({ "service": service, "release": id, "aborted": true }))
            }
            Request::Rollback { service, to, actor } => self.rollback(&service, to.as_deref(), &actor, now_ms),
            Request::Quarantine { instance, reason, actor } => {
                let r = self.instance(&instance)?;
                let reason = reason.unwrap_or_else(|| format!("quarantined by {actor}"));
                self.quarantine(&r.service, r.id.as_str(), &reason, &actor, now_ms)
            }
            Request::ReleaseQuarantine { instance, actor } => {
                let r = self.instance(&instance)?;
                self.release_quarantine(&r.service, r.id.as_str(), &actor, now_ms)?;
                Ok(serde_json::json!({ "service": r.service, "instance": r.id.as_str(), "destroyed": true }))
            }
            Request::Inspect { instance } => self.inspect(&instance, now_ms),
            Request::VerifyInstances { service } => {
                if let Some(s) = &service {
                    self.service(s)?;
                }
                let found = self.check_drift(service.as_deref())?;
                let list: Vec<serde_json::Value> = found
                    .into_iter()
                    .map(|(s, i, d)| serde_json::json!({ "service": s, "instance": i, "drift": d }))
                    .collect();
                Ok(serde_json::json!({ "instances": list }))
            }
            Request::Kill { service, max_share, actor } => self.kill(&service, max_share, &actor, now_ms),
            Request::Drill { service, window_ms, actor } => self.drill(&service, window_ms, &actor, now_ms),
            Request::History { service, verify } => {
                if let Some(s) = &service {
                    self.service(s)?;
                }
                let entries = self.history.entries(service.as_deref())?;
                let verified = verify.then(|| match self.history.verify() {
                    Ok(n) => serde_json::json!({ "ok": true, "entries": n }),
                    Err(e) => serde_json::json!({ "ok": false, "error": e.to_string() }),
                });
                Ok(serde_json::json!({ "entries": entries, "verified": verified }))
            }
            Request::Diff { service, from, to } => {
                self.service(&service)?;
                let (a, b) = (self.release_side(&service, &from)?, self.release_side(&service, &to)?);
                Ok(serde_json::to_value(crate::release::diff::diff(&a, &b)).expect("serializes"))
            }
            Request::Logs { filter, limit } => {
                if let Some(s) = &filter.service {
                    self.service(s)?;
                }
                let logs = self.runtime().logs();
                let lines =
                    logs.query(&filter).map_err(|source| ServeError::Io { path: self.home.join("logs"), source })?;
                let skip = lines.len().saturating_sub(limit);
                Ok(serde_json::json!({ "lines": lines[skip..] }))
            }
        }
    }

    /// A release as [`crate::release::diff`] compares it: from its
    /// `started` entry, and its image's config if the store still has it.
    fn release_side(&self, service: &str, release: &str) -> Result<crate::release::diff::Side, ServeError> {
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

    /// Starts a rollback drill (see [`Request::Drill`]) on a steady service.
    fn drill(
        &mut self,
        name: &str,
        window_ms: Option<u64>,
        actor: &str,
        now_ms: u64,
    ) -> Result<serde_json::Value, ServeError> {
        let svc = self.service(name)?;
        if let Some(a) = &svc.state.rollout {
            return Err(ServeError::Conflict(format!(
                "service {name} has release {} in progress; a drill needs a steady service",
                a.rollout.release
            )));
        }
        let Some(stable) = svc.state.stable.clone() else {
            return Err(ServeError::Conflict(format!("service {name} has no stable release to drill against")));
        };
        let window_ms = window_ms.unwrap_or(match &svc.spec.release.strategy {
            Strategy::Canary(c) => c.step_interval_ms,
            _ => 10_000,
        });
        let image_ref = format!("{} (drill)", stable.image_ref);
        let mut out = self.begin(name, stable.digest.clone(), image_ref, actor, Mode::Drill { window_ms }, now_ms)?;
        out["stable"] = serde_json::json!(stable.id);
        out["window_ms"] = serde_json::json!(window_ms);
        out["fault"] = serde_json::json!(DRILL_FAULT);
        Ok(out)
    }

    /// An instance of a service this controller manages.
    fn instance(&self, reference: &str) -> Result<InstanceRecord, ServeError> {
        let unknown = || ServeError::UnknownInstance(reference.to_owned());
        let r = self.runtime().find(reference).map_err(|_| unknown())?;
        if !self.services.contains_key(&r.service) {
            return Err(unknown());
        }
        Ok(r)
    }

    fn inspect(&self, reference: &str, now_ms: u64) -> Result<serde_json::Value, ServeError> {
        let mut r = self.instance(reference)?;
        let rt = self.runtime();
        rt.observe(&mut r)?;
        let svc = &self.services[&r.service];
        let h = self.prober.health(r.id.as_str());
        let started = if r.started_ms > 0 { r.started_ms as u64 } else { r.created as u64 * 1000 };
        Ok(serde_json::json!({
            "id": r.id.as_str(),
            "service": r.service,
            "release": r.release,
            "digest": r.image.to_string(),
            "image": r.image_ref,
            "revision": r.revision,
            "state": r.state.name(),
            "port": r.port,
            "started_ms": started,
            "age_s": now_ms.saturating_sub(started) / 1000,
            "env": rt.env_names(&r),
            "secrets": r.secrets.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            "volumes": r.volumes,
            "limits": r.limits,
            "config_digest": r.config_digest,
            "runc_root": crate::runtime::run_dir(&self.home).join("runc"),
            "health": h,
            "drift": self.drift.get(r.id.as_str()),
            "quarantine": svc.state.quarantined.get(r.id.as_str()),
        }))
    }

    /// Chaos: SIGKILL one random healthy instance of the serving release,
    /// unless `max_share` of the replicas are down already.
    fn kill(&mut self, name: &str, max_share: f64, actor: &str, now_ms: u64) -> Result<serde_json::Value, ServeError> {
        let svc = self.service(name)?;
        let replicas = svc.spec.release.replicas;
        let Some(stable) = svc.state.stable.clone() else {
            return Err(ServeError::Conflict(format!("service {name} has no release serving")));
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
            return Err(ServeError::Conflict(format!(
                "{down} of {replicas} instances of {name} are down; killing one more would pass max_share {max_share}"
            )));
        }
        let mut b = [0u8; 4];
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
        let victim = &serving[u32::from_le_bytes(b) as usize % serving.len()];
        self.chaos.insert(victim.id.to_string());
        self.runtime().kill(victim.id.as_str())?;
        self.changed();
        eprintln!("kiln serve: chaos ({actor}) killed {}", victim.id);
        Ok(serde_json::json!({ "service": name, "instance": victim.id.as_str(), "killed_at_ms": now_ms }))
    }

    /// Ends the release in progress as rolled back by `actor`.
    fn roll_back_in_progress(&mut self, name: &str, a: Active, actor: &str, now_ms: u64) -> Result<(), ServeError> {
        let reason = format!("rolled back by {actor}");
        self.fail(name, a, reason, None, Outcome::RolledBack, now_ms)
    }

    fn rollback(
        &mut self,
        name: &str,
        to: Option<&str>,
        actor: &str,
        now_ms: u64,
    ) -> Result<serde_json::Value, ServeError> {
        let mut st = self.service(name)?.state.clone();
        if st.stable.as_ref().is_some_and(|s| Some(s.id.as_str()) == to) && st.rollout.is_none() {
            return Err(ServeError::Conflict(format!("service {name}: {} already serves", to.unwrap_or_default())));
        }
        if let (Some(a), Some(_)) = (st.rollout.clone(), to) {
            // Rolling back to a named release ends the one in progress first.
            self.roll_back_in_progress(name, a, actor, now_ms)?;
            st = self.services[name].state.clone();
            if st.stable.as_ref().is_some_and(|s| Some(s.id.as_str()) == to) {
                return Ok(serde_json::json!({ "service": name, "release": to, "instant": true }));
            }
        }
        if let Some(a) = st.rollout {
            let id = a.rollout.release.clone();
            self.roll_back_in_progress(name, a, actor, now_ms)?;
            return Ok(
                serde_json::json!({ "service": name, "release": st.stable.map(|s| s.id), "rolled_back": id, "instant": true }),
            );
        }
        let Some(current) = st.stable.clone() else {
            return Err(ServeError::Conflict(format!("service {name} has no release to roll back from")));
        };
        let live = self.live(name)?;
        if let Some((prev, _)) = st.previous.filter(|(p, _)| {
            to.is_none_or(|t| t == p.id) && live.iter().any(|r| r.release.as_deref() == Some(p.id.as_str()))
        }) {
            // Still warm: one table swap.
            let weights = BTreeMap::from([(prev.id.clone(), 100), (current.id.clone(), 0)]);
            self.record(
                name,
                &prev.id,
                now_ms,
                &Event::Started {
                    digest: prev.digest.to_string(),
                    tags: Vec::new(),
                    revision: None,
                    strategy: "rollback".into(),
                    actor: actor.to_owned(),
                    previous: Some(current.id.clone()),
                },
            )?;
            self.record(name, &prev.id, now_ms, &Event::Step { index: 0, weights })?;
            let keep = self.services[name].spec.release.keep_previous_ms;
            let st = &mut self.services.get_mut(name).expect("known").state;
            st.stable = Some(prev.clone());
            st.previous = Some((current.clone(), now_ms + keep));
            self.sync(name, false)?;
            let reason = format!("instant rollback from {}", current.id);
            self.record(
                name,
                &prev.id,
                now_ms,
                &Event::Finished { outcome: Outcome::Succeeded, reason: reason.clone(), deadline: false },
            )?;
            self.services.get_mut(name).expect("known").state.last =
                Some((prev.id.clone(), Outcome::Succeeded, reason));
            self.save(name, now_ms)?;
            return Ok(serde_json::json!({ "service": name, "release": prev.id, "instant": true }));
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
            return Err(ServeError::Conflict(format!("service {name}: no earlier good release to roll back to")));
        };
        self.begin(name, d.clone(), d.to_string(), actor, Mode::Rollback, now_ms)
    }

    fn status(&self, only: Option<&str>, now_ms: u64) -> Result<serde_json::Value, ServeError> {
        let (all, _) = self.runtime().observe_all()?;
        let mut out = Vec::new();
        for (name, svc) in self.services.iter().filter(|(n, _)| only.is_none_or(|o| o == n.as_str())) {
            let table = svc.sent.clone().unwrap_or_default();
            let weight_of = |release: &str, a: SocketAddr| {
                table.iter().find(|e| e.release == release && e.backends.contains(&a)).map(|e| e.weight)
            };
            let max_age = svc.spec.release.heal.max_age_ms;
            let instances: Vec<serde_json::Value> = all
                .iter()
                .filter(|r| r.service == *name && !r.state.is_exited())
                .map(|r| {
                    let release = r.release.clone().unwrap_or_default();
                    let h = self.prober.health(r.id.as_str());
                    let started = if r.started_ms > 0 { r.started_ms as u64 } else { r.created as u64 * 1000 };
                    let recycle_in_s = max_age
                        .filter(|_| svc.state.stable.as_ref().is_some_and(|s| s.id == release))
                        .map(|m| (heal::recycle_at_ms(r.id.as_str(), started, m).saturating_sub(now_ms)) / 1000);
                    serde_json::json!({
                        "health": {
                            "healthy": h.fails == 0 && h.healthy_since_ms.is_some(),
                            "passes": h.passes,
                            "fails": h.fails,
                            "last_failure": h.last_failure,
                        },
                        "quarantined": svc.state.quarantined.contains_key(r.id.as_str()),
                        "draining": self.retiring.contains_key(r.id.as_str()),
                        "recycle_in_s": recycle_in_s,
                        "drift": self.drift.get(r.id.as_str()),
                        "id": r.id.as_str(),
                        "release": release,
                        "digest": r.image.to_string(),
                        "revision": r.revision,
                        "image": r.image_ref,
                        "state": r.state.name(),
                        "port": r.port,
                        "age_s": (now_ms / 1000) as i64 - r.created,
                        "in_table": weight_of(&release, addr(r)).is_some(),
                        "release_weight": weight_of(&release, addr(r)),
                    })
                })
                .collect();
            let rollout = svc.state.rollout.as_ref().map(|a| {
                let r = &a.rollout;
                serde_json::json!({
                    "release": r.release,
                    "digest": r.digest.to_string(),
                    "image": r.image_ref,
                    "step": r.index + 1,
                    "steps": r.steps.len(),
                    "current": r.steps.get(r.index),
                    "new_percent": r.new_percent,
                    "paused": r.paused,
                    "elapsed_ms": now_ms.saturating_sub(r.started_ms),
                })
            });
            out.push(serde_json::json!({
                "service": name,
                "listen": svc.dp.listen.to_string(),
                "proxy_pid": svc.dp.pid,
                "strategy": svc.spec.release.strategy.name(),
                "replicas": svc.spec.release.replicas,
                "stable": svc.state.stable,
                "previous": svc.state.previous.as_ref().map(|(p, until)| serde_json::json!({ "release": p, "warm_for_ms": until.saturating_sub(now_ms) })),
                "rollout": rollout,
                "last": svc.state.last.as_ref().map(|(id, o, reason)| serde_json::json!({ "release": id, "outcome": o, "reason": reason })),
                "traffic": table,
                "requests": svc.dp.totals().ok(),
                "instances": instances,
                "heal": {
                    "failing": svc.state.heal.crash_looping(&svc.spec.release),
                    "failures_in_a_row": svc.state.heal.failures,
                    "next_start_in_ms": svc.state.heal.backoff_until_ms(&svc.spec.release).saturating_sub(now_ms),
                    "pending": svc.state.heal.pending,
                    "last_failures": svc.state.heal.last_exits,
                },
                "quarantined": svc.state.quarantined,
            }));
        }
        Ok(serde_json::json!({ "services": out }))
    }
}
