use super::image::{normalize_dest, parse_base};
use super::*;

#[test]
fn an_unknown_key_is_named_by_its_full_path_and_line() {
    let text = "[image.web]\nfrom = \"scratch\"\nversion = \"1\"\n\n[service.web]\nimage = \"web\"\nreplica = 3\n";
    let e = super::parse(std::path::Path::new("kiln.toml"), text).unwrap_err().to_string();
    assert!(e.starts_with("kiln.toml:7: service.web.replica: unknown field `replica`"), "{e}");
    let text = "[service.web]\nimage = \"x:1\"\ncanary = { stepz = [1] }\n";
    let e = super::parse(std::path::Path::new("kiln.toml"), text).unwrap_err().to_string();
    assert!(e.starts_with("kiln.toml:3: service.web.canary.stepz: unknown field `stepz`"), "{e}");
    let text = "[service.web]\nimage = \"x:1\"\n[service.web.health]\npth = \"/\"\n";
    let e = super::parse(std::path::Path::new("kiln.toml"), text).unwrap_err().to_string();
    assert!(e.starts_with("kiln.toml:4: service.web.health.pth: unknown field `pth`"), "{e}");
}

fn p(text: &str) -> Result<SpecFile, SpecError> {
    parse(Path::new("dir/kiln.toml"), text)
}

fn err(text: &str) -> String {
    p(text).unwrap_err().to_string()
}

#[test]
fn webhooks_are_checked_where_they_are_written() {
    let svc = "[service.web]\nimage = \"web\"\n";
    let f = p(&format!("[[notify]]\nurl = \"http://127.0.0.1:9000/hook\"\nsecret = \"hook\"\n{svc}")).unwrap();
    assert_eq!(f.notify[0].authority, "127.0.0.1:9000");
    assert_eq!(f.notify[0].path, "/hook");
    assert_eq!(f.notify[0].events.len(), 10, "all by default");
    // Webhooks alone: a fleet controller's kiln.toml.
    let f = p("[[notify]]\nurl = \"http://127.0.0.1:9000/fleet\"\nevents = [\"host-lost\"]\n").unwrap();
    assert_eq!(f.notify[0].events, [notify::Alert::HostLost]);
    assert!(p("").is_err(), "an empty file is still refused");
    let f = p(&format!("[syslog]\nurl = \"relp://127.0.0.1:2514\"\n{svc}")).unwrap();
    let sl = f.syslog.unwrap();
    assert_eq!((sl.transport, sl.authority.as_str(), sl.facility), (syslog::Transport::Relp, "127.0.0.1:2514", 16));
    let e = err(&format!("[syslog]\nurl = \"udp://127.0.0.1:514\"\n{svc}"));
    assert!(e.contains("kiln.toml:2: syslog.url") && e.contains("relp://"), "{e}");
    let e = err(&format!("[syslog]\nurl = \"tcp://127.0.0.1\"\n{svc}"));
    assert!(e.contains("syslog.url") && e.contains("HOST:PORT"), "{e}");
    let e = err(&format!("[syslog]\nurl = \"tcp://127.0.0.1:514\"\nfacility = \"kern\"\n{svc}"));
    assert!(e.contains("kiln.toml:3: syslog.facility") && e.contains("local0"), "{e}");
    let e = err(&format!("[syslog]\nurl = \"tcp://127.0.0.1:514\"\nport = 1\n{svc}"));
    assert!(e.contains("port"), "{e}");
    let e = err(&format!("[[notify]]\nurl = \"https://hooks.example.com/x\"\n{svc}"));
    assert!(e.contains("kiln.toml:2: notify[0].url") && e.contains("TLS"), "{e}");
    let e = err(&format!("[[notify]]\nurl = \"http://127.0.0.1:9000/\"\nevents = [\"oops\"]\n{svc}"));
    assert!(e.contains("notify[0].events") && e.contains("release-failed"), "{e}");
    let e = err(&format!("[[notify]]\nurl = \"http://nohost/\"\n{svc}"));
    assert!(e.contains("HOST:PORT"), "{e}");
}

#[test]
fn channels_are_declared_once_and_services_name_one_of_them() {
    let svc = "[service.web]\nimage = \"web\"\nchannel = \"prod\"\n";
    let f = p(svc).unwrap();
    assert_eq!(f.promotion.channels, ["dev", "staging", "prod"]);
    let rule = f.services["web"].channel.clone().unwrap();
    assert_eq!((rule.channel.as_str(), rule.key.as_str()), ("prod", "default"));
    let f =
        p(&format!("[promotion]\nchannels = [\"test\", \"live\"]\nkey = \"release\"\n{}", svc.replace("prod", "live")))
            .unwrap();
    assert_eq!(f.services["web"].channel.as_ref().unwrap().key, "release");
    let e = err(&format!("[promotion]\nchannels = [\"test\", \"live\"]\n{svc}"));
    assert!(e.contains("kiln.toml:5: service.web.channel") && e.contains("(test, live)"), "{e}");
    let e = err("[promotion]\nchannels = [\"a\", \"a\"]\n[service.web]\nimage = \"web\"\n");
    assert!(e.contains("promotion.channels[1]") && e.contains("twice"), "{e}");
    let e = err("[promotion]\nchannels = []\n[service.web]\nimage = \"web\"\n");
    assert!(e.contains("promotion.channels"), "{e}");
    assert!(p("[service.web]\nimage = \"web\"\n").unwrap().services["web"].channel.is_none());
}

#[test]
fn parses_a_full_image() {
    let f = p(r#"
[image.web]
from = "oci:../base:1.2"
version = "1.0.0"
copy = [{ src = ["bin/*", "conf"], dest = "/app/", mode = "0750", owner = "10:20" }]
run = ["echo hi > /x"]
env = { B = "2", A = "1" }
entrypoint = ["/app/web"]
cmd = ["--port", "80"]
workdir = "/app"
user = "10:20"
expose = [80, "53/udp", 80]
labels = { team = "core" }
stop_signal = "term"
"#)
    .unwrap();
    let i = &f.images["web"];
    assert_eq!(i.from, BaseRef::Oci { path: "../base".into(), reference: Some(OciRef::Tag("1.2".into())) });
    let f = p("[image.a]\nfrom = \"127.0.0.1:5000/library/debian:12\"\n").unwrap();
    let BaseRef::Registry(r) = &f.images["a"].from else { panic!("{:?}", f.images["a"].from) };
    assert_eq!(
        (r.host.as_str(), r.repo.as_str(), r.reference.as_deref()),
        ("127.0.0.1:5000", "library/debian", Some("12"))
    );
    assert_eq!(f.images["a"].from.to_string(), "127.0.0.1:5000/library/debian:12");
    assert_eq!(i.copy[0].mode, Some(0o750));
    assert_eq!((i.copy[0].uid, i.copy[0].gid), (10, 20));
    assert_eq!(i.copy[0].line, 5);
    assert_eq!(i.expose, vec!["53/udp", "80/tcp"]);
    assert_eq!(i.stop_signal.as_deref(), Some("SIGTERM"));
    assert_eq!(i.line, 2);
    assert_eq!(f.dir(), Path::new("dir"));
}

#[test]
fn unknown_keys_name_file_line_and_key() {
    let e = err("[image.a]\nfrom = \"scratch\"\nfrmo = 1\n");
    assert!(e.starts_with("dir/kiln.toml:3"), "{e}");
    assert!(e.contains("frmo"), "{e}");
    let e = err("[image.a]\nfrom = \"scratch\"\ncopy = [{ src = \"a\", dest = \"/a\", chmod = 1 }]\n");
    assert!(e.contains(":3") && e.contains("chmod"), "{e}");
    let e = err("[images.a]\nfrom = \"scratch\"\n");
    assert!(e.contains(":1") && e.contains("images"), "{e}");
}

#[test]
fn semantic_errors_name_line_and_key() {
    let e = err("[image.a]\nfrom = \"scratch\"\nversion = \"latest\"\n");
    assert_eq!(e, "dir/kiln.toml:3: image.a.version: \"latest\" is refused: a tag must say which build it is");
    let e = err("[image.a]\nfrom = \"scratch\"\n\ncopy = [{ src = \"a\", dest = \"rel\" }]\n");
    assert!(e.starts_with("dir/kiln.toml:4: image.a.copy[0].dest:"), "{e}");
    let e = err("[image.a]\nfrom = \"docker:x\"\n");
    assert!(e.starts_with("dir/kiln.toml:2: image.a.from:"), "{e}");
    let e = err("[image.a]\nfrom = \"debian:12\"\n");
    assert!(e.contains("image.a.from") && e.contains("docker.io/library/debian:12"), "{e}");
    let e = err("[image.a]\nfrom = \"ghcr.io/team/base\"\n");
    assert!(e.contains("image.a.from") && e.contains("name a tag or a digest"), "{e}");
    let e = err("[image.a]\nfrom = \"ghcr.io/Team/base:1\"\n");
    assert!(e.contains("image.a.from") && e.contains("lowercase"), "{e}");
    let e = err("[image.a]\nfrom = \"scratch\"\nexpose = [70000]\n");
    assert!(e.contains(":3: image.a.expose[0]: port 70000"), "{e}");
    let e = err("[image.a]\nfrom = \"scratch\"\ncopy = [{ src = \"a\", dest = \"/a/../b\" }]\n");
    assert!(e.contains("'..'"), "{e}");
    let e = err("[image.a]\nfrom = \"scratch\"\ncopy = [{ src = \"/etc/passwd\", dest = \"/a\" }]\n");
    assert!(e.contains("copy[0].src"), "{e}");
    let e = err("[image.a]\nfrom = \"scratch\"\ncopy = [{ src = \"a\", dest = \"/a\", mode = \"999\" }]\n");
    assert!(e.contains("copy[0].mode"), "{e}");
    let e = err("[image.Bad]\nfrom = \"scratch\"\n");
    assert!(e.contains("image.Bad"), "{e}");
    assert!(err("").contains("no [image.NAME]"));
    let f = p("[registries.\"r.example:5000\"]\nsigned_by = \"keys/release.pub\"\n").unwrap();
    assert_eq!(f.registries["r.example:5000"].signed_by.as_deref(), Some(Path::new("keys/release.pub")));
    let e = err("[registries.\"r.example:5000\"]\nsigned_by = \" \"\n");
    assert!(e.contains("registries.\"r.example:5000\".signed_by"), "{e}");
    let e = err("[service.web]\nimage = \"hello\"\nvolumes = { data = \"rel\" }\n");
    assert!(e.starts_with("dir/kiln.toml:3: service.web.volumes.data:"), "{e}");
    let e = err("[service.web]\nimage = \"hello\"\nmemory = \"lots\"\n");
    assert!(e.starts_with("dir/kiln.toml:3: service.web.memory:"), "{e}");
    let e = err("[service.web]\nimage = \"hello\"\nreplica = 3\n");
    assert!(e.contains(":3") && e.contains("replica"), "{e}");
    let e = err("[service.web]\nimage = \"hello\"\nsecrets = [\"ok\", \"../bad\"]\n");
    assert!(e.contains("service.web.secrets[1]"), "{e}");
    assert!(err("[image.a]\n").contains("from"));
}

#[test]
fn parses_a_service() {
    let f = p(r#"
[image.hello]
from = "scratch"

[service.web]
image = "hello"
env = { LOG = "info" }
volumes = { data = "/var/lib/app" }
secrets = ["api_key", { name = "db", env = "DB_PASSWORD" }]
memory = "256M"
cpus = 0.5
pids = 100
stop_timeout = 3
"#)
    .unwrap();
    let s = &f.services["web"];
    assert_eq!(s.image, "hello");
    assert_eq!(s.volumes["data"], "/var/lib/app");
    assert_eq!(s.secrets[1], SecretRef { name: "db".into(), env: Some("DB_PASSWORD".into()) });
    assert_eq!(s.memory_bytes, Some(256 << 20));
    assert_eq!((s.cpus, s.pids, s.stop_timeout), (Some(0.5), Some(100), Some(3)));
    assert_eq!(s.line, 5);
    assert_eq!(parse_size("64k"), Some(65536));
    assert_eq!(parse_size("x"), None);
}

#[test]
fn reserved_and_invalid_versions() {
    assert!(validate_version("b12").is_err());
    assert!(validate_version("git-abc").is_err());
    assert!(validate_version("LATEST").is_err());
    assert!(validate_version("1.0/x").is_err());
    assert!(validate_version("build2").is_ok());
    assert!(validate_version("1.2.3-rc.1").is_ok());
}

#[test]
fn base_references() {
    assert_eq!(parse_base("oci:/a/b").unwrap(), BaseRef::Oci { path: "/a/b".into(), reference: None });
    let d = Digest::of(b"x");
    assert_eq!(
        parse_base(&format!("oci:layout@{d}")).unwrap(),
        BaseRef::Oci { path: "layout".into(), reference: Some(OciRef::Digest(d)) }
    );
    assert!(parse_base("oci:layout@sha256:zz").is_err());
    assert_eq!(parse_base("rootfs:a.tar").unwrap(), BaseRef::Rootfs { path: "a.tar".into() });
    assert_eq!(parse_base("oci:x:").unwrap_err(), "\"oci:x:\": empty tag after ':'");
    // A reference with colons, as kiln's own store names its images.
    assert_eq!(
        parse_base("oci:/home/k/store:deb:12.0.1").unwrap(),
        BaseRef::Oci { path: "/home/k/store".into(), reference: Some(OciRef::Tag("deb:12.0.1".into())) }
    );
}

#[test]
fn dest_normalisation() {
    assert_eq!(normalize_dest("//a/./b/").unwrap(), "/a/b/");
    assert_eq!(normalize_dest("/").unwrap(), "/");
    assert_eq!(normalize_dest("/a//b").unwrap(), "/a/b");
}

#[test]
fn image_names() {
    assert!(valid_image_name("hello"));
    assert!(valid_image_name("my-app.v2"));
    assert!(!valid_image_name("My"));
    assert!(!valid_image_name("a--b"));
    assert!(!valid_image_name("-a"));
}

#[test]
fn a_value_of_the_wrong_type_is_named_by_its_key_not_its_value() {
    let text = "[service.web]\nimage = \"x\"\nprivileged = \"yes\"\n";
    let e = parse(Path::new("kiln.toml"), text).unwrap_err();
    assert_eq!((e.key.as_str(), e.line), ("service.web.privileged", Some(3)), "{e}");
    let text = "[service.web]\nimage = \"x\"\nheal = { max_age = 5 }\n";
    let e = parse(Path::new("kiln.toml"), text).unwrap_err();
    assert_eq!(e.key, "service.web.heal.max_age", "{e}");
    let text = "[service.web]\nimage = \"x\"\ncapabilities = [\"NET_BIND_SERVICE\", \"SYS_ADMIN\"]\n";
    let e = parse(Path::new("kiln.toml"), text).unwrap_err();
    assert_eq!(e.key, "service.web.capabilities[1]", "{e}");
    assert!(e.message.contains("privileged = true"), "{e}");
}

#[test]
fn edge_keys_parse_and_each_mistake_names_its_key() {
    let f = p(r#"
[service.shop]
image = "shop"
listen = "0.0.0.0:8443"
hosts = ["Shop.Test", "*.apps.test"]
tls = { cert = "certs/shop.pem", key = "certs/shop.key" }
redirect_http = "0.0.0.0:8080"
"#)
    .unwrap();
    let e = &f.services["shop"].edge;
    assert_eq!(e.hosts, ["shop.test", "*.apps.test"]);
    assert_eq!(e.tls.as_ref().unwrap().cert, Path::new("certs/shop.pem"));
    assert_eq!(e.redirect_http, Some("0.0.0.0:8080".parse().unwrap()));
    assert_eq!(e.tls_line, 6);
    let base = "[service.shop]\nimage = \"shop\"\nlisten = \"0.0.0.0:8443\"\n";
    let cases = [
        ("hosts = [\"a..test\"]", "dir/kiln.toml:4: service.shop.hosts[0]: \"a..test\" is not a host name"),
        ("hosts = [\"a.test\", \"A.test\"]", "service.shop.hosts[1]: \"a.test\" is listed twice"),
        ("tls = { cert = \"c.pem\" }", ":4: service.shop.tls.key: names the PEM file"),
        (
            "tls = { acme = \"http://acme.test/dir\" }",
            "service.shop.tls.acme: \"http://acme.test/dir\" is not an https://",
        ),
        ("tls = { acme = \"https://acme.test/dir\" }", "service.shop.tls.acme: needs `hosts`"),
        (
            "hosts = [\"a.test\"]\ntls = { acme = \"https://acme.test/dir\" }",
            "service.shop.tls.acme: needs `redirect_http`",
        ),
        ("tls = { acme = \"https://acme.test/dir\", cert = \"c.pem\" }", "service.shop.tls.cert: with `acme`"),
        ("tls = { cert = \"c\", key = \"k\", email = \"a@b.test\" }", "service.shop.tls.email: is an ACME setting"),
        ("tls = { cert = \"c\", key = \"k\", crt = \"x\" }", "crt"),
        ("redirect_http = \"0.0.0.0:80\"", "service.shop.redirect_http: redirects to HTTPS: it needs `tls`"),
        (
            "tls = { cert = \"c\", key = \"k\" }\nredirect_http = \"0.0.0.0:8443\"",
            ":5: service.shop.redirect_http: 0.0.0.0:8443 is already service.shop.listen",
        ),
    ];
    for (extra, want) in cases {
        let e = err(&format!("{base}{extra}\n"));
        assert!(e.contains(want), "{extra}: {e}");
    }
    let e = err("[service.shop]\nimage = \"shop\"\ntls = { cert = \"c\", key = \"k\" }\n");
    assert!(e.contains(":3: service.shop.tls: needs a listen address"), "{e}");
}

#[test]
fn services_share_an_address_by_host_and_a_host_claimed_twice_is_refused() {
    let two = |b_extra: &str| {
        format!(
            "[service.a]\nimage = \"x:1\"\nlisten = \"127.0.0.1:8443\"\nhosts = [\"a.test\", \"shop.test\"]\n\
             tls = {{ cert = \"a.pem\", key = \"a.key\" }}\nredirect_http = \"127.0.0.1:8080\"\n\n\
             [service.b]\nimage = \"x:1\"\nlisten = \"127.0.0.1:8443\"\n{b_extra}"
        )
    };
    let f = p(&two(
        "hosts = [\"b.test\"]\ntls = { cert = \"b.pem\", key = \"b.key\" }\nredirect_http = \"127.0.0.1:8080\"\n",
    ))
    .unwrap();
    assert_eq!(f.services["b"].release.listen, f.services["a"].release.listen);
    let f =
        p(&two("hosts = [\"shop.test\"]\npaths = [\"/api\"]\ntls = { cert = \"b.pem\", key = \"b.key\" }\n")).unwrap();
    assert_eq!(f.services["b"].edge.paths, ["/api"]);
    let cases = [
        ("hosts = [\"b.test\", \"shop.test\"]\ntls = { cert = \"b.pem\", key = \"b.key\" }\n", "dir/kiln.toml:11: service.b.hosts: \"shop.test\" is already service.a's on 127.0.0.1:8443"),
        ("hosts = [\"shop.test\"]\npaths = [\"/\"]\ntls = { cert = \"b.pem\", key = \"b.key\" }\n", "service.b.hosts: \"shop.test\" is already service.a's"),
        ("tls = { cert = \"b.pem\", key = \"b.key\" }\n", ":10: service.b.listen: 127.0.0.1:8443 is already service.a.listen: services share an address only when each names its hosts"),
        ("hosts = [\"b.test\"]\n", "services sharing an address all have tls, or none has"),
        ("hosts = [\"b.test\"]\ntls = { cert = \"b.pem\", key = \"b.key\" }\nredirect_http = \"127.0.0.1:8443\"\n", "service.b.redirect_http: 127.0.0.1:8443 is already service.a.listen"),
        ("hosts = [\"b.test\"]\npaths = [\"api\"]\ntls = { cert = \"b.pem\", key = \"b.key\" }\n", "service.b.paths[0]: \"api\" is not a path prefix"),
    ];
    for (b, want) in cases {
        let e = err(&two(b));
        assert!(e.contains(want), "{b}: {e}");
    }
    let e = err("[service.a]\nimage = \"x:1\"\nlisten = \"127.0.0.1:9000\"\nhosts = [\"a.test\"]\ntls = { cert = \"c\", key = \"k\" }\nredirect_http = \"127.0.0.1:8080\"\n\n[service.b]\nimage = \"x:1\"\nlisten = \"127.0.0.1:9001\"\nhosts = [\"b.test\"]\ntls = { cert = \"c\", key = \"k\" }\nredirect_http = \"127.0.0.1:8080\"\n");
    assert!(
        e.contains("service.b.redirect_http: 127.0.0.1:8080 is already service.a.redirect_http"),
        "a redirect is shared only by the services of one address: {e}"
    );
}

#[test]
fn an_acme_certificate_is_asked_for_the_hosts_and_its_ca_is_beside_kiln_toml() {
    let f = p(r#"
[service.shop]
image = "shop"
listen = "0.0.0.0:8443"
hosts = ["shop.test"]
tls = { acme = "https://localhost:14000/dir", email = "ops@shop.test", ca = "certs/ca.pem", renew_before = "60d" }
redirect_http = "0.0.0.0:8080"
"#)
    .unwrap();
    let t = f.services["shop"].edge.tls.clone().unwrap();
    let a = t.acme.unwrap();
    assert_eq!(a.directory, "https://localhost:14000/dir");
    assert_eq!(a.email.as_deref(), Some("ops@shop.test"));
    assert_eq!(a.ca.as_deref(), Some(Path::new("certs/ca.pem")));
    assert_eq!(a.renew_before_secs, 60 * 86_400);
    let base = "[service.shop]\nimage = \"shop\"\nlisten = \"0.0.0.0:8443\"\nhosts = [\"a.test\"]\nredirect_http = \"0.0.0.0:8080\"\n";
    let e = err(&format!("{base}tls = {{ acme = \"https://x.test/d\", email = \"nobody\" }}\n"));
    assert!(e.contains(":6: service.shop.tls.email: \"nobody\" is not an email address"), "{e}");
    let e = err(&format!("{base}tls = {{ acme = \"https://x.test/d\", renew_before = \"soon\" }}\n"));
    assert!(e.contains("service.shop.tls.renew_before: \"soon\""), "{e}");
}
