//! A fleet's new data key (`kiln secret rotate-key --cluster
//! --new-data-key`): every sealed version re-encrypted under it in one
//! etcd write, each keeping its version. Afterwards a host opens them:
//! an instance killed by chaos comes back with the version its release
//! pins (older than the newest), and a deploy rolls out the newest.

use std::fs;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fleet::{
    agents_at, etcd_cluster, etcd_prefix, pushed_versions, spawn_kiln, try_bodies_of, Cleanup, HostsCleanup, Procs,
};

#[test]
fn a_new_fleet_data_key_re_encrypts_every_version_and_hosts_still_open_them() {
    let _room = room("fleet");
    let dir = tempdir("fleet-dek");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-dek-registry"), reg_port, ""));
    pushed_versions(reg_port, &["1.0.0"]);
    let homes: Vec<std::path::PathBuf> = (1..=2).map(|i| tempdir(&format!("fleet-dek-h{i}"))).collect();
    let _hosts_clean = HostsCleanup(homes.clone());
    let ips = ["127.0.0.9", "127.0.0.10"];
    let _agents = agents_at(&homes, &ips, &cluster);
    let ctl = tempdir("fleet-dek-ctl");
    let _c = Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    let port = free_port();
    let lbs: Vec<std::net::SocketAddr> = ips.iter().map(|ip| format!("{ip}:{port}").parse().unwrap()).collect();
    let app = tempdir("fleet-dek-app");
    fs::write(
        app.join("kiln.toml"),
        format!(
            "[service.web]\nimage = \"127.0.0.1:{reg_port}/team/web:1.0.0\"\nlisten = \"0.0.0.0:{port}\"\n\
             replicas = 2\nsecrets = [{{ name = \"db\", env = \"DB_PASSWORD\" }}]\n[service.web.health]\npath = \"/\"\n"
        ),
    )
    .unwrap();
    let set = |name: &str, value: &str| {
        let mut c = kiln_cmd()
            .args(["secret", "set", name, "--cluster", &cluster])
            .env("KILN_HOME", &ctl)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success());
    };
    let every_replica_says = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got: Vec<_> = lbs.iter().map(|lb| try_bodies_of(*lb, "/cgi-bin/env", 10)).collect();
            if got.iter().all(|b| b.as_ref().is_ok_and(|b| b.len() == 1 && b.contains_key(want))) {
                return;
            }
            assert!(Instant::now() < deadline, "not every replica says {want:?}: {got:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Refused, by what is missing: a host's store always gets a new data
    // key; a fleet with nothing sealed has none to replace.
    let e = kiln_err(&ctl, &app, &["secret", "rotate-key", "--new-data-key"]);
    assert!(e.contains("--new-data-key is for a fleet"), "{e}");
    let e = kiln_err(&ctl, &app, &["secret", "rotate-key", "--cluster", &cluster, "--new-data-key"]);
    assert!(e.contains("nothing to rotate"), "{e}");

    set("db", "s3cret-one");
    let out = kiln_ok(&ctl, &app, &["deploy", "web", "--cluster", &cluster]);
    assert!(out.contains("serves on every replica"), "{out}");
    every_replica_says("mode= db=s3cret-one file=s3cret-one\n");
    // A newer version the release does not pin yet, and another secret.
    set("db", "s3cret-two");
    set("api", "s3cret-api");
    let before = etcd_prefix(&urls[0], "/kiln/secrets/");
    let key_before = etcd_prefix(&urls[0], "/kiln/secret-key");
    let listed = kiln_ok(&ctl, &app, &["secret", "ls", "--cluster", &cluster, "--json"]);
    let out = kiln_ok(&ctl, &app, &["secret", "rotate-key", "--cluster", &cluster, "--new-data-key"]);
    assert!(out.contains("new data key") && out.contains("3 version(s) of 2 secret(s)"), "{out}");
    // The same keys (versions), every value re-encrypted, a new key; no
    // value in clear anywhere.
    let after = etcd_prefix(&urls[0], "/kiln/secrets/");
    assert_eq!(after.iter().map(|(k, _)| k).collect::<Vec<_>>(), before.iter().map(|(k, _)| k).collect::<Vec<_>>());
    assert!(after.iter().zip(&before).all(|((_, a), (_, b))| a != b), "every version re-encrypted");
    assert_ne!(etcd_prefix(&urls[0], "/kiln/secret-key"), key_before);
    assert_eq!(kiln_ok(&ctl, &app, &["secret", "ls", "--cluster", &cluster, "--json"]), listed, "versions kept");
    let all = etcd_prefix(&urls[0], "/kiln/");
    assert!(!all.iter().any(|(_, v)| v.windows(6).any(|w| w == b"s3cret")), "a value in clear in etcd");

    // An instance killed now is started again by its host from the
    // version its release pins, opened with the new key.
    let report = json(&kiln_ok(
        &ctl,
        &app,
        &["chaos", "web", "--cluster", &cluster, "--kills", "1", "--kill-rate", "1", "--max-share", "0.5", "--json"],
    ));
    assert_eq!((report["kills"].as_u64(), report["replaced"].as_u64()), (Some(1), Some(1)), "{report}");
    every_replica_says("mode= db=s3cret-one file=s3cret-one\n");
    // A deploy pins the newest version: every replica opens it.
    let out = kiln_ok(&ctl, &app, &["deploy", "web", "--cluster", &cluster]);
    assert!(out.contains("serves on every replica"), "{out}");
    every_replica_says("mode= db=s3cret-two file=s3cret-two\n");
    kiln_ok(&ctl, &app, &["down", "web", "--cluster", &cluster]);
}
