//! Images in a fleet: only signed ones with `--signed-by`, only digests
//! promoted to a service's channel, and from a peer agent's store by
//! digest when the registry is down.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fleet::*;

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
