//! Certificates from ACME across a fleet, against Pebble on loopback:
//! the leading controller orders one; Pebble's DNS sends its http-01
//! check to the first host only, and the leader asks for the check only
//! once every host's load balancer answers the token; the key is sealed
//! in etcd and every host serves the same certificate. The leader is
//! SIGKILLed in the middle of the first order: the controller standing by
//! clears its tokens and orders again. A new image keeps the certificate;
//! a renewal reaches every host under load with no failed request.

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::edge::{client_config, curl, tls_get_at, Pki, VALID_FROM, VALID_TO};
use crate::fleet::{agents_at, etcd_cluster, etcd_prefix, pushed_versions, spawn_kiln, Cleanup, HostsCleanup, Procs};

#[test]
fn a_fleet_certificate_from_pebble_is_served_by_every_host_kept_across_deploys_and_renewed_under_load() {
    let _room = room("fleet");
    let dir = tempdir("fleet-acme");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-acme-registry"), reg_port, ""));
    pushed_versions(reg_port, &["1.0.0", "2.0.0"]);
    let homes: Vec<std::path::PathBuf> = (1..=2).map(|i| tempdir(&format!("fleet-acme-h{i}"))).collect();
    let _hosts_clean = HostsCleanup(homes.clone());
    let ips = ["127.0.0.5", "127.0.0.6"];
    let _agents = agents_at(&homes, &ips, &cluster);
    let app = tempdir("fleet-acme-app");
    let pki = Pki::new(&app);
    pki.issue("pebble", &["localhost"], VALID_FROM, VALID_TO);
    let redirect = free_port();
    // Every name is the first host, to Pebble.
    let (_ca, directory, mgmt) = crate::acme::pebble(&pki, redirect, ips[0]);
    let ctl = tempdir("fleet-acme-ctl");
    let mut controllers =
        Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    // c1 leads; c2 stands by.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !etcd_prefix(&urls[0], "/kiln/leader").iter().any(|(_, v)| v == b"c1") {
        assert!(Instant::now() < deadline, "c1 never led");
        std::thread::sleep(Duration::from_millis(100));
    }
    controllers.0.push(spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c2", "--ttl", "2"]));
    let port = free_port();
    let service = |version: &str, renew: &str| {
        format!(
            "[service.shop]\nimage = \"127.0.0.1:{reg_port}/team/web:{version}\"\nlisten = \"0.0.0.0:{port}\"\n\
             replicas = 2\nhosts = [\"shop.test\"]\nredirect_http = \"0.0.0.0:{redirect}\"\n\
             tls = {{ acme = \"{directory}\", email = \"ops@shop.test\", ca = \"certs/ca.pem\"{renew} }}\n\
             [service.shop.health]\npath = \"/\"\n"
        )
    };
    // A CA file that is not one is refused where the deploy runs, by key.
    fs::write(app.join("kiln.toml"), service("1.0.0", "").replace("certs/ca.pem", "kiln.toml")).unwrap();
    let e = kiln_err(&ctl, &app, &["deploy", "shop", "--cluster", &cluster]);
    assert!(e.contains("service.shop.tls.ca") && e.contains("not a PEM certificate"), "{e}");
    fs::write(app.join("kiln.toml"), service("1.0.0", "")).unwrap();
    let deploying = kiln_spawn(&ctl, &app, &["deploy", "shop", "--cluster", &cluster]);
    // The leader dies once its first token is in etcd: before every
    // host's load balancer answers it and the CA checks.
    let deadline = Instant::now() + Duration::from_secs(60);
    while etcd_prefix(&urls[0], "/kiln/acme/challenge/").is_empty() {
        assert!(Instant::now() < deadline, "no token:\n{}", fs::read_to_string(ctl.join("kiln.log")).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    controllers.0[0].kill().unwrap();
    controllers.0[0].wait().unwrap();
    let out = deploying.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("serves on every replica"), "{stdout}");

    // Pebble's root signs what it issues (a new one each run).
    let roots = pki.path("pebble-root.pem");
    let (ok, root, err) =
        curl(&["--cacert", pki.path("ca.pem").to_str().unwrap(), &format!("https://localhost:{mgmt}/roots/0")]);
    assert!(ok && root.contains("BEGIN CERTIFICATE"), "{err}");
    fs::write(&roots, root).unwrap();
    let config = client_config(&roots);
    let controller_log = || fs::read_to_string(ctl.join("kiln.log")).unwrap_or_default();

    // Obtained once, and every host serves it: the same certificate,
    // verified against Pebble's root, though Pebble checked one host.
    let served = |ip: &str| match tls_get_at(&config, ip, port, "shop.test") {
        Ok((200, body, cert)) if body == "busybox 1.0.0" || body == "busybox 2.0.0" => Some(cert),
        _ => None,
    };
    let t = Instant::now();
    let first = loop {
        if let (Some(a), Some(b)) = (served(ips[0]), served(ips[1])) {
            if a == b {
                break a;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(90), "no certificate on both hosts:\n{}", controller_log());
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!("fleet acme: served by both hosts {} ms after the deploy", t.elapsed().as_millis());
    // Ordered by c1, obtained by c2 after c1's death.
    let log = controller_log();
    assert!(log.contains("kiln controller c1: shop: asking"), "{log}");
    assert!(log.contains("kiln controller c2: shop: certificate for shop.test obtained"), "{log}");
    let history = kiln_ok(&ctl, &app, &["history", "--cluster", &cluster]);
    assert_eq!(history.matches("certificate for shop.test obtained from").count(), 1, "{history}");
    // The key is sealed in etcd, never there in the clear; the account
    // key is a fleet secret too (any leader uses the same account); no
    // token is left behind.
    let all = etcd_prefix(&urls[0], "/kiln/");
    assert!(!all.iter().any(|(_, v)| String::from_utf8_lossy(v).contains("PRIVATE KEY")), "a clear key in etcd");
    assert!(all.iter().all(|(k, _)| !k.starts_with("/kiln/acme/challenge/")), "tokens left");
    let secrets = kiln_ok(&ctl, &app, &["secret", "ls", "--cluster", &cluster]);
    assert!(secrets.contains("acme-account-") && secrets.contains("tls-shop-"), "{secrets}");
    for home in &homes {
        use std::os::unix::fs::PermissionsExt;
        let key = kiln::runtime::run_dir(home).join("tls/shop/key.pem");
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "{}", key.display());
    }

    // A new image keeps the certificate: not ordered again.
    fs::write(app.join("kiln.toml"), service("2.0.0", "")).unwrap();
    let plan = kiln_ok(&ctl, &app, &["plan", "shop", "--cluster", &cluster]);
    assert!(!plan.contains("tls changed"), "{plan}");
    let out = kiln_ok(&ctl, &app, &["deploy", "shop", "--cluster", &cluster]);
    assert!(out.contains("serves on every replica"), "{out}");
    for ip in ips {
        let t = Instant::now();
        loop {
            match tls_get_at(&config, ip, port, "shop.test") {
                Ok((200, body, cert)) if body == "busybox 2.0.0" => {
                    assert_eq!(cert, first, "{ip}: the same certificate");
                    break;
                }
                other => assert!(t.elapsed() < Duration::from_secs(30), "{ip}: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let history = kiln_ok(&ctl, &app, &["history", "--cluster", &cluster]);
    assert_eq!(history.matches("certificate for shop.test obtained from").count(), 1, "{history}");

    // Renewal under load: renew_before longer than Pebble's certificates
    // live makes this one due at once (the certificate stays while it is
    // renewed). Both hosts get the new one; every request of 4 clients
    // making new connections to both load balancers succeeds.
    fs::write(app.join("kiln.toml"), service("2.0.0", ", renew_before = \"3650d\"")).unwrap();
    let (okays, failed, stop) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let first_error = Arc::new(std::sync::Mutex::new(String::new()));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (okays, failed, stop, config, first_error) =
                (okays.clone(), failed.clone(), stop.clone(), config.clone(), first_error.clone());
            let ip = ips[i % 2];
            std::thread::spawn(move || {
                // Bounded: the renewal takes seconds.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match tls_get_at(&config, ip, port, "shop.test") {
                        Ok((200, _, _)) => okays.fetch_add(1, Ordering::Relaxed),
                        other => {
                            let mut e = first_error.lock().unwrap();
                            if e.is_empty() {
                                *e = format!("{ip}: {other:?}");
                            }
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let out = kiln_ok(&ctl, &app, &["deploy", "shop", "--cluster", &cluster]);
    assert!(out.contains("serves on every replica"), "{out}");
    let t = Instant::now();
    for ip in ips {
        while served(ip).is_none_or(|c| c == first) {
            assert!(t.elapsed() < Duration::from_secs(90), "{ip} not renewed:\n{}", controller_log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (okays, failed) = (okays.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "fleet acme: renewed on both hosts after {} ms; {okays} requests, {failed} failed",
        t.elapsed().as_millis()
    );
    assert!(okays > 20 && failed == 0, "renewal: {okays} ok, {failed} failed: {}", first_error.lock().unwrap());
    let history = kiln_ok(&ctl, &app, &["history", "--cluster", &cluster]);
    assert!(history.matches("certificate for shop.test obtained from").count() >= 2, "{history}");
    kiln_ok(&ctl, &app, &["down", "shop", "--cluster", &cluster]);
}
