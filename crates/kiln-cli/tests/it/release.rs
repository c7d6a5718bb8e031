//! Releases end to end: `kiln serve`, `kiln deploy` and friends with real
//! runc instances of the demo app behind the service's own `kiln proxy`
//! process, under continuous keep-alive load from test threads.

use crate::common;

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::serve_env::{serial, under_load, Env};
use common::{free_port, json, kiln_cmd, Conn};

/// v1 → v2 under load with one strategy: nothing fails, only v2 is left
/// once the old set's warm time is over, and v1's image is archived.
fn release_under_load(what: &str, settings: &str) {
    let _g = serial();
    let env = Env::new(what, settings);
    let (code, out) = env.deploy();
    assert_eq!(code, 0, "{out}");
    assert!(env.versions(4).iter().all(|v| v == "demo-app 1.0.0"));
    let v1 = env.status()["stable"]["digest"].as_str().unwrap().to_owned();
    env.version("2.0.0", "");
    let (ok, bad) = under_load(env.port, || {
        let (code, out) = env.deploy();
        assert_eq!(code, 0, "{out}\n{}", env.serve_log());
    });
    assert!(ok > 500, "the load ran: {ok}");
    assert_eq!(bad, 0, "failed requests during the {what} release");
    assert!(env.versions(6).iter().all(|v| v == "demo-app 2.0.0"));
    env.wait_for("the old set to be destroyed", |s| {
        s["previous"].is_null() && s["instances"].as_array().unwrap().iter().all(|i| i["release"] == "web-2")
    });
    assert_eq!(env.releases_running(), vec!["web-2"; 2]);
    let archived = env.home.join("meta/archive").join(v1.strip_prefix("sha256:").unwrap());
    assert!(archived.exists(), "v1 is kept for rollback");
    assert!(env.ok(&["history", "--verify"]).contains("hash chain verified"));

    // v1's instances are gone: rollback is a fast release of its archived
    // image, new instances first, no analysis, and loses nothing either.
    let (ok, bad) = under_load(env.port, || {
        let out = env.ok(&["rollback"]);
        // A cold rollback is followed to its end, as a deploy is.
        assert!(out.contains("rolling back by release web-3") && out.contains("release web-3 succeeded"), "{out}");
        let s = env.status();
        assert!(s["rollout"].is_null() && s["stable"]["id"] == "web-3", "done when it returns: {s}");
    });
    assert!(ok > 100 && bad == 0, "rollback: ok {ok}, failed {bad}");
    assert_eq!(env.status()["stable"]["digest"].as_str(), Some(v1.as_str()));
    assert!(env.versions(6).iter().all(|v| v == "demo-app 1.0.0"));
    let hist = env.ok(&["history", "web"]);
    assert!(hist.contains("web web-3") && hist.contains("started rollback"), "{hist}");
    assert!(
        !hist.lines().skip_while(|l| !l.contains("web web-3")).any(|l| l.contains("verdict")),
        "no analysis: {hist}"
    );
}

#[test]
fn a_rolling_release_under_load_fails_nothing() {
    let _room = common::room("release");
    release_under_load("rolling", "replicas = 2\nstrategy = \"rolling\"\ndrain_timeout = \"2s\"\n[service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n");
}

#[test]
fn a_canary_release_under_load_fails_nothing() {
    let _room = common::room("release");
    release_under_load(
        "canary",
        "replicas = 2\nstrategy = \"canary\"\nkeep_previous = \"1s\"\ndrain_timeout = \"2s\"\n\
         [service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n\
         [service.web.canary]\nsteps = [20, 60]\nstep_interval = \"2s\"\nanalysis = { min_requests = 20 }\n",
    );
}

#[test]
fn a_blue_green_release_under_load_fails_nothing_and_rolls_back_in_under_a_second() {
    let _room = common::room("release");
    let _g = serial();
    let env = Env::new(
        "bluegreen",
        "replicas = 2\nstrategy = \"blue-green\"\nkeep_previous = \"5m\"\ndrain_timeout = \"2s\"\n\
         blue_green = { smoke = [{ path = \"/\", contains = \"demo-app\" }, \"/healthz\"] }\n\
         [service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n",
    );
    assert_eq!(env.deploy().0, 0);
    env.version("2.0.0", "");
    let (ok, bad) = under_load(env.port, || assert_eq!(env.deploy().0, 0));
    assert!(ok > 500 && bad == 0, "ok {ok}, failed {bad}");
    assert!(env.versions(4).iter().all(|v| v == "demo-app 2.0.0"));
    let s = env.status();
    assert_eq!(s["previous"]["release"]["id"], "web-1", "v1 stays warm: {s:#}");

    let mut took = Duration::ZERO;
    let (ok, bad) = under_load(env.port, || {
        let t = Instant::now();
        let out = env.ok(&["rollback"]);
        took = t.elapsed();
        assert!(out.contains("traffic is back on web-1"), "{out}");
    });
    assert!(took < Duration::from_secs(1), "rollback took {took:?}");
    assert!(ok > 100 && bad == 0, "ok {ok}, failed {bad}");
    assert!(env.versions(6).iter().all(|v| v == "demo-app 1.0.0"));
    let hist = env.ok(&["history", "--verify"]);
    assert!(hist.contains("started rollback") && hist.contains("hash chain verified"), "{hist}");
    // The rollback is a release of its own (web-3), naming where it went,
    // with the tags of what it runs; the next id follows it.
    assert!(hist.contains("web web-3") && hist.contains("instant rollback to web-1 from web-2"), "{hist}");
    assert!(!hist.contains("[]"), "tags recorded: {hist}");

    // --to names a release: web-2 is warm now, so that is a switch too.
    let err = String::from_utf8_lossy(&env.kiln(&["rollback", "--to", "web-1"]).stderr).into_owned();
    assert!(err.contains("409") && err.contains("web-1 already serves"), "{err}");
    let err = String::from_utf8_lossy(&env.kiln(&["rollback", "--to", "web-9"]).stderr).into_owned();
    assert!(err.contains("404") && err.contains("no release \"web-9\""), "{err}");
    assert!(env.ok(&["rollback", "--to", "web-2"]).contains("traffic is back on web-2"));
    assert!(env.versions(4).iter().all(|v| v == "demo-app 2.0.0"));
}

const CANARY: &str = "replicas = 1\nstrategy = \"canary\"\ndrain_timeout = \"1s\"\n\
     [service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\nstart_deadline = \"4s\"\n\
     [service.web.canary]\nsteps = [50]\nstep_interval = \"3s\"\nanalysis = { min_requests = 30, inconclusive_limit = 1 }\n";

#[test]
fn a_canary_that_errs_or_is_slow_fails_and_traffic_is_back_on_stable() {
    let _room = common::room("release");
    let _g = serial();
    let env = Env::new("canary-bad", CANARY);
    assert_eq!(env.deploy().0, 0);
    for (round, (extra, metric)) in
        [(", FAIL_RATE = \"0.2\"", "error_rate"), (", LATENCY_MS = \"25\"", "latency_ms")].iter().enumerate()
    {
        env.version(&format!("2.0.{round}"), extra);
        let mut result = (0, String::new());
        under_load(env.port, || result = env.deploy());
        assert_eq!(result.0, 2, "the release fails: {}", result.1);
        assert!(result.1.contains("rolled-back"), "{}", result.1);
        assert!(env.versions(10).iter().all(|v| v == "demo-app 1.0.0"), "traffic is back on v1 at once");
        let s = env.wait_for("the canary's instances to go", |s| s["instances"].as_array().unwrap().len() == 1);
        assert_eq!(s["stable"]["id"], "web-1");
        let hist = env.ok(&["history"]);
        let verdict = hist.lines().rev().find(|l| l.contains("verdict")).unwrap_or_default().to_owned();
        assert!(verdict.contains("fail") && verdict.contains(metric), "{hist}");
    }
}

#[test]
fn too_little_traffic_is_inconclusive_then_pauses_and_abort_leaves_stable() {
    let _room = common::room("release");
    let _g = serial();
    let env = Env::new("canary-idle", CANARY);
    assert_eq!(env.deploy().0, 0);
    env.version("2.0.0", "");
    let (code, out) = env.deploy();
    assert_eq!(code, 4, "paused for a person: {out}");
    let s = env.status();
    assert!(s["rollout"]["paused"].as_str().unwrap().contains("inconclusive"), "{s:#}");
    let hist = env.ok(&["history"]);
    assert!(hist.contains("verdict at step 3: inconclusive"), "{hist}");
    assert!(!hist.contains(": pass"), "never a silent pass: {hist}");
    assert!(env.ok(&["abort"]).contains("aborted"));
    let s = env.wait_for("the canary to go", |s| s["instances"].as_array().unwrap().len() == 1);
    assert_eq!(s["stable"]["id"], "web-1");
    assert_eq!(s["last"]["outcome"], "aborted");
    assert!(env.versions(4).iter().all(|v| v == "demo-app 1.0.0"));
}

#[test]
fn a_release_whose_health_check_fails_never_gets_a_request_and_fails_cleanly() {
    let _room = common::room("release");
    let _g = serial();
    let env = Env::new("unhealthy", CANARY);
    assert_eq!(env.deploy().0, 0);
    env.version("3.0.0", ", FAIL_HEALTH = \"1\"");
    let mut result = (0, String::new());
    let (ok, bad) = under_load(env.port, || result = env.deploy());
    assert_eq!(result.0, 2, "{}", result.1);
    assert!(result.1.contains("0 of 1 new instances healthy"), "{}", result.1);
    assert!(ok > 100 && bad == 0, "ok {ok}, failed {bad}");
    let hist = env.ok(&["history"]);
    let web2: Vec<&str> = hist.lines().skip_while(|l| !l.contains("web web-2")).collect();
    assert!(!web2.iter().any(|l| l.contains("step ")), "v3 never got traffic: {hist}");
    env.wait_for("the unhealthy instance to go", |s| s["instances"].as_array().unwrap().len() == 1);
}

#[test]
fn a_second_serve_refuses_naming_the_first_and_bad_requests_name_the_field() {
    let _room = common::room("release");
    let _g = serial();
    let env = Env::new("second", "");
    let out = env.kiln(&["serve", "-f", "kiln.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = env.serve.as_ref().unwrap().id();
    assert!(
        !out.status.success() && err.contains(&format!("already running on {} (pid {pid})", env.home.display())),
        "{err}"
    );
    let out = env.kiln(&["promote"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("409") || !out.status.success());
    let out = env.kiln(&["status", "nosuch"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("nosuch"), "{err}");
    // The socket is the owner's alone.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(env.home.join("serve.sock")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_deploy_during_a_release_supersedes_it_and_starts_over() {
    let _room = common::room("release");
    let _g = serial();
    let env = Env::new(
        "supersede",
        "strategy = \"canary\"\ndrain_timeout = \"1s\"\n[service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n\
         [service.web.canary]\nsteps = [\"pause\", 50]\nstep_interval = \"1s\"\nanalysis = { min_requests = 5 }\n",
    );
    assert_eq!(env.deploy().0, 0);
    env.version("2.0.0", "");
    let (code, out) = env.deploy();
    assert_eq!(code, 4, "v2 waits at its pause: {out}");
    env.version("3.0.0", "");
    let out = env.ok(&["deploy", "--no-wait"]);
    assert!(out.contains("release web-3 started"), "{out}");
    let s = env.wait_for("v2 gone and v3 at its first step, paused", |s| {
        s["rollout"]["release"] == "web-3"
            && s["rollout"]["paused"].is_string()
            && s["instances"].as_array().unwrap().iter().all(|i| i["release"] != "web-2")
    });
    assert_eq!(s["rollout"]["step"], 1, "v3 starts over: {s:#}");
    let hist = env.ok(&["history", "web"]);
    assert!(hist.contains("finished superseded: superseded by a new deploy"), "{hist}");
    assert!(env.ok(&["promote"]).contains("web-3 goes on"));
    let (ok, bad) = under_load(env.port, || {
        env.wait_for("v3 to finish", |s| s["rollout"].is_null());
    });
    assert!(ok > 50 && bad == 0, "ok {ok}, failed {bad}");
    assert_eq!(env.status()["stable"]["id"], "web-3");
    assert!(env.versions(4).iter().all(|v| v == "demo-app 3.0.0"));
}

#[test]
fn kiln_up_bakes_serves_and_deploys_in_the_foreground() {
    let _room = common::room("release");
    use std::io::BufRead;
    let _g = serial();
    let mut env = Env::bare("up", "replicas = 2\n[service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n");
    let mut up = kiln_cmd()
        .args(["up", env.dir.to_str().unwrap()])
        .env("KILN_HOME", &env.home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(up.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("kiln up printed its URL").unwrap();
        if let Some(rest) = line.strip_prefix("serving ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    assert_eq!(url, format!("http://127.0.0.1:{}/", env.port));
    assert!(env.versions(4).iter().all(|v| v == "demo-app 1.0.0"));
    assert_eq!(env.releases_running(), vec!["web-1"; 2]);
    env.serve = Some(up); // stopped (and cleaned up after) by Env's drop
    env.kill_serve();
    assert!(env.versions(2).iter().all(|v| v == "demo-app 1.0.0"), "the data plane outlives kiln up");
}

#[test]
fn the_tcp_api_needs_the_token_and_refuses_without_changing_anything() {
    let _room = common::room("release");
    let _g = serial();
    let mut env = Env::bare("tcp", "");
    let port = free_port();
    let log = fs::File::create(env.home.join("serve-test.log")).unwrap();
    env.serve = Some(
        kiln_cmd()
            .args(["serve", "-f", "kiln.toml", "--tcp", &format!("127.0.0.1:{port}")])
            .current_dir(&env.dir)
            .env("KILN_HOME", &env.home)
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    common::wait_port(port);
    let token = fs::read_to_string(env.home.join("serve.token")).unwrap().trim().to_owned();
    let ask = |method: &str, path: &str, auth: Option<&str>, body: &str| {
        let mut c = Conn::new(port);
        let h: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        let (code, _, b) = c.send(method, path, &h, body.as_bytes()).unwrap();
        (code, String::from_utf8_lossy(&b).into_owned())
    };
    let deploy = r#"{"service":"web"}"#;
    assert_eq!(ask("POST", "/v1/deploy", None, deploy).0, 401);
    assert_eq!(ask("POST", "/v1/deploy", Some("Bearer wrong"), deploy).0, 401);
    let (code, body) = ask("GET", "/v1/status", Some(&format!("Bearer {token}")), "");
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["services"][0]["rollout"].is_null(), "the refused deploys changed nothing: {body}");
    assert!(env.ok(&["history"]).contains("no releases yet"));
    let (code, body) = ask("POST", "/v1/deploy", Some(&format!("Bearer {token}")), r#"{"service":"web","imgae":"x"}"#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("imgae"), "{body}");
    let out = env.kiln(&["serve", "-f", "kiln.toml", "--tcp", "0.0.0.0:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--tcp 0.0.0.0:1: the API listens on loopback addresses only"),
        "{err}"
    );
}

#[test]
fn a_failing_smoke_check_through_the_preview_fails_the_blue_green_release_before_any_traffic() {
    let _room = common::room("release");
    let _g = serial();
    let env = Env::new(
        "smoke",
        "strategy = \"blue-green\"\ndrain_timeout = \"1s\"\n\
         blue_green = { smoke = [{ path = \"/\", contains = \"3.0\" }] }\n\
         [service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n",
    );
    assert_eq!(env.deploy().0, 0);
    env.version("2.0.0", "");
    let mut result = (0, String::new());
    let (ok, bad) = under_load(env.port, || result = env.deploy());
    assert_eq!(result.0, 2, "{}", result.1);
    assert!(result.1.contains("smoke check through the preview listener"), "{}", result.1);
    assert!(result.1.contains("does not contain \"3.0\""), "{}", result.1);
    assert!(ok > 100 && bad == 0, "ok {ok}, failed {bad}");
    assert!(!env.home.join("proxies/web/preview.json").exists(), "the preview is gone");
    let hist = env.ok(&["history"]);
    let web2: Vec<&str> = hist.lines().skip_while(|l| !l.contains("web web-2")).collect();
    assert!(!web2.iter().any(|l| l.contains("step ")), "v2 never got traffic: {hist}");
    env.version("3.0.0", "");
    assert_eq!(env.deploy().0, 0);
    assert!(env.versions(4).iter().all(|v| v == "demo-app 3.0.0"));
}

#[test]
fn a_load_balancer_that_dies_is_started_again_from_the_last_table() {
    let _room = common::room("release");
    let _g = serial();
    let env = Env::new("proxy-dies", "replicas = 2\n");
    assert_eq!(env.deploy().0, 0);
    let pid = env.status()["proxy_pid"].as_i64().unwrap();
    // SAFETY: a signal to the proxy this test's kiln serve started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let s = env.wait_for("another load balancer", |s| s["proxy_pid"].as_i64().is_some_and(|p| p != pid));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", env.port)).is_err() {
        assert!(Instant::now() < deadline, "the new load balancer never listened: {s:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env.versions(6).iter().all(|v| v == "demo-app 1.0.0"));
    assert!(env.serve_log().contains("is gone; starting another"));
}

#[test]
fn a_listen_address_another_process_holds_is_refused_at_once_and_the_running_listener_keeps_serving() {
    let _room = common::room("release");
    let _g = serial();
    let mut env = Env::busybox("listen-taken", "replicas = 2\n[service.web.health]\npath = \"/\"\n");
    let (code, out) = env.deploy();
    assert_eq!(code, 0, "{out}");
    env.wait_for("2 healthy", |s| {
        s["instances"].as_array().unwrap().iter().filter(|i| i["health"]["healthy"] == true).count() == 2
    });
    let old_port = env.port;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = taken.local_addr().unwrap();
    let toml = fs::read_to_string(env.dir.join("kiln.toml")).unwrap();
    let moved = toml.replace(&format!("127.0.0.1:{old_port}"), &b.to_string());
    let line = moved.lines().position(|l| l.starts_with("listen = ")).unwrap() + 1;
    fs::write(env.dir.join("kiln.toml"), &moved).unwrap();
    let mut took = Duration::ZERO;
    let (ok, bad) = under_load(old_port, || {
        let t = Instant::now();
        let out = env.kiln(&["deploy", "web"]);
        took = t.elapsed();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_ne!(out.status.code(), Some(0), "{err}");
        assert!(
            err.contains("409") && err.contains(&format!("kiln.toml:{line}: service.web.listen: cannot bind {b}")),
            "{err}"
        );
        assert!(err.contains("another process listens there"), "{err}");
    });
    assert!(took < Duration::from_secs(1), "refused in {took:?}");
    assert!(ok > 50 && bad == 0, "the old listener kept serving: ok {ok} failed {bad}");
    assert_eq!(env.versions(3), ["1.0.0"; 3]);
    // The service stays as it was: status still shows the old address.
    assert_eq!(env.status()["listen"], format!("127.0.0.1:{old_port}"), "{}", env.status());

    // kiln serve started with the taken address fails at once, naming the key.
    env.kill_serve();
    let t = Instant::now();
    let out = env.kiln(&["serve", "-f", "kiln.toml"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}: {err}", t.elapsed());
    assert!(err.contains(&format!("kiln.toml:{line}: service.web.listen: cannot bind {b}")), "{err}");
    drop(taken);
    // Freed, the move goes through: the new address serves and the old one closes.
    fs::write(env.dir.join("kiln.toml"), &toml).unwrap();
    env.start_serve(None);
    fs::write(env.dir.join("kiln.toml"), &moved).unwrap();
    let out = env.kiln(&["deploy", "web"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = Conn::new(b.port());
    assert_eq!(String::from_utf8(c.get("/").unwrap().2).unwrap().trim(), "1.0.0");
}

#[test]
fn kiln_down_drains_and_destroys_a_service_keeps_its_volumes_and_history_and_deploy_brings_it_back() {
    let _room = common::room("release");
    let _g = serial();
    let mut env = Env::busybox(
        "down",
        "replicas = 2\ndrain_timeout = \"1s\"\nvolumes = { data = \"/data\" }\n[service.web.health]\npath = \"/\"\n",
    );
    let (code, out) = env.deploy();
    assert_eq!(code, 0, "{out}");
    assert_eq!(env.versions(2), ["1.0.0"; 2]);
    let proxy = env.proxy_pid();
    let volume = env.home.join("volumes/web/data");
    assert!(volume.is_dir(), "the volume exists");

    let out = env.ok(&["down", "web"]);
    assert!(out.contains("web: down: no instance left, load balancer stopped"), "{out}");
    let s = env.status();
    assert_eq!(s["instances"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(s["down"]["done"], true, "{s}");
    assert!(s["proxy_pid"].is_null(), "{s}");
    let ps = json(&env.ok(&["ps", "--json"]));
    assert_eq!(ps["instances"].as_array().unwrap().len(), 0, "{ps}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{proxy}")).exists()
        && !fs::read_to_string(format!("/proc/{proxy}/stat")).unwrap_or_default().contains(") Z")
    {
        assert!(Instant::now() < deadline, "the load balancer (pid {proxy}) never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", env.port)).is_err(), "nothing listens on the service's address");
    assert!(volume.is_dir(), "volumes are kept unless --purge");
    let hist = env.ok(&["history", "web"]);
    assert!(hist.contains("taken down by"), "{hist}");
    // A restarted kiln serve does not bring it back by itself.
    env.kill_serve();
    env.start_serve(None);
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::net::TcpStream::connect(("127.0.0.1", env.port)).is_err(), "still down after a restart");

    // A deploy brings it back; down --purge removes its volumes too.
    let out = env.kiln(&["deploy", "web"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(env.versions(2), ["1.0.0"; 2]);
    assert!(env.status()["down"].is_null());
    let out = env.ok(&["down", "web", "--purge"]);
    assert!(out.contains("its volumes were removed"), "{out}");
    assert!(!env.home.join("volumes/web").exists(), "purged");
    assert!(env.ok(&["history", "--verify"]).contains("hash chain verified"));
}

/// Reads one response with a chunked or sized body from `r`: (head, body).
fn read_reframed(r: &mut std::io::BufReader<std::net::TcpStream>) -> (String, String) {
    use std::io::{BufRead, Read};
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "the connection closed: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if lower.contains("transfer-encoding: chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let len = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap())
            .expect("a length or chunks");
        body.resize(len, 0);
        r.read_exact(&mut body).unwrap();
    }
    (head, String::from_utf8(body).unwrap())
}

#[test]
fn a_close_delimited_backend_answer_reaches_a_keep_alive_client_chunked_on_one_connection() {
    let _room = common::room("release");
    use std::io::Write;
    let _g = serial();
    let env = Env::busybox("close-delimited", "[service.web.health]\npath = \"/\"\n");
    let (code, out) = env.deploy();
    assert_eq!(code, 0, "{out}");
    // busybox httpd's CGI answers end when it closes the connection (no
    // length, no chunks, bare LF after its headers).
    let s = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = std::io::BufReader::new(s);
    for i in 0..5 {
        let path = if i % 2 == 0 { format!("/cgi-bin/echo?n={i}") } else { "/".to_owned() };
        write!(r.get_mut(), "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let (head, body) = read_reframed(&mut r);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "the client connection is kept: {head}");
        if i % 2 == 0 {
            assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
            assert_eq!(body, format!("cgi n={i}\n"));
        } else {
            assert_eq!(body, "1.0.0\n");
        }
    }
    // An HTTP/1.0 client gets the body delimited by the close, as before.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    write!(s, "GET /cgi-bin/echo?old HTTP/1.0\r\n\r\n").unwrap();
    let mut all = String::new();
    std::io::Read::read_to_string(&mut s, &mut all).unwrap();
    assert!(all.contains("Connection: close") && all.ends_with("cgi old\n") && !all.contains("chunked"), "{all}");
}

#[test]
fn a_release_is_the_image_and_the_service_settings_and_plan_and_deploy_agree_over_a_table_of_changes() {
    let _room = common::room("release");
    let _g = serial();
    let base = "replicas = 2\ndrain_timeout = \"1s\"\nstrategy = \"rolling\"\n\
                secrets = [{ name = \"tok\", env = \"TOK\" }]\n[service.web.health]\npath = \"/\"\ninterval = \"200ms\"\n";
    let mut env = Env::bare_busybox("settings", base);
    env.secret_set("tok", b"one");
    env.start_serve(None);
    let (code, out) = env.deploy();
    assert_eq!(code, 0, "{out}");
    let toml = fs::read_to_string(env.dir.join("kiln.toml")).unwrap();
    let ids = |env: &Env| -> Vec<String> {
        let mut v: Vec<String> = env.status()["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    // (what changes, how kiln.toml reads then, the settings named as changed,
    // whether every instance is replaced, replicas after)
    let table: [(&str, String, &[&str], bool, usize); 5] = [
        ("nothing", toml.clone(), &[], false, 2),
        ("replicas 2 -> 3 (a scale)", toml.replace("replicas = 2", "replicas = 3"), &[], false, 3),
        (
            "an env variable",
            toml.replace("replicas = 2", "replicas = 3\nenv = { FOO = \"1\" }"),
            &["env.FOO added"],
            true,
            3,
        ),
        (
            "a memory limit",
            toml.replace("replicas = 2", "replicas = 3\nenv = { FOO = \"1\" }\nmemory = \"64M\""),
            &["memory changed"],
            true,
            3,
        ),
        (
            "the secret rotated (kiln secret set)",
            toml.replace("replicas = 2", "replicas = 3\nenv = { FOO = \"1\" }\nmemory = \"64M\""),
            &["secret.tok changed"],
            true,
            3,
        ),
    ];
    for (what, text, changed, replaced, replicas) in table {
        fs::write(env.dir.join("kiln.toml"), &text).unwrap();
        if what.starts_with("the secret") {
            env.secret_set("tok", b"two");
        }
        let before = ids(&env);
        let plan = json(&env.ok(&["plan", "web", "--json"]))[0].clone();
        let started = json(&env.ok(&["deploy", "web", "--no-wait", "--json"]));
        if plan["steps"].as_array().unwrap().is_empty() {
            assert_eq!(started["noop"], true, "{what}: plan says nothing to do, so does deploy: {started}");
            assert_eq!(ids(&env), before, "{what}");
            continue;
        }
        assert!(started["noop"].is_null(), "{what}: plan has steps, deploy must release: {plan} {started}");
        assert_eq!(started["plan"]["steps"], plan["steps"], "{what}: plan and deploy agree");
        assert_eq!(started["plan"]["changed"], plan["changed"], "{what}");
        let named: Vec<&str> =
            plan["changed"].as_array().map_or(vec![], |a| a.iter().map(|c| c.as_str().unwrap()).collect());
        assert_eq!(named, changed, "{what}: the settings named");
        let release = started["release"].as_str().unwrap().to_owned();
        let scale = !started["scaled"].is_null();
        assert_eq!(scale, changed.is_empty(), "{what}: replicas alone is a scale of the stable release: {started}");
        // Done: no rollout, and exactly `replicas` instances, all healthy,
        // none leaving (the old ones drained and gone).
        env.wait_for(&format!("{what}: {release} done"), |s| {
            let all = s["instances"].as_array().unwrap();
            s["rollout"].is_null() && all.len() == replicas && all.iter().all(|i| i["health"]["healthy"] == true)
        });
        if !scale {
            assert_eq!(env.status()["last"]["outcome"], "succeeded", "{what}");
        }
        let after = ids(&env);
        let kept = before.iter().filter(|i| after.contains(i)).count();
        if replaced {
            assert_eq!(kept, 0, "{what}: every instance replaced ({before:?} -> {after:?})");
        } else {
            assert_eq!(kept, before.len(), "{what}: a scale keeps the running instances ({before:?} -> {after:?})");
        }
        // History records the settings that changed, by name.
        if !changed.is_empty() {
            let hist = env.ok(&["history", "web"]);
            assert!(hist.contains(&format!("settings: {}", changed.join(", "))), "{what}: {hist}");
        }
    }
    // kiln status shows the secret version each instance holds: all the new one.
    let s = env.status();
    let versions: Vec<&str> =
        s["instances"].as_array().unwrap().iter().filter_map(|i| i["secrets"]["tok"].as_str()).collect();
    assert_eq!(versions.len(), 3, "{s}");
    assert!(versions.iter().all(|v| *v == versions[0]), "{versions:?}");
    // A deploy that names another file is refused; serve's own file rules.
    fs::write(env.dir.join("other.toml"), toml.replace("replicas = 2", "replicas = 1")).unwrap();
    let out = env.kiln(&["deploy", "web", "-f", "other.toml"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("409") && err.contains("other.toml") && err.contains("kiln.toml"), "{err}");
    assert_eq!(ids(&env).len(), 3, "nothing changed");
}
