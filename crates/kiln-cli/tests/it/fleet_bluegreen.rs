//! Blue-green releases across two hosts' load balancers, from kiln.toml,
//! on busybox httpd images: the whole new set starts beside the stable
//! one with no request reaching it, is smoke-checked on every instance,
//! then switched to at once on every host; a rollback switches back to
//! the set kept warm; a failed smoke check leaves stable untouched; the
//! kept set goes after `keep_previous`. The leader is SIGKILLed while the
//! new set starts: the one standing by switches. Under load, no request
//! fails.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fleet::*;

#[test]
fn a_fleet_blue_green_release_switches_every_load_balancer_at_once_and_a_rollback_switches_back() {
    let _room = room("fleet");
    let dir = tempdir("fleet-bg");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-bg-registry"), reg_port, ""));
    pushed_versions(reg_port, &["1.0.0", "2.0.0", "3.0.0"]);
    let homes: Vec<std::path::PathBuf> = (1..=2).map(|i| tempdir(&format!("fleet-bg-h{i}"))).collect();
    let _hosts_clean = HostsCleanup(homes.clone());
    let ips = ["127.0.0.7", "127.0.0.8"];
    let _agents = agents_at(&homes, &ips, &cluster);
    let ctl = tempdir("fleet-bg-ctl");
    let mut controllers =
        Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    let port = free_port();
    let lbs: Vec<std::net::SocketAddr> = ips.iter().map(|ip| format!("{ip}:{port}").parse().unwrap()).collect();
    let app = tempdir("fleet-bg-app");
    let service = |version: &str, smoke: &str, keep: &str| {
        format!(
            "[service.web]\nimage = \"127.0.0.1:{reg_port}/team/web:{version}\"\nlisten = \"0.0.0.0:{port}\"\n\
             replicas = 2\nstrategy = \"blue-green\"\nkeep_previous = \"{keep}\"\nprogress_deadline = \"60s\"\n\
             [service.web.health]\npath = \"/\"\n\
             [service.web.blue_green]\nsmoke = [{{ path = \"/\", contains = \"{smoke}\" }}]\n"
        )
    };
    let deploy = |version: &str, smoke: &str, keep: &str| {
        fs::write(app.join("kiln.toml"), service(version, smoke, keep)).unwrap();
        kiln(&ctl, &app, &["deploy", "web", "--cluster", &cluster])
    };
    let out = deploy("1.0.0", "busybox", "60s");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let slots = |want: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut now: Vec<String> = placed(&ctl, &urls).into_values().flatten().map(|(s, _)| s).collect();
            now.sort();
            if now == want {
                return;
            }
            assert!(Instant::now() < deadline, "slots {now:?}, want {want:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    slots(&["web-0", "web-1"]);
    for lb in &lbs {
        assert_eq!(bodies(*lb, 4).into_keys().collect::<Vec<_>>(), ["busybox 1.0.0\n"]);
    }

    // A second controller stands by.
    controllers.0.push(spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c2", "--ttl", "2"]));

    // 2.0.0 blue-green under load through both load balancers; the
    // leader (c1, the first) is SIGKILLed once the release began.
    let load = FleetLoad::start(&lbs, "/");
    fs::write(app.join("kiln.toml"), service("2.0.0", "busybox 2.0.0", "60s")).unwrap();
    let following = kiln_spawn(&ctl, &app, &["deploy", "web", "--cluster", &cluster]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while services(&ctl, &urls)[0]["desired"]["blue_green"]["phase"]["next"].is_null() {
        assert!(Instant::now() < deadline, "the release never began: {}", services(&ctl, &urls));
        std::thread::sleep(Duration::from_millis(50));
    }
    controllers.0[0].kill().unwrap();
    controllers.0[0].wait().unwrap();
    let out = following.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("blue-green") && stdout.contains("serves on every replica"), "{stdout}{stderr}");
    // The controller standing by took over and switched.
    let log = fs::read_to_string(ctl.join("kiln.log")).unwrap();
    assert!(
        log.contains("kiln controller c2: leading") && log.contains("kiln controller c2: web: switched to"),
        "{log}"
    );
    // Both load balancers answer 2.0.0 only, the old set still runs
    // (kept warm): four slots.
    for lb in &lbs {
        assert_eq!(bodies(*lb, 4).into_keys().collect::<Vec<_>>(), ["busybox 2.0.0\n"], "{lb}");
    }
    slots(&["web-0", "web-1", "web-green-0", "web-green-1"]);
    // `kiln ps --cluster` says which set is warm.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = kiln_ok(&ctl, &app, &["ps", "--cluster", &cluster]);
        let state = |slot: &str| ps.lines().find(|l| l.split_whitespace().nth(1) == Some(slot)).map(str::to_owned);
        let warm = ["web-0", "web-1"].iter().all(|s| state(s).is_some_and(|l| l.contains("standby")));
        let serving = ["web-green-0", "web-green-1"].iter().all(|s| state(s).is_some_and(|l| l.contains("serving")));
        if warm && serving {
            break;
        }
        assert!(Instant::now() < deadline, "{ps}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = kiln_ok(&ctl, &app, &["services", "--cluster", &cluster]);
    assert!(listed.contains("blue-green: previous set") && listed.contains("kept warm until"), "{listed}");
    let history = kiln_ok(&ctl, &app, &["history", "--cluster", &cluster]);
    assert!(history.contains("switched: 2 smoke check(s) passed"), "{history}");

    // A rollback: back to the warm set at once.
    let t = Instant::now();
    let out = kiln(&ctl, &app, &["rollback", "web", "--cluster", &cluster]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("switched back"), "{stderr}");
    for lb in &lbs {
        while bodies(*lb, 4).into_keys().collect::<Vec<_>>() != ["busybox 1.0.0\n"] {
            assert!(t.elapsed() < Duration::from_secs(10), "{lb} not switched back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let switched_back = t.elapsed();
    slots(&["web-0", "web-1"]);

    // 3.0.0 fails its smoke check: stable untouched, nothing served it.
    let out = deploy("3.0.0", "expected text", "60s");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("did not switch")
            && stderr.contains("smoke check on web-green-")
            && stderr.contains("does not contain"),
        "{stderr}"
    );
    slots(&["web-0", "web-1"]);
    let (seen, failed) = load.stop();
    eprintln!(
        "fleet blue-green: switched back in {} ms; under load {seen:?}, {failed} failed",
        switched_back.as_millis()
    );
    assert_eq!(failed, 0, "{seen:?}");
    assert!(!seen.contains_key("200 busybox 3.0.0"), "a set not switched to got a request: {seen:?}");
    assert!(seen.contains_key("200 busybox 2.0.0") && seen.contains_key("200 busybox 1.0.0"), "{seen:?}");
    let history = kiln_ok(&ctl, &app, &["history", "--cluster", &cluster]);
    assert!(history.contains("smoke check on web-green-"), "{history}");

    // The kept set goes after keep_previous.
    let out = deploy("2.0.0", "busybox 2.0.0", "2s");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    slots(&["web-green-0", "web-green-1"]);
    for lb in &lbs {
        assert_eq!(bodies(*lb, 4).into_keys().collect::<Vec<_>>(), ["busybox 2.0.0\n"], "{lb}");
    }
    // A service named web-green would want web's green slots: refused,
    // naming both, with nothing written.
    fs::write(app.join("kiln.toml"), service("1.0.0", "busybox", "2s").replace("service.web", "service.web-green"))
        .unwrap();
    let e = kiln_err(&ctl, &app, &["deploy", "web-green", "--cluster", &cluster]);
    assert!(e.contains("web-green and web") && e.contains("slot names"), "{e}");
    assert_eq!(services(&ctl, &urls).as_array().unwrap().len(), 1, "nothing written");
    kiln_ok(&ctl, &app, &["down", "web", "--cluster", &cluster]);
}
