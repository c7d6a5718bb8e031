//! Fleet services that share one port by host name, from one kiln.toml:
//! every host's load balancer on that port is one `kiln proxy` process
//! whose routes are the services (by `Host` and path), as on one host; a
//! name no service answers gets 421; a service that would take the port
//! without names is refused, naming the key; one taken down leaves the
//! other serving.

use std::fs;

use crate::common::*;
use crate::fleet::{agents_at, etcd_cluster, pushed_versions, spawn_kiln, Cleanup, HostsCleanup, Procs};

#[test]
fn fleet_services_share_a_port_by_host_name_on_every_host_s_load_balancer() {
    let _room = room("fleet");
    let dir = tempdir("fleet-edge");
    let _clean = Cleanup(dir.clone());
    let mut procs = Procs(Vec::new());
    let urls = etcd_cluster(&dir, &mut procs);
    let cluster = urls.join(",");
    let reg_port = free_port();
    procs.0.push(docker_registry(&tempdir("fleet-edge-registry"), reg_port, ""));
    pushed_versions(reg_port, &["1.0.0", "2.0.0"]);
    let homes: Vec<std::path::PathBuf> = (1..=2).map(|i| tempdir(&format!("fleet-edge-h{i}"))).collect();
    let _hosts_clean = HostsCleanup(homes.clone());
    let ips = ["127.0.0.5", "127.0.0.6"];
    let _agents = agents_at(&homes, &ips, &cluster);
    let ctl = tempdir("fleet-edge-ctl");
    let _c = Procs(vec![spawn_kiln(&ctl, &["controller", "--cluster", &cluster, "--name", "c1", "--ttl", "2"])]);
    let port = free_port();
    let app = tempdir("fleet-edge-app");
    let service = |name: &str, version: &str, edge: &str| {
        format!(
            "[service.{name}]\nimage = \"127.0.0.1:{reg_port}/team/web:{version}\"\nlisten = \"0.0.0.0:{port}\"\n\
             replicas = 2\n{edge}\n[service.{name}.health]\npath = \"/\"\n"
        )
    };
    let shop = service("shop", "1.0.0", "hosts = [\"shop.test\", \"www.shop.test\"]");
    let api = service("api", "2.0.0", "hosts = [\"api.test\"]\npaths = [\"/\"]");
    fs::write(app.join("kiln.toml"), format!("{shop}{api}")).unwrap();
    for name in ["shop", "api"] {
        let out = kiln_ok(&ctl, &app, &["deploy", name, "--cluster", &cluster]);
        assert!(out.contains("serves on every replica"), "{out}");
    }
    // Through every host's load balancer: each name to its service.
    let ask = |ip: &str, host: &str| {
        let out = run(
            "curl",
            &["-s", "-m", "5", "-H", &format!("Host: {host}"), "-w", " %{http_code}", &format!("http://{ip}:{port}/")],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let wait_for = |ip: &str, host: &str, want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let got = ask(ip, host);
            if got == want {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{ip} {host}: {got:?}, want {want:?}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    for ip in ips {
        wait_for(ip, "shop.test", "busybox 1.0.0\n 200");
        wait_for(ip, "www.shop.test", "busybox 1.0.0\n 200");
        wait_for(ip, "api.test", "busybox 2.0.0\n 200");
        let other = ask(ip, "other.test");
        assert!(other.ends_with(" 421"), "a name no service answers: {other:?}");
    }
    // One process per host for the port, not one per service.
    for home in &homes {
        let sites: Vec<String> = fs::read_dir(home.join("proxies"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('@'))
            .collect();
        assert_eq!(sites.len(), 1, "{sites:?}");
        let site = json(&fs::read_to_string(home.join("proxies").join(&sites[0]).join("site.json")).unwrap());
        let names: Vec<&str> =
            site["services"].as_array().unwrap().iter().map(|s| s["service"].as_str().unwrap()).collect();
        assert_eq!(names, ["api", "shop"], "{site}");
    }

    // A third service on the port without names is refused, naming the
    // port's owner.
    let web = service("web", "1.0.0", "");
    fs::write(app.join("kiln.toml"), format!("{shop}{api}{web}")).unwrap();
    let e = kiln_err(&ctl, &app, &["deploy", "web", "--cluster", &cluster]);
    assert!(e.contains("listen") && e.contains("each names its hosts"), "{e}");
    fs::write(app.join("kiln.toml"), format!("{shop}{api}")).unwrap();
    let history = kiln_ok(&ctl, &app, &["history", "--cluster", &cluster, "--json"]);
    assert!(!history.contains("\"web\""), "nothing written for the refused service");

    // api taken down: shop goes on serving on every host, api.test is
    // nobody's.
    kiln_ok(&ctl, &app, &["down", "api", "--cluster", &cluster]);
    for ip in ips {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !ask(ip, "api.test").ends_with(" 421") {
            assert!(std::time::Instant::now() < deadline, "api.test still answered on {ip}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert_eq!(ask(ip, "shop.test"), "busybox 1.0.0\n 200");
    }

    // HTTPS: kiln.toml's certificate files, read and checked where the
    // deploy runs; the chain to etcd, the key sealed as a fleet secret;
    // every host's load balancer serves it, and redirects plain HTTP.
    let pki = crate::edge::Pki::new(&app);
    pki.issue("shop", &["shop.test", "www.shop.test"], crate::edge::VALID_FROM, crate::edge::VALID_TO);
    pki.issue("other", &["other.test"], crate::edge::VALID_FROM, crate::edge::VALID_TO);
    let redirect = free_port();
    let tls = |cert: &str| {
        format!(
            "hosts = [\"shop.test\", \"www.shop.test\"]\ntls = {{ cert = \"certs/{cert}.pem\", key = \"certs/{cert}.key\" }}\n\
             redirect_http = \"0.0.0.0:{redirect}\""
        )
    };
    // A certificate that does not cover the names is refused, naming the key.
    fs::write(app.join("kiln.toml"), service("shop", "1.0.0", &tls("other"))).unwrap();
    let e = kiln_err(&ctl, &app, &["deploy", "shop", "--cluster", &cluster]);
    assert!(e.contains("service.shop.tls.cert") && e.contains("shop.test"), "{e}");
    fs::write(app.join("kiln.toml"), service("shop", "1.0.0", &tls("shop"))).unwrap();
    let plan = kiln_ok(&ctl, &app, &["plan", "shop", "--cluster", &cluster]);
    assert!(plan.contains("tls changed") && plan.contains("redirect_http changed"), "{plan}");
    let out = kiln_ok(&ctl, &app, &["deploy", "shop", "--cluster", &cluster]);
    assert!(out.contains("serves on every replica"), "{out}");
    let ca = pki.path("ca.pem");
    let https = |ip: &str, host: &str| {
        // Not `run`: a load balancer not serving HTTPS yet is a retry.
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-m",
                "5",
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &format!("{host}:{port}:{ip}"),
                "-w",
                " %{http_code} %{http_version}",
                &format!("https://{host}:{port}/"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for ip in ips {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while https(ip, "shop.test") != "busybox 1.0.0\n 200 2" {
            assert!(std::time::Instant::now() < deadline, "{ip}: {:?}", https(ip, "shop.test"));
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert_eq!(https(ip, "www.shop.test"), "busybox 1.0.0\n 200 2");
        let plain = run(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-H",
                "Host: shop.test",
                "-w",
                "%{http_code} %{redirect_url}",
                &format!("http://{ip}:{redirect}/a?b=1"),
            ],
        );
        // To the HTTPS port (not 443 here), host, path and query kept.
        assert_eq!(String::from_utf8_lossy(&plain.stdout), format!("308 https://shop.test:{port}/a?b=1"), "{ip}");
    }
    // The key is nowhere in etcd in the clear; each host's copy is 0600 on tmpfs.
    let key_pem = fs::read_to_string(pki.path("shop.key")).unwrap();
    let body = key_pem.lines().nth(1).unwrap().to_owned();
    let all = crate::fleet::etcd_prefix(&urls[0], "/kiln/");
    let chain_line = fs::read_to_string(pki.path("shop.pem")).unwrap().lines().nth(1).unwrap().to_owned();
    assert!(
        all.iter().any(|(_, v)| String::from_utf8_lossy(v).contains(&chain_line)),
        "the chain is there, in the clear"
    );
    assert!(!all.iter().any(|(_, v)| String::from_utf8_lossy(v).contains(&body)), "the key is not");
    for home in &homes {
        use std::os::unix::fs::PermissionsExt;
        let key = kiln::runtime::run_dir(home).join("fleet-tls/shop/key.pem");
        assert_eq!(fs::read_to_string(&key).unwrap(), key_pem, "{}", key.display());
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let secrets = kiln_ok(&ctl, &app, &["secret", "ls", "--cluster", &cluster]);
    assert!(secrets.contains("tls-shop-"), "{secrets}");
    let name = secrets.split_whitespace().find(|w| w.starts_with("tls-shop-")).unwrap().to_owned();
    let e = kiln_err(&ctl, &app, &["secret", "rm", &name, "--cluster", &cluster]);
    assert!(e.contains("used by shop"), "{e}");
    kiln_ok(&ctl, &app, &["down", "shop", "--cluster", &cluster]);
}
