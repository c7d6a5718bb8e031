//! The first slice of the fleet: `kiln agent` registers a host in a real
//! etcd cluster (three members of Debian's etcd-server on loopback) under a
//! lease it keeps alive; `kiln hosts` lists it with its capacity; losing an
//! etcd member costs the host nothing; a SIGKILLed agent's host leaves the
//! list when its lease expires, within the 5 s the issue asks.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Processes the test started, killed by PID when it ends.
pub(crate) struct Procs(pub(crate) Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Removes a directory when dropped: etcd preallocates 64 MB of WAL per
/// member, too much to leave behind in every run. Declared before the
/// processes, so it is dropped after they are killed.
pub(crate) struct Cleanup(pub(crate) std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Three etcd members on loopback; their client URLs.
pub(crate) fn etcd_cluster(dir: &Path, procs: &mut Procs) -> Vec<String> {
    // A port picked free can be taken by another test before etcd binds
    // it: a cluster that elects no leader is started again on other ports.
    for attempt in 0..3 {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
        let mut members = Procs(Vec::new());
        for (i, (client, peer)) in ports.iter().enumerate() {
            let c = Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("try{attempt}-m{i}")))
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--heartbeat-interval", "100", "--election-timeout", "1000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("etcd (apt-get install etcd-server)");
            members.0.push(c);
        }
        let urls: Vec<String> = ports.iter().map(|(c, _)| format!("http://127.0.0.1:{c}")).collect();
        // Serving once it has a leader: a read answers.
        let probe = tempdir("fleet-probe");
        let deadline = Instant::now() + Duration::from_secs(20);
        while hosts(&probe, &urls).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if hosts(&probe, &urls).is_some() {
            procs.0.append(&mut members.0);
            return urls;
        }
        eprintln!("etcd cluster on {urls:?} elected no leader (attempt {attempt}); starting another");
    }
    panic!("the etcd cluster never elected a leader in 3 attempts");
}

fn hosts(home: &Path, urls: &[String]) -> Option<serde_json::Value> {
    let out = kiln(home, home, &["hosts", "--cluster", &urls.join(","), "--json"]);
    out.status.success().then(|| json(&String::from_utf8_lossy(&out.stdout)))
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn an_agent_registers_under_a_lease_survives_an_etcd_member_and_its_loss_is_seen_within_the_lease() {
    let _room = room("fleet");
    let dir = tempdir("fleet");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let home = tempdir("fleet-h1");
    // Until the cluster has a leader, the agent keeps trying.
    let mut agent =
        Procs(vec![spawn_kiln(&home, &["agent", "--cluster", &urls.join(","), "--name", "h1", "--ttl", "2"])]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        if let Some(v) = hosts(&home, &urls).filter(|v| names(v) == ["h1"]) {
            break v;
        }
        assert!(Instant::now() < deadline, "h1 never registered");
        std::thread::sleep(Duration::from_millis(100));
    };
    let h = &listed[0];
    assert!(h["memory_bytes"].as_u64().unwrap() > 1 << 30 && h["cpus"].as_u64().unwrap() >= 1, "{h}");
    assert_eq!((h["instances"].as_u64(), h["lease_ttl_secs"].as_i64()), (Some(0), Some(2)), "{h}");
    let text = kiln_ok(&home, &home, &["hosts", "--cluster", &urls.join(",")]);
    assert!(text.contains("h1") && text.contains("/2s"), "{text}");

    // One etcd member SIGKILLed (the first the agent tries): the agent
    // renews through the others, for longer than its lease.
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    let alive: Vec<String> = urls[1..].to_vec();
    std::thread::sleep(Duration::from_secs(5));
    let v = hosts(&home, &alive).expect("the cluster answers without a member");
    assert_eq!(names(&v), ["h1"], "the host kept its lease");

    // The agent SIGKILLed: its host leaves when the lease ends.
    let killed = Instant::now();
    agent.0[0].kill().unwrap();
    agent.0[0].wait().unwrap();
    loop {
        if hosts(&home, &alive).is_some_and(|v| names(&v).is_empty()) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(5), "the lost host was still listed after 5 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("host loss seen after {} ms (lease 2 s)", killed.elapsed().as_millis());

    // A bad --cluster is refused by name.
    let e = kiln_err(&home, &home, &["hosts", "--cluster", "127.0.0.1:2379"]);
    assert!(e.contains("http://HOST:PORT"), "{e}");
}

#[test]
fn a_stopped_agent_leaves_at_once() {
    let _room = room("fleet");
    let dir = tempdir("fleet-stop");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let home = tempdir("fleet-h2");
    let mut agent =
        Procs(vec![spawn_kiln(&home, &["agent", "--cluster", &urls.join(","), "--name", "h2", "--ttl", "30"])]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while hosts(&home, &urls).is_none_or(|v| names(&v) != ["h2"]) {
        assert!(Instant::now() < deadline, "h2 never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGTERM: the lease is revoked, not left to run out its 30 s.
    let pid = agent.0[0].id() as i32;
    // SAFETY: signalling a child this test spawned and still holds.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = agent.0[0].wait().unwrap();
    assert!(status.success(), "{status:?}");
    let v = hosts(&home, &urls).unwrap();
    assert!(names(&v).is_empty(), "{v}");
}

/// busybox httpd (not written by us) baked in versions 1 and 2, pushed to
/// docker-registry, version 2 signed; the digests by version, and the
/// signing key's public half.
fn pushed_busybox(registry_port: u16) -> (Vec<(String, String)>, std::path::PathBuf) {
    pushed_versions(registry_port, &["1.0.0", "2.0.0"])
}

/// busybox httpd images of `versions` pushed to the registry, as
/// [`pushed_busybox`]; each also answers `/cgi-bin/status` through a CGI
/// script, with 200 `ok VERSION`, except version 3.0.0, whose script
/// answers 500 half the time (a bad release).
pub(crate) fn pushed_versions(registry_port: u16, versions: &[&str]) -> (Vec<(String, String)>, std::path::PathBuf) {
    let (dir, home) = (tempdir("fleet-src"), tempdir("fleet-src-home"));
    busybox_httpd_rootfs(&dir.join("busybox-httpd.tar"));
    kiln_ok(&home, &dir, &["key", "generate", "release"]);
    let mut out = Vec::new();
    for v in versions.iter().copied() {
        fs::create_dir_all(dir.join(format!("www-{v}"))).unwrap();
        fs::write(dir.join(format!("www-{v}/index.html")), format!("busybox {v}\n")).unwrap();
        let status = if v == "3.0.0" {
            // Half its answers fail, at random: a partly broken release.
            "if [ $((RANDOM % 2)) = 0 ]; then echo 'Status: 500 Broken'; else echo 'Status: 200 OK'; fi"
        } else {
            "echo 'Status: 200 OK'"
        };
        fs::write(
            dir.join(format!("www-{v}/status")),
            format!("#!/bin/sh\n{status}\necho 'Content-Type: text/plain'\necho\necho 'ok {v}'\n"),
        )
        .unwrap();
        // In a fleet an instance is reached at its host's address, not
        // loopback: it listens on every address.
        let toml = busybox_image(v).replace("127.0.0.1:$PORT", "$PORT").replace(
            "dest = \"/www/index.html\" }",
            &format!(
                "dest = \"/www/index.html\" }}, {{ src = \"www-{v}/status\", dest = \"/www/cgi-bin/status\", mode = \"0755\" }}"
            ),
        );
        assert!(toml.contains("cgi-bin/status"), "{toml}");
        fs::write(dir.join("kiln.toml"), toml).unwrap();
        let digest = bake_digests(&home, &dir, &[])[0].clone();
        let mut push = vec!["push".to_owned(), format!("web:{v}"), format!("127.0.0.1:{registry_port}/team/web:{v}")];
        if v == "2.0.0" {
            push.extend(["--sign".to_owned(), "release".to_owned()]);
        }
        kiln_ok(&home, &dir, &push.iter().map(String::as_str).collect::<Vec<_>>());
        out.push((v.to_owned(), format!("127.0.0.1:{registry_port}/team/web@{digest}")));
    }
    (out, home.join("keys/release.pub"))
}

fn get(port: u16) -> Option<String> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(c, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    s.split("\r\n\r\n").nth(1).map(str::to_owned)
}

/// Waits until host `h`'s record shows slot `slot` serving `body`.
fn wait_serving(home: &Path, urls: &[String], slot: &str, body: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let port = hosts(home, urls).and_then(|v| {
            v[0]["placed"].as_array()?.iter().find(|p| p["slot"] == slot).and_then(|p| p["port"].as_u64())
        });
        if let Some(p) = port {
            if get(p as u16).as_deref() == Some(body) {
                return p as u16;
            }
        }
        assert!(Instant::now() < deadline, "{slot} never served {body:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_agent_runs_what_is_assigned_to_its_host_by_digest_and_replaces_and_removes_it() {
    let _room = room("fleet");
    let dir = tempdir("fleet-run");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-registry"), reg_port, ""));
    let (images, _) = pushed_busybox(reg_port);
    let home = tempdir("fleet-agent-home");
    let _hosts_clean = HostsCleanup(vec![home.clone()]);
    let _agent = Procs(vec![spawn_kiln(&home, &["agent", "--cluster", &cluster, "--name", "h1", "--ttl", "2"])]);
    let ctl = tempdir("fleet-ctl");
    // A tag is refused: every host must run the same bytes.
    let e = kiln_err(
        &ctl,
        &ctl,
        &[
            "assign",
            "--cluster",
            &cluster,
            "--host",
            "h1",
            "--slot",
            "web-1",
            "--service",
            "web",
            &format!("127.0.0.1:{reg_port}/team/web:1.0.0"),
        ],
    );
    assert!(e.contains("by digest"), "{e}");
    kiln_ok(
        &ctl,
        &ctl,
        &["assign", "--cluster", &cluster, "--host", "h1", "--slot", "web-1", "--service", "web", &images[0].1],
    );
    let p1 = wait_serving(&ctl, &urls, "web-1", "busybox 1.0.0\n");
    // A new digest for the slot: replaced, the new one started first.
    kiln_ok(
        &ctl,
        &ctl,
        &["assign", "--cluster", &cluster, "--host", "h1", "--slot", "web-1", "--service", "web", &images[1].1],
    );
    let p2 = wait_serving(&ctl, &urls, "web-1", "busybox 2.0.0\n");
    assert_ne!(p1, p2);
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(p1).is_some() {
        assert!(Instant::now() < deadline, "the old instance was never removed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Unassigned: removed, and the host reports nothing placed.
    kiln_ok(&ctl, &ctl, &["unassign", "--cluster", &cluster, "--host", "h1", "--slot", "web-1"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(p2).is_some() || hosts(&ctl, &urls).is_none_or(|v| !v[0]["placed"].as_array().unwrap().is_empty()) {
        assert!(Instant::now() < deadline, "the unassigned instance was never removed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Drained from the load balancers first, then stopped and removed.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ps = json(&kiln_ok(&home, &home, &["ps", "--all", "--json"]));
        if ps["instances"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no orphan left: {ps}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn spawn_kiln(home: &Path, args: &[&str]) -> Child {
    // Its log stays in its home, for a failure's post-mortem.
    let log = fs::File::options().create(true).append(true).open(home.join("kiln.log")).unwrap();
    kiln_cmd().args(args).env("KILN_HOME", home).stdout(Stdio::null()).stderr(log).spawn().unwrap()
}

/// host → [(slot, port)] from `kiln hosts --json`.
pub(crate) fn placed(home: &Path, urls: &[String]) -> std::collections::BTreeMap<String, Vec<(String, u16)>> {
    let mut out = std::collections::BTreeMap::new();
    for h in hosts(home, urls).unwrap_or_default().as_array().cloned().unwrap_or_default() {
        let slots = h["placed"]
            .as_array()
            .map(|a| {
                a.iter().map(|p| (p["slot"].as_str().unwrap().to_owned(), p["port"].as_u64().unwrap() as u16)).collect()
            })
            .unwrap_or_default();
        out.insert(h["name"].as_str().unwrap().to_owned(), slots);
    }
    out
}

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
fn an_agent_with_signed_by_runs_only_signed_images() {
    let _room = room("fleet");
    let dir = tempdir("fleet-signed");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-signed-registry"), reg_port, ""));
    let (images, key) = pushed_busybox(reg_port);
    let home = tempdir("fleet-signed-h1");
    let _hosts_clean = HostsCleanup(vec![home.clone()]);
    let _agent = Procs(vec![spawn_kiln(
        &home,
        &["agent", "--cluster", &cluster, "--name", "h1", "--ttl", "2", "--signed-by", key.to_str().unwrap()],
    )]);
    let ctl = tempdir("fleet-signed-ctl");
    // Version 1 carries no signature: never run, nothing tagged.
    kiln_ok(
        &ctl,
        &ctl,
        &["assign", "--cluster", &cluster, "--host", "h1", "--slot", "web-1", "--service", "web", &images[0].1],
    );
    std::thread::sleep(Duration::from_secs(4));
    let p = placed(&ctl, &urls);
    assert!(p.get("h1").is_some_and(|s| s.is_empty()), "an unsigned image ran: {p:?}");
    let imgs = kiln_ok(&home, &home, &["images"]);
    assert_eq!(imgs.lines().count(), 1, "nothing tagged: {imgs}");
    // Version 2 is signed by the key: it runs.
    kiln_ok(
        &ctl,
        &ctl,
        &["assign", "--cluster", &cluster, "--host", "h1", "--slot", "web-1", "--service", "web", &images[1].1],
    );
    wait_serving(&ctl, &urls, "web-1", "busybox 2.0.0\n");
    kiln_ok(&ctl, &ctl, &["unassign", "--cluster", &cluster, "--host", "h1", "--slot", "web-1"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while placed(&ctl, &urls).values().flatten().count() > 0 {
        assert!(Instant::now() < deadline, "never removed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid of the load balancer of `service` an agent with home `home`
/// started, if any.
fn lb_pid(home: &Path, service: &str) -> Option<i32> {
    let v = fs::read_to_string(home.join(format!("proxies/{service}/proxy.json"))).ok()?;
    json(&v)["pid"].as_i64().map(|p| p as i32)
}

/// Kills what a test's agents started besides themselves: their load
/// balancers (by the pid each recorded) and their instances.
pub(crate) struct HostsCleanup(pub(crate) Vec<std::path::PathBuf>);

impl Drop for HostsCleanup {
    fn drop(&mut self) {
        for home in &self.0 {
            // Every load balancer the agent recorded: one per service, or
            // one per address services share (`@IP_PORT`).
            let dirs = fs::read_dir(home.join("proxies")).into_iter().flatten().flatten();
            let pids = dirs.filter_map(|d| lb_pid(home, d.file_name().to_str()?));
            for pid in pids {
                // SAFETY: a signal to a load balancer this test's agent started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&kiln(home, home, &["ps", "--json"]).stdout) {
                for r in v["instances"].as_array().into_iter().flatten() {
                    kiln(home, home, &["rm", "--force", r["id"].as_str().unwrap_or_default()]);
                }
            }
        }
    }
}

/// An agent `hN` per home, advertising the matching address (its load
/// balancers listen there), with 2 s leases.
pub(crate) fn agents_at(homes: &[std::path::PathBuf], ips: &[&str], cluster: &str) -> Procs {
    Procs(
        homes
            .iter()
            .zip(ips)
            .enumerate()
            .map(|(i, (home, ip))| {
                let name = format!("h{}", i + 1);
                let peer = free_port().to_string();
                spawn_kiln(
                    home,
                    &[
                        "agent",
                        "--cluster",
                        cluster,
                        "--name",
                        &name,
                        "--ttl",
                        "2",
                        "--advertise",
                        ip,
                        "--peer-port",
                        &peer,
                    ],
                )
            })
            .collect(),
    )
}

/// `n` keep-alive GETs to `addr`; the bodies by how often each came, or
/// what went wrong first.
pub(crate) fn try_bodies(
    addr: std::net::SocketAddr,
    n: usize,
) -> Result<std::collections::BTreeMap<String, usize>, String> {
    try_bodies_of(addr, "/", n)
}

/// [`try_bodies`] of `path`.
fn try_bodies_of(
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
) -> Result<std::collections::BTreeMap<String, usize>, String> {
    let mut c = Conn::try_at(addr).map_err(|e| format!("{addr}: {e}"))?;
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (code, _, body) = c.get(path).map_err(|e| format!("{addr}: {e}"))?;
        if code != 200 {
            return Err(format!("{addr}: {code} {}", String::from_utf8_lossy(&body)));
        }
        *out.entry(String::from_utf8_lossy(&body).into_owned()).or_default() += 1;
    }
    Ok(out)
}

fn bodies(addr: std::net::SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    try_bodies(addr, n).unwrap()
}

#[test]
fn a_fleet_canary_s_share_is_exact_across_three_load_balancers_and_a_lost_host_costs_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let _room = room("fleet");
    let dir = tempdir("fleet-canary");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-canary-registry"), reg_port, ""));
    let (images, _) = pushed_busybox(reg_port);
    // Three hosts, each advertising its own loopback address: a load
    // balancer on each, on the same port.
    let homes: Vec<std::path::PathBuf> = (1..=3).map(|i| tempdir(&format!("fleet-canary-h{i}"))).collect();
    let _hosts_clean = HostsCleanup(homes.clone());
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let mut agents = agents_at(&homes, &ips, &cluster);
    let ctl = tempdir("fleet-canary-ctl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).len() < 3 {
        assert!(Instant::now() < deadline, "the agents never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _controllers =
        Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    // Bad input is refused naming the field, and nothing is written.
    let e = kiln_err(
        &ctl,
        &ctl,
        &["place", "--cluster", &cluster, "--service", "web", "--replicas", "3", "--listen", "9", "--health", "x"]
            .into_iter()
            .chain([images[0].1.as_str()])
            .collect::<Vec<_>>(),
    );
    assert!(e.contains("health.path") && e.contains("kiln place"), "{e}");
    let tag = format!("127.0.0.1:{reg_port}/team/web:2.0.0");
    let e = kiln_err(
        &ctl,
        &ctl,
        &["place", "--cluster", &cluster, "--service", "web", "--replicas", "3", "--listen", "9", "--canary", &tag]
            .into_iter()
            .chain([images[0].1.as_str()])
            .collect::<Vec<_>>(),
    );
    assert!(e.contains("canary") && e.contains("by digest"), "{e}");
    let lb_port = free_port();
    let lbs: Vec<std::net::SocketAddr> = ips.iter().map(|ip| format!("{ip}:{lb_port}").parse().unwrap()).collect();
    let place = |weight: &str| {
        kiln_ok(
            &ctl,
            &ctl,
            &[
                "place",
                "--cluster",
                &cluster,
                "--service",
                "web",
                "--replicas",
                "3",
                "--listen",
                &lb_port.to_string(),
                "--health",
                "/",
                "--canary",
                &images[1].1,
                "--canary-weight",
                weight,
                &images[0].1,
            ],
        )
    };
    place("10");
    // Three stable replicas and the canary, spread; every load balancer
    // routes to both versions.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = placed(&ctl, &urls);
        let ready = p.values().flatten().count() == 4
            && lbs
                .iter()
                .all(|lb| std::net::TcpStream::connect(lb).is_ok() && try_bodies(*lb, 40).is_ok_and(|b| b.len() == 2));
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never served by both releases on every load balancer: {p:?} {:?}",
            lbs.iter().map(|lb| try_bodies(*lb, 40)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every backend healthy on every load balancer before counting.
    std::thread::sleep(Duration::from_secs(2));
    // 10,002 requests spread over the three load balancers at once.
    let counts: Vec<std::collections::BTreeMap<String, usize>> = std::thread::scope(|s| {
        let hs: Vec<_> = lbs.iter().map(|lb| s.spawn(move || bodies(*lb, 3334))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let canary: usize = counts.iter().map(|c| c.get("busybox 2.0.0\n").copied().unwrap_or(0)).sum();
    let total: usize = counts.iter().map(|c| c.values().sum::<usize>()).sum();
    let share = canary as f64 * 100.0 / total as f64;
    eprintln!(
        "fleet canary at 10 %: {canary} of {total} requests over three load balancers = {share:.2} % ({counts:?})"
    );
    assert_eq!(total, 10_002);
    assert!((share - 10.0).abs() <= 0.5, "observed {share:.2} %, target 10 %");
    // A new weight reaches every load balancer.
    place("50");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shares: Vec<usize> =
            lbs.iter().map(|lb| bodies(*lb, 100).get("busybox 2.0.0\n").copied().unwrap_or(0)).collect();
        if shares.iter().all(|n| (45..=55).contains(n)) {
            break;
        }
        assert!(Instant::now() < deadline, "50 % never reached every load balancer: {shares:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Host h1 is lost under load on the other two load balancers: its
    // agent, its load balancer and its instances SIGKILLed.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (ok, failed) = (std::sync::Arc::new(AtomicU64::new(0)), std::sync::Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = lbs[1..]
        .iter()
        .flat_map(|lb| [*lb, *lb])
        .map(|lb| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut c = Conn::at(lb);
                while !stop.load(Ordering::Relaxed) {
                    match c.get("/") {
                        Ok((200, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("{lb}: {:?}", other.map(|r| r.0));
                            c = Conn::at(lb);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let h1_lb = lb_pid(&homes[0], "web").expect("h1 runs a load balancer");
    agents.0[0].kill().unwrap();
    agents.0[0].wait().unwrap();
    // SAFETY: a signal to the load balancer this test's agent h1 started.
    unsafe { libc::kill(h1_lb, libc::SIGKILL) };
    let ps = json(&kiln_ok(&homes[0], &homes[0], &["ps", "--json"]));
    for i in ps["instances"].as_array().unwrap() {
        kiln(&homes[0], &homes[0], &["rm", "--force", i["id"].as_str().unwrap()]);
    }
    let lost = Instant::now();
    // Its slots come back on h2 and h3, every one reported running.
    loop {
        let p = placed(&ctl, &urls);
        if !p.contains_key("h1") && p.values().flatten().count() == 4 {
            break;
        }
        assert!(lost.elapsed() < Duration::from_secs(15), "h1's slots not back within 15 s: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let back = lost.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    load.into_iter().for_each(|h| h.join().unwrap());
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("host loss under load: {ok} requests answered, {failed} failed; slots back in {} ms", back.as_millis());
    assert!(ok > 1000, "the load ran: {ok}");
    assert_eq!(failed, 0, "no idempotent request failed while h1 was lost");
    // The canary's share is still set on the two live load balancers.
    let shares: Vec<usize> =
        lbs[1..].iter().map(|lb| bodies(*lb, 100).get("busybox 2.0.0\n").copied().unwrap_or(0)).collect();
    assert!(shares.iter().all(|n| (45..=55).contains(n)), "{shares:?}");
    kiln_ok(&ctl, &ctl, &["place", "--cluster", &cluster, "--service", "web", "--replicas", "0", &images[0].1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).values().flatten().count() > 0
        || lbs[1..].iter().any(|lb| std::net::TcpStream::connect(lb).is_ok())
    {
        assert!(Instant::now() < deadline, "instances or load balancers left after removal");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn services(home: &Path, urls: &[String]) -> serde_json::Value {
    json(&kiln_ok(home, home, &["services", "--cluster", &urls.join(","), "--json"]))
}

/// Keep-alive GETs of `path` on every load balancer, one client each,
/// until stopped: answers by body, and failures (an I/O error, or any
/// status but the app's own: 200, or the bad release's 500).
pub(crate) struct FleetLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(std::collections::BTreeMap<String, u64>, u64)>>,
}

impl FleetLoad {
    pub(crate) fn start(lbs: &[std::net::SocketAddr], path: &'static str) -> FleetLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = lbs
            .iter()
            .copied()
            .map(|lb| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut bodies, mut failed) = (std::collections::BTreeMap::new(), 0u64);
                    let mut c = Conn::at(lb);
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                        match c.get(path) {
                            Ok((code, _, body)) if code == 200 || (code == 500 && body == b"ok 3.0.0\n") => {
                                *bodies
                                    .entry(format!("{code} {}", String::from_utf8_lossy(&body).trim()))
                                    .or_default() += 1;
                            }
                            other => {
                                eprintln!(
                                    "{lb} at {:?}: {:?}",
                                    std::time::SystemTime::now(),
                                    other.map(|r| (r.0, String::from_utf8_lossy(&r.2).into_owned()))
                                );
                                failed += 1;
                                c = Conn::at(lb);
                            }
                        }
                    }
                    (bodies, failed)
                })
            })
            .collect();
        FleetLoad { stop, threads }
    }

    pub(crate) fn stop(self) -> (std::collections::BTreeMap<String, u64>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = std::collections::BTreeMap::new();
        let mut failed = 0;
        for t in self.threads {
            let (b, f) = t.join().unwrap();
            for (k, v) in b {
                *all.entry(k).or_default() += v;
            }
            failed += f;
        }
        (all, failed)
    }
}

#[test]
fn a_fleet_canary_is_judged_on_every_host_s_counts_promoted_through_a_leader_s_death_and_a_bad_one_aborted() {
    let _room = room("fleet");
    let dir = tempdir("fleet-analysis");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-analysis-registry"), reg_port, ""));
    let (images, _) = pushed_versions(reg_port, &["1.0.0", "2.0.0", "3.0.0"]);
    let homes: Vec<std::path::PathBuf> = (1..=3).map(|i| tempdir(&format!("fleet-analysis-h{i}"))).collect();
    let _hosts_clean = HostsCleanup(homes.clone());
    let ips = ["127.0.0.5", "127.0.0.6", "127.0.0.7"];
    let _agents = agents_at(&homes, &ips, &cluster);
    let ctl = tempdir("fleet-analysis-ctl");
    let mut controllers =
        Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    let lb_port = free_port();
    let port = lb_port.to_string();
    let lbs: Vec<std::net::SocketAddr> = ips.iter().map(|ip| format!("{ip}:{lb_port}").parse().unwrap()).collect();
    let base =
        ["place", "--cluster", &cluster, "--service", "web", "--replicas", "3", "--listen", &port, "--health", "/"];
    let place = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        kiln_ok(&ctl, &ctl, &args)
    };
    // Steps must be percents, and need an interval a load balancer's
    // window holds.
    let bad: Vec<&str> =
        base.iter().copied().chain(["--canary", &images[1].1, "--canary-steps", "20,150", &images[0].1]).collect();
    assert!(kiln_err(&ctl, &ctl, &bad).contains("canary_steps"));
    let bad: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--canary", &images[1].1, "--canary-steps", "20", "--step-interval", "5m", &images[0].1])
        .collect();
    assert!(kiln_err(&ctl, &ctl, &bad).contains("step_interval"));
    let bad: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--canary", &images[1].1, "--canary-steps", "20", "--max-error-rate", "2", &images[0].1])
        .collect();
    assert!(kiln_err(&ctl, &ctl, &bad).contains("max_error_rate"));
    assert!(services(&ctl, &urls).as_array().unwrap().is_empty(), "nothing written by a refused place");
    place(&[&images[0].1]);
    let only = |version: &str| {
        let want = format!("busybox {version}\n");
        lbs.iter().all(|lb| try_bodies(*lb, 30).is_ok_and(|b| b.len() == 1 && b.contains_key(&want)))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !only("1.0.0") || placed(&ctl, &urls).values().flatten().count() != 3 {
        assert!(Instant::now() < deadline, "1.0.0 never served on every load balancer");
        std::thread::sleep(Duration::from_millis(300));
    }
    // A second controller stands by.
    controllers.0.push(spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c2", "--ttl", "2"]));

    // A good canary in two analysed steps of 3 s, under load on all three
    // load balancers; the leader is SIGKILLed once the first step began.
    let load = FleetLoad::start(&lbs, "/cgi-bin/status");
    // A fresh instance on a busy 2-core host is slower at first: a p99
    // up to three times stable's passes here.
    place(&[
        "--canary",
        &images[1].1,
        "--canary-steps",
        "20,50",
        "--step-interval",
        "3s",
        "--max-p99-ratio",
        "3",
        &images[0].1,
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while services(&ctl, &urls)[0]["desired"]["canary"]["progress"].is_null() {
        assert!(Instant::now() < deadline, "the canary never started: {}", services(&ctl, &urls));
        std::thread::sleep(Duration::from_millis(100));
    }
    controllers.0[0].kill().unwrap();
    controllers.0[0].wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let promoted = loop {
        let s = services(&ctl, &urls);
        if s[0]["desired"]["image"] == images[1].1.as_str() && s[0]["desired"]["canary"].is_null() {
            break s;
        }
        assert!(Instant::now() < deadline, "never promoted: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let v = &promoted[0]["verdict"];
    assert_eq!(v["action"], "promote", "{promoted}");
    assert_eq!(v["weight"], 50);
    // One verdict over every host's counts.
    let hosts = v["hosts"].as_object().unwrap();
    assert_eq!(hosts.len(), 3, "{v}");
    let summed: u64 = hosts.values().map(|h| h[0].as_u64().unwrap()).sum();
    assert_eq!(v["verdict"]["canary_requests"].as_u64().unwrap(), summed);
    assert!(hosts.values().all(|h| h[0].as_u64().unwrap() > 0), "every host's load balancer sent to the canary: {v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !only("2.0.0") {
        assert!(Instant::now() < deadline, "2.0.0 never served alone after the promotion");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (answers, failed) = load.stop();
    eprintln!("good canary through a leader's death: {answers:?}, {failed} failed; verdict {v}");
    assert_eq!(failed, 0, "no request failed through the canary, the promotion and the leader's death");
    assert!(answers.get("200 ok 2.0.0").is_some_and(|n| *n > 100), "{answers:?}");

    // A bad canary (its status page answers 500): aborted on the fleet's
    // counts; the stable release keeps serving.
    let load = FleetLoad::start(&lbs, "/cgi-bin/status");
    place(&["--canary", &images[2].1, "--canary-steps", "20,50", "--step-interval", "3s", &images[1].1]);
    let deadline = Instant::now() + Duration::from_secs(40);
    let aborted = loop {
        let s = services(&ctl, &urls);
        if s[0]["verdict"]["action"] == "abort" && s[0]["desired"]["canary"].is_null() {
            break s;
        }
        assert!(Instant::now() < deadline, "never aborted: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(aborted[0]["desired"]["image"], images[1].1.as_str());
    assert_eq!(aborted[0]["verdict"]["weight"], 20, "failed at its first step: {aborted}");
    assert_eq!(aborted[0]["verdict"]["verdict"]["outcome"], "fail");
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).values().flatten().any(|(slot, _)| slot.contains("canary")) {
        assert!(Instant::now() < deadline, "the bad canary's instance was never removed");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (answers, failed) = load.stop();
    eprintln!("bad canary: {answers:?}, {failed} failed; verdict {}", aborted[0]["verdict"]);
    assert_eq!(failed, 0);
    assert!(answers.get("500 ok 3.0.0").is_some_and(|n| *n > 0), "the bad canary got its share: {answers:?}");
    assert!(only("2.0.0"), "only the stable release serves after the abort");
    let text = kiln_ok(&ctl, &ctl, &["services", "--cluster", &cluster]);
    assert!(text.contains("last verdict: abort (fail) at 20 %"), "{text}");
    // The history: each step's verdict, the promotion and the abort, the
    // chain whole through the leader's death (the new leader appended to
    // what the old one wrote).
    let h = json(&kiln_ok(&ctl, &ctl, &["history", "web", "--cluster", &cluster, "--verify", "--json"]));
    let events: Vec<&serde_json::Value> = h["entries"].as_array().unwrap().iter().map(|e| &e["event"]).collect();
    let outcomes: Vec<&str> =
        events.iter().filter(|e| e["kind"] == "finished").filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["succeeded", "failed"], "{h}");
    let failed_verdict = events.iter().rev().find(|e| e["kind"] == "verdict").unwrap();
    assert_eq!(failed_verdict["verdict"]["outcome"], "fail", "{h}");
    assert!(events.iter().filter(|e| e["kind"] == "verdict" && e["verdict"]["outcome"] == "pass").count() >= 1, "{h}");
    let text = kiln_ok(&ctl, &ctl, &["history", "web", "--cluster", &cluster]);
    assert!(text.contains("the analysis failed at step 1") && text.contains("verdict at step 1: fail"), "{text}");

    // A rollback drill under load: a 10 % canary of stable's own digest
    // that every load balancer fails (counted as 503s, sent on to
    // stable); the leader's analysis of the three hosts' counts catches
    // it and takes it out; no client sees it, stable is untouched.
    let load = FleetLoad::start(&lbs, "/cgi-bin/status");
    let drill =
        kiln(&ctl, &ctl, &["chaos", "web", "--drill", "canary", "--cluster", &cluster, "--window", "2s", "--json"]);
    let report = json(&String::from_utf8_lossy(&drill.stdout));
    std::thread::sleep(Duration::from_secs(1));
    let (answers, failed) = load.stop();
    eprintln!("fleet drill: {report}; load {answers:?}, {failed} failed");
    assert_eq!(drill.status.code(), Some(0), "{report} {}", String::from_utf8_lossy(&drill.stderr));
    assert_eq!((report["outcome"].as_str(), report["caught"].as_bool()), (Some("caught"), Some(true)), "{report}");
    assert_eq!((report["canary_percent"].as_u64(), report["image"].as_str()), (Some(10), Some(images[1].1.as_str())));
    assert!(report["stable_untouched"].as_bool().unwrap(), "{report}");
    assert!(report["detect_ms"].as_u64().is_some() && report["cleaned_ms"].as_u64().is_some(), "{report}");
    let judged = report["hosts"].as_object().unwrap();
    assert_eq!(judged.len(), 3, "{report}");
    assert!(judged.values().all(|h| h[0].as_u64().unwrap() > 0), "every host's faulted canary requests: {report}");
    assert_eq!(failed, 0, "no client saw the drill: {answers:?}");
    assert!(answers.keys().all(|k| k == "200 ok 2.0.0"), "{answers:?}");
    assert!(placed(&ctl, &urls).values().flatten().all(|(slot, _)| !slot.contains("canary")));
    let h = json(&kiln_ok(&ctl, &ctl, &["history", "web", "--cluster", &cluster, "--json"]));
    let drills = h["entries"].as_array().unwrap().iter().filter(|e| e["event"]["strategy"] == "drill").count();
    assert_eq!(drills, 1, "the drill's start in the fleet's history: {h}");
    // A drill beside a canary in progress, or out of range: refused.
    let e = kiln_err(&ctl, &ctl, &["chaos", "web", "--drill", "canary", "--cluster", &cluster, "--window", "90s"]);
    assert!(e.contains("window_ms"), "{e}");
    kiln_ok(&ctl, &ctl, &["place", "--cluster", &cluster, "--service", "web", "--replicas", "0", &images[1].1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).values().flatten().count() > 0 {
        assert!(Instant::now() < deadline, "instances left after removal");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `value` at `key` through etcd's JSON gateway, as any client
/// with access to etcd (an old leader, a script) could.
fn etcd_put(url: &str, key: &str, value: &serde_json::Value) {
    let body = serde_json::json!({
        "key": kiln::base64::encode(key.as_bytes()),
        "value": kiln::base64::encode(value.to_string().as_bytes()),
    });
    let out = run("curl", &["-sf", &format!("{url}/v3/kv/put"), "-d", &body.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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
fn with_the_registry_down_a_host_pulls_from_a_peer_s_store_by_digest() {
    let _room = room("fleet");
    let dir = tempdir("fleet-peer");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    let mut registry = Procs(vec![docker_registry(&tempdir("fleet-peer-registry"), reg_port, "")]);
    let (images, _) = pushed_busybox(reg_port);
    let (h1, h2) = (tempdir("fleet-peer-h1"), tempdir("fleet-peer-h2"));
    let _hosts_clean = HostsCleanup(vec![h1.clone(), h2.clone()]);
    let agent = |home: &Path, name: &str| {
        spawn_kiln(home, &["agent", "--cluster", &cluster, "--name", name, "--ttl", "2", "--peer-port", "0"])
    };
    let _agents = Procs(vec![agent(&h1, "h1")]);
    let ctl = tempdir("fleet-peer-ctl");
    let _c = Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    kiln_ok(&ctl, &ctl, &["place", "--cluster", &cluster, "--service", "web", "--replicas", "1", &images[0].1]);
    wait_serving(&ctl, &urls, "web-0", "busybox 1.0.0\n");
    // A peer's store answers by digest only, and refuses writes.
    let peer_port = hosts(&ctl, &urls).unwrap()[0]["peer_port"].as_u64().unwrap();
    let digest = images[0].1.rsplit_once('@').unwrap().1;
    let base = format!("http://127.0.0.1:{peer_port}/v2/team/web");
    let code = |args: &[&str]| {
        let out = run("curl", &[&["-s", "-o", "/dev/null", "-w", "%{http_code}"], args].concat());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(code(&[&format!("{base}/manifests/{digest}")]), "200");
    assert_eq!(code(&[&format!("{base}/manifests/1.0.0")]), "404", "no tags");
    assert_eq!(code(&["-X", "PUT", &format!("{base}/blobs/{digest}")]), "405");
    // The registry goes down; h2 joins with an empty store, and h1 drains.
    registry.0[0].kill().unwrap();
    registry.0[0].wait().unwrap();
    let _h2 = Procs(vec![agent(&h2, "h2")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).len() < 2 {
        assert!(Instant::now() < deadline, "h2 never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    kiln_ok(&ctl, &ctl, &["drain-host", "--cluster", &cluster, "h1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = placed(&ctl, &urls);
        let on_h2 = p.get("h2").and_then(|s| s.first()).map(|(_, port)| *port);
        if on_h2.is_some_and(|port| get(port).as_deref() == Some("busybox 1.0.0\n")) && p["h1"].is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "web-0 never moved to h2 with the registry down: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = fs::read_to_string(h2.join("kiln.log")).unwrap();
    assert!(log.contains("pulled from peer h1"), "{log}");
    // Verified as from a registry: h2's store holds the same digest.
    kiln_ok(&h2, &h2, &["inspect", digest]);
}

/// With the registry down, a host that requires signatures pulls a signed
/// image from a peer with its signature (the peer's referrers) and checks
/// it against its own key: refused under another key (made by openssl),
/// run under the right one; meanwhile the old host keeps serving.
#[test]
fn with_the_registry_down_a_signed_image_comes_from_a_peer_with_its_signature_checked() {
    let _room = room("fleet");
    let dir = tempdir("fleet-peersig");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    let mut registry = Procs(vec![docker_registry(&tempdir("fleet-peersig-registry"), reg_port, "")]);
    let (images, key) = pushed_busybox(reg_port);
    let other = dir.join("other.pub");
    let other_key = dir.join("other.key");
    run("openssl", &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", other_key.to_str().unwrap()]);
    run("openssl", &["ec", "-in", other_key.to_str().unwrap(), "-pubout", "-out", other.to_str().unwrap()]);
    let (h1, h2) = (tempdir("fleet-peersig-h1"), tempdir("fleet-peersig-h2"));
    let _hosts_clean = HostsCleanup(vec![h1.clone(), h2.clone()]);
    let agent = |home: &Path, name: &str, key: &Path| {
        spawn_kiln(
            home,
            &[
                "agent",
                "--cluster",
                &cluster,
                "--name",
                name,
                "--ttl",
                "2",
                "--peer-port",
                "0",
                "--signed-by",
                key.to_str().unwrap(),
            ],
        )
    };
    let _a1 = Procs(vec![agent(&h1, "h1", &key)]);
    let ctl = tempdir("fleet-peersig-ctl");
    let _c = Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    kiln_ok(&ctl, &ctl, &["place", "--cluster", &cluster, "--service", "web", "--replicas", "1", &images[1].1]);
    wait_serving(&ctl, &urls, "web-0", "busybox 2.0.0\n");
    // h1's store answers for what it holds about the digest: its signature.
    let peer_port = hosts(&ctl, &urls).unwrap()[0]["peer_port"].as_u64().unwrap();
    let digest = images[1].1.rsplit_once('@').unwrap().1;
    let out = run("curl", &["-sf", &format!("http://127.0.0.1:{peer_port}/v2/team/web/referrers/{digest}")]);
    let referrers = json(&String::from_utf8_lossy(&out.stdout));
    assert!(!referrers["manifests"].as_array().unwrap().is_empty(), "{referrers}");
    registry.0[0].kill().unwrap();
    registry.0[0].wait().unwrap();
    // h2 trusts another key: it gets the image and its signature from h1,
    // refuses them, and reports the slot failing; h1 keeps serving it.
    let mut a2 = Procs(vec![agent(&h2, "h2", &other)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).len() < 2 {
        assert!(Instant::now() < deadline, "h2 never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    kiln_ok(&ctl, &ctl, &["drain-host", "--cluster", &cluster, "h1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hs = hosts(&ctl, &urls).unwrap();
        let h2_row = hs.as_array().unwrap().iter().find(|h| h["name"] == "h2").cloned().unwrap_or_default();
        if h2_row["failing"].as_array().is_some_and(|f| f.iter().any(|s| s == "web-0")) {
            break;
        }
        assert!(Instant::now() < deadline, "h2 never refused the peer's image: {hs}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = fs::read_to_string(h2.join("kiln.log")).unwrap();
    assert!(log.contains("pulled from peer h1"), "{log}");
    let p = placed(&ctl, &urls);
    assert!(p["h2"].is_empty() && !p["h1"].is_empty(), "refused on h2, still served by h1: {p:?}");
    assert!(!kiln_ok(&h2, &h2, &["images"]).contains("web:"), "nothing tagged on h2");
    // Under the right key, h2 runs it, pulled and checked the same way.
    a2.0[0].kill().unwrap();
    a2.0[0].wait().unwrap();
    let _a2 = Procs(vec![agent(&h2, "h2", &key)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = placed(&ctl, &urls);
        let on_h2 = p.get("h2").and_then(|s| s.first()).map(|(_, port)| *port);
        if on_h2.is_some_and(|port| get(port).as_deref() == Some("busybox 2.0.0\n")) && p["h1"].is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "web-0 never moved to h2: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The signature came with the image, and is kept beside it.
    let index = fs::read_to_string(h2.join("store/index.json")).unwrap();
    let sig = format!("web:sha256-{}.sig", digest.trim_start_matches("sha256:"));
    assert!(index.contains(&sig), "{sig} in {index}");
}

/// busybox httpd images 1.0.0 and 2.0.0 pushed to the registry, both
/// through the gate (test, scan, secret scan) and signed by the
/// `[promotion]` key; only 1.0.0 promoted to dev, staging and prod. The
/// channel signatures travel with the image. Returns them and the key.
fn pushed_promoted(registry_port: u16) -> (Vec<String>, std::path::PathBuf) {
    let (dir, home) = (tempdir("fleet-promoted-src"), tempdir("fleet-promoted-home"));
    busybox_httpd_rootfs(&dir.join("busybox-httpd.tar"));
    kiln_ok(&home, &dir, &["key", "generate"]);
    let osv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv");
    let mut out = Vec::new();
    for v in ["1.0.0", "2.0.0"] {
        fs::create_dir_all(dir.join(format!("www-{v}"))).unwrap();
        fs::write(dir.join(format!("www-{v}/index.html")), format!("busybox {v}\n")).unwrap();
        let toml = busybox_image(v).replace("127.0.0.1:$PORT", "$PORT")
            + "[image.web.test]\nchecks = [\"/\"]\ntimeout = \"30s\"\n[image.web.scan]\nmax_db_age = \"36500d\"\n";
        fs::write(dir.join("kiln.toml"), toml).unwrap();
        let digest = bake_digests(&home, &dir, &[])[0].clone();
        kiln_ok(&home, &dir, &["test", "web"]);
        kiln_ok(&home, &dir, &["scan", "web", "--db", osv.to_str().unwrap()]);
        kiln_ok(&home, &dir, &["scan-secrets", "web"]);
        kiln_ok(&home, &dir, &["sign", "web"]);
        if v == "1.0.0" {
            for channel in ["dev", "staging", "prod"] {
                kiln_ok(&home, &dir, &["promote-image", "web", "--to", channel]);
            }
        }
        kiln_ok(&home, &dir, &["push", &format!("web:{v}"), &format!("127.0.0.1:{registry_port}/team/web:{v}")]);
        out.push(format!("127.0.0.1:{registry_port}/team/web@{digest}"));
    }
    (out, home.join("keys/default.pub"))
}

/// A service with `channel = "prod"` in kiln.toml, deployed to a fleet:
/// every host runs only digests promoted to prod, checked against the
/// `[promotion]` key with the signatures that came with the image. A
/// signed but unpromoted release is refused on the host, and the promoted
/// one keeps serving.
#[test]
fn a_service_with_a_channel_runs_only_digests_promoted_to_it_on_every_host() {
    let _room = room("fleet");
    let dir = tempdir("fleet-channel");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-channel-registry"), reg_port, ""));
    let (images, key) = pushed_promoted(reg_port);
    let h1 = tempdir("fleet-channel-h1");
    let _hosts_clean = HostsCleanup(vec![h1.clone()]);
    let _agent = Procs(vec![spawn_kiln(
        &h1,
        &["agent", "--cluster", &cluster, "--name", "h1", "--ttl", "2", "--signed-by", key.to_str().unwrap()],
    )]);
    let ctl = tempdir("fleet-channel-ctl");
    let _c = Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    let app = tempdir("fleet-channel-app");
    fs::write(
        app.join("kiln.toml"),
        format!(
            "[service.web]\nimage = \"{}\"\nchannel = \"prod\"\nlisten = \"0.0.0.0:{}\"\nreplicas = 1\n",
            images[0],
            free_port()
        ),
    )
    .unwrap();
    let deploy = |image: &str, wait: bool| {
        let mut args = vec!["deploy", "--cluster", cluster.as_str(), "--image", image];
        if !wait {
            args.push("--no-wait");
        }
        kiln(&ctl, &app, &args)
    };
    // Promoted to prod: it runs, and the channel is in the desired state.
    let out = deploy(&images[0], true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let port = wait_serving(&ctl, &urls, "web-0", "busybox 1.0.0\n");
    let s = services(&ctl, &urls);
    assert_eq!(s[0]["desired"]["channel"], "prod", "{s}");
    // Signed, not promoted: the host refuses it, names why, and reports
    // the slot failing; 1.0.0 keeps serving.
    let out = deploy(&images[1], false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hs = hosts(&ctl, &urls).unwrap();
        if hs[0]["failing"].as_array().is_some_and(|f| f.iter().any(|s| s == "web-0")) {
            break;
        }
        assert!(Instant::now() < deadline, "h1 never refused the unpromoted digest: {hs}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = fs::read_to_string(h1.join("kiln.log")).unwrap();
    assert!(log.contains("is not promoted to channel \"prod\""), "{log}");
    assert_eq!(get(port).as_deref(), Some("busybox 1.0.0\n"), "the promoted release keeps serving");
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

/// The single-host commands against a cluster, from a kiln.toml the fleet
/// never saw: `kiln deploy --cluster` (a tag resolved to its digest, a
/// rolling release under load on every host's load balancer), `status`,
/// `rollback`, an analysed canary from `strategy = "canary"` moved on by
/// `promote`, `abort` with nothing to abort, `down`; and what a fleet
/// cannot carry refused naming the key, with nothing written.
#[test]
fn deploy_status_rollback_promote_and_down_work_against_a_cluster_from_a_kiln_toml() {
    let _room = room("fleet");
    let dir = tempdir("fleet-deploy");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-deploy-registry"), reg_port, ""));
    let (images, _) = pushed_busybox(reg_port);
    let homes: Vec<std::path::PathBuf> = (1..=2).map(|i| tempdir(&format!("fleet-deploy-h{i}"))).collect();
    let _hosts_clean = HostsCleanup(homes.clone());
    let ips = ["127.0.0.2", "127.0.0.3"];
    let _agents = agents_at(&homes, &ips, &cluster);
    let ctl = tempdir("fleet-deploy-ctl");
    let _controllers =
        Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    let lb_port = free_port();
    let lbs: Vec<std::net::SocketAddr> = ips.iter().map(|ip| format!("{ip}:{lb_port}").parse().unwrap()).collect();
    let app = tempdir("fleet-deploy-app");
    let file = app.join("kiln.toml");
    let write = |extra_keys: &str, tables: &str| {
        let text = format!(
            "[service.web]\nimage = \"127.0.0.1:{reg_port}/team/web:1.0.0\"\nlisten = \"0.0.0.0:{lb_port}\"\n\
             replicas = 2\nprogress_deadline = \"40s\"\n{extra_keys}\n[service.web.health]\npath = \"/\"\n{tables}"
        );
        fs::write(&file, text).unwrap();
    };
    let kiln_in = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--cluster", cluster.as_str(), "-f", "kiln.toml"]);
        kiln_ok(&ctl, &app, &all)
    };
    let err_in = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--cluster", cluster.as_str(), "-f", "kiln.toml"]);
        kiln_err(&ctl, &app, &all)
    };
    let status = || json(&kiln_ok(&ctl, &app, &["status", "--json", "--cluster", &cluster]));
    let serving_only = |version: &str| {
        let want = format!("busybox {version}\n");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got: Vec<_> = lbs.iter().map(|lb| try_bodies(*lb, 20)).collect();
            if got.iter().all(|b| b.as_ref().is_ok_and(|b| b.len() == 1 && b.contains_key(&want))) {
                return;
            }
            assert!(Instant::now() < deadline, "never {version} alone on every load balancer: {got:?}");
            std::thread::sleep(Duration::from_millis(300));
        }
    };

    // The first deploy: the service's tag, resolved to its digest.
    write("", "");
    let out = kiln_in(&["deploy"]);
    assert!(out.contains(&images[0].1) && out.contains("serves on every replica"), "{out}");
    serving_only("1.0.0");
    // Every slot, where it is and what it runs: one on each host, serving.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = json(&kiln_ok(&ctl, &app, &["ps", "--cluster", &cluster, "--json"]));
        let rows: Vec<(String, String, String)> = ps
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["host"].as_str().unwrap().into(),
                    r["slot"].as_str().unwrap().into(),
                    r["state"].as_str().unwrap().into(),
                )
            })
            .collect();
        let hosts: std::collections::BTreeSet<&String> = rows.iter().map(|r| &r.0).collect();
        if rows.len() == 2 && hosts.len() == 2 && rows.iter().all(|r| r.2 == "serving") {
            assert!(ps[0]["image"] == images[0].1.as_str() && ps[0]["port"].as_u64().is_some(), "{ps}");
            break;
        }
        assert!(Instant::now() < deadline, "not one serving slot on each host: {ps}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = kiln_ok(&ctl, &app, &["ps", "--cluster", &cluster]);
    assert!(text.starts_with("HOST") && text.contains("serving"), "{text}");
    // A new image rolls, under load on both load balancers.
    let load = FleetLoad::start(&lbs, "/");
    let out = kiln_in(&["deploy", "--image", &format!("127.0.0.1:{reg_port}/team/web:2.0.0")]);
    assert!(out.contains(&images[1].1) && out.contains("serves on every replica"), "{out}");
    serving_only("2.0.0");
    let s = status();
    assert_eq!(s[0]["desired"]["image"], images[1].1.as_str(), "{s}");
    assert_eq!(s[0]["desired"]["previous"], images[0].1.as_str(), "{s}");
    // The same image with another env: a new release of it. Every replica
    // is replaced, one at a time, under the same load; the deploy is done
    // only once every one answers with the new env.
    write("env = { MODE = \"blue\" }", "");
    // Planned first: what would change, and nothing written.
    let plan = json(&kiln_ok(&ctl, &app, &["plan", "--cluster", &cluster, "--image", &images[1].1, "--json"]));
    assert_eq!(plan["changed"], serde_json::json!(["env.MODE added"]), "{plan}");
    assert_eq!(plan["entries"][0]["kind"], "started", "{plan}");
    assert!(status()[0]["desired"]["env"].as_array().is_none_or(Vec::is_empty), "a plan writes nothing");
    let text = kiln_ok(&ctl, &app, &["plan", "--cluster", &cluster, "--image", &images[1].1]);
    assert!(text.contains("env.MODE added") && text.contains("nothing written"), "{text}");
    let out = kiln_in(&["deploy", "--image", &images[1].1]);
    assert!(out.contains("serves on every replica"), "{out}");
    // The instances replaced drain from every host's load balancer within
    // a round of theirs.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<_> = lbs.iter().map(|lb| try_bodies_of(*lb, "/cgi-bin/env", 10)).collect();
        if got.iter().all(|b| b.as_ref().is_ok_and(|b| b.keys().eq(["mode=blue db= file=\n"].iter()))) {
            break;
        }
        assert!(Instant::now() < deadline, "every replica has the new env: {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A secret: refused until it is set, naming the key; then sealed in
    // etcd (its value nowhere there), and a deploy rolls it out, under the
    // same load: every replica has it as env and as its file. A rotation
    // is a new release, rolled the same way.
    write("env = { MODE = \"blue\" }\nsecrets = [{ name = \"db\", env = \"DB_PASSWORD\" }]", "");
    let e = err_in(&["deploy", "--image", &images[1].1]);
    assert!(e.contains("service.web.secrets[0]") && e.contains("kiln secret set db --cluster"), "{e}");
    let secret_set = |value: &str| {
        let mut c = kiln_cmd()
            .args(["secret", "set", "db", "--cluster", &cluster])
            .env("KILN_HOME", &ctl)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let every_replica_says = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got: Vec<_> = lbs.iter().map(|lb| try_bodies_of(*lb, "/cgi-bin/env", 10)).collect();
            if got.iter().all(|b| b.as_ref().is_ok_and(|b| b.len() == 1 && b.contains_key(want))) {
                return;
            }
            assert!(Instant::now() < deadline, "not every replica says {want:?}: {got:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let out = secret_set("s3cret-one");
    assert!(out.contains("version") && !out.contains("s3cret"), "{out}");
    let out = kiln_in(&["deploy", "--image", &images[1].1]);
    assert!(out.contains("serves on every replica"), "{out}");
    every_replica_says("mode=blue db=s3cret-one file=s3cret-one\n");
    let listed = json(&kiln_ok(&ctl, &app, &["secret", "ls", "--cluster", &cluster, "--json"]));
    assert_eq!((listed[0]["name"].as_str(), listed[0]["versions"].as_u64()), (Some("db"), Some(1)), "{listed}");
    secret_set("s3cret-two");
    let out = kiln_in(&["deploy", "--image", &images[1].1]);
    assert!(out.contains("serves on every replica"), "{out}");
    every_replica_says("mode=blue db=s3cret-two file=s3cret-two\n");
    // Neither value is anywhere in etcd; the service names the version it
    // runs, and the secret cannot be removed while it does.
    let all = etcd_prefix(&urls[0], "/kiln/");
    assert!(!all.iter().any(|(_, v)| v.windows(6).any(|w| w == b"s3cret")), "a value in clear in etcd");
    assert!(
        all.iter().any(|(k, _)| k.starts_with("/kiln/secrets/db/")),
        "{:?}",
        all.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    let s = status();
    assert_eq!(
        s[0]["desired"]["secrets"][0]["version"],
        json(&kiln_ok(&ctl, &app, &["secret", "ls", "--cluster", &cluster, "--json"]))[0]["version"],
        "{s}"
    );
    let e = kiln_err(&ctl, &app, &["secret", "rm", "db", "--cluster", &cluster]);
    assert!(e.contains("used by web"), "{e}");
    // The fleet's KEK rotated to a key made by openssl: the data key
    // sealed under it in one etcd write, every sealed version unchanged;
    // the old key no longer opens the fleet's secrets, the new one does.
    // Then back, so the hosts (given the old key) go on.
    let new_kek = ctl.parent().unwrap().join(format!("fleet-new-kek-{}", std::process::id()));
    let made = run("sh", &["-c", &format!("umask 077; openssl rand -hex 32 > {}", new_kek.display())]);
    assert!(made.status.success());
    let rotate = |key: &Path, old: &Path| {
        let out = kiln_cmd()
            .args(["secret", "rotate-key", "--cluster", &cluster, "--old-key-file", old.to_str().unwrap()])
            .env("KILN_HOME", &ctl)
            .env("KILN_KEY_FILE", key)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let sealed_before: Vec<(String, Vec<u8>)> = etcd_prefix(&urls[0], "/kiln/secrets/");
    let (ok, out) = rotate(&new_kek, test_kek());
    assert!(ok && out.contains("sealed with") && out.contains("unchanged"), "{out}");
    assert_eq!(etcd_prefix(&urls[0], "/kiln/secrets/"), sealed_before, "no version re-encrypted");
    let (ok, out) = rotate(&new_kek, test_kek());
    assert!(ok && out.contains("already"), "a second time changes nothing: {out}");
    // A new version sealed with the old key: refused, naming the store.
    let mut c = kiln_cmd()
        .args(["secret", "set", "db", "--cluster", &cluster])
        .env("KILN_HOME", &ctl)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"s3cret-three").unwrap();
    let with_old = c.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&with_old.stderr);
    assert!(!with_old.status.success() && e.contains("another key-encryption key"), "{e}");
    let (ok, out) = rotate(test_kek(), &new_kek);
    assert!(ok && out.contains("sealed with"), "{out}");
    let _ = fs::remove_file(&new_kek);
    // Every host's logs in one place: the CGI's stderr, from both hosts'
    // instances, merged by time; none of it without the fleet's token.
    let logs = json(&kiln_ok(&ctl, &app, &["logs", "--cluster", &cluster, "--service", "web", "--json"]));
    let from: std::collections::BTreeSet<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["line"].as_str().is_some_and(|t| t.contains("cgi env asked")))
        .filter_map(|l| l["host"].as_str())
        .collect();
    assert_eq!(from, ["h1", "h2"].into(), "{logs}");
    assert!(logs["missing"].as_array().unwrap().is_empty(), "{logs}");
    let ts: Vec<i64> = logs["lines"].as_array().unwrap().iter().map(|l| l["ts"].as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "merged by time");
    let hosts_json = json(&kiln_ok(&ctl, &app, &["hosts", "--cluster", &cluster, "--json"]));
    let h1 = hosts_json.as_array().unwrap().iter().find(|h| h["name"] == "h1").unwrap();
    let peer = format!("{}:{}", ips[0], h1["peer_port"]);
    let anon =
        run("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{peer}/v1/logs?service=web")]);
    assert_eq!(String::from_utf8_lossy(&anon.stdout), "401", "{peer}");
    // Followed: new lines from every host as they come, each once, though
    // every poll asks again for a window behind the newest.
    let mut follow = kiln_cmd()
        .args(["logs", "--follow", "--cluster", &cluster, "--service", "web", "--since", "0s", "--json"])
        .env("KILN_HOME", &ctl)
        .current_dir(&app)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, followed) = std::sync::mpsc::channel::<serde_json::Value>();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            let _ = tx.send(json(&l));
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    for lb in &lbs {
        try_bodies_of(*lb, "/cgi-bin/env", 2).unwrap();
    }
    let mut asked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        if let Ok(l) = followed.recv_timeout(Duration::from_millis(200)) {
            if l["line"].as_str().is_some_and(|t| t.contains("cgi env asked")) {
                asked.push(l["host"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
    asked.sort();
    assert_eq!(asked.len(), 4, "each of the 4 requests' lines once, from both hosts: {asked:?}");
    asked.dedup();
    assert_eq!(asked, ["h1", "h2"]);
    write("", "");
    // Back to what it replaced.
    let out = kiln_in(&["rollback"]);
    assert!(out.contains(&images[0].1) && out.contains("serves on every replica"), "{out}");
    serving_only("1.0.0");
    let (bodies, failed) = load.stop();
    eprintln!("deploy and rollback under load: {bodies:?}, {failed} failed");
    assert_eq!(failed, 0, "no request failed while the fleet rolled forward and back: {bodies:?}");
    assert!(bodies.contains_key("200 busybox 2.0.0") && bodies.contains_key("200 busybox 1.0.0"), "{bodies:?}");

    // kiln.toml's canary strategy: the new image is a canary at the first
    // step, judged by the leader; the deploy follows it. Promote moves it
    // on by hand, and the deploy ends with 0 once every replica runs it.
    write("strategy = \"canary\"", "[service.web.canary]\nsteps = [50]\nstep_interval = \"60s\"\n");
    let following = |image: &str| {
        kiln_cmd()
            .args(["deploy", "--image", image, "--cluster", cluster.as_str(), "-f", "kiln.toml"])
            .env("KILN_HOME", &ctl)
            .current_dir(&app)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let canary_serving = |image: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got: Vec<_> = lbs.iter().map(|lb| try_bodies(*lb, 40)).collect();
            let s = status();
            let started =
                s[0]["desired"]["canary"]["image"] == image && !s[0]["desired"]["canary"]["progress"].is_null();
            if started && got.iter().all(|b| b.as_ref().is_ok_and(|b| b.len() == 2)) {
                return;
            }
            assert!(Instant::now() < deadline, "the canary never served beside stable: {got:?} {s}");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let deploy = following(&images[1].1);
    canary_serving(&images[1].1);
    let s = status();
    assert_eq!(s[0]["desired"]["image"], images[0].1.as_str(), "stable stays: {s}");
    let out = kiln_in(&["promote"]);
    assert!(out.contains("promoted"), "{out}");
    let done = deploy.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
    assert_eq!(done.status.code(), Some(0), "{stdout} {stderr}");
    assert!(stdout.contains("serves on every replica") && stderr.contains("canary at 50 %"), "{stdout} {stderr}");
    serving_only("2.0.0");
    assert_eq!(status()[0]["desired"]["previous"], images[0].1.as_str());
    // A followed canary someone aborts: the deploy exits 2, stable serves.
    let deploy = following(&images[0].1);
    canary_serving(&images[0].1);
    let out = kiln_in(&["abort"]);
    assert!(out.contains("aborted"), "{out}");
    let done = deploy.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the release failed") && stderr.contains("replaced by another change"), "{stderr}");
    serving_only("2.0.0");

    // Mistakes, refused naming what is wrong; nothing is written.
    let e = err_in(&["abort"]);
    assert!(e.contains("no canary in progress"), "{e}");
    let e = err_in(&["rollback", "nosuch"]);
    assert!(e.contains("nosuch") && e.contains("not in the fleet"), "{e}");
    // A bad key of kiln.toml: refused where it is written, nothing changed.
    write("volumes = { data = \"data\" }", "");
    let e = err_in(&["deploy", "--image", &images[0].1]);
    assert!(e.contains("kiln.toml") && e.contains("service.web.volumes.data"), "{e}");
    write("", "");
    let e = err_in(&["deploy", "--image", &format!("127.0.0.1:{reg_port}/team/web:9.9.9")]);
    assert!(e.contains("9.9.9"), "an unknown tag is refused, naming it: {e}");
    let s = status();
    assert_eq!(
        (s[0]["desired"]["image"].as_str(), s[0]["desired"]["canary"].is_null()),
        (Some(images[1].1.as_str()), true)
    );

    // Through a controller that does not lead (`kiln serve --cluster …
    // --tcp`): its fleet API takes the same commands, answers the same
    // typed output, and names what is wrong.
    let c2 = tempdir("fleet-deploy-c2");
    let api_port = free_port();
    let listen = format!("127.0.0.1:{api_port}");
    let _c2 =
        Procs(vec![spawn_kiln(&c2, &["serve", "--cluster", &cluster, "--name", "c2", "--ttl", "2", "--tcp", &listen])]);
    wait_port(api_port);
    let token = fs::read_to_string(c2.join("serve.token")).unwrap().trim().to_owned();
    let bearer = format!("Bearer {token}");
    let api = |method: &str, path: &str, body: &str, auth: &str| {
        let (code, _, b) = Conn::new(api_port).send(method, path, &[("Authorization", auth)], body.as_bytes()).unwrap();
        (code, serde_json::from_slice::<serde_json::Value>(&b).unwrap_or_default())
    };
    assert_eq!(api("GET", "/v1/fleet/services", "", "Bearer nope").0, 401);
    // Not HTTP at all: a 400 that says so, not a closed connection.
    let mut raw = std::net::TcpStream::connect(&listen).unwrap();
    raw.write_all(b"hello\r\n\r\n").unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("bad request"), "{answer}");
    let (code, v) = api("GET", "/v1/fleet/services", "", &bearer);
    assert_eq!((code, v["kind"].as_str()), (200, Some("fleet_services")), "{v}");
    assert_eq!(v["output"][0]["desired"]["image"], images[1].1.as_str(), "{v}");
    let (code, v) = api("POST", "/v1/fleet", r#"{"rollback": {"service": "web"}}"#, &bearer);
    assert_eq!(code, 200, "{v}");
    assert!(v["output"]["message"].as_str().is_some_and(|m| m.contains("rolled back")), "{v}");
    serving_only("1.0.0");
    let (code, v) = api("POST", "/v1/fleet", r#"{"abort": {"service": "web"}}"#, &bearer);
    assert_eq!(code, 409, "nothing to abort: {v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("no canary in progress")), "{v}");
    let (code, v) = api("POST", "/v1/fleet", r#"{"rollback": {"service": "web", "to": "x"}}"#, &bearer);
    assert_eq!((code, v["field"].as_str()), (400, Some("to")), "{v}");
    let (code, v) = api("POST", "/v1/fleet", r#"{"rollback": {"service": "nosuch"}}"#, &bearer);
    assert_eq!(code, 404, "{v}");
    let (code, v) = api("GET", "/v1/fleet/hosts", "", &bearer);
    assert_eq!((code, v["output"].as_array().map(Vec::len)), (200, Some(2)), "{v}");

    // An [image.X] of the file: baked, pushed and deployed in one command.
    busybox_httpd_rootfs(&app.join("busybox-httpd.tar"));
    fs::create_dir_all(app.join("www-3.0.0")).unwrap();
    fs::write(app.join("www-3.0.0/index.html"), "busybox 3.0.0\n").unwrap();
    let image = busybox_image("3.0.0").replace("127.0.0.1:$PORT", "$PORT");
    fs::write(
        &file,
        format!(
            "[service.web]\nimage = \"web\"\nlisten = \"0.0.0.0:{lb_port}\"\nreplicas = 2\n\
             [service.web.health]\npath = \"/\"\n{image}"
        ),
    )
    .unwrap();
    let e = err_in(&["deploy"]);
    assert!(e.contains("--push REGISTRY/REPO"), "{e}");
    // ... through the controller's API this time, as from a machine with
    // no etcd credentials: baked and pushed here, deployed and followed
    // there.
    let through = |args: &[&str]| {
        let token = c2.join("serve.token");
        let mut all = args.to_vec();
        let url = format!("http://{listen}");
        all.extend(["--controller", url.as_str(), "--token-file", token.to_str().unwrap(), "-f", "kiln.toml"]);
        kiln(&ctl, &app, &all)
    };
    let out = through(&["deploy", "--push", &format!("127.0.0.1:{reg_port}/team/web")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("127.0.0.1:{reg_port}/team/web@sha256:")), "{stdout}");
    serving_only("3.0.0");
    let out = through(&["abort"]);
    assert_eq!(out.status.code(), Some(1), "the controller's refusal, its exit code");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no canary in progress"));
    // The fleet's other commands go the same way; without a token, none.
    let token = c2.join("serve.token");
    let url = format!("http://{listen}");
    let hosts_through =
        kiln_ok(&ctl, &app, &["hosts", "--controller", &url, "--token-file", token.to_str().unwrap(), "--json"]);
    assert_eq!(json(&hosts_through).as_array().map(Vec::len), Some(2), "{hosts_through}");
    let e = kiln_err(&ctl, &app, &["hosts", "--controller", &url]);
    assert!(e.contains("--token-file"), "{e}");
    let e = kiln_err(&ctl, &app, &["hosts"]);
    assert!(e.contains("--cluster") && e.contains("--controller"), "{e}");
    // Chaos through the controller, as from a machine without etcd
    // credentials: the slots read and each kill asked through its API;
    // the slot serves again with a new instance.
    let running = || -> Vec<String> {
        let hosts = hosts(&ctl, &urls).unwrap_or_default();
        let placed = hosts.as_array().into_iter().flatten().flat_map(|h| h["placed"].as_array().cloned());
        placed.flatten().filter_map(|p| p["instance"].as_str().map(str::to_owned)).collect()
    };
    let before = running();
    let out = through(&["chaos", "web", "--kills", "1", "--kill-rate", "2", "--max-share", "0.5", "--json"]);
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{report} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((report["kills"].as_u64(), report["replaced"].as_u64()), (Some(1), Some(1)), "{report}");
    let after = running();
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after.iter().filter(|i| !before.contains(i)).count(), 1, "{before:?} → {after:?}");
    serving_only("3.0.0");
    // A kill of what is not a serving instance of the service: refused,
    // naming the field, nothing asked.
    let (code, v) = api("POST", "/v1/fleet", r#"{"kill": {"service": "web", "instance": "nosuch"}}"#, &bearer);
    assert_eq!((code, v["field"].as_str()), (400, Some("instance")), "{v}");
    assert!(etcd_prefix(&urls[0], "/kiln/ask/kill/").is_empty());
    // A drill through the API is checked the same way: a share over 50 %
    // is refused, naming it, and nothing is written.
    let (code, v) =
        api("POST", "/v1/fleet", r#"{"drill": {"service": "web", "weight": 90, "window_ms": 2000}}"#, &bearer);
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("weight")), "{v}");
    assert!(status()[0]["desired"]["canary"].is_null());
    let out = through(&["chaos", "nosuch", "--kills", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch is not in the fleet"), "{out:?}");

    // Down: every instance and load balancer gone.
    let out = kiln_in(&["down"]);
    assert!(out.contains("removed"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while placed(&ctl, &urls).values().flatten().count() > 0
        || lbs.iter().any(|lb| std::net::TcpStream::connect(lb).is_ok())
    {
        assert!(Instant::now() < deadline, "instances or load balancers left after down");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(status().as_array().unwrap().is_empty());

    // The fleet's history: every change above, a person's and the
    // leader's, chained in etcd, each written with its change.
    let h = json(&kiln_ok(&ctl, &app, &["history", "--cluster", &cluster, "--verify", "--json"]));
    let entries = h["entries"].as_array().unwrap();
    assert_eq!(h["verified"].as_u64(), Some(entries.len() as u64), "{h}");
    let said: Vec<String> = entries
        .iter()
        .filter(|e| e["event"]["kind"] != "step" && e["event"]["kind"] != "verdict")
        .map(|e| {
            let ev = &e["event"];
            let what = ev["strategy"].as_str().or(ev["outcome"].as_str()).unwrap_or_default();
            format!("{} {what}", ev["kind"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        said,
        [
            "started rolling",
            "started rolling",
            "started rolling",
            "started rolling",
            "started rolling",
            "started rollback",
            "started canary",
            "finished succeeded",
            "started canary",
            "finished aborted",
            "started rollback",
            "started rolling",
            "replacing ",
            "down ",
        ],
        "{h}"
    );
    // The leader's start of each canary, with both releases' weights.
    let steps: Vec<&serde_json::Value> = entries.iter().filter(|e| e["event"]["kind"] == "step").collect();
    assert!(steps.len() >= 2, "{h}");
    let short = |image: &str| image.rsplit_once("sha256:").unwrap().1[..12].to_owned();
    assert_eq!(steps[0]["release"], short(&images[1].1).as_str(), "{h}");
    assert_eq!(steps[0]["event"]["weights"][short(&images[0].1)], 50, "{h}");
    // Who asked: this user, or the API when the body names no one.
    let by =
        |i: usize| entries.iter().filter(|e| e["event"]["kind"] == "started").nth(i).unwrap()["event"]["actor"].clone();
    assert!(by(0).as_str().is_some_and(|a| a.contains('@')), "{h}");
    assert_eq!(by(8), "api", "the API's rollback: {h}");
    let changed = |i: usize| {
        entries.iter().filter(|e| e["event"]["kind"] == "started").nth(i).unwrap()["event"]["changed"].clone()
    };
    assert_eq!(changed(2), serde_json::json!(["env.MODE added"]), "{h}");
    assert!(changed(3)[0].as_str().is_some_and(|c| c.starts_with("secret db version") && c.ends_with("added")), "{h}");
    assert!(changed(4)[0].as_str().is_some_and(|c| c.starts_with("secret db version") && !c.ends_with("added")), "{h}");
    // Once no service uses it, the secret goes, every version.
    kiln_ok(&ctl, &app, &["secret", "rm", "db", "--cluster", &cluster]);
    assert!(etcd_prefix(&urls[0], "/kiln/secrets/").is_empty());
    // The same through the controller's API, and rendered for a person.
    let history_through = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--controller", url.as_str(), "--token-file", token.to_str().unwrap()]);
        kiln(&ctl, &app, &all)
    };
    let logs_through = history_through(&["logs", "--service", "web", "--json"]);
    assert!(logs_through.status.success(), "{}", String::from_utf8_lossy(&logs_through.stderr));
    let lines = json(&String::from_utf8_lossy(&logs_through.stdout))["lines"].as_array().map_or(0, Vec::len);
    assert!(lines > 0, "every host's logs through the controller too");
    let through_api = history_through(&["history", "web"]);
    let text = String::from_utf8_lossy(&through_api.stdout);
    assert!(
        through_api.status.success() && text.contains("started rollback") && text.contains("taken down by"),
        "{text}"
    );

    // The fleet's Prometheus metrics, from a controller that does not
    // lead: counters counted from that same history (so every controller
    // says the same), gauges read now; promtool accepts them.
    let scrape = |auth: &str| Conn::new(api_port).send("GET", "/metrics", &[("Authorization", auth)], b"").unwrap();
    assert_eq!(scrape("Bearer nope").0, 401);
    let (code, headers, body) = scrape(&bearer);
    let text = String::from_utf8(body).unwrap();
    assert_eq!(code, 200, "{text}");
    assert!(format!("{headers:?}").contains("text/plain"), "{headers:?}");
    promtool_accepts(&text);
    let sample = |line: &str| -> u64 {
        let found = text.lines().find_map(|l| l.strip_prefix(line).and_then(|v| v.strip_prefix(' ')));
        found.unwrap_or_else(|| panic!("no {line} in\n{text}")).parse().unwrap()
    };
    let of = |kind: &str, strategy: &str| {
        entries.iter().filter(|e| e["event"]["kind"] == kind && e["event"]["strategy"] == strategy).count() as u64
    };
    assert_eq!(sample("kiln_fleet_history_entries"), entries.len() as u64);
    assert!(of("started", "rolling") > 1);
    assert_eq!(sample(r#"kiln_releases_started_total{service="web",strategy="rolling"}"#), of("started", "rolling"));
    assert_eq!(sample(r#"kiln_releases_started_total{service="web",strategy="rollback"}"#), of("started", "rollback"));
    assert_eq!(sample("kiln_fleet_hosts"), 2);
    assert_eq!(sample(r#"kiln_fleet_leader{controller="c1"}"#), 1, "the leader, named by any controller");
    // The same through `--controller`, as the CLI reads it.
    let through = history_through(&["metrics"]);
    assert!(String::from_utf8_lossy(&through.stdout).contains("kiln_fleet_history_entries"));

    // An entry edited in etcd, as anyone with write access could: named by
    // its key, exit 3, even when put back byte for byte (etcd counts the
    // writes; kiln writes an entry once).
    let key = "/kiln/history/0000000000000002";
    let original = etcd_value(&urls[0], key);
    let mut forged = original.clone();
    forged["body"] = serde_json::Value::String(forged["body"].as_str().unwrap().replace("rolling", "recreate"));
    etcd_put(&urls[0], key, &forged);
    let verify = kiln(&ctl, &app, &["history", "--cluster", &cluster, "--verify"]);
    let e = String::from_utf8_lossy(&verify.stderr);
    assert_eq!(verify.status.code(), Some(3), "{e}");
    assert!(e.contains(key) && e.contains("edited"), "{e}");
    etcd_put(&urls[0], key, &original);
    let verify = history_through(&["history", "--verify"]);
    let e = String::from_utf8_lossy(&verify.stderr);
    assert_eq!(verify.status.code(), Some(3), "through the API too: {e}");
    assert!(e.contains(key) && e.contains("written 3 times"), "{e}");
}

/// Every key under `prefix` with its value, through etcd's JSON gateway.
pub(crate) fn etcd_prefix(url: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let body = serde_json::json!({
        "key": kiln::base64::encode(prefix.as_bytes()),
        "range_end": kiln::base64::encode(&end),
    });
    let out = run("curl", &["-sf", &format!("{url}/v3/kv/range"), "-d", &body.to_string()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b64 = |x: &serde_json::Value| kiln::base64::decode(x.as_str().unwrap_or_default()).unwrap_or_default();
    v["kvs"].as_array().map_or(Vec::new(), |kvs| {
        kvs.iter().map(|kv| (String::from_utf8(b64(&kv["key"])).unwrap(), b64(&kv["value"]))).collect()
    })
}

/// The JSON kiln stored at `key`, read through etcd's JSON gateway.
fn etcd_value(url: &str, key: &str) -> serde_json::Value {
    let body = serde_json::json!({ "key": kiln::base64::encode(key.as_bytes()) });
    let out = run("curl", &["-sf", &format!("{url}/v3/kv/range"), "-d", &body.to_string()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let value = kiln::base64::decode(v["kvs"][0]["value"].as_str().unwrap()).unwrap();
    serde_json::from_slice(&value).unwrap()
}
