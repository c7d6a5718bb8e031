//! Base images from a registry, as `FROM debian:12` users start: an image
//! index of two platforms that skopeo (not kiln) pushes to Debian's
//! docker-registry behind TLS and htpasswd; a bake in a fresh home
//! resolves this platform's manifest and pins it in kiln.lock; the pin
//! holds when the tag moves and when the registry is gone;
//! `kiln bases outdated` sees the move and `kiln bake --update-base` takes
//! it; a base blob changed in the registry is refused.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln::digest::Digest;

use crate::common::*;
use crate::edge::{Pki, VALID_FROM, VALID_TO};
use crate::registry_auth::{login, registry};

/// Writes `bytes` as a blob of the OCI layout at `dir`.
fn blob(dir: &Path, bytes: &[u8]) -> (Digest, usize) {
    let d = Digest::of(bytes);
    fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    (d, bytes.len())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An OCI layout at `dir` whose tag `tag` is an image index of two
/// platforms, the shape of Docker Hub's images: linux/amd64 is busybox
/// plus a layer with `/etc/base-version` saying `version`; linux/arm64
/// has the same layers and a config saying arm64. Returns the amd64
/// manifest's digest and the index's.
fn two_platform_layout(dir: &Path, tag: &str, version: &str) -> (Digest, Digest) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let rootfs = dir.join("busybox.tar");
    busybox_rootfs(&rootfs);
    let busybox = fs::read(&rootfs).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut tar_header(tar::EntryType::Directory, 0o755, 0), "etc/", std::io::empty()).unwrap();
    let v = format!("{version}\n");
    b.append_data(&mut tar_header(tar::EntryType::Regular, 0o644, v.len() as u64), "etc/base-version", v.as_bytes())
        .unwrap();
    let extra = b.into_inner().unwrap();
    let layers: Vec<(Digest, Digest, usize)> = [busybox, extra]
        .iter()
        .map(|tar| {
            let (d, n) = blob(dir, &gzip(tar));
            (Digest::of(tar), d, n)
        })
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("\"{}\"", l.0)).collect();
    let layer_descs: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}"#,
                l.1, l.2
            )
        })
        .collect();
    let mut manifests = Vec::new();
    for arch in ["arm64", "amd64"] {
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","created":"2026-01-0{}T00:00:00Z","config":{{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            if version == "1" { 1 } else { 2 },
            diff_ids.join(",")
        );
        let (cd, cn) = blob(dir, config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cn}}},"layers":[{}]}}"#,
            layer_descs.join(",")
        );
        let (md, mn) = blob(dir, manifest.as_bytes());
        manifests.push((arch, md, mn));
    }
    let entries: Vec<String> = manifests
        .iter()
        .map(|(arch, d, n)| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":{n},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#
            )
        })
        .collect();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    );
    let (id, n) = blob(dir, index.as_bytes());
    fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{id}","size":{n},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#
        ),
    )
    .unwrap();
    (manifests[1].1.clone(), id)
}

/// skopeo pushes every platform of `layout:tag` to `dest` with the test
/// CA and the registry's credentials.
fn skopeo_push(layout: &Path, tag: &str, dest: &str, certs: &Path) {
    let out = run(
        "skopeo",
        &[
            "copy",
            "--all",
            "--dest-creds",
            "ci:s3cret-pw",
            "--dest-cert-dir",
            certs.to_str().unwrap(),
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{dest}"),
        ],
    );
    assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
}

fn lock_digest(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join("kiln.lock")).unwrap();
    let line = text.lines().find(|l| l.starts_with("digest = ")).unwrap_or_else(|| panic!("{text}"));
    line.trim_start_matches("digest = ").trim_matches('"').to_owned()
}

fn fresh_login(dir: &Path, host: &str, what: &str) -> PathBuf {
    let home = tempdir(what);
    let out = login(&home, dir, host, "ci", "s3cret-pw");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    home
}

#[test]
fn a_registry_base_is_resolved_for_this_platform_pinned_and_moved_only_when_asked() {
    let _room = crate::common::room("registry");
    let dir = tempdir("bases-src");
    let pki = Pki::new(&dir);
    pki.issue("registry", &["localhost"], VALID_FROM, VALID_TO);
    let certs = tempdir("bases-certs");
    fs::copy(pki.path("ca.pem"), certs.join("ca.crt")).unwrap();
    let reg_dir = tempdir("bases-registry");
    fs::write(reg_dir.join("htpasswd"), run("htpasswd", &["-Bbn", "ci", "s3cret-pw"]).stdout).unwrap();
    let port = free_port();
    let extra = format!(
        "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
        pki.path("registry.pem").display(),
        pki.path("registry.key").display(),
        reg_dir.join("htpasswd").display()
    );
    let mut reg = Some(registry(&reg_dir, port, &extra));
    let host = format!("localhost:{port}");
    let from = format!("{host}/library/busybox:1");
    let (amd64_v1, index_v1) = two_platform_layout(&tempdir("bases-layout-1"), "1", "1");
    let layout1 = tempdir("bases-layout-1b");
    let (a1, i1) = two_platform_layout(&layout1, "1", "1");
    assert_eq!((&a1, &i1), (&amd64_v1, &index_v1), "the layout is deterministic");
    skopeo_push(&layout1, "1", &from, &certs);
    fs::write(
        dir.join("kiln.toml"),
        format!(
            "[registries.\"{host}\"]\nca = \"certs/ca.pem\"\n\n[image.app]\nfrom = \"{from}\"\n\
             run = [\"cat /etc/base-version > /seen\"]\ncmd = [\"/bin/cat\", \"/seen\"]\n"
        ),
    )
    .unwrap();

    // A fresh home: resolved through the index to this platform's image,
    // pulled, baked on (the run step ran in it), pinned.
    let home = fresh_login(&dir, &host, "bases-home-1");
    let out = kiln_ok(&home, &dir, &["bake", "--json"]);
    let r = &json(&out)[0];
    let d1 = r["digest"].as_str().unwrap().to_owned();
    assert_eq!(r["base"]["digest"], amd64_v1.as_str(), "linux/amd64, not the index's first entry (arm64)");
    assert_eq!(r["base"]["index"], index_v1.as_str());
    assert_eq!((r["base"]["changed"].as_bool(), r["base"]["previous"].is_null()), (Some(true), true));
    assert!(r["base"]["pulled_blobs"].as_u64().unwrap() >= 3, "{out}");
    assert_eq!(lock_digest(&dir), amd64_v1.as_str());
    let lock = fs::read_to_string(dir.join("kiln.lock")).unwrap();
    assert!(lock.contains(&format!("from = \"{from}\"")) && lock.contains("platform = \"linux/amd64\""), "{lock}");
    let inspect = json(&kiln_ok(&home, &dir, &["inspect", &d1, "--json"]));
    assert_eq!(inspect["manifest"]["layers"].as_array().unwrap().len(), 3, "two base layers and the run step's");
    assert_eq!(inspect["manifest"]["annotations"]["org.opencontainers.image.base.digest"], amd64_v1.as_str());
    assert_eq!(inspect["config"]["architecture"], "amd64");

    // The registry gone: the same bake, from the store and the pin.
    drop(reg.take());
    let again = json(&kiln_ok(&home, &dir, &["bake", "--json"]));
    assert_eq!(again[0]["digest"], d1.as_str());
    assert_eq!(again[0]["base"]["pulled_blobs"], 0);

    // The tag moves to a new base.
    reg = Some(registry(&reg_dir, port, &extra));
    let layout2 = tempdir("bases-layout-2");
    let (amd64_v2, _) = two_platform_layout(&layout2, "1", "2");
    skopeo_push(&layout2, "1", &from, &certs);
    let st = json(&kiln_ok(&home, &dir, &["bases", "outdated", "--json"]));
    assert_eq!(st[0]["image"], "app");
    assert_eq!(
        (st[0]["pinned"].as_str(), st[0]["current"].as_str()),
        (Some(amd64_v1.as_str()), Some(amd64_v2.as_str()))
    );
    assert_eq!(st[0]["outdated"], true);
    let text = kiln_ok(&home, &dir, &["bases", "outdated"]);
    assert!(text.contains("app:") && text.contains(&amd64_v2.hex()[..12]), "{text}");

    // Another fresh home with the lock: the pinned base, not the tag's
    // new one, so the very same image.
    let home2 = fresh_login(&dir, &host, "bases-home-2");
    let r2 = json(&kiln_ok(&home2, &dir, &["bake", "--json"]));
    assert_eq!(r2[0]["digest"], d1.as_str(), "reproduced from the pin in another home");
    assert_eq!(lock_digest(&dir), amd64_v1.as_str(), "a plain bake never moves the pin");

    // --update-base moves it, saying from which digest to which.
    let moved = kiln_ok(&home2, &dir, &["bake", "--update-base"]);
    assert!(moved.contains(&format!("moved from {amd64_v1} to {amd64_v2}")), "{moved}");
    assert_eq!(lock_digest(&dir), amd64_v2.as_str());
    let d2 = json(&kiln_ok(&home2, &dir, &["bake", "--json"]))[0]["digest"].as_str().unwrap().to_owned();
    assert_ne!(d2, d1);
    assert_eq!(json(&kiln_ok(&home2, &dir, &["bases", "outdated", "--json"]))[0]["outdated"], false);

    // A base layer changed inside the registry: refused, nothing baked.
    let layer = amd64_layer(&layout2);
    let data = reg_dir.join("data/docker/registry/v2/blobs/sha256").join(&layer[..2]).join(&layer).join("data");
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, bytes).unwrap();
    let home3 = fresh_login(&dir, &host, "bases-home-3");
    let e = kiln_err(&home3, &dir, &["bake"]);
    assert!(e.contains("image.app.from") && e.contains(&layer[..12]) && e.contains("refused"), "{e}");
    assert!(kiln_ok(&home3, &dir, &["images"]).lines().count() <= 1, "nothing tagged");
    drop(reg);
}

/// The hex of the amd64 image's last layer (its own, not busybox's).
fn amd64_layer(layout: &Path) -> String {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let read = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap())
            .unwrap()
    };
    let ix = read(index["manifests"][0]["digest"].as_str().unwrap());
    let m = read(ix["manifests"][1]["digest"].as_str().unwrap());
    m["layers"][1]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned()
}

#[test]
fn a_short_name_is_refused_with_the_full_one_to_write() {
    let _room = crate::common::room("no-runc");
    let dir = tempdir("bases-short");
    fs::write(dir.join("kiln.toml"), "[image.app]\nfrom = \"debian:12\"\n").unwrap();
    let e = kiln_err(&tempdir("bases-short-home"), &dir, &["bake"]);
    assert!(e.contains("kiln.toml:2: image.app.from") && e.contains("docker.io/library/debian:12"), "{e}");
    // A lock kiln cannot read is named with its line and key.
    fs::write(dir.join("kiln.toml"), "[image.app]\nfrom = \"127.0.0.1:1/library/debian:12\"\n").unwrap();
    fs::write(
        dir.join("kiln.lock"),
        "version = 1\n[[base]]\nfrom = \"x\"\nplatform = \"linux/amd64\"\ndigest = \"sha256:no\"\n",
    )
    .unwrap();
    let e = kiln_err(&tempdir("bases-short-home2"), &dir, &["bake"]);
    assert!(e.contains("kiln.lock") && e.contains("line 5"), "{e}");
}
