//! The single-host commands against a cluster, from a kiln.toml, through
//! etcd and through a controller's API.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fleet::*;

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
    // The requests must reach both hosts' instances: every slot serving
    // on a host of its own and routed to by both load balancers first (a
    // drift check or a replacement may have one starting).
    let deadline = Instant::now() + Duration::from_secs(30);
    let spread = loop {
        let rows = json(&kiln_ok(&ctl, &app, &["ps", "--cluster", &cluster, "--json"]));
        let rows = rows.as_array().unwrap().clone();
        let hosts: std::collections::BTreeSet<&str> = rows.iter().filter_map(|r| r["host"].as_str()).collect();
        if rows.len() == 2 && hosts.len() == 2 && rows.iter().all(|r| r["state"] == "serving" && r["routed"] == true) {
            break rows;
        }
        assert!(Instant::now() < deadline, "not two routed slots on two hosts: {rows:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
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
    // On a failure, where the slots were and what each load balancer
    // routed to.
    let where_ = || format!("{spread:?}\n{}", kiln_ok(&ctl, &app, &["ps", "--cluster", &cluster]));
    assert_eq!(asked.len(), 4, "each of the 4 requests' lines once, from both hosts: {asked:?}\n{}", where_());
    asked.dedup();
    assert_eq!(asked, ["h1", "h2"], "{}", where_());
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
