//! Healing end to end: real runc instances of the demo app behind the
//! service's `kiln proxy`, under continuous keep-alive load, killed, hung,
//! aged, tampered with and quarantined; `kiln serve` itself restarted.

use crate::common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::serve_env::{serial, under_load, Env};
use common::{json, Conn};

const SERVICE: &str = "replicas = 3\ndrain_timeout = \"2s\"\n\
    [service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"250ms\"\nunhealthy_threshold = 2\n";

fn instances(s: &serde_json::Value) -> Vec<serde_json::Value> {
    s["instances"].as_array().cloned().unwrap_or_default()
}

/// Serving instances: healthy, not quarantined, routed.
fn serving(s: &serde_json::Value) -> usize {
    instances(s)
        .iter()
        .filter(|i| i["health"]["healthy"] == true && i["quarantined"] == false && i["in_table"] == true)
        .count()
}

fn deployed(what: &str, settings: &str) -> Env {
    let env = Env::new(what, &format!("{SERVICE}{settings}"));
    let (code, out) = env.deploy();
    assert_eq!(code, 0, "{out}");
    env.wait_for("3 serving instances", |s| serving(s) == 3);
    env
}

/// One client posting `/order` with unique ids until `stop`: (answered
/// ids, ids that failed).
fn post_orders(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(Vec<String>, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        let mut c = Conn::new(port);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) && n < 100_000 {
            n += 1;
            let id = format!("o{n}");
            match c.send("POST", "/order", &[], id.as_bytes()) {
                Ok((201, _, _)) => ok.push(id),
                Ok(_) => failed.push(id),
                Err(_) => {
                    failed.push(id);
                    c = Conn::new(port);
                }
            }
        }
        (ok, failed)
    })
}

#[test]
fn sigkill_every_second_for_30_s_fails_no_idempotent_request_and_sends_no_post_twice() {
    let _room = common::room("heal");
    let _g = serial();
    let env = deployed("chaos", "");
    let stop = Arc::new(AtomicBool::new(false));
    let posts = post_orders(env.port, stop.clone());
    let mut report = serde_json::Value::Null;
    let (ok, bad) = under_load(env.port, || {
        report = json(&env.ok(&["chaos", "--kill-rate", "1", "--duration", "30s", "--max-share", "0.34", "--json"]));
        stop.store(true, Ordering::Relaxed);
    });
    let (posted, post_failed) = posts.join().unwrap();
    eprintln!(
        "chaos report: {report:#}\nGET ok {ok} failed {bad}; POST ok {} failed {}",
        posted.len(),
        post_failed.len()
    );
    let kills = report["kills"].as_u64().unwrap();
    assert!(kills >= 20, "about one kill a second: {report:#}");
    assert_eq!(report["replaced"].as_u64(), Some(kills), "a replacement served after every kill: {report:#}");
    assert!(report["replace_median_ms"].as_u64().unwrap() < 1000, "median under a second: {report:#}");
    assert!(ok > 2000, "the load ran: {ok}");
    assert_eq!(bad, 0, "failed idempotent requests under chaos");
    // What reached the application: no order twice (kiln never retries a POST).
    let mut seen: HashMap<String, u32> = HashMap::new();
    let logs = env.ok(&["logs", "--service", "web", "--json"]);
    for l in logs.lines() {
        if let Some(id) = json(l)["line"].as_str().and_then(|l| l.strip_prefix("order ")) {
            *seen.entry(id.to_owned()).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "orders the application received twice: {twice:?}");
    assert!(posted.iter().all(|id| seen.contains_key(id)), "every answered order was received");
    assert!(posted.len() > 500, "POSTs ran: {}", posted.len());
    eprintln!("POSTs that failed under chaos (not retried, by design): {}", post_failed.len());
    let s = env.wait_for("3 serving instances again", |s| serving(s) == 3);
    assert_eq!(s["heal"]["failing"], false, "chaos kills are no crash loop: {s:#}");
    let hist = env.ok(&["history", "web"]);
    assert!(hist.contains("replacing") && hist.contains("(chaos)") && hist.contains("serving after"), "{hist}");
}

#[test]
fn a_hung_instance_is_taken_out_by_health_checks_and_replaced_without_a_failed_request() {
    let _room = common::room("heal");
    let _g = serial();
    let env = deployed("hung", "");
    let s = env.status();
    let victim = instances(&s)[0].clone();
    let id = victim["id"].as_str().unwrap().to_owned();
    let port = victim["port"].as_u64().unwrap() as u16;
    let (ok, bad) = under_load(env.port, || {
        std::thread::sleep(Duration::from_millis(500));
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"POST /hang HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        let _ = c.read(&mut buf);
        let t = Instant::now();
        env.wait_for("the hung instance to be replaced", |s| {
            !instances(s).iter().any(|i| i["id"] == id.as_str() && i["draining"] == false) && serving(s) == 3
        });
        eprintln!("hung instance replaced after {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    });
    assert!(ok > 500, "the load ran: {ok}");
    assert_eq!(bad, 0, "failed requests around the hung instance");
    let hist = env.ok(&["history", "web"]);
    assert!(hist.contains(&format!("replacing {id} (hung)")), "{hist}");
}

#[test]
fn max_age_recycles_every_instance_surge_first_without_a_failed_request() {
    let _room = common::room("heal");
    let _g = serial();
    let env = deployed("recycle", "[service.web.heal]\nmax_age = \"4s\"\n");
    let first: Vec<String> = instances(&env.status()).iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    let s = env.status();
    assert!(instances(&s).iter().all(|i| i["recycle_in_s"].as_u64().is_some_and(|r| r <= 4)), "{s:#}");
    let (ok, bad) = under_load(env.port, || {
        env.wait_for("every first instance recycled", |s| {
            instances(s).iter().all(|i| !first.contains(&i["id"].as_str().unwrap().to_owned())) && serving(s) == 3
        });
    });
    assert!(ok > 500, "the load ran: {ok}");
    assert_eq!(bad, 0, "failed requests while recycling");
    let hist = env.ok(&["history", "web"]);
    assert!(hist.matches("(max-age)").count() >= 3, "{hist}");
}

#[test]
fn drift_of_the_image_cache_and_of_a_runtime_config_is_found_and_healed() {
    let _room = common::room("heal");
    let _g = serial();
    let env = deployed("drift", "[service.web.heal]\ndrift_interval = \"off\"\n");
    let out = env.kiln(&["verify-instances", "--json"]);
    assert_eq!(out.status.code(), Some(0), "nothing drifted yet: {}", String::from_utf8_lossy(&out.stdout));
    let s = env.status();
    let digest = s["stable"]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_owned();
    let id = instances(&s)[0]["id"].as_str().unwrap().to_owned();
    let info = json(&env.ok(&["inspect-instance", &id, "--json"]));
    // Its limits changed behind kiln's back.
    let root = info["runc_root"].as_str().unwrap().to_owned();
    common::run("runc", &["--root", &root, "update", "--pids-limit", "77", &id]);
    let out = env.kiln(&["verify-instances"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert!(text.contains(&format!("{id}: DRIFT")) && text.contains("pids limit is 77"), "{text}");
    assert_eq!(text.matches("DRIFT").count(), 1, "only that one: {text}");
    let (ok, bad) = under_load(env.port, || {
        env.wait_for("the drifted instance replaced", |s| {
            instances(s).iter().all(|i| i["id"] != id.as_str()) && serving(s) == 3
        });
    });
    assert!(ok > 100 && bad == 0, "ok {ok} failed {bad}");

    // The shared image cache: a file that is not in the image.
    env.wait_for("the old instance gone", |s| instances(s).len() == 3);
    let before: Vec<String> = instances(&env.status()).iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    fs::write(env.home.join("images").join(&digest).join("rootfs/evil"), "x").unwrap();
    let out = env.kiln(&["verify-instances"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert_eq!(text.matches("/evil is not part of the image").count(), 3, "every instance runs from it: {text}");
    let (ok, bad) = under_load(env.port, || {
        env.wait_for("all three replaced from a fresh cache", |s| {
            instances(s).iter().all(|i| !before.contains(&i["id"].as_str().unwrap().to_owned())) && serving(s) == 3
        });
    });
    assert!(ok > 100 && bad == 0, "ok {ok} failed {bad}");
    let out = env.kiln(&["verify-instances"]);
    assert_eq!(out.status.code(), Some(0), "healed: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!env.home.join("images").join(&digest).join("rootfs/evil").exists());
    let hist = env.ok(&["history", "web"]);
    assert!(hist.contains("(drift): runtime config") && hist.contains("(drift): image cache"), "{hist}");
}

#[test]
fn quarantine_freezes_keeps_and_excludes_the_instance_until_released() {
    let _room = common::room("heal");
    let _g = serial();
    let env = deployed("quarantine", "");
    let id = instances(&env.status())[0]["id"].as_str().unwrap().to_owned();
    let (ok, bad) = under_load(env.port, || {
        let out = env.ok(&["quarantine", &id, "--reason", "post-mortem test"]);
        assert!(out.contains("frozen"), "{out}");
        env.wait_for("a replacement, the quarantined one frozen", |s| {
            serving(s) == 3 && instances(s).iter().any(|i| i["id"] == id.as_str() && i["state"] == "paused")
        });
    });
    assert!(ok > 100 && bad == 0, "ok {ok} failed {bad}");
    let s = env.status();
    let q = instances(&s).into_iter().find(|i| i["id"] == id.as_str()).unwrap();
    assert_eq!((q["quarantined"].clone(), q["in_table"].clone()), (true.into(), false.into()), "{s:#}");
    // Runc agrees it is frozen.
    let info = json(&env.ok(&["inspect-instance", &id, "--json"]));
    let state = common::run("runc", &["--root", info["runc_root"].as_str().unwrap(), "state", &id]);
    assert_eq!(json(&String::from_utf8_lossy(&state.stdout))["status"], "paused");
    assert_eq!(info["quarantine"]["reason"], "post-mortem test");
    assert!(info["env"].as_array().unwrap().iter().any(|e| e == "DEMO_VERSION"), "{info:#}");
    assert!(!env.ok(&["inspect-instance", &id]).contains("1.0.0\n"), "names only, never values");
    let dir = std::path::PathBuf::from(info["quarantine"]["dir"].as_str().unwrap());
    env.wait_for("the post-mortem copy", |_| dir.join("quarantine.json").exists());
    assert!(fs::read_to_string(dir.join("logs.jsonl")).unwrap().contains("listening"), "its logs are kept");
    assert!(dir.join("instance.json").exists());
    // No traffic reaches it: every answer comes from the other three.
    let mut c = Conn::new(env.port);
    for _ in 0..30 {
        assert_eq!(c.get("/").unwrap().0, 200);
    }
    env.ok(&["release-quarantine", &id]);
    env.wait_for("the quarantined instance destroyed", |s| instances(s).iter().all(|i| i["id"] != id.as_str()));
    assert!(!dir.exists());
    let hist = env.ok(&["history", "web"]);
    assert!(
        hist.contains(&format!("quarantined {id}")) && hist.contains(&format!("destroyed quarantined {id}")),
        "{hist}"
    );
}

#[test]
fn a_crash_loop_in_a_canary_fails_the_release_and_stable_keeps_serving() {
    let _room = common::room("heal");
    let _g = serial();
    let env = Env::new(
        "crashloop",
        &format!(
            "strategy = \"canary\"\n{SERVICE}[service.web.canary]\nsteps = [50]\nstep_interval = \"2s\"\n\
             [service.web.heal]\ncrash_loop = 2\n"
        ),
    );
    assert_eq!(env.deploy().0, 0);
    env.wait_for("3 serving", |s| serving(s) == 3);
    // Each instance of 2.0.0 exits (code 3) after two health checks.
    env.version("2.0.0", ", CRASH_AFTER = \"2\"");
    let mut code = 0;
    let mut out = String::new();
    let (ok, bad) = under_load(env.port, || (code, out) = env.deploy());
    assert_ne!(code, 0, "{out}");
    let s = env.status();
    assert_eq!(s["last"]["outcome"], "rolled-back", "{s:#}");
    // At least the limit: more may exit within the tick that sees the loop.
    let reason = s["last"]["reason"].as_str().unwrap();
    let failed: u32 = reason
        .strip_prefix("crash loop: ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{s:#}"));
    assert!(failed >= 2, "{s:#}");
    assert!(s["last"]["reason"].as_str().unwrap().contains("exited with code 3"), "{s:#}");
    assert_eq!(s["stable"]["id"], "web-1");
    assert!(ok > 100 && bad == 0, "ok {ok} failed {bad}");
}

#[test]
fn kiln_serve_restarted_three_times_under_load_fails_no_request_and_still_heals() {
    let _room = common::room("heal");
    let _g = serial();
    let mut env = deployed("restart", "");
    let total_ok = AtomicU64::new(0);
    let (ok, bad) = under_load(env.port, || {
        for _ in 0..3 {
            // SIGTERM, then a new kiln serve adopts instances and proxies.
            let pid = env.serve.as_ref().unwrap().id() as i32;
            // SAFETY: a signal to the kiln serve this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = env.serve.take().map(|mut c| c.wait());
            std::thread::sleep(Duration::from_millis(300));
            env.start_serve(None);
            env.wait_for("3 serving after the restart", |s| serving(s) == 3);
            total_ok.fetch_add(1, Ordering::Relaxed);
        }
        // The restarted controller still heals.
        let id = instances(&env.status())[0]["id"].as_str().unwrap().to_owned();
        env.ok(&["stop", &id]);
        env.wait_for("a replacement", |s| serving(s) == 3 && instances(s).iter().all(|i| i["id"] != id.as_str()));
    });
    assert_eq!(total_ok.load(Ordering::Relaxed), 3);
    assert!(ok > 500, "the load ran: {ok}");
    assert_eq!(bad, 0, "failed requests across three restarts of kiln serve");
}

/// A process that has exited (gone, or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Asks the API for the status over its unix socket every 20 ms until
/// `stop`: (answered 200, failed).
fn api_calls(home: std::path::PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut ok, mut bad) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let answer = std::os::unix::net::UnixStream::connect(home.join("serve.sock")).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(90)))?;
                s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            });
            match answer {
                Ok(a) if a.starts_with("HTTP/1.1 200") => ok += 1,
                other => {
                    eprintln!("api call: {other:?}");
                    bad += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, bad)
    })
}

#[test]
fn kiln_serve_upgrade_hands_its_sockets_and_load_balancer_over_without_a_failed_request_or_call() {
    let _room = common::room("heal");
    let _g = serial();
    let mut env = deployed("upgrade", "");
    let stop = Arc::new(AtomicBool::new(false));
    let api = api_calls(env.home.clone(), stop.clone());
    let (ok, bad) = under_load(env.port, || {
        // A successor that dies after replacing the load balancer, before
        // it serves the API: the running controller resumes and adopts the
        // successor's load balancer.
        let before = env.proxy_pid();
        let status = env.spawn_upgrade(&[("KILN_CRASH_AT", "upgrade-adopted")]).wait().unwrap();
        assert!(!status.success(), "the successor was meant to die");
        assert!(env.serve_running(), "the predecessor resumes: {}", env.serve_log());
        assert_ne!(env.proxy_pid(), before, "the successor had replaced the load balancer");
        env.wait_for("3 serving after the failed upgrade", |s| serving(s) == 3);
        for round in 0..3 {
            let old_proxy = env.proxy_pid();
            env.upgrade_serve();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !gone(old_proxy) {
                assert!(Instant::now() < deadline, "round {round}: the old load balancer never stopped");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_ne!(env.proxy_pid(), old_proxy, "round {round}");
            env.wait_for("3 serving after the upgrade", |s| serving(s) == 3);
        }
        // The upgraded controller drives the new load balancer and heals.
        let id = instances(&env.status())[0]["id"].as_str().unwrap().to_owned();
        env.ok(&["stop", &id]);
        env.wait_for("a replacement", |s| serving(s) == 3 && instances(s).iter().all(|i| i["id"] != id.as_str()));
    });
    stop.store(true, Ordering::Relaxed);
    let (api_ok, api_bad) = api.join().unwrap();
    let log = env.serve_log();
    assert_eq!(log.matches("took over from the previous kiln serve").count(), 3, "{log}");
    assert!(log.contains("resuming"), "{log}");
    assert!(ok > 500, "the load ran: {ok}");
    assert_eq!(bad, 0, "failed requests across the upgrades");
    assert!(api_ok > 20, "the API calls ran: {api_ok}");
    assert_eq!(api_bad, 0, "API calls failed across the upgrades");
}

#[test]
fn a_canary_drill_is_caught_and_rolled_back_leaving_stable_untouched_without_a_failed_request() {
    let _room = common::room("heal");
    let _g = serial();
    let env = deployed("drill", "");
    let before = env.status();
    let (ok, bad) = under_load(env.port, || {
        let out = env.kiln(&["chaos", "--drill", "canary", "--window", "2s", "--json"]);
        let r = json(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(0), "{r:#}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(r["caught"], true, "{r:#}");
        assert_eq!(r["outcome"], "rolled-back", "{r:#}");
        assert_eq!(r["stable_untouched"], true, "{r:#}");
        assert_eq!(r["failed_requests"], 0, "{r:#}");
        assert_eq!(r["canary_percent"], 10, "{r:#}");
        assert!(r["canary_requests"].as_u64().unwrap() > 20, "{r:#}");
        let detect = r["detect_ms"].as_u64().unwrap();
        assert!((2000..10_000).contains(&detect), "caught after one 2 s window: {r:#}");
        assert!(r["rollback_ms"].as_u64().unwrap() >= detect, "{r:#}");
        assert!(r["cleaned_ms"].is_u64(), "the canary's instances went: {r:#}");
    });
    assert!(ok > 500, "the load ran: {ok}");
    assert_eq!(bad, 0, "no client saw the drill's faults");
    let after = env.status();
    assert_eq!(after["stable"]["id"], before["stable"]["id"]);
    let ids = |s: &serde_json::Value| instances(s).iter().map(|i| i["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "stable's instances were not touched");
    let history = env.ok(&["history", "--json"]);
    assert!(history.contains("\"drill\""), "the drill is in the history: {history}");
    // A drill never waits for a person: without traffic it is inconclusive,
    // ends by itself (aborted), and says it proved nothing.
    let out = env.kiln(&["chaos", "--drill", "canary", "--window", "1s", "--json"]);
    let r = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(2), "{r:#}");
    assert_eq!((r["caught"].as_bool(), r["outcome"].as_str()), (Some(false), Some("aborted")), "{r:#}");
    assert!(r["reason"].as_str().unwrap().contains("inconclusive"), "{r:#}");
    assert_eq!(r["stable_untouched"], true, "{r:#}");
    let e = env.kiln(&["promote"]);
    assert!(!e.status.success());
}

/// `GET /v1/status` on the API's TCP listener with the token: the status code.
fn tcp_status(port: u16, token: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET /v1/status HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn kiln_serve_upgrade_hands_the_tcp_api_listener_over_too() {
    let _room = common::room("heal");
    let _g = serial();
    let mut env = Env::bare("upgrade-tcp", SERVICE);
    let api = common::free_port();
    let log = fs::OpenOptions::new().create(true).append(true).open(env.home.join("serve-test.log")).unwrap();
    let child = common::kiln_cmd()
        .args(["serve", "-f", "kiln.toml", "--tcp", &format!("127.0.0.1:{api}")])
        .current_dir(&env.dir)
        .env("KILN_HOME", &env.home)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    env.serve = Some(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let token = loop {
        if let Ok(t) = fs::read_to_string(env.home.join("serve.token")) {
            if tcp_status(api, t.trim()) == Some(200) {
                break t.trim().to_owned();
            }
        }
        assert!(Instant::now() < deadline, "the TCP API never answered: {}", env.serve_log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let old = env.serve.as_ref().unwrap().id();
    env.upgrade_serve();
    // The successor was not given --tcp: it serves the listener it inherited.
    assert_eq!(tcp_status(api, &token), Some(200), "{}", env.serve_log());
    assert_eq!(tcp_status(api, "wrong"), Some(401));
    assert_ne!(env.serve.as_ref().unwrap().id(), old);
    assert!(env.serve_log().contains("took over from the previous kiln serve"));
}

#[test]
fn an_exec_entrypoint_is_not_drift_and_a_changed_runc_config_is_named_by_its_field() {
    let _room = common::room("heal");
    let _g = serial();
    // busybox httpd started by `sh -c "exec …"`: the process kiln's config
    // starts (sh) is replaced by another (httpd) at once, as in most images.
    let env = Env::busybox(
        "drift-exec",
        "replicas = 2\ndrain_timeout = \"1s\"\n[service.web.health]\npath = \"/\"\ninterval = \"200ms\"\n\
         [service.web.heal]\ndrift_interval = \"300ms\"\n",
    );
    let (code, out) = env.deploy();
    assert_eq!(code, 0, "{out}");
    env.wait_for("2 serving instances", |s| serving(s) == 2);
    let before: Vec<String> = instances(&env.status()).iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(env.versions(3), ["1.0.0"; 3]);
    // Ten drift checks' worth of time: nothing is replaced.
    std::thread::sleep(Duration::from_secs(3));
    let out = env.kiln(&["verify-instances"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "an exec'ing entrypoint is not drift: {text}");
    let now: Vec<String> = instances(&env.status()).iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(now, before, "no instance was replaced");
    let hist = env.ok(&["history", "web"]);
    assert!(!hist.contains("drift"), "{hist}");

    // The runtime config as runc holds it, changed behind kiln's back: the
    // finding names the field and nothing else.
    let id = before[0].clone();
    let info = json(&env.ok(&["inspect-instance", &id, "--json"]));
    let state = std::path::Path::new(info["runc_root"].as_str().unwrap()).join(&id).join("state.json");
    let mut v = json(&fs::read_to_string(&state).unwrap());
    assert_eq!(v["config"]["readonlyfs"], true, "kiln starts a read-only root");
    v["config"]["readonlyfs"] = serde_json::Value::Bool(false);
    fs::write(&state, serde_json::to_vec(&v).unwrap()).unwrap();
    let out = env.kiln(&["verify-instances"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert!(text.contains(&format!("{id}: DRIFT")) && text.contains("runtime config: readonlyfs changed"), "{text}");
    assert_eq!(text.matches("DRIFT").count(), 1, "only that one: {text}");
    env.wait_for("the drifted instance replaced", |s| {
        instances(s).iter().all(|i| i["id"] != id.as_str()) && serving(s) == 2
    });
    let hist = env.ok(&["history", "web"]);
    assert_eq!(hist.matches("(drift)").count(), 1, "one replacement for drift: {hist}");
}

#[test]
fn a_service_whose_load_balancer_cannot_start_is_retried_and_never_stops_another_from_healing() {
    let _room = common::room("heal");
    let _g = serial();
    let api_port = common::free_port();
    let env = Env::busybox(
        "isolated",
        &format!(
            "replicas = 2\ndrain_timeout = \"1s\"\n[service.web.health]\npath = \"/\"\ninterval = \"200ms\"\n\n\
             [service.api]\nimage = \"web\"\nlisten = \"127.0.0.1:{api_port}\"\n"
        ),
    );
    for s in ["web", "api"] {
        env.ok(&["deploy", s]);
    }
    env.wait_for("web serving", |s| serving(s) == 2);
    // api's load balancer dies and cannot start again: its last table is
    // unreadable.
    let api_dir = env.home.join("proxies/api");
    let pid = json(&fs::read_to_string(api_dir.join("proxy.json")).unwrap())["pid"].as_i64().unwrap() as i32;
    fs::write(api_dir.join("releases.json"), "not a table").unwrap();
    // SAFETY: a signal to the load balancer this test's kiln serve started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let failing = |env: &Env| -> serde_json::Value {
        let all = json(&env.ok(&["status", "--json"]));
        all["services"].as_array().unwrap().iter().find(|s| s["service"] == "api").unwrap()["reconcile"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while failing(&env).is_null() {
        assert!(Instant::now() < deadline, "api never reported failing: {}", env.serve_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let f = failing(&env);
    assert!(f["error"].as_str().unwrap().contains("load balancer"), "{f}");

    // An instance of web is killed: it is replaced as usual.
    let s = env.status();
    let id = instances(&s)[0]["id"].as_str().unwrap().to_owned();
    let info = json(&env.ok(&["inspect-instance", &id, "--json"]));
    common::run("runc", &["--root", info["runc_root"].as_str().unwrap(), "kill", &id, "KILL"]);
    let (ok, bad) = under_load(env.port, || {
        env.wait_for("the killed web instance replaced", |s| {
            instances(s).iter().all(|i| i["id"] != id.as_str()) && serving(s) == 2
        });
    });
    assert!(ok > 20, "web served: {ok}");
    let _ = bad; // the killed instance's requests in flight may fail; healing is what is asserted
    assert!(!failing(&env).is_null(), "api still cannot start its load balancer");
    let attempts = failing(&env)["attempts"].as_u64().unwrap();
    assert!(attempts >= 2, "retried: {attempts}");
    let (_, metrics) = env.api_get("/metrics");
    assert!(metrics.contains("kiln_service_failing{service=\"api\"} 1"), "{metrics}");
    assert!(metrics.contains("kiln_reconcile_errors_total{service=\"api\"}"), "{metrics}");

    // Its table readable again, api recovers on a retry, and history has
    // the failure once and the recovery once.
    fs::write(api_dir.join("releases.json"), "[]").unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while !failing(&env).is_null() {
        assert!(Instant::now() < deadline, "api never recovered: {}", env.serve_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut c = Conn::new(api_port);
    assert_eq!(String::from_utf8(c.get("/").unwrap().2).unwrap().trim(), "1.0.0");
    let hist = env.ok(&["history", "api"]);
    assert_eq!(hist.matches("cannot reconcile").count(), 1, "{hist}");
    assert_eq!(hist.matches("reconciled again").count(), 1, "{hist}");
}
