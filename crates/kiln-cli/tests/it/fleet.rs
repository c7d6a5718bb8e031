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

pub(crate) fn hosts(home: &Path, urls: &[String]) -> Option<serde_json::Value> {
    let out = kiln(home, home, &["hosts", "--cluster", &urls.join(","), "--json"]);
    out.status.success().then(|| json(&String::from_utf8_lossy(&out.stdout)))
}

pub(crate) fn names(v: &serde_json::Value) -> Vec<String> {
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
pub(crate) fn pushed_busybox(registry_port: u16) -> (Vec<(String, String)>, std::path::PathBuf) {
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

pub(crate) fn get(port: u16) -> Option<String> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(c, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    s.split("\r\n\r\n").nth(1).map(str::to_owned)
}

/// Waits until host `h`'s record shows slot `slot` serving `body`.
pub(crate) fn wait_serving(home: &Path, urls: &[String], slot: &str, body: &str) -> u16 {
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

/// The pid of the load balancer of `service` an agent with home `home`
/// started, if any.
pub(crate) fn lb_pid(home: &Path, service: &str) -> Option<i32> {
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
pub(crate) fn try_bodies_of(
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

pub(crate) fn bodies(addr: std::net::SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    try_bodies(addr, n).unwrap()
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

/// Writes `value` at `key` through etcd's JSON gateway, as any client
/// with access to etcd (an old leader, a script) could.
pub(crate) fn etcd_put(url: &str, key: &str, value: &serde_json::Value) {
    let body = serde_json::json!({
        "key": kiln::base64::encode(key.as_bytes()),
        "value": kiln::base64::encode(value.to_string().as_bytes()),
    });
    let out = run("curl", &["-sf", &format!("{url}/v3/kv/put"), "-d", &body.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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
pub(crate) fn etcd_value(url: &str, key: &str) -> serde_json::Value {
    let body = serde_json::json!({ "key": kiln::base64::encode(key.as_bytes()) });
    let out = run("curl", &["-sf", &format!("{url}/v3/kv/range"), "-d", &body.to_string()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let value = kiln::base64::decode(v["kvs"][0]["value"].as_str().unwrap()).unwrap();
    serde_json::from_slice(&value).unwrap()
}
