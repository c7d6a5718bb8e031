//! The vulnerability scan and the SBOMs end to end: an image baked (with a
//! runc `run` step that deletes a package file, so a whiteout must be
//! honoured) from a Debian 12 rootfs whose dpkg database holds real
//! package versions, some affected by the fixture database's real
//! advisories and some fixed; a cargo-auditable section in a binary; an
//! Alpine image. The SBOMs are checked by `pyspdxtools` (spdx-tools) and
//! against syft's package list for the same OCI layout.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// /bin/true with a cargo-auditable `.dep-v0` section listing `crates`.
fn auditable_binary(dir: &Path, crates: &str) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(crates.as_bytes()).unwrap();
    let section = dir.join("dep-v0.zlib");
    fs::write(&section, z.finish().unwrap()).unwrap();
    let out = dir.join("app-bin");
    let r = run(
        "objcopy",
        &[
            "--add-section",
            &format!(".dep-v0={}", section.display()),
            "--set-section-flags",
            ".dep-v0=noload,readonly",
            "/bin/true",
            out.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "objcopy: {}", String::from_utf8_lossy(&r.stderr));
    fs::read(out).unwrap()
}

const CRATES: &str = r#"{"packages":[
  {"name":"app","version":"0.1.0","source":"local","kind":"runtime","dependencies":[1,2],"root":true},
  {"name":"smallvec","version":"1.6.0","source":"crates.io","kind":"runtime"},
  {"name":"time","version":"0.2.23","source":"crates.io","kind":"runtime"}]}"#;

/// A Debian 12 rootfs: busybox (for the run step), os-release as Debian
/// has it (a symlink into /usr/lib), the fixture dpkg database, a package
/// file the image's run step deletes, and a cargo-auditable binary.
fn debian_rootfs(dir: &Path) {
    let f = fixtures().join("debian12");
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin", "etc", "tmp", "usr", "usr/lib", "usr/local", "usr/local/bin", "var", "var/lib", "var/lib/dpkg"] {
        b.append_data(&mut tar_header(tar::EntryType::Directory, 0o755, 0), format!("{d}/"), std::io::empty()).unwrap();
    }
    let mut file = |path: &str, data: &[u8], mode: u32| {
        b.append_data(&mut tar_header(tar::EntryType::Regular, mode, data.len() as u64), path, data).unwrap();
    };
    file("bin/busybox", &busybox, 0o755);
    file("usr/lib/os-release", &fs::read(f.join("os-release")).unwrap(), 0o644);
    file("var/lib/dpkg/status", &fs::read(f.join("status")).unwrap(), 0o644);
    file("var/lib/dpkg/status.d/openssh-client", &fs::read(f.join("status.d/openssh-client")).unwrap(), 0o644);
    // Affected by DSA-5514-1 if it were there; the run step deletes it.
    file("var/lib/dpkg/status.d/ghost", b"Package: ghost\nVersion: 1.0\nSource: glibc (2.36-9)\n", 0o644);
    file("usr/local/bin/app", &auditable_binary(dir, CRATES), 0o755);
    // A real Go binary (Debian's docker-registry): its build information.
    file("usr/bin/docker-registry", &fs::read("/usr/bin/docker-registry").expect("docker-registry"), 0o755);
    for a in ["sh", "rm"] {
        b.append_link(&mut tar_header(tar::EntryType::Symlink, 0o777, 0), format!("bin/{a}"), "busybox").unwrap();
    }
    b.append_link(&mut tar_header(tar::EntryType::Symlink, 0o777, 0), "etc/os-release", "../usr/lib/os-release")
        .unwrap();
    fs::write(dir.join("debian.tar"), b.into_inner().unwrap()).unwrap();
}

fn alpine_rootfs(dir: &Path) {
    let f = fixtures().join("alpine318");
    let mut b = tar::Builder::new(Vec::new());
    let mut file = |path: &str, data: &[u8]| {
        b.append_data(&mut tar_header(tar::EntryType::Regular, 0o644, data.len() as u64), path, data).unwrap();
    };
    file("etc/os-release", &fs::read(f.join("os-release")).unwrap());
    file("lib/apk/db/installed", &fs::read(f.join("installed")).unwrap());
    fs::write(dir.join("alpine.tar"), b.into_inner().unwrap()).unwrap();
}

fn project(scan: &str) -> (PathBuf, PathBuf) {
    let (dir, home) = (tempdir("scan"), tempdir("scan-home"));
    debian_rootfs(&dir);
    alpine_rootfs(&dir);
    let toml = format!(
        "[image.deb]\nfrom = \"rootfs:debian.tar\"\nversion = \"1.0\"\n\
         run = [\"rm /var/lib/dpkg/status.d/ghost\"]\nentrypoint = [\"/usr/local/bin/app\"]\n{scan}\n\
         [image.alp]\nfrom = \"rootfs:alpine.tar\"\nversion = \"1.0\"\nentrypoint = [\"/bin/true\"]\n"
    );
    fs::write(dir.join("kiln.toml"), toml).unwrap();
    let out = kiln(&home, &dir, &["bake"]);
    assert!(out.status.success(), "bake: {}", String::from_utf8_lossy(&out.stderr));
    (dir, home)
}

fn db() -> String {
    fixtures().join("osv").display().to_string()
}

fn scan(home: &Path, dir: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut all = vec!["scan", "--db"];
    let d = db();
    all.push(&d);
    all.extend_from_slice(args);
    all.push("--json");
    let out = kiln(home, dir, &all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn ids(r: &serde_json::Value) -> BTreeSet<String> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{} {}", f["id"].as_str().unwrap(), f["package"].as_str().unwrap()))
        .collect()
}

#[test]
fn debian_packages_match_by_source_with_dpkg_order_and_deleted_files_are_gone() {
    let _room = common::room("scan");
    let (dir, home) = project("");
    // The fixture's newest record is from 2024: over the 7-day default.
    let (code, _, err) = scan(&home, &dir, &["deb"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("days old") && err.contains("max_db_age") && err.contains("--force"), "{err}");

    let (code, r, err) = scan(&home, &dir, &["deb", "--force"]);
    assert_eq!(code, Some(9), "{r:#} {err}");
    assert_eq!(r["db"]["forced"], true);
    assert_eq!(r["db"]["advisories"], 10);
    assert_eq!(r["os"]["id"], "debian", "os-release through Debian's symlink");
    let want: BTreeSet<String> = [
        "DSA-5514-1 libc6",
        "DSA-5514-1 libc-bin",
        "DEBIAN-CVE-2024-2961 libc6",
        "DEBIAN-CVE-2024-2961 libc-bin",
        "DEBIAN-CVE-2024-0727 libssl3",
        "DEBIAN-CVE-2024-2398 libcurl4",
        "RUSTSEC-2021-0003 smallvec",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Fixed at exactly the installed version: DSA-5532-1 (openssl),
    // DSA-5724-1 (openssh, in status.d/), DSA-5496-1 (libwebp); fixed
    // before it: CVE-2023-38545 (curl). Deleted by the run step: ghost.
    assert_eq!(ids(&r), want, "{r:#}");
    let by_id = |id: &str| r["findings"].as_array().unwrap().iter().find(|f| f["id"] == id).unwrap().clone();
    let glibc = by_id("DSA-5514-1");
    assert_eq!(glibc["source"], "glibc");
    assert_eq!(glibc["fixed"], "2.36-9+deb12u3");
    assert_eq!(glibc["severity"], "high");
    assert_eq!(glibc["score"], 7.8);
    assert_eq!(by_id("DEBIAN-CVE-2024-2398")["severity"], "unknown");
    assert_eq!(by_id("DEBIAN-CVE-2024-0727")["severity"], "medium");
    assert_eq!(by_id("RUSTSEC-2021-0003")["fixed"], "1.6.1");
    assert_eq!(by_id("RUSTSEC-2021-0003")["location"], "/usr/local/bin/app");
    let failing: BTreeSet<&str> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["failing"] == true)
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        failing,
        ["DSA-5514-1", "DEBIAN-CVE-2024-2961", "RUSTSEC-2021-0003"].into_iter().collect(),
        "high and above; medium passes, and unknown is reported without failing, by default"
    );
    // With the CVE's own record in the database (as a full export carries
    // it, from NVD through another ecosystem), the Debian record takes its
    // score.
    let with_cve = tempdir("scan-db-cve");
    for e in fs::read_dir(db()).unwrap().flatten().filter(|e| e.path().is_file()) {
        fs::copy(e.path(), with_cve.join(e.file_name())).unwrap();
    }
    fs::write(
        with_cve.join("CVE-2024-2398.json"),
        r#"{"id":"CVE-2024-2398","modified":"2024-06-01T00:00:00Z","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:L/A:N"}],"affected":[{"package":{"ecosystem":"GIT","name":"https://github.com/curl/curl.git"}}]}"#,
    )
    .unwrap();
    let out = kiln(&home, &dir, &["scan", "deb", "--db", with_cve.to_str().unwrap(), "--force", "--json"]);
    let r2 = json(&String::from_utf8_lossy(&out.stdout));
    let curl = r2["findings"].as_array().unwrap().iter().find(|f| f["id"] == "DEBIAN-CVE-2024-2398").unwrap().clone();
    assert_eq!(
        (curl["severity"].as_str(), curl["severity_from"].as_str()),
        (Some("high"), Some("CVE-2024-2398")),
        "{curl}"
    );
    assert_eq!(curl["failing"], true);
    // The verdict is recorded on the digest.
    let inspect = json(&kiln_ok(&home, &dir, &["inspect", "deb", "--json"]));
    let rec =
        inspect["records"].as_array().unwrap().iter().find(|r| r["kind"] == "vulns").expect("a vulns record").clone();
    assert_eq!(rec["passed"], false);

    // The same database as a zip (what osv.dev publishes) gives the same.
    let zip = dir.join("osv.zip");
    let py = format!(
        "import zipfile,os\nz=zipfile.ZipFile('{}','w',zipfile.ZIP_DEFLATED)\n\
         for r,_,fs in os.walk('{}'):\n  for f in fs: z.write(os.path.join(r,f), f)\nz.close()\n",
        zip.display(),
        db()
    );
    assert!(run("python3", &["-c", &py]).status.success());
    let out = kiln(&home, &dir, &["scan", "deb", "--db", zip.to_str().unwrap(), "--force", "--json"]);
    assert_eq!(ids(&json(&String::from_utf8_lossy(&out.stdout))), want);

    // A broken record is refused by its file name, and nothing is recorded.
    let bad = tempdir("scan-bad-db");
    fs::write(bad.join("X-1.json"), "{\"id\": \"X-1\"}").unwrap();
    let out = kiln(&home, &dir, &["scan", "deb", "--db", bad.to_str().unwrap(), "--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("X-1.json") && err.contains("modified"), "{err}");
    let out = kiln(&home, &dir, &["scan", "deb"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--db"), "no database named");
}

#[test]
fn the_policy_sets_the_failing_severity_and_expired_allowlist_entries_fail() {
    let _room = common::room("scan");
    let accepting = r#"
[image.deb.scan]
fail_on = "critical"
fail_unknown = false
max_db_age = "36500d"
allow = [{ id = "RUSTSEC-2021-0003", reason = "insert_many is never called", expires = "2099-01-01" }]
"#;
    let (dir, home) = project(accepting);
    let (code, r, err) = scan(&home, &dir, &["deb"]);
    assert_eq!(code, Some(0), "{r:#} {err}");
    assert_eq!(r["passed"], true);
    assert_eq!(r["db"]["forced"], false, "young enough for this policy");
    let smallvec = r["findings"].as_array().unwrap().iter().find(|f| f["package"] == "smallvec").unwrap().clone();
    assert_eq!(smallvec["allowed"], "insert_many is never called");

    // The same entry, expired: the gate fails on the entry itself.
    let expired = accepting.replace("2099-01-01", "2020-01-01").replace("CVE-NONE", "");
    fs::write(dir.join("kiln.toml"), fs::read_to_string(dir.join("kiln.toml")).unwrap().replace(accepting, &expired))
        .unwrap();
    let (code, r, _) = scan(&home, &dir, &["deb"]);
    assert_eq!(code, Some(9), "{r:#}");
    assert_eq!(r["expired_allows"][0]["id"], "RUSTSEC-2021-0003");
    assert_eq!(r["expired_allows"][0]["expires"], "2020-01-01");
    let text = kiln(&home, &dir, &["scan", "deb", "--db", &db()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("allow[0] (RUSTSEC-2021-0003) expired on 2020-01-01"));

    // An entry without an expiry is refused where it is written.
    let toml = fs::read_to_string(dir.join("kiln.toml")).unwrap().replace(", expires = \"2020-01-01\"", "");
    fs::write(dir.join("kiln.toml"), toml).unwrap();
    let err = kiln_err(&home, &dir, &["scan", "deb", "--db", &db()]);
    assert!(err.contains("kiln.toml") && err.contains("scan.allow[0].expires"), "{err}");
}

#[test]
fn alpine_packages_match_by_origin_with_apk_order() {
    let _room = common::room("scan");
    let (dir, home) = project("");
    let (code, r, err) = scan(&home, &dir, &["alp", "--force"]);
    // Alpine's records carry no severity: reported, not failing by default.
    assert_eq!(code, Some(0), "{r:#} {err}");
    assert!(
        r["findings"].as_array().unwrap().iter().all(|f| f["severity"] == "unknown" && f["failing"] == false),
        "{r:#}"
    );
    assert_eq!(r["os"]["id"], "alpine");
    assert_eq!(ids(&r), ["CVE-2023-5363 libcrypto3", "CVE-2023-5363 libssl3"].iter().map(|s| s.to_string()).collect());
    assert_eq!(r["findings"][0]["fixed"], "3.1.4-r0");
    assert_eq!(r["packages"], 3);
}

/// The packages (name, version) syft finds in an OCI layout.
fn syft_packages(layout: &Path) -> BTreeSet<(String, String)> {
    let out = run("syft", &["scan", &format!("oci-dir:{}", layout.display()), "-o", "json", "-q"]);
    assert!(out.status.success(), "syft: {}", String::from_utf8_lossy(&out.stderr));
    let v = json(&String::from_utf8_lossy(&out.stdout));
    v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_owned(), a["version"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn sboms_are_valid_spdx_and_cyclonedx_and_list_every_package_syft_finds() {
    let _room = common::room("scan");
    let (dir, home) = project("");
    for image in ["deb", "alp"] {
        let spdx = dir.join(format!("{image}.spdx.json"));
        let r = json(&kiln_ok(&home, &dir, &["sbom", image, "-o", spdx.to_str().unwrap(), "--json"]));
        let cdx = dir.join(format!("{image}.cdx.json"));
        kiln_ok(&home, &dir, &["sbom", image, "--format", "cyclonedx", "-o", cdx.to_str().unwrap()]);
        let doc = json(&fs::read_to_string(&spdx).unwrap());
        let c = json(&fs::read_to_string(&cdx).unwrap());
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(c["specVersion"], "1.5");
        // The validator of the SPDX project itself.
        let v = run("pyspdxtools", &["-i", spdx.to_str().unwrap()]);
        assert!(
            v.status.success(),
            "pyspdxtools: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );

        let ours: BTreeSet<(String, String)> = c["components"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["type"] == "library")
            .map(|c| (c["name"].as_str().unwrap().to_owned(), c["version"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(ours.len() as u64, r["packages"].as_u64().unwrap());
        // syft on the same image, copied out of the store by skopeo.
        let layout = dir.join(format!("{image}-layout"));
        let store = format!("oci:{}:{image}:1.0", home.join("store").display());
        let copy = run("skopeo", &["copy", &store, &format!("oci:{}:{image}", layout.display())]);
        assert!(copy.status.success(), "skopeo: {}", String::from_utf8_lossy(&copy.stderr));
        let theirs = syft_packages(&layout);
        let names = |s: &BTreeSet<(String, String)>| s.iter().map(|(n, _)| n.clone()).collect::<BTreeSet<String>>();
        let missing: Vec<String> = names(&theirs).difference(&names(&ours)).cloned().collect();
        assert!(missing.is_empty(), "{image}: syft finds {missing:?} that kiln does not (kiln: {ours:?})");
        // Every difference is reported: versions read differently, and
        // what only kiln finds.
        eprintln!(
            "{image}: kiln {} packages, syft {}; versions only syft gives: {:?}; only kiln: {:?}",
            ours.len(),
            theirs.len(),
            theirs.difference(&ours).collect::<Vec<_>>(),
            ours.difference(&theirs).collect::<Vec<_>>()
        );

        // Both are stored as artifacts whose subject is the image.
        let hex = r["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
        for kind in ["spdx", "cdx"] {
            let raw = run(
                "skopeo",
                &["inspect", "--raw", &format!("oci:{}:{image}:sha256-{hex}.{kind}", home.join("store").display())],
            );
            let m = json(&String::from_utf8_lossy(&raw.stdout));
            assert_eq!(m["subject"]["digest"], r["digest"], "{kind}: {m:#}");
        }
        assert_eq!(
            json(&kiln_ok(&home, &dir, &["sbom", image, "--json"]))["spdx"],
            r["spdx"],
            "the same digest gets the same SBOM"
        );
    }
}

/// A Debian 12 minbase rootfs (curl, openssl, ca-certificates) from
/// Debian's packages by debootstrap, built once per test run.
pub(crate) fn debootstrap_rootfs() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-12-minbase.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/debian-rootfs.sh");
    let r = run(script.to_str().unwrap(), &[out.to_str().unwrap()]);
    assert!(r.status.success(), "debootstrap: {}", String::from_utf8_lossy(&r.stderr));
    out
}

#[test]
fn stock_debian_passes_the_secret_scan_keys_added_to_it_do_not_and_its_sbom_is_syfts() {
    let _room = common::room("scan");
    let rootfs = debootstrap_rootfs();
    let (dir, home) = (tempdir("debian"), tempdir("debian-home"));
    // A packaged file changed after installation (a key appended to it),
    // and two keys copied in, all made by openssl.
    let key = |name: &str, alg: &[&str]| {
        let path = dir.join(name);
        let mut args = vec!["genpkey"];
        args.extend_from_slice(alg);
        args.extend_from_slice(&["-out", path.to_str().unwrap()]);
        assert!(run("openssl", &args).status.success());
        fs::read_to_string(path).unwrap()
    };
    key("id_ed25519", &["-algorithm", "ed25519"]);
    key("server.key", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let appended = key("appended.pem", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let copyright = run("tar", &["-xOf", rootfs.to_str().unwrap(), "./usr/share/doc/curl/copyright"]);
    assert!(copyright.status.success() && !copyright.stdout.is_empty());
    let mut changed = copyright.stdout.clone();
    changed.extend_from_slice(appended.as_bytes());
    fs::write(dir.join("copyright"), changed).unwrap();
    fs::write(
        dir.join("kiln.toml"),
        format!(
            "[image.deb]\nfrom = \"rootfs:{r}\"\nversion = \"12.0.0\"\nentrypoint = [\"/bin/sh\"]\n\n\
             [image.leaky]\nfrom = \"rootfs:{r}\"\nversion = \"1.0.0\"\nentrypoint = [\"/bin/sh\"]\n\
             copy = [{{ src = \"id_ed25519\", dest = \"/root/.ssh/id_ed25519\" }},\n\
             {{ src = \"server.key\", dest = \"/app/keys/server.key\" }},\n\
             {{ src = \"copyright\", dest = \"/usr/share/doc/curl/copyright\" }}]\n",
            r = rootfs.display()
        ),
    )
    .unwrap();
    bake_digests(&home, &dir, &[]);

    // Stock Debian: libgnutls.so.30 holds real PEM test keys; as Debian
    // ships them they are public, and the gate passes with 0 findings.
    let out = kiln(&home, &dir, &["scan-secrets", "deb", "--json"]);
    let j = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(0), "{j:#}");
    assert_eq!(j["findings"].as_array().unwrap().len(), 0, "{j:#}");
    assert!(j["packaged"].as_u64().unwrap() > 4000, "{}", j["packaged"]);
    let out = kiln(&home, &dir, &["scan-secrets", "leaky", "--json"]);
    let j = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(8), "{j:#}");
    let mut found: Vec<(String, String)> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().to_owned(), f["rule"].as_str().unwrap().to_owned()))
        .collect();
    found.sort();
    let want = |p: &str| (p.to_owned(), "private-key".to_owned());
    assert_eq!(
        found,
        [want("/app/keys/server.key"), want("/root/.ssh/id_ed25519"), want("/usr/share/doc/curl/copyright")],
        "{j:#}"
    );

    // The SBOM: every purl as syft writes it (upstream= included),
    // licenses from /usr/share/doc/*/copyright, dated like the image.
    let spdx = dir.join("deb.spdx.json");
    kiln_ok(&home, &dir, &["sbom", "deb", "-o", spdx.to_str().unwrap()]);
    let v = run("pyspdxtools", &["-i", spdx.to_str().unwrap()]);
    assert!(
        v.status.success(),
        "pyspdxtools: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let doc = json(&fs::read_to_string(&spdx).unwrap());
    let debs: Vec<&serde_json::Value> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["externalRefs"][0]["referenceLocator"].as_str().is_some_and(|l| l.starts_with("pkg:deb/")))
        .collect();
    let ours: BTreeSet<String> =
        debs.iter().map(|p| p["externalRefs"][0]["referenceLocator"].as_str().unwrap().to_owned()).collect();
    let layout = dir.join("deb-layout");
    let store = format!("oci:{}:deb:12.0.0", home.join("store").display());
    let copy = run("skopeo", &["copy", &store, &format!("oci:{}:deb", layout.display())]);
    assert!(copy.status.success(), "skopeo: {}", String::from_utf8_lossy(&copy.stderr));
    let s = run("syft", &["scan", &format!("oci-dir:{}", layout.display()), "-o", "json", "-q"]);
    assert!(s.status.success(), "syft: {}", String::from_utf8_lossy(&s.stderr));
    let theirs: BTreeSet<String> = json(&String::from_utf8_lossy(&s.stdout))["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["type"] == "deb")
        .map(|a| a["purl"].as_str().unwrap().to_owned())
        .collect();
    assert!(ours.len() > 100, "{}", ours.len());
    assert_eq!(
        ours,
        theirs,
        "purls: only kiln {:?}, only syft {:?}",
        ours.difference(&theirs),
        theirs.difference(&ours)
    );
    let licensed = debs.iter().filter(|p| p["licenseDeclared"] != "NOASSERTION").count();
    assert!(licensed * 100 >= debs.len() * 95, "licenses for {licensed} of {} packages", debs.len());
    let bash = debs.iter().find(|p| p["name"] == "bash").unwrap();
    assert!(bash["licenseDeclared"].as_str().unwrap().contains("GPL-3.0-or-later"), "{bash:#}");
    let created = json(&kiln_ok(&home, &dir, &["inspect", "deb", "--json"]))["config"]["created"].clone();
    assert_eq!(doc["creationInfo"]["created"], created);
    assert!(!created.as_str().unwrap().starts_with("1970"), "outside git the image is dated by its rootfs: {created}");
}

#[test]
fn an_alpine_file_as_its_package_installed_it_is_not_searched_and_a_copy_elsewhere_is() {
    let _room = common::room("scan");
    let (dir, home) = (tempdir("apk-sums"), tempdir("apk-sums-home"));
    let key = dir.join("key.pem");
    assert!(run("openssl", &["genpkey", "-algorithm", "ed25519", "-out", key.to_str().unwrap()]).status.success());
    let pem = fs::read(&key).unwrap();
    // apk's checksum of a file: `Q1` and the base64 of its SHA-1.
    let sha1 = run("openssl", &["dgst", "-sha1", "-binary", key.to_str().unwrap()]).stdout;
    let b64 = run("sh", &["-c", &format!("openssl dgst -sha1 -binary {} | base64", key.display())]).stdout;
    assert_eq!(sha1.len(), 20);
    let q1 = format!("Q1{}", String::from_utf8(b64).unwrap().trim());
    let installed = format!(
        "P:test-vectors\nV:1.0-r0\nA:x86_64\no:test-vectors\nF:usr/share/test-vectors\nR:key.pem\nZ:{q1}\nR:changed.pem\nZ:{q1}\n\n"
    );
    let mut changed = pem.clone();
    changed.extend_from_slice(b"# edited after installation\n");
    let mut b = tar::Builder::new(Vec::new());
    let mut file = |path: &str, data: &[u8]| {
        b.append_data(&mut tar_header(tar::EntryType::Regular, 0o644, data.len() as u64), path, data).unwrap();
    };
    file("lib/apk/db/installed", installed.as_bytes());
    file("usr/share/test-vectors/key.pem", &pem);
    file("usr/share/test-vectors/changed.pem", &changed);
    file("etc/app/key.pem", &pem);
    fs::write(dir.join("alpine.tar"), b.into_inner().unwrap()).unwrap();
    fs::write(dir.join("kiln.toml"), "[image.alp]\nfrom = \"rootfs:alpine.tar\"\nversion = \"1.0\"\n").unwrap();
    kiln_ok(&home, &dir, &["bake"]);
    let out = kiln(&home, &dir, &["scan-secrets", "alp", "--json"]);
    let j = json(&String::from_utf8_lossy(&out.stdout));
    let mut paths: Vec<&str> = j["findings"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    paths.sort();
    assert_eq!(paths, ["/etc/app/key.pem", "/usr/share/test-vectors/changed.pem"], "{j:#}");
    assert_eq!(j["packaged"], 1, "{j:#}");
}

/// A mirror laid out as osv.dev's bucket, made from the fixture records
/// (their `modified` set to now, as a fresh export's are) plus a withdrawn
/// record and a Go one: `<dir>/<Ecosystem>/all.zip`.
fn osv_mirror(dir: &Path) {
    let py = format!(
        r#"
import json, os, time, zipfile
src, out = {src:?}, {out:?}
now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
groups = {{"Debian": [], "Alpine": [], "crates.io": [], "Go": []}}
for root, _, files in os.walk(src):
    for f in sorted(files):
        if not f.endswith(".json"):
            continue
        rec = json.load(open(os.path.join(root, f)))
        rec["modified"] = now
        eco = rec["affected"][0]["package"]["ecosystem"].split(":")[0]
        groups[eco].append((f, json.dumps(rec, indent=2)))
groups["Debian"].append(("DSA-0000-1.json", json.dumps({{"id": "DSA-0000-1", "modified": now, "withdrawn": now,
    "affected": [{{"package": {{"ecosystem": "Debian:12", "name": "glibc"}}, "versions": ["2.36-9"]}}]}})))
groups["Go"].append(("GO-2024-0001.json", json.dumps({{"id": "GO-2024-0001", "modified": now,
    "affected": [{{"package": {{"ecosystem": "Go", "name": "example.com/m"}}, "versions": ["1.0.0"]}}]}})))
for eco, recs in groups.items():
    os.makedirs(os.path.join(out, eco), exist_ok=True)
    with zipfile.ZipFile(os.path.join(out, eco, "all.zip"), "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in recs:
            z.writestr(name, text)
"#,
        src = db(),
        out = dir.display().to_string()
    );
    let out = run("python3", &["-c", &py]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `openssl s_server -WWW` serving `root` over TLS with the test CA's
/// certificate for localhost: a static HTTPS mirror kiln did not write.
struct Mirror(std::process::Child);

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mirror(root: &Path, pki: &crate::edge::Pki, port: u16) -> Mirror {
    let child = std::process::Command::new("openssl")
        .args(["s_server", "-WWW", "-quiet", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(pki.path("mirror.pem"))
        .arg("-key")
        .arg(pki.path("mirror.key"))
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    Mirror(child)
}

#[test]
fn db_update_fetches_a_mirror_over_https_and_scan_uses_it_and_a_bad_export_changes_nothing() {
    let _room = common::room("scan");
    let (dir, home) = project("");
    let root = tempdir("osv-mirror");
    osv_mirror(&root);
    let pki = crate::edge::Pki::new(&dir);
    pki.issue("mirror", &["localhost"], crate::edge::VALID_FROM, crate::edge::VALID_TO);
    let port = free_port();
    let _m = mirror(&root, &pki, port);
    let url = format!("https://localhost:{port}");

    // Without the mirror's CA: refused in the handshake, nothing written.
    let e = kiln_err(&home, &dir, &["db", "update", "--mirror", &url]);
    assert!(e.contains(&format!("{url}/Debian/all.zip")), "{e}");
    assert!(!home.join("osv/current").exists());
    // Plain HTTP is refused by name.
    let e = kiln_err(&home, &dir, &["db", "update", "--mirror", &format!("http://localhost:{port}")]);
    assert!(e.contains("https://"), "{e}");

    let u = json(&kiln_ok(
        &home,
        &dir,
        &["db", "update", "--mirror", &url, "--ca", pki.path("ca.pem").to_str().unwrap(), "--json"],
    ));
    let per: BTreeSet<(String, u64)> = u["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["ecosystem"].as_str().unwrap().to_owned(), e["records"].as_u64().unwrap()))
        .collect();
    let want: BTreeSet<(String, u64)> =
        [("Debian", 8), ("Alpine", 1), ("crates.io", 1), ("Go", 1)].iter().map(|(e, n)| (e.to_string(), *n)).collect();
    assert_eq!(per, want, "the withdrawn record is left out: {u:#}");
    assert_eq!((u["records"].as_u64(), u["age_days"].as_i64()), (Some(11), Some(0)));
    for e in u["exports"].as_array().unwrap() {
        let file = root.join(e["ecosystem"].as_str().unwrap()).join("all.zip");
        let sum = run("sha256sum", &[file.to_str().unwrap()]);
        let hex = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap().to_owned();
        assert_eq!(e["sha256"], format!("sha256:{hex}"), "the bytes fetched are the export's");
    }

    // kiln scan without --db uses it: fresh, so no --force needed; the
    // same findings as the fixture database gives.
    let out = kiln(&home, &dir, &["scan", "deb", "--json"]);
    let r = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(9), "{r:#}");
    assert_eq!(r["db"]["forced"], false);
    assert_eq!(r["db"]["advisories"], 11);
    let (_, fixture, _) = scan(&home, &dir, &["deb", "--force"]);
    assert_eq!(ids(&r), ids(&fixture));

    // A truncated export: the update fails naming it, and the current
    // database is the one before, untouched.
    let before = fs::read_link(home.join("osv/current")).unwrap();
    let debian = root.join("Debian/all.zip");
    let whole = fs::read(&debian).unwrap();
    fs::write(&debian, &whole[..whole.len() / 2]).unwrap();
    let e = kiln_err(&home, &dir, &["db", "update", "--mirror", &url, "--ca", pki.path("ca.pem").to_str().unwrap()]);
    assert!(e.contains("Debian/all.zip") && e.contains("zip"), "{e}");
    assert_eq!(fs::read_link(home.join("osv/current")).unwrap(), before);
    let gens = fs::read_dir(home.join("osv"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("gen-"))
        .count();
    assert_eq!(gens, 1, "the failed generation is removed");
    let out = kiln(&home, &dir, &["scan", "deb", "--json"]);
    assert_eq!(ids(&json(&String::from_utf8_lossy(&out.stdout))), ids(&fixture));
}
