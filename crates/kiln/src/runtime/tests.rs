//! Runtime logic on the recording driver: state decisions, adoption of
//! orphans, the stop sequence, and refusing a missing secret up front.

use std::fs;
use std::sync::Mutex;

use super::bundle::Limits;
use super::driver::{RecordingDriver, RuntimeState, RuntimeStatus};
use super::*;

fn exited(reason: &str) -> InstanceState {
    InstanceState::Exited { code: None, signal: None, reason: reason.into() }
}

#[test]
fn decide_state_covers_the_lifecycle() {
    use RuntimeStatus as R;
    let run = InstanceState::Running;
    assert_eq!(decide_state(&run, false, None, Some(R::Running), false), InstanceState::Running);
    assert_eq!(decide_state(&run, true, None, Some(R::Running), false), InstanceState::Stopping);
    assert_eq!(decide_state(&run, false, None, Some(R::Paused), false), InstanceState::Paused);
    assert_eq!(decide_state(&InstanceState::Starting, false, None, None, false), InstanceState::Starting);
    let e = ExitInfo { code: Some(3), signal: None, at: 0, at_ms: 0 };
    assert_eq!(
        decide_state(&run, false, Some(&e), None, false),
        InstanceState::Exited { code: Some(3), signal: None, reason: "exited with code 3".into() }
    );
    let k = ExitInfo { code: None, signal: Some(9), at: 0, at_ms: 0 };
    assert_eq!(
        decide_state(&run, true, Some(&k), Some(R::Stopped), false),
        InstanceState::Exited { code: None, signal: Some(9), reason: "stopped (signal 9)".into() }
    );
    assert!(
        matches!(decide_state(&run, false, None, None, false), InstanceState::Exited { ref reason, .. } if reason.starts_with("lost"))
    );
    assert!(
        matches!(decide_state(&run, false, None, Some(R::Stopped), false), InstanceState::Exited { ref reason, .. } if reason.contains("unknown"))
    );
    // Runtime says stopped but the shim still lives: it is recording the status.
    assert_eq!(decide_state(&run, true, None, Some(R::Stopped), true), InstanceState::Stopping);
    // An exited record is final, whatever is observed later.
    assert_eq!(decide_state(&exited("x"), false, None, Some(R::Running), false), exited("x"));
}

fn record(id: &str) -> InstanceRecord {
    InstanceRecord {
        id: InstanceId(id.into()),
        service: "web".into(),
        image: Digest::of(b"img"),
        image_ref: "web:1".into(),
        revision: None,
        release: None,
        port: 1,
        created: 0,
        volumes: vec![],
        secrets: vec![],
        stop_signal: "SIGTERM".into(),
        stop_grace_secs: 0,
        limits: Limits::default(),
        state: InstanceState::Running,
        stop_requested: false,
        started_ms: 0,
        release_fields: Default::default(),
        secret_versions: Default::default(),
    }
}

fn setup() -> (Store, std::path::PathBuf) {
    let home = kiln_testutil::tempdir("runtime");
    (Store::open(&home).unwrap(), home)
}

#[test]
fn observe_all_adopts_known_and_removes_unknown_containers() {
    let (store, home) = setup();
    let driver = RecordingDriver::default();
    let rt = Runtime::new(&store, &driver);
    let r = record("web-1");
    fs::create_dir_all(rt.instance_dir(&r.id)).unwrap();
    rt.save(&r).unwrap();
    {
        let mut cs = driver.containers.lock().unwrap();
        cs.push(RuntimeState { id: "web-1".into(), status: RuntimeStatus::Paused, pid: 1 });
        cs.push(RuntimeState { id: "stray-9".into(), status: RuntimeStatus::Running, pid: 2 });
    }
    let (records, orphans) = rt.observe_all().unwrap();
    assert_eq!(orphans, vec!["stray-9"]);
    assert_eq!(records[0].state, InstanceState::Paused, "adopted with its observed state");
    assert_eq!(driver.calls(), vec!["delete stray-9 force=true"]);
    fs::remove_dir_all(home).unwrap();
}

#[test]
fn stop_signals_then_kills_after_the_grace_period() {
    let (store, home) = setup();
    let driver = RecordingDriver::default();
    let rt = Runtime::new(&store, &driver);
    let r = record("web-2");
    fs::create_dir_all(rt.instance_dir(&r.id)).unwrap();
    rt.save(&r).unwrap();
    driver.containers.lock().unwrap().push(RuntimeState { id: "web-2".into(), status: RuntimeStatus::Running, pid: 1 });
    let t = Instant::now();
    let out = rt.stop("web", Some(Duration::from_millis(150))).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(150), "the grace period is waited out");
    assert_eq!(driver.calls(), vec!["signal web-2 SIGTERM", "signal web-2 SIGKILL"]);
    assert!(out.state.is_exited());
    assert!(rt.load(&out.id).unwrap().stop_requested);
    fs::remove_dir_all(home).unwrap();
}

#[test]
fn request_stop_signals_without_waiting_and_kills_when_asked() {
    let (store, home) = setup();
    let driver = RecordingDriver::default();
    let rt = Runtime::new(&store, &driver);
    let r = record("web-3");
    fs::create_dir_all(rt.instance_dir(&r.id)).unwrap();
    rt.save(&r).unwrap();
    driver.containers.lock().unwrap().push(RuntimeState { id: "web-3".into(), status: RuntimeStatus::Running, pid: 1 });
    let t = Instant::now();
    let out = rt.request_stop("web-3", false).unwrap();
    assert!(t.elapsed() < Duration::from_millis(100), "nothing is waited for");
    assert!(out.stop_requested && rt.load(&out.id).unwrap().stop_requested, "recorded first");
    rt.request_stop("web-3", false).unwrap();
    rt.request_stop("web-3", true).unwrap();
    assert_eq!(driver.calls(), vec!["signal web-3 SIGTERM", "signal web-3 SIGTERM", "signal web-3 SIGKILL"]);
    fs::remove_dir_all(home).unwrap();
}

struct NoLaunch(Mutex<u32>);
impl Launcher for NoLaunch {
    fn launch(&self, _: &Path, _: &InstanceId) -> io::Result<Box<dyn io::Read>> {
        *self.0.lock().unwrap() += 1;
        Ok(Box::new(io::Cursor::new(b"started\n".to_vec())))
    }
}

#[test]
fn a_missing_secret_fails_before_anything_is_created() {
    let (store, home) = setup();
    // A minimal image: one file and an entrypoint.
    fs::write(home.join("app"), "x").unwrap();
    fs::write(
        home.join("kiln.toml"),
        "[image.app]\nfrom = \"scratch\"\nentrypoint = [\"/app\"]\ncopy = [{ src = \"app\", dest = \"/app\", mode = \"0755\" }]\n",
    )
    .unwrap();
    let file = crate::spec::load(&home.join("kiln.toml")).unwrap();
    let sb = crate::bake::sandbox::RecordingSandbox::new(|_, _| Ok(()));
    struct NoGit;
    impl crate::bake::git::Git for NoGit {
        fn info(&self, _: &Path) -> Option<crate::bake::git::GitInfo> {
            None
        }
    }
    struct Quiet;
    impl crate::bake::Progress for Quiet {
        fn step_started(&mut self, _: usize, _: usize, _: &str) {}
        fn step_output(&mut self, _: &str) {}
        fn step_finished(&mut self, _: &crate::bake::StepReport) {}
    }
    let tools = crate::bake::Tools { sandbox: &sb, git: &NoGit };
    crate::bake::bake(&store, &file, "app", &Default::default(), &tools, &mut Quiet).unwrap();

    let driver = RecordingDriver::default();
    let rt = Runtime::new(&store, &driver);
    let launcher = NoLaunch(Mutex::new(0));
    let req = RunRequest {
        reference: "app:b1".into(),
        secrets: vec![SecretUse { name: "db".into(), env: None }],
        ..Default::default()
    };
    let e = rt.run(&req, &launcher, 0).unwrap_err().to_string();
    assert!(e.contains("no secret named \"db\""), "{e}");
    assert_eq!(*launcher.0.lock().unwrap(), 0);
    assert!(!home.join("instances").exists() || fs::read_dir(home.join("instances")).unwrap().count() == 0);
    assert!(driver.calls().is_empty());
    fs::remove_dir_all(home).unwrap();
}
