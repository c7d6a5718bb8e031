//! The fleet's dashboard in a real browser (Debian's chromium through
//! selenium): a controller's API signs it in with the link `kiln
//! dashboard --controller` prints; it shows both hosts, every slot's
//! state, a canary advancing across the fleet with no reload, refuses a
//! change without the CSRF value, and aborts the canary with a click,
//! while keep-alive load on both hosts' load balancers sees no failed
//! request.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fleet::{
    agents_at, etcd_cluster, placed, pushed_versions, services, spawn_kiln, try_bodies, Cleanup, FleetLoad,
    HostsCleanup, Procs,
};

#[test]
fn the_fleet_dashboard_in_chromium_shows_hosts_slots_and_a_canary_advancing_and_aborts_it() {
    let _room = room("fleet");
    let dir = tempdir("fleet-dash");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-dash-registry"), reg_port, ""));
    let (images, _) = pushed_versions(reg_port, &["1.0.0", "2.0.0"]);
    let homes: Vec<std::path::PathBuf> = (1..=2).map(|i| tempdir(&format!("fleet-dash-h{i}"))).collect();
    let _hosts_clean = HostsCleanup(homes.clone());
    let ips = ["127.0.0.5", "127.0.0.6"];
    let _agents = agents_at(&homes, &ips, &cluster);
    // One controller, leading and answering the fleet API (and its page).
    let ctl = tempdir("fleet-dash-ctl");
    let api_port = free_port();
    let listen = format!("127.0.0.1:{api_port}");
    let _c = Procs(vec![spawn_kiln(
        &ctl,
        &["serve", "--cluster", &cluster, "--name", "c1", "--ttl", "2", "--tcp", &listen],
    )]);
    wait_port(api_port);
    let lb_port = free_port();
    let port = lb_port.to_string();
    let lbs: Vec<std::net::SocketAddr> = ips.iter().map(|ip| format!("{ip}:{lb_port}").parse().unwrap()).collect();
    let base =
        ["place", "--cluster", &cluster, "--service", "web", "--replicas", "2", "--listen", &port, "--health", "/"];
    let place = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        kiln_ok(&ctl, &ctl, &args)
    };
    place(&[&images[0].1]);
    let only_stable =
        || lbs.iter().all(|lb| try_bodies(*lb, 20).is_ok_and(|b| b.len() == 1 && b.contains_key("busybox 1.0.0\n")));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !only_stable() || placed(&ctl, &urls).values().flatten().count() != 2 {
        assert!(Instant::now() < deadline, "1.0.0 never served on both load balancers");
        std::thread::sleep(Duration::from_millis(300));
    }

    // A sign-in link needs the controller's token; the page without a
    // session says how to sign in, and shows nothing of the fleet.
    let token = ctl.join("serve.token");
    let url = format!("http://{listen}");
    let e = kiln_err(&ctl, &ctl, &["dashboard", "--controller", &url, "--token-file", "/nonexistent"]);
    assert!(e.contains("--token-file /nonexistent"), "{e}");
    let link = kiln_ok(&ctl, &ctl, &["dashboard", "--controller", &url, "--token-file", token.to_str().unwrap()]);
    let link = link.trim().to_owned();
    assert!(link.starts_with(&format!("{url}/?token=")), "{link}");
    let (code, _, body) = Conn::new(api_port).get("/").unwrap();
    assert_eq!(code, 401);
    assert!(String::from_utf8_lossy(&body).contains("kiln dashboard"));

    // A good canary in five analysed steps of 3 s, under load: the page
    // must show it advance, then abort it before it is promoted.
    let load = FleetLoad::start(&lbs, "/cgi-bin/status");
    place(&[
        "--canary",
        &images[1].1,
        "--canary-steps",
        "10,30,50,70,90",
        "--step-interval",
        "3s",
        "--max-p99-ratio",
        "3",
        &images[0].1,
    ]);
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts/fleet-dashboard");
    let short = |image: &str| image.rsplit_once("@sha256:").unwrap().1[..12].to_owned();
    // One browser script against the signed-in page: stable's and the
    // other image's short digests; its output when it passes.
    let browser = |script: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser").join(script);
        let (stable, other) = (short(&images[0].1), short(&images[1].1));
        let out = Command::new("python3")
            .args([path.to_str().unwrap(), &link, "web", &stable, &other, shots.to_str().unwrap()])
            .output()
            .expect("python3 with selenium (scripts/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "{script} failed (screenshots in {}):\n{}{}",
            shots.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let out = browser("fleet_dashboard.py");
    let figures = json(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap());
    println!("fleet dashboard figures: {figures}");
    assert!(figures["advanced_to"].as_u64() > figures["first_step"].as_u64(), "{figures}");
    assert_eq!(figures["hosts"], 2, "{figures}");

    // What the page showed is what happened: the canary aborted by the
    // dashboard, stable alone on both load balancers, no request failed.
    let s = services(&ctl, &urls);
    assert_eq!(s[0]["desired"]["image"], images[0].1.as_str(), "{s}");
    assert!(s[0]["desired"]["canary"].is_null(), "{s}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !only_stable() {
        assert!(Instant::now() < deadline, "1.0.0 never served alone after the abort");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (answers, failed) = load.stop();
    eprintln!("fleet dashboard load: {answers:?}, {failed} failed");
    assert_eq!(failed, 0, "no request failed through the canary and its abort");
    assert!(answers.get("200 ok 2.0.0").is_some_and(|n| *n > 0), "the canary got its share: {answers:?}");
    let h = json(&kiln_ok(&ctl, &ctl, &["history", "web", "--cluster", &cluster, "--verify", "--json"]));
    let finished = h["entries"].as_array().unwrap().iter().rev().find(|e| e["event"]["kind"] == "finished").unwrap();
    assert_eq!(finished["event"]["outcome"], "aborted", "{h}");
    assert_eq!(finished["event"]["reason"], "aborted by dashboard", "{h}");
    for shot in ["1-canary.png", "2-advanced.png", "3-aborted.png"] {
        assert!(std::fs::metadata(shots.join(shot)).unwrap().len() > 10_000, "{shot}");
    }

    // Blue-green from kiln.toml, the old set kept warm for 5 minutes: the
    // page shows which set serves and which waits, and a click on Roll
    // back switches to the warm one.
    let app = tempdir("fleet-dash-app");
    let toml = format!(
        "[service.web]\nimage = \"127.0.0.1:{reg_port}/team/web:2.0.0\"\nlisten = \"0.0.0.0:{lb_port}\"\n\
         replicas = 2\nstrategy = \"blue-green\"\nkeep_previous = \"5m\"\n[service.web.health]\npath = \"/\"\n\
         [service.web.blue_green]\nsmoke = [\"/\"]\n"
    );
    std::fs::write(app.join("kiln.toml"), toml).unwrap();
    let out = kiln_ok(&ctl, &app, &["deploy", "web", "--cluster", &cluster]);
    assert!(out.contains("serves on every replica"), "{out}");
    browser("fleet_dashboard_bg.py");
    // What the page showed is what happened.
    let s = services(&ctl, &urls);
    assert_eq!(s[0]["desired"]["image"], images[0].1.as_str(), "{s}");
    assert!(s[0]["desired"]["blue_green"].is_null() && s[0]["desired"]["color"].is_null(), "blue again: {s}");
    assert!(only_stable(), "1.0.0 alone on both load balancers");
}
