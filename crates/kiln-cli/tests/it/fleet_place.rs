//! The fleet's placement and its failures: the leader spreading replicas
//! and its successor taking over, a lost host's slot moved, drain-host
//! surge-first, a partitioned host's singleton fenced, an old leader's
//! epoch refused, a slot a host cannot start placed elsewhere.

use std::fs;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fleet::*;

#[test]
fn the_leading_controller_spreads_replicas_a_new_leader_takes_over_and_a_lost_host_s_slot_moves() {
    let _room = room("fleet");
    let dir = tempdir("fleet-ctl-run");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-ctl-registry"), reg_port, ""));
    let (images, _) = pushed_busybox(reg_port);
    let (h1, h2) = (tempdir("fleet-ctl-h1"), tempdir("fleet-ctl-h2"));
    let _hosts_clean = HostsCleanup(vec![h1.clone(), h2.clone()]);
    let mut agents = Procs(vec![
        spawn_kiln(&h1, &["agent", "--cluster", &cluster, "--name", "h1", "--ttl", "2"]),
        spawn_kiln(&h2, &["agent", "--cluster", &cluster, "--name", "h2", "--ttl", "2"]),
    ]);
    let ctl = tempdir("fleet-ctl-home");
    // The controllers' webhooks (their kiln.toml, their secret): the
    // leader at the time sends the fleet's alerts.
    let hooks = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_port = hooks.local_addr().unwrap().port();
    let alerts = receiver(hooks, 0);
    let ctl_toml = ctl.join("kiln.toml");
    fs::write(
        &ctl_toml,
        format!(
            "[[notify]]\nurl = \"http://127.0.0.1:{hook_port}/fleet\"\nevents = [\"host-lost\"]\nsecret = \"hook\"\n"
        ),
    )
    .unwrap();
    let mut set =
        kiln_cmd().args(["secret", "set", "hook"]).env("KILN_HOME", &ctl).stdin(Stdio::piped()).spawn().unwrap();
    set.stdin.take().unwrap().write_all(b"fleet-hook-key").unwrap();
    assert!(set.wait().unwrap().success());
    let controller = |name: &'static str| {
        spawn_kiln(
            &ctl,
            &["controller", "--cluster", &cluster, "--name", name, "--ttl", "2", "-f", ctl_toml.to_str().unwrap()],
        )
    };
    let mut controllers = Procs(vec![controller("c1")]);
    kiln_ok(&ctl, &ctl, &["place", "--cluster", &cluster, "--service", "web", "--replicas", "2", &images[0].1]);
    // Spread: one replica on each host, each serving.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spread = loop {
        let p = placed(&ctl, &urls);
        let serving = p.values().flatten().filter(|(_, port)| get(*port).as_deref() == Some("busybox 1.0.0\n")).count();
        if p.len() == 2 && p.values().all(|s| s.len() == 1) && serving == 2 {
            break p;
        }
        assert!(Instant::now() < deadline, "never spread: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let h1_slot = spread["h1"][0].0.clone();
    // A second controller stands by; the leader (c1, the only one when
    // the service was placed) is SIGKILLed.
    controllers.0.push(controller("c2"));
    std::thread::sleep(Duration::from_millis(500));
    controllers.0[0].kill().unwrap();
    controllers.0[0].wait().unwrap();
    // Host h1 is lost: its agent and its instances killed.
    let lost = Instant::now();
    agents.0[0].kill().unwrap();
    agents.0[0].wait().unwrap();
    let ps = json(&kiln_ok(&h1, &h1, &["ps", "--json"]));
    for i in ps["instances"].as_array().unwrap() {
        kiln_ok(&h1, &h1, &["rm", "--force", i["id"].as_str().unwrap()]);
    }
    // c2 leads, sees h1's lease gone, and h1's slot serves on h2.
    loop {
        let p = placed(&ctl, &urls);
        let moved = p.get("h2").and_then(|s| s.iter().find(|(slot, _)| *slot == h1_slot).map(|(_, port)| *port));
        if !p.contains_key("h1") && moved.is_some_and(|port| get(port).as_deref() == Some("busybox 1.0.0\n")) {
            break;
        }
        assert!(lost.elapsed() < Duration::from_secs(15), "h1's slot not serving on h2 15 s after the loss: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "host loss to serving elsewhere: {} ms (lease 2 s, the leader killed just before)",
        lost.elapsed().as_millis()
    );
    // The history says so, written by the new leader with the move.
    let h = json(&kiln_ok(&ctl, &ctl, &["history", "--cluster", &cluster, "--verify", "--json"]));
    let lost_entry = h["entries"].as_array().unwrap().iter().find(|e| e["event"]["kind"] == "host_lost");
    let lost_entry = lost_entry.unwrap_or_else(|| panic!("no host_lost entry: {h}"));
    assert_eq!(lost_entry["event"]["host"], "h1", "{h}");
    assert_eq!(lost_entry["event"]["slots"], serde_json::json!([h1_slot]), "{h}");
    assert_eq!(h["entries"][0]["event"]["strategy"], "place", "{h}");
    // ... and the new leader's webhook said so, once, signed with the
    // controllers' secret: nothing else (only host-lost was asked for).
    let (head, body) = alerts.recv_timeout(Duration::from_secs(10)).expect("no host-lost webhook");
    assert!(head.starts_with("POST /fleet HTTP/1.1"), "{head}");
    assert_eq!(header(&head, "X-Kiln-Event"), Some("host-lost"), "{head}");
    let want = kiln::digest::hex(&kiln::digest::hmac_sha256(b"fleet-hook-key", body.as_bytes()));
    assert_eq!(header(&head, "X-Kiln-Signature"), Some(format!("sha256={want}").as_str()), "{head}");
    let alert = json(&body);
    assert_eq!((alert["alert"].as_str(), alert["event"]["host"].as_str()), (Some("host-lost"), Some("h1")), "{alert}");
    assert_eq!(alert["event"]["slots"], serde_json::json!([h1_slot]), "{alert}");
    // A new image rolls through the leader to every replica.
    kiln_ok(&ctl, &ctl, &["place", "--cluster", &cluster, "--service", "web", "--replicas", "2", &images[1].1]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = placed(&ctl, &urls);
        let v2 = p.values().flatten().filter(|(_, port)| get(*port).as_deref() == Some("busybox 2.0.0\n")).count();
        if v2 == 2 && p.values().flatten().count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "version 2 never served by both replicas: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Removed from the fleet: nothing left running.
    kiln_ok(&ctl, &ctl, &["place", "--cluster", &cluster, "--service", "web", "--replicas", "0", &images[1].1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).values().flatten().count() > 0 {
        assert!(Instant::now() < deadline, "replicas left after removal");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agents);
    drop(controllers);
    // One alert in all: none for the older entries (the place, which is
    // not a failure), none twice.
    assert!(alerts.try_recv().is_err(), "a second webhook");
}

#[test]
fn drain_host_moves_a_slot_surge_first() {
    let _room = room("fleet");
    let dir = tempdir("fleet-drain");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-drain-registry"), reg_port, ""));
    let (images, _) = pushed_busybox(reg_port);
    let (h1, h2) = (tempdir("fleet-drain-h1"), tempdir("fleet-drain-h2"));
    let _hosts_clean = HostsCleanup(vec![h1.clone(), h2.clone()]);
    let _agents = Procs(vec![
        spawn_kiln(&h1, &["agent", "--cluster", &cluster, "--name", "h1", "--ttl", "2"]),
        spawn_kiln(&h2, &["agent", "--cluster", &cluster, "--name", "h2", "--ttl", "2"]),
    ]);
    let ctl = tempdir("fleet-drain-ctl");
    let _c = Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    // More memory than any host has: refused by placement, nothing runs.
    kiln_ok(
        &ctl,
        &ctl,
        &["place", "--cluster", &cluster, "--service", "huge", "--replicas", "1", "--memory", "100000G", &images[0].1],
    );
    kiln_ok(&ctl, &ctl, &["place", "--cluster", &cluster, "--service", "web", "--replicas", "1", &images[0].1]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (from, port) = loop {
        let p = placed(&ctl, &urls);
        if let Some((h, port)) =
            p.iter().find_map(|(h, s)| s.iter().find(|(slot, _)| slot == "web-0").map(|(_, port)| (h.clone(), *port)))
        {
            if get(port).is_some() {
                break (h, port);
            }
        }
        assert!(Instant::now() < deadline, "web-0 never served: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let to = if from == "h1" { "h2" } else { "h1" };
    kiln_ok(&ctl, &ctl, &["drain-host", "--cluster", &cluster, &from]);
    // Until the old copy is gone, something always serves web-0, and the
    // new copy serves before the old one stops.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut new_serving_at = None;
    loop {
        let p = placed(&ctl, &urls);
        let new_port = p.get(to).and_then(|s| s.iter().find(|(slot, _)| slot == "web-0").map(|(_, port)| *port));
        if new_serving_at.is_none() && new_port.is_some_and(|np| get(np).is_some()) {
            new_serving_at = Some(Instant::now());
        }
        let old_up = get(port).is_some();
        assert!(old_up || new_serving_at.is_some(), "web-0 served nowhere during the drain: {p:?}");
        if !old_up && new_serving_at.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the drain never completed: {p:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The drained host's report catches up within a round.
    let deadline = Instant::now() + Duration::from_secs(5);
    let p = loop {
        let p = placed(&ctl, &urls);
        if p[&from].is_empty() {
            break p;
        }
        assert!(Instant::now() < deadline, "{p:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(p[to].iter().any(|(s, _)| s == "web-0"), "{p:?}");
    assert!(p.values().flatten().all(|(s, _)| !s.starts_with("huge")), "huge placed nowhere: {p:?}");
    let text = kiln_ok(&ctl, &ctl, &["history", "--cluster", &cluster, "--verify"]);
    assert!(text.contains(&format!("host {from} set draining by")) && text.contains("hash chain verified"), "{text}");
    // Cleaned up: nothing left running on either host.
    kiln_ok(&ctl, &ctl, &["place", "--cluster", &cluster, "--service", "web", "--replicas", "0", &images[0].1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).values().flatten().count() > 0 {
        assert!(Instant::now() < deadline, "replicas left after removal");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP forwarder to `backend` that the test can cut: while cut, every
/// connection is refused (closed at once), as a partition would.
struct Cuttable {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Cuttable {
    fn new(backend: &str) -> Cuttable {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, backend) = (cut.clone(), backend.trim_start_matches("http://").to_owned());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                if c.load(Ordering::Relaxed) {
                    drop(conn);
                    continue;
                }
                let Ok(b) = std::net::TcpStream::connect(&backend) else { continue };
                let (mut c1, mut b1) = (conn.try_clone().unwrap(), b.try_clone().unwrap());
                let (mut c2, mut b2) = (conn, b);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c1, &mut b1);
                    let _ = b1.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut b2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Cuttable { port, cut }
    }

    fn set(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_partitioned_host_stops_its_singleton_before_it_runs_elsewhere_and_rejoins_without_duplicates() {
    let _room = room("fleet");
    let dir = tempdir("fleet-part");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-part-registry"), reg_port, ""));
    let (images, _) = pushed_busybox(reg_port);
    // h1 reaches etcd only through forwarders the test can cut.
    let links: Vec<Cuttable> = urls.iter().map(|u| Cuttable::new(u)).collect();
    let h1_cluster = links.iter().map(|l| format!("http://127.0.0.1:{}", l.port)).collect::<Vec<_>>().join(",");
    let (h1, h2) = (tempdir("fleet-part-h1"), tempdir("fleet-part-h2"));
    let _hosts_clean = HostsCleanup(vec![h1.clone(), h2.clone()]);
    let _agents = Procs(vec![
        spawn_kiln(&h1, &["agent", "--cluster", &h1_cluster, "--name", "h1", "--ttl", "2"]),
        spawn_kiln(&h2, &["agent", "--cluster", &cluster, "--name", "h2", "--ttl", "2"]),
    ]);
    let ctl = tempdir("fleet-part-ctl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).len() < 2 {
        assert!(Instant::now() < deadline, "the agents never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _c = Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    // Both hosts empty: the singleton goes to h1 (fewest slots, then name).
    kiln_ok(
        &ctl,
        &ctl,
        &["place", "--cluster", &cluster, "--service", "db", "--replicas", "1", "--singleton", &images[0].1],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let old = loop {
        let p = placed(&ctl, &urls);
        if let Some(port) = p.get("h1").and_then(|s| s.first()).map(|(_, port)| *port) {
            if get(port).is_some() {
                break port;
            }
        }
        assert!(Instant::now() < deadline, "db-0 never served on h1: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The partition: h1 loses etcd; its instance stays reachable here.
    for l in &links {
        l.set(true);
    }
    let cut = Instant::now();
    let (mut stopped, mut moved) = (None, None);
    let new = loop {
        let old_up = get(old).is_some();
        if !old_up && stopped.is_none() {
            stopped = Some(cut.elapsed());
        }
        let p = placed(&ctl, &urls);
        let new_port = p.get("h2").and_then(|s| s.first()).map(|(_, port)| *port);
        let new_up = new_port.is_some_and(|np| get(np).is_some());
        assert!(!(old_up && new_up), "the singleton ran on both hosts at once");
        if new_up {
            moved.get_or_insert(cut.elapsed());
            break new_port.unwrap();
        }
        assert!(cut.elapsed() < Duration::from_secs(20), "never moved: {p:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stopped, moved) = (stopped.unwrap(), moved.unwrap());
    eprintln!(
        "partition: h1 stopped its singleton after {} ms, h2 served it after {} ms",
        stopped.as_millis(),
        moved.as_millis()
    );
    assert!(stopped <= Duration::from_secs(10), "lease plus grace is at most 10 s");
    // The partition heals: h1 rejoins and runs nothing; h2's instance is
    // not restarted.
    for l in &links {
        l.set(false);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = placed(&ctl, &urls);
        if p.get("h1").is_some_and(|s| s.is_empty()) && p.get("h2").is_some_and(|s| s.len() == 1) {
            assert_eq!(p["h2"][0].1, new, "h2's instance kept, not restarted");
            break;
        }
        assert!(Instant::now() < deadline, "h1 never rejoined cleanly: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let ps = json(&kiln_ok(&h1, &h1, &["ps", "--json"]));
    assert!(ps["instances"].as_array().unwrap().is_empty(), "no duplicate on h1 after the heal: {ps}");
    assert!(get(new).is_some(), "still served on h2");
    kiln_ok(&ctl, &ctl, &["place", "--cluster", &cluster, "--service", "db", "--replicas", "0", &images[0].1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).values().flatten().count() > 0 {
        assert!(Instant::now() < deadline, "replicas left after removal");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_agent_refuses_a_change_from_an_older_leader_epoch_even_after_a_restart() {
    let _room = room("fleet");
    let dir = tempdir("fleet-epoch");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-epoch-registry"), reg_port, ""));
    let (images, _) = pushed_busybox(reg_port);
    let home = tempdir("fleet-epoch-h1");
    let _hosts_clean = HostsCleanup(vec![home.clone()]);
    let spawn = || spawn_kiln(&home, &["agent", "--cluster", &cluster, "--name", "h1", "--ttl", "2"]);
    let mut agent = Procs(vec![spawn()]);
    let assign = |image: &str, epoch: i64| {
        let a = serde_json::json!({ "image": image, "service": "web", "epoch": epoch });
        etcd_put(&urls[0], "/kiln/assign/h1/web-0", &a);
    };
    let ctl = tempdir("fleet-epoch-ctl");
    // A leader of epoch 7 assigns 1.0.0.
    assign(&images[0].1, 7);
    let port = wait_serving(&ctl, &urls, "web-0", "busybox 1.0.0\n");
    // A change stamped by epoch 5: refused; 1.0.0 keeps serving, same instance.
    assign(&images[1].1, 5);
    let log = || fs::read_to_string(home.join("kiln.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log().contains("refused web-0: a change from epoch 5 (epoch 7 seen)") {
        assert!(Instant::now() < deadline, "never refused: {}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(get(port).as_deref(), Some("busybox 1.0.0\n"), "the accepted instance kept serving");
    assert_eq!(placed(&ctl, &urls)["h1"], vec![("web-0".to_owned(), port)]);
    // The agent restarts: the epoch it acted on is kept, and the stale
    // change is refused again.
    agent.0[0].kill().unwrap();
    agent.0[0].wait().unwrap();
    fs::write(home.join("kiln.log"), "").unwrap();
    agent.0[0] = spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log().contains("refused web-0") {
        assert!(Instant::now() < deadline, "never refused after the restart: {}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Kept, not removed: longer than a drain would take.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(get(port).as_deref(), Some("busybox 1.0.0\n"), "the accepted instance outlived the restart");
    // Epoch 9's change is taken.
    assign(&images[1].1, 9);
    wait_serving(&ctl, &urls, "web-0", "busybox 2.0.0\n");
    let kept = json(&fs::read_to_string(home.join("fleet-admitted.json")).unwrap());
    assert_eq!(kept["seen"], 9);
    assert_eq!(kept["accepted"]["web-0"]["image"], images[1].1.as_str());
}

#[test]
fn a_slot_a_host_cannot_start_is_placed_on_another_host() {
    let _room = room("fleet");
    let dir = tempdir("fleet-failing");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-failing-registry"), reg_port, ""));
    // 1.0.0 is unsigned: h1, which runs only signed images, cannot start it.
    let (images, key) = pushed_busybox(reg_port);
    let (h1, h2) = (tempdir("fleet-failing-h1"), tempdir("fleet-failing-h2"));
    let _hosts_clean = HostsCleanup(vec![h1.clone(), h2.clone()]);
    let key = key.to_str().unwrap().to_owned();
    let _agents = Procs(vec![
        spawn_kiln(&h1, &["agent", "--cluster", &cluster, "--name", "h1", "--ttl", "2", "--signed-by", &key]),
        spawn_kiln(&h2, &["agent", "--cluster", &cluster, "--name", "h2", "--ttl", "2"]),
    ]);
    let ctl = tempdir("fleet-failing-ctl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).len() < 2 {
        assert!(Instant::now() < deadline, "the agents never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _c = Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    let started = Instant::now();
    kiln_ok(&ctl, &ctl, &["place", "--cluster", &cluster, "--service", "web", "--replicas", "1", &images[0].1]);
    let mut seen_failing = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = hosts(&ctl, &urls).unwrap_or_default();
        let h1_rec = v.as_array().into_iter().flatten().find(|h| h["name"] == "h1").cloned().unwrap_or_default();
        seen_failing |= h1_rec["failing"].as_array().is_some_and(|f| f.iter().any(|s| s == "web-0"));
        let p = placed(&ctl, &urls);
        let on_h2 = p.get("h2").and_then(|s| s.first()).map(|(_, port)| *port);
        if on_h2.is_some_and(|port| get(port).as_deref() == Some("busybox 1.0.0\n")) && p["h1"].is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "web-0 never moved to h2: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("a slot h1 could not start served on h2 after {} ms", started.elapsed().as_millis());
    assert!(seen_failing, "h1 reported web-0 failing");
    let log = fs::read_to_string(h1.join("kiln.log")).unwrap();
    assert!(log.contains("not signed"), "h1 refused it for want of a signature: {log}");
    let ps = json(&kiln_ok(&h1, &h1, &["ps", "--all", "--json"]));
    assert!(ps["instances"].as_array().unwrap().is_empty(), "nothing ran on h1: {ps}");
}

#[test]
fn a_slot_assigned_back_while_its_instance_drains_keeps_it_listed_and_serving() {
    let _room = room("fleet");
    let dir = tempdir("fleet-undrain");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-undrain-registry"), reg_port, ""));
    let (images, _) = pushed_busybox(reg_port);
    let home = tempdir("fleet-undrain-h1");
    let _hosts_clean = HostsCleanup(vec![home.clone()]);
    let _agent = Procs(vec![spawn_kiln(&home, &["agent", "--cluster", &cluster, "--name", "h1", "--ttl", "2"])]);
    let ctl = tempdir("fleet-undrain-ctl");
    let assign = || {
        kiln_ok(
            &ctl,
            &ctl,
            &["assign", "--cluster", &cluster, "--host", "h1", "--slot", "web-0", "--service", "web", &images[0].1],
        )
    };
    assign();
    let port = wait_serving(&ctl, &urls, "web-0", "busybox 1.0.0\n");
    // Unassigned: it drains (left out of the host's record) ...
    kiln_ok(&ctl, &ctl, &["unassign", "--cluster", &cluster, "--host", "h1", "--slot", "web-0"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !placed(&ctl, &urls)["h1"].is_empty() {
        assert!(Instant::now() < deadline, "never drained");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ... and is assigned back before its drain ends: listed again, the
    // same instance, never stopped.
    assign();
    let deadline = Instant::now() + Duration::from_secs(5);
    while placed(&ctl, &urls)["h1"] != vec![("web-0".to_owned(), port)] {
        assert!(Instant::now() < deadline, "the instance assigned back was never listed: {:?}", placed(&ctl, &urls));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(placed(&ctl, &urls)["h1"], vec![("web-0".to_owned(), port)], "still listed after a drain's time");
    assert_eq!(get(port).as_deref(), Some("busybox 1.0.0\n"));
}
