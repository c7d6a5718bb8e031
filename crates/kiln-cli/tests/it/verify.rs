//! The test gate end to end, as root with runc: `kiln test` boots the demo
//! app privately with placeholder secrets, runs its checks and commands,
//! and records the result on the digest as an OCI artifact that skopeo
//! reads.

use crate::common;

use std::fs;
use std::path::Path;

use common::*;

fn files(test: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/bin/demo-app");
    assert!(demo.exists(), "run scripts/build-demo.sh first (scripts/test.sh does)");
    let (dir, home) = (tempdir("verify"), tempdir("verify-home"));
    fs::copy(&demo, dir.join("demo-app")).unwrap();
    let toml = format!(
        "{}{test}\n[service.web]\nimage = \"web\"\nenv = {{ HOST = \"127.0.0.1\" }}\n\
         secrets = [{{ name = \"db\", env = \"DEMO_SECRET\" }}]\n[service.web.health]\npath = \"/healthz\"\n",
        demo_image("1.0.0", "")
    );
    fs::write(dir.join("kiln.toml"), toml).unwrap();
    (dir, home)
}

fn secret(home: &Path, dir: &Path, name: &str, value: &str) {
    use std::io::Write;
    let mut c = kiln_cmd()
        .args(["secret", "set", name])
        .current_dir(dir)
        .env("KILN_HOME", home)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());
}

const PASSING: &str = r#"
[image.web.test]
checks = ["/healthz", { path = "/", contains = "demo-app 1.0.0" },
          { path = "/secret", contains = "kiln-test-placeholder-db", not_contains = "hunter2" }]
commands = ['curl -fsS "$KILN_TEST_URL/" | grep -q "demo-app 1.0.0"']
timeout = "30s"
"#;

#[test]
fn a_passing_test_uses_placeholder_secrets_and_records_an_artifact_on_the_digest() {
    let _room = common::room("verify");
    let (dir, home) = files(PASSING);
    secret(&home, &dir, "db", "hunter2");
    let digest = bake_digests(&home, &dir, &[])[0].clone();
    let out = kiln(&home, &dir, &["test", "--json"]);
    let r = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(0), "{r:#}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(r["digest"], digest.as_str());
    assert_eq!(r["service"], "web", "the service's env and secret names");
    assert_eq!(r["checks"].as_array().unwrap().len(), 3);
    assert!(r["checks"].as_array().unwrap().iter().all(|c| c["passed"] == true), "{r:#}");
    assert_eq!(r["commands"][0]["passed"], true, "{r:#}");
    // The private instance is gone, and no service's instance was started.
    let ps = json(&kiln_ok(&home, &dir, &["ps", "--all", "--json"]));
    assert!(ps["instances"].as_array().unwrap().is_empty(), "{ps:#}");
    // The record: an OCI artifact tagged sha256-<hex>.test, pointing at the image.
    let hex = digest.strip_prefix("sha256:").unwrap();
    let tag = format!("web:sha256-{hex}.test");
    let raw = run("skopeo", &["inspect", "--raw", &format!("oci:{}:{tag}", home.join("store").display())]);
    assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
    let m = json(&String::from_utf8_lossy(&raw.stdout));
    assert_eq!(m["artifactType"], "application/vnd.kiln.verification.v1+json", "{m:#}");
    assert_eq!(m["subject"]["digest"], digest.as_str(), "{m:#}");
    assert_eq!(m["annotations"]["dev.kiln.verification.kind"], "test");
    let layer = m["layers"][0]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_owned();
    let record = json(&fs::read_to_string(home.join("store/blobs/sha256").join(layer)).unwrap());
    assert_eq!((record["kind"].as_str(), record["passed"].as_bool()), (Some("test"), Some(true)), "{record:#}");
    assert!(!fs::read_to_string(home.join("store/index.json")).unwrap().contains("hunter2"));
    // `kiln inspect` of the image shows its record; `kiln images` lists images only.
    let i = json(&kiln_ok(&home, &dir, &["inspect", "web", "--json"]));
    assert_eq!((i["records"][0]["kind"].as_str(), i["records"][0]["passed"].as_bool()), (Some("test"), Some(true)));
    assert!(!kiln_ok(&home, &dir, &["images"]).contains(".test"));
    // gc keeps the record (it is tagged) and the image.
    kiln_ok(&home, &dir, &["gc"]);
    assert!(run("skopeo", &["inspect", "--raw", &format!("oci:{}:{tag}", home.join("store").display())])
        .status
        .success());
}

#[test]
fn a_failing_check_names_the_check_and_shows_the_response_head_and_the_logs() {
    let _room = common::room("verify");
    let (dir, home) = files(
        "\n[image.web.test]\nchecks = [\"/healthz\", { path = \"/\", status = 201 }]\n\
         commands = [\"echo checking; exit 4\"]\ntimeout = \"30s\"\n",
    );
    secret(&home, &dir, "db", "hunter2");
    bake_digests(&home, &dir, &[]);
    let out = kiln(&home, &dir, &["test", "web"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("FAILED"), "{text}");
    assert!(text.contains("FAIL GET / -> 201") && text.contains("answered 200, expected 201"), "{text}");
    assert!(text.contains("< HTTP/1.1 200 OK"), "the response head: {text}");
    assert!(text.contains("ok   GET /healthz -> 200"), "{text}");
    assert!(text.contains("FAIL $ echo checking; exit 4 (exit 4") && text.contains("| checking"), "{text}");
    assert!(text.contains("instance logs (first lines)"), "{text}");
    assert!(!text.contains("hunter2"));
    let j = json(&String::from_utf8_lossy(&kiln(&home, &dir, &["test", "web", "--json"]).stdout));
    assert_eq!(j["passed"], false);
    let inspect = kiln_ok(&home, &dir, &["inspect", j["record"].as_str().unwrap(), "--json"]);
    assert!(inspect.contains("application/vnd.kiln.verification.v1+json"), "{inspect}");
}

#[test]
fn bad_test_tables_are_refused_naming_the_key() {
    let _room = common::room("verify");
    let (dir, home) = files("\n[image.web.test]\ntimeout = \"30s\"\n");
    let e = kiln_err(&home, &dir, &["test"]);
    assert!(e.contains("image.web.test") && e.contains("nothing would be tested"), "{e}");
    fs::write(
        dir.join("kiln.toml"),
        format!("{}\n[image.web.test]\nchecks = [\"/\"]\nservice = \"nope\"\n", demo_image("1.0.0", "")),
    )
    .unwrap();
    let e = kiln_err(&home, &dir, &["test"]);
    assert!(e.contains("image.web.test.service") && e.contains("no [service.nope]") && e.contains("kiln.toml:"), "{e}");
    fs::write(
        dir.join("kiln.toml"),
        format!("{}\n[image.web.test]\nchecks = [\"healthz\"]\n", demo_image("1.0.0", "")),
    )
    .unwrap();
    let e = kiln_err(&home, &dir, &["test"]);
    assert!(e.contains("image.web.test.checks[0].path"), "{e}");
    fs::write(dir.join("kiln.toml"), demo_image("1.0.0", "")).unwrap();
    let e = kiln_err(&home, &dir, &["test"]);
    assert!(e.contains("no [image.X.test]"), "{e}");
}

#[test]
fn signatures_are_cosign_shaped_verify_with_openssl_and_fail_for_another_key() {
    let _room = common::room("verify");
    let (dir, home) = files(PASSING);
    secret(&home, &dir, "db", "hunter2");
    let digest = bake_digests(&home, &dir, &[])[0].clone();
    kiln_ok(&home, &dir, &["test"]);
    let pem = kiln_ok(&home, &dir, &["key", "generate"]);
    assert!(pem.contains("-----BEGIN PUBLIC KEY-----"), "{pem}");
    assert!(kiln_err(&home, &dir, &["key", "generate"]).contains("exists already"));
    // The private key is encrypted at rest: no file under the home holds it in clear.
    use std::os::unix::fs::PermissionsExt;
    let private = home.join("keys/private");
    assert_eq!(fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o700);
    let grep = std::process::Command::new("grep").args(["-rl", "PRIVATE KEY"]).arg(&home).output().unwrap();
    assert!(grep.stdout.is_empty(), "a private key in clear: {}", String::from_utf8_lossy(&grep.stdout));
    let signed = json(&kiln_ok(&home, &dir, &["sign", "web", "--json"]));
    let signed = signed.as_array().unwrap();
    assert_eq!(signed.len(), 2, "the image and its test record: {signed:?}");
    assert_eq!(signed[0]["digest"], digest.as_str());

    // Independently of kiln: the payload and the annotation, checked by openssl.
    let hex = digest.strip_prefix("sha256:").unwrap();
    let raw =
        run("skopeo", &["inspect", "--raw", &format!("oci:{}:web:sha256-{hex}.sig", home.join("store").display())]);
    assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
    let m = json(&String::from_utf8_lossy(&raw.stdout));
    let layer = &m["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json");
    let payload_path =
        home.join("store/blobs/sha256").join(layer["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap());
    let payload = json(&fs::read_to_string(&payload_path).unwrap());
    assert_eq!(payload["critical"]["image"]["docker-manifest-digest"], digest.as_str());
    assert_eq!(payload["critical"]["identity"]["docker-reference"], "web");
    assert_eq!(payload["critical"]["type"], "cosign container image signature");
    let b64 = layer["annotations"]["dev.cosignproject.cosign/signature"].as_str().unwrap();
    fs::write(dir.join("sig.b64"), b64).unwrap();
    let decoded = run("base64", &["-d", dir.join("sig.b64").to_str().unwrap()]);
    fs::write(dir.join("sig.der"), &decoded.stdout).unwrap();
    let pubkey = home.join("keys/default.pub");
    let ok = run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            pubkey.to_str().unwrap(),
            "-signature",
            dir.join("sig.der").to_str().unwrap(),
            payload_path.to_str().unwrap(),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "Verified OK", "{}", String::from_utf8_lossy(&ok.stderr));

    let v = json(&kiln_ok(&home, &dir, &["verify", "web", "--json"]));
    assert_eq!(v["digest"], digest.as_str());
    // Another key: refused, exit 7, naming the key.
    kiln_ok(&home, &dir, &["key", "generate", "other"]);
    let other = home.join("keys/other.pub");
    let out = kiln(&home, &dir, &["verify", "web", "--key", other.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{e}");
    assert!(e.contains("does not verify") && e.contains("other.pub"), "{e}");
    // A new build is not signed: exit 7, naming the tag it looked for.
    fs::write(dir.join("kiln.toml"), fs::read_to_string(dir.join("kiln.toml")).unwrap().replace("1.0.0", "1.0.1"))
        .unwrap();
    bake_digests(&home, &dir, &[]);
    let out = kiln(&home, &dir, &["verify", "web"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed"), "{}", String::from_utf8_lossy(&out.stderr));
    // A bad PEM names the file.
    fs::write(dir.join("bad.pem"), "not a key").unwrap();
    let e = kiln_err(&home, &dir, &["verify", "web:1.0.0", "--key", dir.join("bad.pem").to_str().unwrap()]);
    assert!(e.contains("bad.pem") && e.contains("PEM"), "{e}");
}

/// A real private key made by openssl (`genpkey`), PKCS#8 PEM.
fn openssl_key(path: &std::path::Path, algorithm: &[&str]) -> String {
    let mut args = vec!["genpkey"];
    args.extend_from_slice(algorithm);
    args.extend_from_slice(&["-out", path.to_str().unwrap()]);
    common::run("openssl", &args);
    fs::read_to_string(path).unwrap()
}

#[test]
fn the_secret_scan_finds_deleted_files_and_config_values_without_printing_them() {
    let _room = common::room("verify");
    let (dir, home) = (tempdir("leaks"), tempdir("leaks-home"));
    busybox_rootfs(&dir.join("rootfs.tar"));
    let key = openssl_key(&dir.join("key.pem"), &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let id = openssl_key(&dir.join("id.pem"), &["-algorithm", "ed25519"]);
    // What a TLS library's read-only data holds: PEM headers, no key.
    fs::write(dir.join("libfake.so"), b"\x7fELF\0\0-----BEGIN PRIVATE KEY-----\0-----END PRIVATE KEY-----\0\0")
        .unwrap();
    fs::write(dir.join("app.conf"), "# app\nport = 8080\napi_key = \"Xq3v9LmZ2pR8tK1wYb7NcD\"\n").unwrap();
    let image = |allow: &str| {
        format!(
            "[image.leaky]\nfrom = \"rootfs:rootfs.tar\"\n\
             copy = [{{ src = \"key.pem\", dest = \"/key.pem\" }}, {{ src = \"app.conf\", dest = \"/etc/app.conf\" }},\n\
             {{ src = \"id.pem\", dest = \"/etc/ssl/private/id.pem\" }}, {{ src = \"libfake.so\", dest = \"/usr/lib/libfake.so\" }}]\n\
             run = [\"rm /key.pem\"]\nenv = {{ AWS_ID = \"AKIAIOSFODNN7EXAMPLE\" }}\n{allow}"
        )
    };
    fs::write(dir.join("kiln.toml"), image("")).unwrap();
    bake_digests(&home, &dir, &[]);
    let out = kiln(&home, &dir, &["scan-secrets", "leaky"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(8), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("SECRETS FOUND"), "{text}");
    assert!(text.contains("/key.pem:1 [private-key]"), "deleted by a later layer, still found: {text}");
    assert!(text.contains("/etc/app.conf:3 [keyword-assignment]"), "{text}");
    assert!(text.contains("config config:env[") && text.contains("[aws-access-key-id]"), "{text}");
    assert!(text.contains("/etc/ssl/private/id.pem:1 [private-key]"), "{text}");
    assert!(!text.contains("libfake.so"), "a PEM header alone is no key: {text}");
    let body = |pem: &str| pem.lines().nth(1).unwrap().to_owned();
    for secret in ["Xq3v9LmZ2pR8tK1wYb7NcD", "AKIAIOSFODNN7EXAMPLE", "BEGIN PRIVATE", &body(&key), &body(&id)] {
        assert!(!text.contains(secret), "the report shows {secret}: {text}");
    }
    // Each finding names its layer: the deleted key is in the copy layer.
    let j = json(&String::from_utf8_lossy(&kiln(&home, &dir, &["scan-secrets", "leaky", "--json"]).stdout));
    let findings = j["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 4, "{j:#}");
    let keys: Vec<&serde_json::Value> = findings.iter().filter(|f| f["rule"] == "private-key").collect();
    assert_eq!(keys.len(), 2, "{j:#}");
    assert!(keys[0]["layer"].as_str().unwrap().starts_with("sha256:"), "{}", keys[0]);
    assert_ne!(keys[0]["fingerprint"], keys[1]["fingerprint"], "one fingerprint per key");
    let deleted = keys.iter().find(|f| f["path"] == "/key.pem").unwrap();
    let aws = findings.iter().find(|f| f["rule"] == "aws-access-key-id").unwrap();
    assert!(aws["layer"].is_null());
    // Known false positives: by fingerprint and by path, each with a reason.
    let allow = format!(
        "[image.leaky.scan]\nallow_secrets = [{{ fingerprint = \"{}\", reason = \"AWS's documented example key\" }},\n\
         {{ path = \"/etc/app.conf\", reason = \"a fixture\" }}]\n",
        aws["fingerprint"].as_str().unwrap()
    );
    fs::write(dir.join("kiln.toml"), image(&allow)).unwrap();
    let out = kiln(&home, &dir, &["scan-secrets", "leaky"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(8), "the key is still not allowed: {text}");
    assert!(
        text.contains("(allowed: AWS's documented example key)") && text.contains("(allowed: a fixture)"),
        "{text}"
    );
    // Allowing one key by its fingerprint allows that key alone.
    let one = allow.replace(
        "reason = \"a fixture\" }]",
        &format!(
            "reason = \"a fixture\" }}, {{ fingerprint = \"{}\", reason = \"test key\" }}]",
            deleted["fingerprint"].as_str().unwrap()
        ),
    );
    fs::write(dir.join("kiln.toml"), image(&one)).unwrap();
    let out = kiln(&home, &dir, &["scan-secrets", "leaky"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(8), "the other key is still a finding: {text}");
    assert!(text.contains("/key.pem:1 [private-key]") && text.contains("(allowed: test key)"), "{text}");
    let other = text.lines().find(|l| l.contains("/etc/ssl/private/id.pem")).unwrap_or_default();
    assert!(!other.contains("allowed"), "{text}");
    let all = one.replace(
        "reason = \"test key\" }]",
        "reason = \"test key\" }, { path = \"/etc/ssl/private/\", reason = \"host key fixture\" }]",
    );
    fs::write(dir.join("kiln.toml"), image(&all)).unwrap();
    let out = kiln(&home, &dir, &["scan-secrets", "leaky", "--json"]);
    let j = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(0), "{j:#}");
    assert_eq!(j["passed"], true);
    let i = json(&kiln_ok(&home, &dir, &["inspect", "leaky", "--json"]));
    assert_eq!(i["records"][0]["kind"], "secrets", "{i:#}");
    // A reason is required.
    fs::write(dir.join("kiln.toml"), image("[image.leaky.scan]\nallow_secrets = [{ path = \"/etc\" }]\n")).unwrap();
    let e = kiln_err(&home, &dir, &["scan-secrets", "leaky"]);
    assert!(e.contains("image.leaky.scan.allow_secrets[0].reason"), "{e}");
}

/// `dpkg --compare-versions` is the oracle of kiln's Debian version order.
#[test]
fn debian_versions_order_exactly_as_dpkg_compare_versions() {
    let _room = common::room("verify");
    use kiln::verify::dpkg::Version;
    use std::cmp::Ordering;
    let mut versions: Vec<String> = [
        "1.0",
        "1.0~rc1",
        "1.0~~",
        "1.0+b1",
        "1.0-1",
        "1.0-1+deb12u1",
        "1:0.9",
        "1.10",
        "1.9",
        "1.001",
        "1.0a",
        "2.36-9+deb12u4",
        "2.36-9+deb12u10",
        "3.0.11-1~deb12u2",
        "3.0.11-1",
        "0:1.2",
        "1.2-0",
        "7.88.1-10+deb12u5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A seeded generator (xorshift): the same pairs every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let chars = b"0123456789.~+az";
    for _ in 0..22 {
        let mut v = String::new();
        if next(4) == 0 {
            v.push_str(&format!("{}:", next(3)));
        }
        v.push((b'0' + next(10) as u8) as char);
        for _ in 0..next(7) {
            v.push(chars[next(chars.len() as u64) as usize] as char);
        }
        if next(2) == 0 {
            v.push('-');
            for _ in 0..1 + next(4) {
                v.push(chars[next(chars.len() as u64) as usize] as char);
            }
        }
        versions.push(v);
    }
    let dpkg = |a: &str, op: &str, b: &str| {
        std::process::Command::new("dpkg").args(["--compare-versions", a, op, b]).status().unwrap().success()
    };
    let mut checked = 0;
    for a in &versions {
        for b in &versions {
            let ours = Version::parse(a).unwrap().cmp(&Version::parse(b).unwrap());
            let theirs = if dpkg(a, "lt", b) {
                Ordering::Less
            } else if dpkg(a, "eq", b) {
                Ordering::Equal
            } else {
                Ordering::Greater
            };
            assert_eq!(ours, theirs, "{a} vs {b}");
            checked += 1;
        }
    }
    assert_eq!(checked, versions.len() * versions.len());
}
