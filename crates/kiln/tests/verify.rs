//! The test gate end to end, as root with runc: `kiln test` boots the demo
//! app privately with placeholder secrets, runs its checks and commands,
//! and records the result on the digest as an OCI artifact that skopeo
//! reads.

mod common;

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
    let mut c = std::process::Command::new(kiln_bin())
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
