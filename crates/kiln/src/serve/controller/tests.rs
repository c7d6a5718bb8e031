//! The controller's acts on a paused clock, with the fakes beside each
//! seam: [`RecordingDriver`] for runc (a launch registers a running
//! container), [`RecordingDataPlanes`] for the load balancers and
//! [`FixedProber`] for the health checks. The store and the history are
//! real (a temp KILN_HOME), so what a controller recorded is what the next
//! one reads.

use std::io;
use std::path::Path;

use super::*;
use crate::runtime::driver::{RecordingDriver, RuntimeState, RuntimeStatus};
use crate::runtime::InstanceId;
use crate::serve::dataplane::{DataPlaneCall, RecordingDataPlanes};
use crate::serve::history::Event;
use crate::serve::prober::FixedProber;

/// A launch that starts no process: the driver gets a running container.
struct FakeLaunch<'a>(&'a RecordingDriver);

impl Launcher for FakeLaunch<'_> {
    fn launch(&self, _: &Path, id: &InstanceId) -> io::Result<Box<dyn io::Read>> {
        let state = RuntimeState { id: id.to_string(), status: RuntimeStatus::Running, pid: 0 };
        self.0.containers.lock().map_err(|_| io::Error::other("poisoned"))?.push(state);
        Ok(Box::new(io::Cursor::new(b"started\n".to_vec())))
    }
}

struct Quiet;
impl crate::bake::Progress for Quiet {
    fn step_started(&mut self, _: usize, _: usize, _: &str) {}
    fn step_output(&mut self, _: &str) {}
    fn step_finished(&mut self, _: &crate::bake::StepReport) {}
}

struct NoGit;
impl crate::bake::git::Git for NoGit {
    fn info(&self, _: &Path) -> Option<crate::bake::git::GitInfo> {
        None
    }
}

const IMAGE: &str =
    "[image.app]\nfrom = \"scratch\"\nentrypoint = [\"/app\"]\ncopy = [{ src = \"app\", dest = \"/app\", mode = \"0755\" }]\n";

/// A KILN_HOME with images `app:b1` and `app:b2` and a kiln.toml of
/// `services` (TOML tables).
fn home_with(services: &str) -> (PathBuf, Store) {
    let home = kiln_testutil::tempdir("controller");
    let store = Store::open(&home.join("store")).unwrap();
    let sb = crate::bake::sandbox::RecordingSandbox::new(|_, _| Ok(()));
    let tools = crate::bake::Tools { sandbox: &sb, git: &NoGit };
    for v in ["one", "two"] {
        std::fs::write(home.join("app"), v).unwrap();
        std::fs::write(home.join("kiln.toml"), IMAGE).unwrap();
        let file = crate::spec::load(&home.join("kiln.toml")).unwrap();
        crate::bake::bake(&store, &file, "app", &Default::default(), &tools, &mut Quiet).unwrap();
    }
    std::fs::write(home.join("kiln.toml"), format!("{IMAGE}\n{services}")).unwrap();
    (home, store)
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn web(replicas: u32, extra: &str) -> String {
    format!("[service.web]\nimage = \"app\"\nreplicas = {replicas}\nlisten = \"127.0.0.1:{}\"\n{extra}", port())
}

fn deploy(service: &str, image: &str) -> Request {
    Request::Deploy { service: service.into(), image: Some(image.into()), file: None, actor: "test".into() }
}

/// Ticks (100 ms of paused clock each) until `done` holds; panics after
/// `max` ticks with what the controller holds.
fn tick_until(c: &mut Controller<'_>, t: &mut u64, max: u32, what: &str, done: impl Fn(&Controller<'_>) -> bool) {
    for _ in 0..max {
        if done(c) {
            return;
        }
        *t += 100;
        let _ = c.tick(*t);
        // Retirements (drain, then stop) run on threads of their own: a
        // real moment between ticks lets them finish on a loaded machine,
        // where ticks alone could outrun them.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("{what}: not after {max} ticks; state {:?}", c.services.values().map(|s| &s.state).collect::<Vec<_>>());
}

fn stable_image(c: &Controller<'_>, service: &str) -> Option<String> {
    c.services[service].state.stable.as_ref().map(|s| s.image_ref.clone())
}

fn settled(c: &Controller<'_>, service: &str, image: &str) -> bool {
    stable_image(c, service).as_deref() == Some(image) && c.services[service].state.rollout.is_none()
}

/// The releases in the table last sent for `service`, with their weights
/// and backend counts.
fn table(planes: &RecordingDataPlanes, service: &str) -> Vec<(String, u32, usize)> {
    planes.table(service).unwrap_or_default().iter().map(|e| (e.release.clone(), e.weight, e.backends.len())).collect()
}

fn events(home: &Path, service: &str) -> Vec<Event> {
    History::open(&History::path_in(home))
        .unwrap()
        .entries(Some(service))
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

/// A controller over `home` with the fakes given.
fn controller<'a>(
    home: &Path,
    store: &'a Store,
    driver: &'a RecordingDriver,
    launcher: &'a FakeLaunch<'a>,
    planes: &RecordingDataPlanes,
    prober: &FixedProber,
) -> Controller<'a> {
    let file = home.join("kiln.toml");
    Controller::with_seams(home, &file, store, driver, launcher, Box::new(planes.clone()), Box::new(prober.clone()))
        .unwrap()
}

fn running(driver: &RecordingDriver) -> usize {
    driver.containers.lock().unwrap().iter().filter(|c| c.status == RuntimeStatus::Running).count()
}

#[test]
fn a_rolling_deploy_sets_the_table_a_second_replaces_it_and_a_cold_rollback_is_a_release() {
    let (home, store) = home_with(&web(2, ""));
    let driver = RecordingDriver::default();
    let launcher = FakeLaunch(&driver);
    let planes = RecordingDataPlanes::default();
    let mut c = controller(&home, &store, &driver, &launcher, &planes, &FixedProber::default());
    assert!(matches!(planes.calls()[0], DataPlaneCall::Ensure { ref service, .. } if service == "web"));
    let mut t = 1_000;
    c.handle(deploy("web", "app:b1"), t).unwrap();
    tick_until(&mut c, &mut t, 200, "b1 serves", |c| settled(c, "web", "app:b1"));
    let first = c.services["web"].state.stable.clone().unwrap();
    assert_eq!(table(&planes, "web"), [(first.id.clone(), 100, 2)]);
    assert_eq!(running(&driver), 2);

    c.handle(deploy("web", "app:b2"), t).unwrap();
    tick_until(&mut c, &mut t, 400, "b2 serves", |c| settled(c, "web", "app:b2"));
    let second = c.services["web"].state.stable.clone().unwrap();
    assert_ne!(first.id, second.id);
    tick_until(&mut c, &mut t, 400, "b2 alone, b1 stopped", |_| {
        table(&planes, "web") == [(second.id.clone(), 100, 2)] && running(&driver) == 2
    });

    // Rolling keeps nothing warm: the rollback is a release of b1's digest.
    c.handle(Request::Rollback { service: "web".into(), to: None, actor: "test".into() }, t).unwrap();
    tick_until(&mut c, &mut t, 400, "b1's digest back", |c| {
        c.services["web"].state.stable.as_ref().is_some_and(|s| s.digest == first.digest)
            && c.services["web"].state.rollout.is_none()
    });
    let back = c.services["web"].state.stable.clone().unwrap();
    assert!(back.id != first.id && back.id != second.id, "a release of its own: {}", back.id);
    // The release rolled back from stays warm, out of traffic.
    tick_until(&mut c, &mut t, 100, "its table", |_| {
        table(&planes, "web") == [(back.id.clone(), 100, 2), (second.id.clone(), 0, 2)]
    });
    let started = events(&home, "web").iter().filter(|e| matches!(e, Event::Started { .. })).count();
    assert_eq!(started, 3, "deploy, deploy, rollback");
    std::fs::remove_dir_all(home).unwrap();
}

/// Window stats of `n` requests, none failed, all in one latency bucket.
fn stats(n: u64) -> crate::proxy::metrics::WindowStats {
    let mut histogram = [0; crate::proxy::metrics::NB];
    histogram[3] = n;
    crate::proxy::metrics::WindowStats {
        requests: n,
        errors: 0,
        error_rate: 0.0,
        p50_us: 1_000,
        p99_us: 1_000,
        histogram,
    }
}

#[test]
fn a_canary_pauses_until_promoted_a_new_deploy_supersedes_it_and_a_warm_rollback_is_one_switch() {
    let canary = "strategy = \"canary\"\n[service.web.canary]\nsteps = [50, \"pause\"]\nstep_interval = \"1s\"\n";
    let (home, store) = home_with(&web(2, canary));
    let driver = RecordingDriver::default();
    let launcher = FakeLaunch(&driver);
    let planes = RecordingDataPlanes::default();
    for release in ["web-1", "web-2", "web-3", "web-4"] {
        planes.set_stats("web", release, stats(500));
    }
    let mut c = controller(&home, &store, &driver, &launcher, &planes, &FixedProber::default());
    let mut t = 1_000;
    c.handle(deploy("web", "app:b1"), t).unwrap();
    tick_until(&mut c, &mut t, 200, "b1 serves", |c| settled(c, "web", "app:b1"));
    let first = c.services["web"].state.stable.clone().unwrap();

    // b2 as a canary: half the traffic, then it waits at the pause.
    c.handle(deploy("web", "app:b2"), t).unwrap();
    let at_pause =
        |c: &Controller<'_>| c.services["web"].state.rollout.as_ref().is_some_and(|a| a.rollout.paused.is_some());
    tick_until(&mut c, &mut t, 300, "b2 at the pause", at_pause);
    let canary_id = c.services["web"].state.rollout.as_ref().unwrap().rollout.release.clone();
    let weights: Vec<u32> = table(&planes, "web").iter().map(|(_, w, _)| *w).collect();
    assert_eq!(weights.iter().sum::<u32>(), 100);
    let canary_row = table(&planes, "web").into_iter().find(|(r, _, _)| *r == canary_id);
    assert!(canary_row.is_some_and(|(_, w, n)| w == 50 && n >= 1), "{:?}", table(&planes, "web"));
    for _ in 0..50 {
        t += 100;
        c.tick(t).unwrap();
    }
    assert!(at_pause(&c), "a pause holds until promoted");

    // A new deploy supersedes the paused canary.
    c.handle(deploy("web", "app:b2"), t).unwrap();
    tick_until(&mut c, &mut t, 300, "the new canary at the pause", |c| {
        at_pause(c) && c.services["web"].state.rollout.as_ref().unwrap().rollout.release != canary_id
    });
    assert!(
        events(&home, "web").iter().any(|e| matches!(e, Event::Finished { reason, .. } if reason.contains("supersed"))),
        "the first canary ended as superseded: {:?}",
        events(&home, "web")
    );
    c.handle(Request::Promote { service: "web".into(), actor: "test".into() }, t).unwrap();
    tick_until(&mut c, &mut t, 300, "b2 serves", |c| settled(c, "web", "app:b2"));
    let (prev, _) = c.services["web"].state.previous.clone().expect("b1 kept warm");
    assert_eq!(prev.id, first.id);

    // Warm rollback: no instance starts, the table switches back at once.
    let before = driver.containers.lock().unwrap().len();
    c.handle(Request::Rollback { service: "web".into(), to: None, actor: "test".into() }, t).unwrap();
    tick_until(&mut c, &mut t, 3, "b1 back at once", |_| {
        let rows = table(&planes, "web");
        rows.first() == Some(&(first.id.clone(), 100, 2)) && rows[1..].iter().all(|(_, w, _)| *w == 0)
    });
    assert_eq!(driver.containers.lock().unwrap().len(), before, "no instance started");
    assert_eq!(stable_image(&c, "web").as_deref(), Some("app:b1"));
    std::fs::remove_dir_all(home).unwrap();
}

#[test]
fn one_failing_load_balancer_never_stops_the_other_services() {
    let api = format!("[service.api]\nimage = \"app\"\nreplicas = 1\nlisten = \"127.0.0.1:{}\"\n", port());
    let (home, store) = home_with(&format!("{}\n{api}", web(1, "")));
    let driver = RecordingDriver::default();
    let launcher = FakeLaunch(&driver);
    let planes = RecordingDataPlanes::default();
    let prober = FixedProber::default();
    let mut c = controller(&home, &store, &driver, &launcher, &planes, &prober);
    let mut t = 1_000;
    c.handle(deploy("web", "app:b1"), t).unwrap();
    c.handle(deploy("api", "app:b1"), t).unwrap();
    tick_until(&mut c, &mut t, 200, "both serve", |c| settled(c, "web", "app:b1") && settled(c, "api", "app:b1"));

    // api's load balancer dies and cannot be started again.
    planes.kill("api");
    planes.fail("api", Some("cannot start"));
    let before = prober.ticks().iter().filter(|(s, _)| s == "web").count();
    for _ in 0..5 {
        t += 100;
        c.tick(t).unwrap();
    }
    assert!(c.failing.contains_key("api"), "api is failing");
    assert!(!c.failing.contains_key("web"));
    assert!(prober.ticks().iter().filter(|(s, _)| s == "web").count() >= before + 5, "web is reconciled every tick");
    let failing = events(&home, "api").iter().filter(|e| matches!(e, Event::Failing { .. })).count();
    assert_eq!(failing, 1, "recorded once, not every tick");
    // web still deploys while api fails.
    c.handle(deploy("web", "app:b2"), t).unwrap();
    tick_until(&mut c, &mut t, 400, "web moves on", |c| settled(c, "web", "app:b2"));

    planes.fail("api", None);
    tick_until(&mut c, &mut t, 600, "api recovers", |c| !c.failing.contains_key("api"));
    assert!(events(&home, "api").iter().any(|e| matches!(e, Event::Recovered { .. })));
    assert!(planes.table("api").is_some_and(|t| !t.is_empty()), "api's table is sent again");
    std::fs::remove_dir_all(home).unwrap();
}

#[test]
fn a_release_recorded_but_not_acted_on_is_finished_by_the_next_controller() {
    let (home, store) = home_with(&web(2, ""));
    let driver = RecordingDriver::default();
    let launcher = FakeLaunch(&driver);
    let mut t = 1_000;
    {
        let planes = RecordingDataPlanes::default();
        let mut c = controller(&home, &store, &driver, &launcher, &planes, &FixedProber::default());
        c.handle(deploy("web", "app:b1"), t).unwrap();
        tick_until(&mut c, &mut t, 200, "b1 serves", |c| settled(c, "web", "app:b1"));
        // The next release is recorded; then every act on the load
        // balancer fails, and this controller goes (a crash).
        c.handle(deploy("web", "app:b2"), t).unwrap();
        planes.fail("web", Some("the controller crashed here"));
        for _ in 0..10 {
            t += 100;
            let _ = c.tick(t);
        }
        assert_ne!(stable_image(&c, "web").as_deref(), Some("app:b2"));
    }
    // The next controller reads what was recorded and finishes it.
    let planes = RecordingDataPlanes::default();
    let mut c = controller(&home, &store, &driver, &launcher, &planes, &FixedProber::default());
    assert!(c.services["web"].state.rollout.is_some(), "the release in progress was recorded");
    tick_until(&mut c, &mut t, 400, "b2 serves", |c| settled(c, "web", "app:b2"));
    let stable = c.services["web"].state.stable.clone().unwrap();
    tick_until(&mut c, &mut t, 100, "b2 alone", |_| {
        table(&planes, "web").iter().map(|(r, _, _)| r.clone()).collect::<Vec<_>>() == [stable.id.clone()]
    });
    let started = events(&home, "web").iter().filter(|e| matches!(e, Event::Started { .. })).count();
    assert_eq!(started, 2, "the release was not started twice");
    std::fs::remove_dir_all(home).unwrap();
}

#[test]
fn a_quarantine_and_a_down_recorded_but_not_acted_on_are_finished_by_the_next_controller() {
    let api = format!("[service.api]\nimage = \"app\"\nreplicas = 1\nlisten = \"127.0.0.1:{}\"\n", port());
    let (home, store) = home_with(&format!("{}\n{api}", web(2, "drain_timeout = \"100ms\"\n")));
    let driver = RecordingDriver::default();
    let launcher = FakeLaunch(&driver);
    let mut t = 1_000;
    let frozen;
    {
        let planes = RecordingDataPlanes::default();
        let mut c = controller(&home, &store, &driver, &launcher, &planes, &FixedProber::default());
        c.handle(deploy("web", "app:b1"), t).unwrap();
        c.handle(deploy("api", "app:b1"), t).unwrap();
        tick_until(&mut c, &mut t, 200, "both serve", |c| settled(c, "web", "app:b1") && settled(c, "api", "app:b1"));
        // Both requests are recorded and answered; the controller goes
        // (a crash) before any tick acts on them.
        let victim = c.live("web").unwrap()[0].id.to_string();
        let q = Request::Quarantine { instance: victim.clone(), reason: Some("post-mortem".into()), actor: "t".into() };
        c.handle(q, t).unwrap();
        c.handle(Request::Down { service: "api".into(), purge: false, actor: "t".into() }, t).unwrap();
        frozen = victim;
    }
    let planes = RecordingDataPlanes::default();
    let mut c = controller(&home, &store, &driver, &launcher, &planes, &FixedProber::default());
    assert!(c.services["web"].state.quarantined.contains_key(&frozen), "the quarantine was recorded");
    assert!(c.services["api"].state.down.is_some(), "the down was recorded");
    let status_of = |id: &str| driver.containers.lock().unwrap().iter().find(|s| s.id == id).map(|s| s.status);
    tick_until(&mut c, &mut t, 300, "the quarantined instance frozen, api gone", |c| {
        status_of(&frozen) == Some(RuntimeStatus::Paused)
            && c.services["api"].state.down.as_ref().is_some_and(|d| d.done)
    });
    // web is back at two serving instances without the frozen one, which
    // no table routes to; api has no instance and no load balancer.
    tick_until(&mut c, &mut t, 300, "web at two again", |c| {
        let serving = c.live("web").unwrap().iter().filter(|r| r.id.as_str() != frozen).count();
        let routed = table(&planes, "web").iter().map(|(_, _, n)| n).sum::<usize>();
        serving == 2 && routed == 2
    });
    assert!(planes.table("web").unwrap().iter().all(|e| e.backends.iter().all(|b| {
        let r = c.runtime().find(&frozen).unwrap();
        *b != addr(&r)
    })));
    assert!(c.live("api").unwrap().is_empty(), "api's instances are gone");
    assert!(planes.calls().contains(&DataPlaneCall::Stop { service: "api".into() }), "api's load balancer stopped");
    let downs = events(&home, "api").iter().filter(|e| matches!(e, Event::Down { .. })).count();
    let frozen_events = events(&home, "web").iter().filter(|e| matches!(e, Event::Quarantined { .. })).count();
    assert_eq!((downs, frozen_events), (1, 1), "each act recorded once, not again by the next controller");
    std::fs::remove_dir_all(home).unwrap();
}

#[test]
fn a_certificate_near_its_end_is_alerted_then_daily_until_renewed() {
    // A real certificate (made by openssl) and a clock 10 days before its end.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-proxy/src/tls/testdata");
    let not_after = crate::proxy::tls::not_after(&data.join("shop.pem")).unwrap();
    let tls = format!(
        "hosts = [\"shop.test\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        data.join("shop.pem").display(),
        data.join("shop.key").display()
    );
    let (home, store) = home_with(&web(1, &tls));
    let driver = RecordingDriver::default();
    let launcher = FakeLaunch(&driver);
    let planes = RecordingDataPlanes::default();
    let prober = FixedProber::default();
    let mut c = controller(&home, &store, &driver, &launcher, &planes, &prober);
    let day_ms = 86_400_000;
    let mut t = (not_after as u64 - 10 * 86_400) * 1000;
    let warnings = |home: &Path| {
        events(home, "web").into_iter().filter(|e| matches!(e, Event::CertExpiring { .. })).collect::<Vec<_>>()
    };
    c.tick(t).unwrap();
    let w = warnings(&home);
    assert!(
        matches!(w.as_slice(), [Event::CertExpiring { not_after: n, days_left: 10, .. }] if *n == not_after),
        "{w:?}"
    );
    // Every tick of the next day: no second warning.
    for _ in 0..30 {
        t += 60_000;
        c.tick(t).unwrap();
    }
    assert_eq!(warnings(&home).len(), 1);
    t += day_ms;
    c.tick(t).unwrap();
    assert_eq!(warnings(&home).len(), 2, "a day later, again");
    // A certificate 15 days from its end is not alerted.
    let mut c2 = controller(&home, &store, &driver, &launcher, &planes, &prober);
    c2.tick((not_after as u64 - 15 * 86_400) * 1000).unwrap();
    assert_eq!(warnings(&home).len(), 2);
    std::fs::remove_dir_all(home).unwrap();
}

#[test]
fn an_acme_ca_that_cannot_be_reached_backs_off_and_leaves_the_service_serving() {
    // A CA on a port nothing listens on: every issuance fails at once.
    let closed = port();
    let acme = format!(
        "hosts = [\"shop.test\"]\nredirect_http = \"127.0.0.1:{}\"\n\
         tls = {{ acme = \"https://127.0.0.1:{closed}/dir\" }}\n",
        port()
    );
    let (home, store) = home_with(&web(1, &acme));
    let driver = RecordingDriver::default();
    let launcher = FakeLaunch(&driver);
    let planes = RecordingDataPlanes::default();
    let prober = FixedProber::default();
    let mut c = controller(&home, &store, &driver, &launcher, &planes, &prober);
    let mut t = 1_000;
    c.handle(deploy("web", "app:b1"), t).unwrap();
    tick_until(&mut c, &mut t, 200, "web serves", |c| settled(c, "web", "app:b1"));
    // The failure comes back from the issuance thread within a few ticks.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.acme.get("web").is_none_or(|a| a.failures == 0) {
        assert!(std::time::Instant::now() < deadline, "no issuance finished");
        std::thread::sleep(std::time::Duration::from_millis(20));
        t += 100;
        c.tick(t).unwrap();
    }
    assert_eq!(c.acme["web"].failures, 1);
    // A minute's backoff from the tick that took the failure in.
    let failed_at = c.acme["web"].next_ms - 60_000;
    assert!(failed_at <= t && failed_at > 1_000, "{failed_at} {t}");
    // Within the backoff nothing starts; after it, the second failure waits twice as long.
    for _ in 0..50 {
        t += 1_000;
        c.tick(t).unwrap();
    }
    assert_eq!(c.acme["web"].failures, 1, "nothing was tried within the backoff");
    t = failed_at + 60_000;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.acme["web"].failures < 2 {
        assert!(std::time::Instant::now() < deadline, "no second attempt");
        std::thread::sleep(std::time::Duration::from_millis(20));
        t += 100;
        c.tick(t).unwrap();
    }
    let second_at = c.acme["web"].next_ms - 120_000;
    assert!(second_at >= failed_at + 60_000 && second_at <= t, "two minutes' backoff after the second");
    // No challenge was published (the CA never answered), and web serves.
    assert!(!planes.calls().iter().any(|call| matches!(call, DataPlaneCall::Challenge { .. })));
    assert!(settled(&c, "web", "app:b1"));
    std::fs::remove_dir_all(home).unwrap();
}
