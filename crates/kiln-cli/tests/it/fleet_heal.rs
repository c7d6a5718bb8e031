//! A fleet service healed and kept on every host, with busybox httpd
//! under load through both hosts' load balancers:
//! - its volume is each host's own and outlives a release (a CGI appends
//!   a line per request to `/data/hits`);
//! - drift (`runc update` behind kiln's back) found on request and the
//!   instance replaced by its agent;
//! - chaos kills across hosts, never past the share;
//! - a quarantine: out of traffic, frozen and kept on its host, released;
//! - each in the fleet's history, and counted in its metrics.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fleet::{agents_at, etcd_cluster, pushed_versions, spawn_kiln, Cleanup, HostsCleanup, Procs};

#[test]
fn a_fleet_service_s_volume_outlives_releases_and_drift_chaos_and_quarantine_heal_on_every_host() {
    let _room = room("fleet");
    let dir = tempdir("fleet-vol");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-vol-registry"), reg_port, ""));
    pushed_versions(reg_port, &["1.0.0"]);
    let homes: Vec<std::path::PathBuf> = (1..=2).map(|i| tempdir(&format!("fleet-vol-h{i}"))).collect();
    let _hosts_clean = HostsCleanup(homes.clone());
    let ips = ["127.0.0.5", "127.0.0.6"];
    let _agents = agents_at(&homes, &ips, &cluster);
    let ctl = tempdir("fleet-vol-ctl");
    let _c = Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    let lb_port = free_port();
    let lbs: Vec<std::net::SocketAddr> = ips.iter().map(|ip| format!("{ip}:{lb_port}").parse().unwrap()).collect();
    let app = tempdir("fleet-vol-app");
    let write = |extra: &str| {
        let text = format!(
            "[service.web]\nimage = \"127.0.0.1:{reg_port}/team/web:1.0.0\"\nlisten = \"0.0.0.0:{lb_port}\"\n\
             replicas = 2\nvolumes = {{ data = \"/data\" }}\n{extra}\n[service.web.health]\npath = \"/\"\n"
        );
        fs::write(app.join("kiln.toml"), text).unwrap();
    };
    let deploy = || kiln_ok(&ctl, &app, &["deploy", "--cluster", &cluster]);
    // A bad volume is refused where it is written, naming it.
    fs::write(
        app.join("kiln.toml"),
        format!("[service.web]\nimage = \"127.0.0.1:{reg_port}/team/web:1.0.0\"\nvolumes = {{ data = \"data\" }}\n"),
    )
    .unwrap();
    let e = kiln_err(&ctl, &app, &["deploy", "--cluster", &cluster]);
    assert!(e.contains("kiln.toml") && e.contains("service.web.volumes.data"), "{e}");

    write("");
    let out = deploy();
    assert!(out.contains("serves on every replica"), "{out}");
    // Spread over both hosts: each host's instance writes its host's volume.
    let on_disk = |home: &std::path::Path| {
        fs::read_to_string(home.join("volumes/web/data/hits")).map_or(0, |t| t.lines().count())
    };
    let hits = |n: usize| {
        let mut seen = Vec::new();
        for i in 0..n {
            let b = try_bodies_of_hits(lbs[i % 2]);
            seen.push(b);
        }
        seen
    };
    // A service's first deploy is "serving" only once every host's load
    // balancer routes to it: the first request at each answers (the
    // health path writes nothing to the volume).
    for lb in &lbs {
        let got = Conn::at(*lb).get("/").map(|r| (r.0, String::from_utf8_lossy(&r.2).into_owned()));
        assert!(matches!(got, Ok((200, _))), "{lb} right after the deploy: {got:?}");
    }
    let first = hits(8);
    assert!(first.iter().all(|b| b.starts_with("hits=")), "{first:?}");
    let before: Vec<usize> = homes.iter().map(|h| on_disk(h)).collect();
    assert_eq!(before.iter().sum::<usize>(), 8, "every request's line, on the hosts' own volumes: {before:?}");
    assert!(before.iter().all(|n| *n > 0), "both hosts' volumes written: {before:?}");
    let instances = |home: &std::path::Path| -> Vec<String> {
        json(&kiln_ok(home, home, &["ps", "--json"]))["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["state"] == "running")
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut old: Vec<Vec<String>> = homes.iter().map(|h| instances(h)).collect();

    // Drift, on request, on every host: nothing yet. Then h1's instance
    // has its limits changed behind kiln's back (runc update): found,
    // named, and replaced by its agent, surge-first, with no failed
    // request through either load balancer.
    let verify = |args: &[&str]| {
        let mut all = vec!["verify-instances", "--cluster", cluster.as_str()];
        all.extend(args);
        kiln(&ctl, &app, &all)
    };
    let out = verify(&["--json"]);
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "both hosts answered: {v}");
    assert!(v.as_array().unwrap().iter().all(|h| h[1]["checked"] == 1 && h[1]["drifted"].is_null()), "{v}");
    let id = old[0][0].clone();
    let runc_root = kiln::runtime::run_dir(&homes[0]).join("runc");
    run("runc", &["--root", runc_root.to_str().unwrap(), "update", "--pids-limit", "77", &id]);
    let load = crate::fleet::FleetLoad::start(&lbs, "/cgi-bin/status");
    let out = verify(&[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert!(text.contains(&format!("{id}: DRIFT")) && text.contains("pids limit is 77"), "{text}");
    assert_eq!(text.matches("DRIFT").count(), 1, "only that one: {text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while instances(&homes[0]).contains(&id) || instances(&homes[0]).is_empty() {
        assert!(Instant::now() < deadline, "the drifted instance was never replaced");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (answers, failed) = load.stop();
    assert_eq!(failed, 0, "no request failed while the drifted instance was replaced: {answers:?}");
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    old = homes.iter().map(|h| instances(h)).collect();

    // A release that replaces every instance (another env): the new ones
    // find what the old ones wrote.
    write("env = { MODE = \"b\" }");
    let plan = kiln_ok(&ctl, &app, &["plan", "--cluster", &cluster]);
    assert!(plan.contains("env.MODE added"), "{plan}");
    let out = deploy();
    assert!(out.contains("serves on every replica"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now: Vec<Vec<String>> = homes.iter().map(|h| instances(h)).collect();
        if now.iter().zip(&old).all(|(n, o)| n.len() == 1 && !o.contains(&n[0])) {
            break;
        }
        assert!(Instant::now() < deadline, "instances not replaced: {old:?} → {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = hits(2);
    let counts: Vec<usize> = after.iter().map(|b| b.trim().strip_prefix("hits=").unwrap().parse().unwrap()).collect();
    assert!(counts.iter().all(|n| *n > 1), "the new instances count on from the old ones' lines: {after:?}");
    let total: usize = homes.iter().map(|h| on_disk(h)).sum();
    assert_eq!(total, 10, "nothing lost in the release");
    // Chaos across the fleet: two kills, asked of each instance's host
    // through etcd, never both slots down at once; each slot serves again
    // with a new instance, and no request through either load balancer
    // fails meanwhile.
    let load = crate::fleet::FleetLoad::start(&lbs, "/cgi-bin/status");
    let before_chaos: Vec<String> = homes.iter().flat_map(|h| instances(h)).collect();
    let report = json(&kiln_ok(
        &ctl,
        &app,
        &["chaos", "web", "--cluster", &cluster, "--kills", "2", "--kill-rate", "1", "--max-share", "0.5", "--json"],
    ));
    std::thread::sleep(Duration::from_secs(1));
    let (answers, failed) = load.stop();
    assert_eq!((report["kills"].as_u64(), report["replaced"].as_u64()), (Some(2), Some(2)), "{report}");
    assert!(report["unreplaced"].as_array().unwrap().is_empty(), "{report}");
    assert!(report["replace_max_ms"].as_u64().unwrap() < 15_000, "{report}");
    eprintln!("fleet chaos: {report}; load {answers:?}, {failed} failed");
    // What each load balancer said of the requests it failed (its error
    // log: the backends tried and how each failed).
    // (Each load balancer's proxy.log, somewhere under its host's home.)
    for h in &homes {
        let out =
            std::process::Command::new("grep").args(["-rh", "--include=proxy.log", "answered 50"]).arg(h).output();
        let said = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        for l in said.lines().take(5) {
            eprintln!("fleet chaos, {}: {l}", h.display());
        }
    }
    // A slot is up only once every load balancer routes to its instance,
    // so the second kill never leaves a load balancer without a backend
    // (before, bursts of 9 to 56 502s in 2 runs of 3; README, "Chaos").
    let ok: u64 = answers.values().sum();
    assert!(ok > 1_000, "the service kept answering through the kills: {answers:?}");
    assert_eq!(failed, 0, "no request failed through the kills: {answers:?}");
    // Two serving instances again, at least one of them new.
    let after_chaos: Vec<String> = homes.iter().flat_map(|h| instances(h)).collect();
    assert_eq!(after_chaos.len(), 2, "{after_chaos:?}");
    assert!(after_chaos.iter().any(|i| !before_chaos.contains(i)), "{before_chaos:?} → {after_chaos:?}");
    let e = kiln_err(&ctl, &app, &["chaos", "nosuch", "--cluster", &cluster, "--kills", "1"]);
    assert!(e.contains("nosuch is not in the fleet"), "{e}");

    // Quarantine across the fleet, under load: out of both hosts' load
    // balancers, frozen and kept on its host; its slot gets a new
    // instance; `ps --cluster` shows it; released, it is destroyed.
    let load = crate::fleet::FleetLoad::start(&lbs, "/cgi-bin/status");
    let ps = json(&kiln_ok(&ctl, &app, &["ps", "--cluster", &cluster, "--json"]));
    let victim = ps.as_array().unwrap().iter().find(|r| r["state"] == "serving").unwrap().clone();
    assert_eq!(victim["routed"], true, "serving and routed to by both load balancers: {ps}");
    let (qid, qhost) = (victim["instance"].as_str().unwrap().to_owned(), victim["host"].as_str().unwrap().to_owned());
    let qhome = &homes[if qhost == "h1" { 0 } else { 1 }];
    let out =
        kiln_ok(&ctl, &app, &["quarantine", &qid[..qid.len() - 2], "--cluster", &cluster, "--reason", "looks odd"]);
    assert!(out.contains(&qid) && out.contains(&qhost), "found by a prefix: {out}");
    let e = kiln_err(&ctl, &app, &["quarantine", &qid, "--cluster", &cluster]);
    assert!(e.contains("quarantined already"), "{e}");
    let kept = qhome.join("quarantine").join(&qid).join("quarantine.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = json(&kiln_ok(&ctl, &app, &["ps", "--cluster", &cluster, "--json"]));
        let rows = rows.as_array().unwrap();
        let quarantined = rows.iter().any(|r| r["instance"] == qid.as_str() && r["state"] == "quarantined");
        let serving = rows.iter().filter(|r| r["state"] == "serving").count();
        if quarantined && serving == 2 && kept.exists() {
            break;
        }
        assert!(Instant::now() < deadline, "not quarantined and replaced: {rows:?}, kept {}", kept.exists());
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = run("runc", &["--root", kiln::runtime::run_dir(qhome).join("runc").to_str().unwrap(), "state", &qid]);
    assert_eq!(json(&String::from_utf8_lossy(&state.stdout))["status"], "paused", "frozen");
    let meta = json(&fs::read_to_string(&kept).unwrap());
    assert_eq!(meta["quarantine"]["reason"], "looks odd", "{meta}");
    std::thread::sleep(Duration::from_secs(1));
    let (answers, failed) = load.stop();
    assert_eq!(failed, 0, "no request failed through the quarantine: {answers:?}");
    let out = kiln_ok(&ctl, &app, &["release-quarantine", &qid, "--cluster", &cluster]);
    assert!(out.contains("released"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while qhome.join("quarantine").join(&qid).exists() || instances_all(qhome).contains(&qid) {
        assert!(Instant::now() < deadline, "the released instance is still there");
        std::thread::sleep(Duration::from_millis(200));
    }
    let e = kiln_err(&ctl, &app, &["release-quarantine", &qid, "--cluster", &cluster]);
    assert!(e.contains("no instance") || e.contains("not quarantined"), "{e}");

    // Both in the fleet's history, each before its act, and counted.
    let h = json(&kiln_ok(&ctl, &app, &["history", "web", "--cluster", &cluster, "--verify", "--json"]));
    let replacing: Vec<(String, String)> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["kind"] == "replacing")
        .map(|e| {
            (
                e["event"]["cause"]["kind"].as_str().unwrap_or_default().to_owned(),
                e["event"]["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(replacing.iter().filter(|(c, _)| c == "drift").count(), 1, "{replacing:?}");
    assert!(
        replacing.iter().any(|(c, d)| c == "drift" && d.contains("on h1") && d.contains("pids limit is 77")),
        "{replacing:?}"
    );
    assert_eq!(replacing.iter().filter(|(c, _)| c == "chaos").count(), 2, "{replacing:?}");
    let kinds: Vec<&str> =
        h["entries"].as_array().unwrap().iter().filter_map(|e| e["event"]["kind"].as_str()).collect();
    assert!(kinds.contains(&"quarantined") && kinds.contains(&"unquarantined"), "{kinds:?}");
    let metrics = kiln_ok(&ctl, &app, &["metrics", "--cluster", &cluster]);
    for line in [
        r#"kiln_replacements_total{service="web",cause="drift"} 1"#,
        r#"kiln_replacements_total{service="web",cause="chaos"} 2"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // Taken down: the instances go, the data stays on each host.
    kiln_ok(&ctl, &app, &["down", "--cluster", &cluster]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while homes.iter().any(|h| !instances(h).is_empty()) {
        assert!(Instant::now() < deadline, "instances left after down");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(homes.iter().map(|h| on_disk(h)).sum::<usize>(), 10);
}

/// Every instance of a host, whatever its state.
fn instances_all(home: &std::path::Path) -> Vec<String> {
    json(&kiln_ok(home, home, &["ps", "--all", "--json"]))["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// One GET of /cgi-bin/hits through `lb`: the body.
fn try_bodies_of_hits(lb: std::net::SocketAddr) -> String {
    let (code, _, body) = Conn::at(lb).get("/cgi-bin/hits").unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(code, 200, "{body}");
    body
}
