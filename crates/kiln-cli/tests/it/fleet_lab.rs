//! The fleet on the rig the issue asks for: three hosts as network
//! namespaces on a bridge (`scripts/fleet-lab.sh`, the README's quick
//! start), one etcd member, agent and controller in each, Debian's
//! docker-registry on the bridge. Clients run in the bridge's namespace
//! (threads that `setns` into it); every kiln command goes through
//! `nsenter --net`. An instance serves inside its host's namespace alone.

use std::fs;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// The canary test's lab: its namespaces' prefix and /24.
const LAB: &str = "kt";
const NET: &str = "10.89.0";

/// The lab, taken down (everything it started, by PID, and its
/// namespaces) when dropped.
struct Lab {
    dir: PathBuf,
    /// The namespaces' prefix and the /24 they share: each test its own,
    /// as tests of one room may run at once.
    name: &'static str,
    net: &'static str,
}

impl Lab {
    fn up(name: &'static str, net: &'static str) -> Lab {
        let dir = tempdir("fleet-lab");
        let lab = Lab { dir, name, net };
        let out = lab.script("up");
        assert!(out.status.success(), "fleet-lab.sh up: {}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    fn script(&self, what: &str) -> std::process::Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fleet-lab.sh");
        Command::new("bash")
            .arg(script)
            .arg(what)
            .arg(&self.dir)
            .env("LAB", self.name)
            .env("NET", self.net)
            .env("KILN", kiln_bin())
            .env("KILN_KEY_FILE", test_kek())
            .output()
            .unwrap()
    }

    fn cluster(&self) -> String {
        (1..=3).map(|i| format!("http://{}.1{i}:2379", self.net)).collect::<Vec<_>>().join(",")
    }

    /// kiln in the bridge's namespace, with `home`.
    fn kiln(&self, home: &Path, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}-lan", self.name)).arg(kiln_bin()).args(args);
        c.env("KILN_HOME", home).env("KILN_KEY_FILE", test_kek()).current_dir(home);
        c.output().unwrap()
    }

    fn kiln_ok(&self, home: &Path, args: &[&str]) -> String {
        let out = self.kiln(home, args);
        assert!(out.status.success(), "kiln {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The PID `up` recorded for `name` (`agent-h2`, `etcd-m1`, ...).
    fn pid(&self, name: &str) -> i32 {
        let pids = fs::read_to_string(self.dir.join("pids")).unwrap();
        pids.lines().find_map(|l| l.strip_suffix(&format!(" {name}"))).unwrap().parse().unwrap()
    }

    fn sigkill(&self, name: &str) {
        // SAFETY: a signal to a process the lab this test brought up started.
        unsafe { libc::kill(self.pid(name), libc::SIGKILL) };
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.script("down");
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = fs::File::open(&path).unwrap();
        // SAFETY: setns changes this thread's network namespace only; the
        // fd is a namespace file, open for the call.
        assert_eq!(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
        f()
    })
}

/// `n` keep-alive GETs of `/`: bodies by count, or what failed first.
fn bodies(addr: SocketAddr, n: usize) -> Result<std::collections::BTreeMap<String, usize>, String> {
    let mut c = Conn::try_at(addr).map_err(|e| format!("{addr}: {e}"))?;
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (code, _, body) = c.get("/").map_err(|e| format!("{addr}: {e}"))?;
        if code != 200 {
            return Err(format!("{addr}: {code}"));
        }
        *out.entry(String::from_utf8_lossy(&body).into_owned()).or_default() += 1;
    }
    Ok(out)
}

fn lan_bodies(addrs: &[SocketAddr], n: usize) -> Vec<Result<std::collections::BTreeMap<String, usize>, String>> {
    let hs: Vec<_> =
        addrs.iter().map(|a| (*a, n)).map(|(a, n)| in_ns(&format!("{LAB}-lan"), move || bodies(a, n))).collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

/// host → [(slot, port)].
fn placed(lab: &Lab, home: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let out = lab.kiln(home, &["hosts", "--cluster", &lab.cluster(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let slots = h["placed"].as_array().into_iter().flatten().map(|p| p["slot"].as_str().unwrap().to_owned());
            (h["name"].as_str().unwrap().to_owned(), slots.collect())
        })
        .collect()
}

/// busybox httpd 1.0.0 and 2.0.0, baked in `home` and pushed to the lab's
/// registry; their references by digest.
fn lab_images(lab: &Lab, home: &Path) -> Vec<String> {
    let src = tempdir("fleet-lab-src");
    busybox_httpd_rootfs(&src.join("busybox-httpd.tar"));
    let net = lab.net;
    let registries = format!("[registries.\"{net}.1:5000\"]\ninsecure = true\n");
    let mut images = Vec::new();
    for v in ["1.0.0", "2.0.0"] {
        fs::create_dir_all(src.join(format!("www-{v}"))).unwrap();
        fs::write(src.join(format!("www-{v}/index.html")), format!("busybox {v}\n")).unwrap();
        let toml = format!("{registries}{}", busybox_image(v).replace("127.0.0.1:$PORT", "$PORT"));
        fs::write(src.join("kiln.toml"), toml).unwrap();
        let digest = bake_digests(home, &src, &[])[0].clone();
        let remote = format!("{net}.1:5000/team/web:{v}");
        let file = src.join("kiln.toml");
        lab.kiln_ok(home, &["push", &format!("web:{v}"), &remote, "-f", file.to_str().unwrap()]);
        images.push(format!("{net}.1:5000/team/web@{digest}"));
    }
    images
}

#[test]
fn three_hosts_in_network_namespaces_an_exact_canary_share_and_failures_that_cost_no_request() {
    let _room = room("fleet");
    let lab = Lab::up(LAB, NET);
    let home = tempdir("fleet-lab-home");
    let images = lab_images(&lab, &home);
    let cluster = lab.cluster();
    lab.kiln_ok(
        &home,
        &[
            "place",
            "--cluster",
            &cluster,
            "--service",
            "web",
            "--replicas",
            "3",
            "--listen",
            "8080",
            "--health",
            "/",
            "--canary",
            &images[1],
            "--canary-weight",
            "10",
            &images[0],
        ],
    );
    let lbs: Vec<SocketAddr> = (1..=3).map(|i| format!("{NET}.1{i}:8080").parse().unwrap()).collect();
    // Served by both releases on every host's load balancer.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ready = placed(&lab, &home).values().flatten().count() == 4
            && lan_bodies(&lbs, 40).iter().all(|b| b.as_ref().is_ok_and(|b| b.len() == 2));
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "never served by both releases: {:?}", placed(&lab, &home));
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2));
    let counts = lan_bodies(&lbs, 3334);
    let counts: Vec<_> = counts.into_iter().map(Result::unwrap).collect();
    let canary: usize = counts.iter().map(|c| c.get("busybox 2.0.0\n").copied().unwrap_or(0)).sum();
    let total: usize = counts.iter().map(|c| c.values().sum::<usize>()).sum();
    let share = canary as f64 * 100.0 / total as f64;
    eprintln!("netns fleet canary at 10 %: {canary} of {total} = {share:.2} % ({counts:?})");
    assert_eq!(total, 10_002);
    assert!((share - 10.0).abs() <= 0.5, "observed {share:.2} %");

    // Under load on h1's and h3's load balancers: the leading controller,
    // an etcd member and host h2 (its agent, load balancer and
    // instances) are SIGKILLed, one after another.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = [lbs[0], lbs[2]]
        .into_iter()
        .map(|lb| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            in_ns(&format!("{LAB}-lan"), move || {
                let mut c = Conn::at(lb);
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
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
    let leader = in_ns(&format!("{LAB}-lan"), {
        let url = format!("http://{NET}.11:2379/v3/kv/range");
        move || {
            let body = serde_json::json!({ "key": kiln::base64::encode(b"/kiln/leader") }).to_string();
            run("curl", &["-sf", &url, "-d", &body])
        }
    })
    .join()
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&leader.stdout).unwrap();
    let name = String::from_utf8(kiln::base64::decode(v["kvs"][0]["value"].as_str().unwrap()).unwrap()).unwrap();
    lab.sigkill(&format!("controller-{name}"));
    std::thread::sleep(Duration::from_millis(500));
    lab.sigkill("etcd-m1");
    std::thread::sleep(Duration::from_millis(500));
    let h2 = lab.dir.join("h2");
    let lb_pid = json(&fs::read_to_string(h2.join("proxies/web/proxy.json")).unwrap())["pid"].as_i64().unwrap() as i32;
    lab.sigkill("agent-h2");
    // SAFETY: a signal to the load balancer the lab's agent h2 started.
    unsafe { libc::kill(lb_pid, libc::SIGKILL) };
    let ps = json(&kiln_ok(&h2, &h2, &["ps", "--json"]));
    for i in ps["instances"].as_array().unwrap() {
        kiln(&h2, &h2, &["rm", "--force", i["id"].as_str().unwrap()]);
    }
    let lost = Instant::now();
    loop {
        let p = placed(&lab, &home);
        if !p.contains_key("h2") && p.values().flatten().count() == 4 {
            break;
        }
        assert!(lost.elapsed() < Duration::from_secs(15), "h2's slots not back within 15 s: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let back = lost.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    load.into_iter().for_each(|h| h.join().unwrap());
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "netns: controller {name}, etcd m1 and host h2 SIGKILLed under load: {ok} answered, {failed} failed; h2's slots back in {} ms",
        back.as_millis()
    );
    assert!(ok > 1000, "the load ran: {ok}");
    assert_eq!(failed, 0, "no idempotent request failed");
    // No duplicate, no orphan: each slot once, on a live host.
    let p = placed(&lab, &home);
    let mut slots: Vec<&String> = p.values().flatten().collect();
    slots.sort();
    assert_eq!(slots, ["web-0", "web-1", "web-2", "web-canary-0"], "{p:?}");
}

/// host → [(slot, port)], asked of the members on hosts other than
/// `avoid` (a partitioned member drops packets: each call would first
/// wait out its connect timeout).
fn ports(lab: &Lab, home: &Path, avoid: &str) -> std::collections::BTreeMap<String, Vec<(String, u16)>> {
    let members: Vec<String> =
        lab.cluster().split(',').filter(|u| !u.contains(&format!(".1{}:", &avoid[1..]))).map(str::to_owned).collect();
    let out = lab.kiln(home, &["hosts", "--cluster", &members.join(","), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let slots = h["placed"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| (p["slot"].as_str().unwrap().to_owned(), p["port"].as_u64().unwrap() as u16));
            (h["name"].as_str().unwrap().to_owned(), slots.collect())
        })
        .collect()
}

/// Whether `addr` answers a GET from inside namespace `ns`.
fn answers_in(ns: &str, addr: SocketAddr) -> bool {
    in_ns(ns, move || bodies(addr, 1).is_ok()).join().unwrap()
}

/// iptables in host `host`'s namespace: its link to the bridge dropped
/// both ways (`cut`), or restored.
fn partition(lab: &Lab, host: &str, cut: bool) {
    let ns = format!("/var/run/netns/{}-{host}", lab.name);
    for chain in ["INPUT -i eth0", "OUTPUT -o eth0"] {
        let mut args = vec![format!("--net={ns}"), "iptables".to_owned(), if cut { "-A" } else { "-D" }.to_owned()];
        args.extend(chain.split(' ').map(str::to_owned));
        args.extend(["-j".to_owned(), "DROP".to_owned()]);
        let out = Command::new("nsenter").args(&args).output().unwrap();
        assert!(out.status.success(), "iptables {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_host_partitioned_by_iptables_stops_its_singleton_before_it_runs_elsewhere_and_rejoins_without_a_duplicate() {
    let _room = room("fleet");
    let lab = Lab::up("kp", "10.90.0");
    let (name, net) = (lab.name, lab.net);
    let home = tempdir("fleet-lab-part-home");
    let images = lab_images(&lab, &home);
    let cluster = lab.cluster();
    lab.kiln_ok(
        &home,
        &[
            "place",
            "--cluster",
            &cluster,
            "--service",
            "db",
            "--replicas",
            "1",
            "--singleton",
            "--health",
            "/",
            &images[0],
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (host, port) = loop {
        let p = ports(&lab, &home, "h0");
        if let Some((h, slots)) = p.iter().find(|(_, s)| !s.is_empty()) {
            break (h.clone(), slots[0].1);
        }
        assert!(Instant::now() < deadline, "the singleton never ran: {p:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let i: usize = host.trim_start_matches('h').parse().unwrap();
    let old: SocketAddr = format!("{net}.1{i}:{port}").parse().unwrap();
    let own = format!("{name}-{host}");
    assert!(answers_in(&own, old));
    // The partition: every packet on the host's link dropped, both ways,
    // by iptables in its own namespace. Its instance is watched from inside.
    partition(&lab, &host, true);
    let cut = Instant::now();
    let (mut stopped, mut moved) = (None, None);
    let (new_host, new_port) = loop {
        let old_up = answers_in(&own, old);
        if !old_up && stopped.is_none() {
            stopped = Some(cut.elapsed());
        }
        let p = ports(&lab, &home, &host);
        let elsewhere = p.iter().find(|(h, s)| **h != host && !s.is_empty()).map(|(h, s)| (h.clone(), s[0].1));
        let new_up = elsewhere.as_ref().is_some_and(|(h, np)| {
            let j: usize = h.trim_start_matches('h').parse().unwrap();
            answers_in(&format!("{name}-lan"), format!("{net}.1{j}:{np}").parse().unwrap())
        });
        assert!(!(old_up && new_up), "the singleton ran on two hosts at once");
        if new_up {
            moved.get_or_insert(cut.elapsed());
            break elsewhere.unwrap();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "never moved: {p:?} {}",
            String::from_utf8_lossy(&lab.kiln(&home, &["hosts", "--cluster", &lab.cluster()]).stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stopped, moved) = (stopped.unwrap(), moved.unwrap());
    eprintln!(
        "netns partition by iptables: {host} stopped its singleton after {} ms, {new_host} served it after {} ms",
        stopped.as_millis(),
        moved.as_millis()
    );
    assert!(stopped <= Duration::from_secs(10), "lease plus grace is at most 10 s");
    // A command that names the cut-off host's etcd member first asks the
    // next one after a 2 s handshake, not after etcd's 6 s.
    let first_cut = std::iter::once(i)
        .chain((1..=3).filter(|j| *j != i))
        .map(|j| format!("http://{net}.1{j}:2379"))
        .collect::<Vec<_>>()
        .join(",");
    let asked = Instant::now();
    lab.kiln_ok(&home, &["hosts", "--cluster", &first_cut]);
    let asked = asked.elapsed();
    eprintln!("a command naming the cut-off member first answered in {} ms", asked.as_millis());
    assert!(asked < Duration::from_millis(4500), "the cut-off member was waited on for {asked:?}");
    // Healed: the host rejoins and runs nothing; the moved instance is kept.
    partition(&lab, &host, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = ports(&lab, &home, "h0");
        if p.get(&host).is_some_and(|s| s.is_empty()) && p.len() == 3 {
            // On failure, what the surviving host's agent said: a restart
            // it chose (its own fence, say) shows there.
            let said = fs::read_to_string(lab.dir.join(format!("agent-{new_host}.log"))).unwrap_or_default();
            assert_eq!(
                p[&new_host],
                vec![("db-0".to_owned(), new_port)],
                "not restarted; agent-{new_host}.log:\n{said}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{host} never rejoined: {p:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let h = lab.dir.join(&host);
    let ps = json(&kiln_ok(&h, &h, &["ps", "--json"]));
    assert!(ps["instances"].as_array().unwrap().is_empty(), "no duplicate on {host} after the heal: {ps}");
}
