//! `kiln serve` SIGKILLed at each recorded point of a canary and of a
//! blue-green release, under load, then started again: each release
//! converges (resumes or rolls back) with no orphan, no duplicate, one
//! release serving and no failed request.

use std::time::{Duration, Instant};

use crate::common;
use common::serve_env::{serial, under_load, Env};

/// SIGKILLs `kiln serve` at each named point of a release under load, then
/// starts it again: the release converges (resumes or rolls back) with no
/// orphan, no duplicate, one release serving, and no failed request.
fn crash_at_each_point(what: &str, settings: &str, points: &[&str]) {
    let _g = serial();
    let mut env = Env::new(what, settings);
    assert_eq!(env.deploy().0, 0);
    for (i, point) in points.iter().enumerate() {
        env.kill_serve();
        env.start_serve(Some(point));
        env.version(&format!("2.{i}.0"), "");
        let (ok, bad) = under_load(env.port, || {
            let _ = env.deploy(); // ends when serve dies at the hook
            let died = Instant::now() + Duration::from_secs(30);
            while env.serve.as_mut().unwrap().try_wait().unwrap().is_none() {
                assert!(Instant::now() < died, "the hook {point} never fired: {}", env.serve_log());
                std::thread::sleep(Duration::from_millis(50));
            }
            // The data plane kept serving while the controller was down.
            assert!(env.versions(5).iter().all(|v| v.starts_with("demo-app")));
            env.start_serve(None);
            env.wait_for(&format!("convergence after {point}"), |s| {
                s["rollout"].is_null() && s["previous"].is_null() && s["instances"].as_array().unwrap().len() == 2
            });
        });
        assert!(ok > 100, "{point}: the load ran");
        assert_eq!(bad, 0, "{point}: failed requests");
        let s = env.status();
        let stable = s["stable"]["id"].as_str().unwrap().to_owned();
        assert_eq!(env.releases_running(), vec![stable.clone(), stable], "{point}: no orphan, no duplicate: {s:#}");
        let served = env.versions(6);
        assert!(served.iter().all(|v| v == &served[0]), "{point}: one release serves: {served:?}");
        assert!(env.ok(&["history", "--verify"]).contains("hash chain verified"), "{point}");
    }
}

#[test]
fn sigkill_of_serve_at_each_point_of_a_canary_converges_with_no_failed_request() {
    let _room = common::room("release");
    crash_at_each_point(
        "crash-canary",
        "replicas = 2\nstrategy = \"canary\"\nkeep_previous = \"1s\"\ndrain_timeout = \"1s\"\n\
         [service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n\
         [service.web.canary]\nsteps = [50]\nstep_interval = \"1s\"\nanalysis = { min_requests = 10 }\n",
        &[
            "release-recorded",
            "instances-started",
            "step-recorded",
            "traffic-routed",
            "verdict-recorded",
            "finished-recorded",
        ],
    );
}

#[test]
fn sigkill_of_serve_at_each_point_of_a_blue_green_release_converges_with_no_failed_request() {
    let _room = common::room("release");
    crash_at_each_point(
        "crash-bluegreen",
        "replicas = 2\nstrategy = \"blue-green\"\nkeep_previous = \"1s\"\ndrain_timeout = \"1s\"\n\
         blue_green = { smoke = [\"/\"] }\n[service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n",
        &[
            "release-recorded",
            "instances-started",
            "step-recorded",
            "traffic-routed",
            "finished-recorded",
            "old-drained",
        ],
    );
}
