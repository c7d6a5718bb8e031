//! `kiln push` and `kiln pull` through a real registry: Debian's
//! `docker-registry`, started on loopback by the test. The image travels
//! with its records, SBOMs and signatures; skopeo reads what kiln pushed;
//! a blob changed in the registry is refused; a transfer killed half-way
//! leaves both sides as they were, and the retry completes.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;

struct Registry {
    child: Child,
    port: u16,
    data: PathBuf,
}

impl Registry {
    fn start() -> Registry {
        let port = free_port();
        let dir = tempdir("registry");
        let child = docker_registry(&dir, port, "");
        Registry { child, port, data: dir.join("data") }
    }

    fn repo(&self, repo: &str) -> String {
        format!("127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A demo image baked, tested... as far as records go: secret scan, SBOM
/// and signature (the boot test is `tests/it/verify.rs`'s).
fn baked() -> (PathBuf, PathBuf, String) {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/bin/demo-app");
    let (dir, home) = (tempdir("reg-src"), tempdir("reg-src-home"));
    fs::copy(&demo, dir.join("demo-app")).unwrap();
    fs::write(dir.join("kiln.toml"), demo_image("1.0.0", "")).unwrap();
    let digest = bake_digests(&home, &dir, &[])[0].clone();
    kiln_ok(&home, &dir, &["scan-secrets", "web"]);
    kiln_ok(&home, &dir, &["sbom", "web"]);
    kiln_ok(&home, &dir, &["key", "generate"]);
    kiln_ok(&home, &dir, &["sign", "web"]);
    (dir, home, digest)
}

fn kinds(inspect: &serde_json::Value) -> Vec<String> {
    inspect["records"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn an_image_travels_with_its_records_sboms_and_signatures() {
    let _room = common::room("registry");
    let reg = Registry::start();
    let (dir, home, digest) = baked();
    let remote = reg.repo("team/web:1.0.0");
    let t = json(&kiln_ok(&home, &dir, &["push", "web:1.0.0", &remote, "--json"]));
    assert_eq!(t["digest"], digest.as_str());
    let artifacts: Vec<&str> = t["artifacts"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for kind in ["secrets", "spdx", "cdx", "sig"] {
        assert!(artifacts.iter().any(|a| a.ends_with(&format!(".{kind}"))), "{kind} in {artifacts:?}");
    }
    // Pushing again sends nothing new.
    let again = json(&kiln_ok(&home, &dir, &["push", "web:1.0.0", &remote, "--json"]));
    assert_eq!(again["blobs"], 0, "{again}");

    // skopeo reads what kiln pushed, signatures and SBOMs included.
    let out = run("skopeo", &["inspect", "--tls-verify=false", &format!("docker://{remote}")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&String::from_utf8_lossy(&out.stdout))["Digest"], digest.as_str());
    let hex = digest.trim_start_matches("sha256:");
    let sbom = run(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &format!("docker://{}:sha256-{hex}.spdx", reg.repo("team/web"))],
    );
    assert_eq!(json(&String::from_utf8_lossy(&sbom.stdout))["subject"]["digest"], digest.as_str());
    let layout = dir.join("copied");
    let copy = run(
        "skopeo",
        &["copy", "--src-tls-verify=false", &format!("docker://{remote}"), &format!("oci:{}:web", layout.display())],
    );
    assert!(copy.status.success(), "{}", String::from_utf8_lossy(&copy.stderr));

    // Another host pulls it: the same digest, the records, a signature
    // that verifies with the first host's public key.
    let other = tempdir("reg-dst-home");
    let p = json(&kiln_ok(&other, &dir, &["pull", &remote, "--json"]));
    assert_eq!(p["digest"], digest.as_str());
    assert_eq!(p["tags"], serde_json::json!(["web:1.0.0"]));
    let inspect = json(&kiln_ok(&other, &dir, &["inspect", "web:1.0.0", "--json"]));
    assert_eq!(inspect["digest"], digest.as_str());
    assert_eq!(kinds(&inspect), ["secrets"]);
    let key = home.join("keys/default.pub");
    let v = json(&kiln_ok(&other, &dir, &["verify", "web:1.0.0", "--key", key.to_str().unwrap(), "--json"]));
    assert_eq!(v["digest"], digest.as_str());
    // By digest too, under another name.
    let by_digest = format!("{}@{digest}", reg.repo("team/web"));
    let third = tempdir("reg-third-home");
    let p = json(&kiln_ok(&third, &dir, &["pull", &by_digest, "--as", "copy", "--json"]));
    assert_eq!(p["digest"], digest.as_str());
    assert_eq!(p["tags"], serde_json::json!([]), "a digest pull sets no tag but the artifacts'");
    assert!(kiln_ok(&third, &dir, &["images"]).lines().count() == 1, "only the header: no tag");

    // A registry elsewhere is spoken to over TLS: this one (plain HTTP)
    // named with a CA in kiln.toml is refused in the handshake, not used
    // in clear.
    let toml = fs::read_to_string(dir.join("kiln.toml")).unwrap();
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-proxy/src/tls/testdata/ca.pem");
    let with_ca = format!("{toml}\n[registries.\"127.0.0.1:{}\"]\nca = \"{}\"\n", reg.port, ca.display());
    fs::write(dir.join("kiln.toml"), with_ca).unwrap();
    let e = kiln_err(&home, &dir, &["push", "web:1.0.0", &remote]);
    assert!(e.contains(&format!("registry 127.0.0.1:{}", reg.port)), "{e}");
    fs::write(dir.join("kiln.toml"), toml).unwrap();
}

#[test]
fn a_blob_changed_in_the_registry_is_refused_and_nothing_is_tagged() {
    let _room = common::room("registry");
    let reg = Registry::start();
    let (dir, home, _) = baked();
    let remote = reg.repo("web:1.0.0");
    kiln_ok(&home, &dir, &["push", "web:1.0.0", &remote]);
    // The demo app's layer, rewritten inside the registry's storage.
    let inspect = json(&kiln_ok(&home, &dir, &["inspect", "web:1.0.0", "--json"]));
    let layer = inspect["manifest"]["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let blob = reg.data.join("docker/registry/v2/blobs/sha256").join(&layer[..2]).join(&layer).join("data");
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let other = tempdir("reg-tamper-home");
    let e = kiln_err(&other, &dir, &["pull", &remote]);
    assert!(e.contains(&layer[..12]) && e.contains("refused"), "{e}");
    assert_eq!(kiln_ok(&other, &dir, &["images"]).lines().count(), 1, "no tag set");
    let store_blobs = other.join("store/blobs/sha256");
    assert!(!store_blobs.join(&layer).exists(), "the bad blob is not stored");
}

fn killed_at(home: &Path, dir: &Path, point: &str, args: &[&str]) {
    let out =
        kiln_cmd().args(args).current_dir(dir).env("KILN_HOME", home).env("KILN_CRASH_AT", point).output().unwrap();
    assert_eq!(out.status.code(), None, "killed at {point}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_transfer_killed_half_way_changes_nothing_and_the_retry_completes() {
    let _room = common::room("registry");
    let reg = Registry::start();
    let (dir, home, digest) = baked();
    let remote = reg.repo("cut:1.0.0");
    // Push killed after its first blob: the registry has no such tag.
    killed_at(&home, &dir, "push-blob", &["push", "web:1.0.0", &remote]);
    // (The repository has no manifest yet, so the registry does not know it.)
    let tags = Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false", &format!("docker://{}", reg.repo("cut"))])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&tags.stdout);
    assert!(!tags.status.success() || !listed.contains("1.0.0"), "{listed}");
    kiln_ok(&home, &dir, &["push", "web:1.0.0", &remote]);

    // Pull killed after its first blob: no tag, a store that still checks.
    let other = tempdir("reg-cut-home");
    killed_at(&other, &dir, "pull-blob", &["pull", &remote]);
    assert_eq!(kiln_ok(&other, &dir, &["images"]).lines().count(), 1);
    let p = json(&kiln_ok(&other, &dir, &["pull", &remote, "--json"]));
    assert_eq!(p["digest"], digest.as_str());
    let gc = json(&kiln_ok(&other, &dir, &["gc", "--dry-run", "--json"]));
    assert_eq!(gc["removed"].as_array().unwrap().len(), 0, "nothing half-written left: {gc}");
    // The pulled image runs.
    let r = json(&kiln_ok(&other, &dir, &["run", "web:1.0.0", "--json"]));
    let id = r["id"].as_str().unwrap().to_owned();
    kiln_ok(&other, &dir, &["rm", "--force", &id]);
}

/// `kiln push --sign` signs for the registry repository as cosign does;
/// a registry with `signed_by` lets only images carrying a valid signature
/// by that key in: an unsigned image, and one whose `.sig` another key
/// wrote over, are refused, and nothing is tagged.
#[test]
fn signed_by_refuses_unsigned_and_forged_signatures_on_pull() {
    let _room = common::room("registry");
    let reg = Registry::start();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/bin/demo-app");
    let (dir, home) = (tempdir("reg-sig-src"), tempdir("reg-sig-home"));
    fs::copy(&demo, dir.join("demo-app")).unwrap();
    fs::write(dir.join("kiln.toml"), demo_image("1.0.0", "")).unwrap();
    let digest = bake_digests(&home, &dir, &[])[0].clone();
    let hex = digest.trim_start_matches("sha256:").to_owned();
    kiln_ok(&home, &dir, &["key", "generate", "release"]);
    let remote = reg.repo("team/web:1.0.0");
    let t = json(&kiln_ok(&home, &dir, &["push", "web:1.0.0", &remote, "--sign", "release", "--json"]));
    assert_eq!((t["digest"].as_str(), t["signed_by"].as_str()), (Some(digest.as_str()), Some("release")));

    // What the registry holds is cosign's shape: an image config of zero
    // times and one diff_id per payload, and a payload naming the
    // registry repository and this digest.
    let raw = |r: &str| {
        let out = run("skopeo", &["inspect", "--raw", "--tls-verify=false", &format!("docker://{}", reg.repo(r))]);
        assert!(out.status.success(), "{r}: {}", String::from_utf8_lossy(&out.stderr));
        json(&String::from_utf8_lossy(&out.stdout))
    };
    let sig = raw(&format!("team/web:sha256-{hex}.sig"));
    assert_eq!(sig["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let layer = &sig["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json");
    assert!(layer["annotations"]["dev.cosignproject.cosign/signature"].as_str().is_some_and(|s| s.len() > 80));
    let blob = |d: &str| {
        let (status, _, body) = Conn::new(reg.port).get(&format!("/v2/team/web/blobs/{d}")).unwrap();
        assert_eq!(status, 200, "{d}");
        body
    };
    let config = String::from_utf8(blob(sig["config"]["digest"].as_str().unwrap())).unwrap();
    let layer_digest = layer["digest"].as_str().unwrap();
    assert_eq!(
        config,
        format!(
            r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{{"created":"0001-01-01T00:00:00Z"}}],"os":"","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}},"config":{{}}}}"#
        )
    );
    let payload = json(&String::from_utf8(blob(layer_digest)).unwrap());
    assert_eq!(payload["critical"]["identity"]["docker-reference"], reg.repo("team/web"));
    assert_eq!(payload["critical"]["image"]["docker-manifest-digest"], digest.as_str());
    assert_eq!(payload["critical"]["type"], "cosign container image signature");

    // A host that requires the key: the signed image comes in.
    let strict = tempdir("reg-sig-strict");
    fs::copy(home.join("keys/release.pub"), strict.join("release.pub")).unwrap();
    fs::write(
        strict.join("kiln.toml"),
        format!("[registries.\"127.0.0.1:{}\"]\nsigned_by = \"release.pub\"\n", reg.port),
    )
    .unwrap();
    let ok_home = tempdir("reg-sig-ok");
    let p = json(&kiln_ok(&ok_home, &strict, &["pull", &remote, "--json"]));
    assert_eq!(p["digest"], digest.as_str());
    assert!(p["signed_by"].as_str().unwrap().ends_with("release.pub"), "{p}");

    // Someone with another key re-signs the image and pushes: the .sig
    // tag in the registry now holds only their signature.
    let (mallory, elsewhere) = (tempdir("reg-sig-mallory"), tempdir("reg-sig-elsewhere"));
    kiln_ok(&mallory, &elsewhere, &["pull", &remote]);
    kiln_ok(&mallory, &elsewhere, &["key", "generate", "release"]);
    kiln_ok(&mallory, &elsewhere, &["push", "web:1.0.0", &remote, "--sign", "release"]);
    let forged = tempdir("reg-sig-forged");
    let out = kiln(&forged, &strict, &["pull", &remote]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{e}");
    assert!(e.contains("does not verify") && e.contains("release.pub"), "{e}");
    assert_eq!(kiln_ok(&forged, &strict, &["images"]).lines().count(), 1, "nothing tagged");

    // An image with no signature at all.
    fs::write(dir.join("kiln.toml"), demo_image("2.0.0", "")).unwrap();
    bake_digests(&home, &dir, &[]);
    let unsigned = reg.repo("team/other:2");
    kiln_ok(&home, &dir, &["push", "web:2.0.0", &unsigned]);
    let out = kiln(&forged, &strict, &["pull", &unsigned]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{e}");
    assert!(e.contains("not signed"), "{e}");
    assert_eq!(kiln_ok(&forged, &strict, &["images"]).lines().count(), 1, "nothing tagged");
}

/// A layer over 16 MiB goes up in chunks (PATCH with Content-Range), and
/// arrives whole; pushed to another repository of the same registry, every
/// blob is mounted from the first instead of sent again.
#[test]
fn a_large_layer_goes_up_in_chunks_and_another_repository_mounts_it() {
    let _room = common::room("registry");
    let reg = Registry::start();
    let (dir, home) = (tempdir("reg-chunk-src"), tempdir("reg-chunk-home"));
    // 40 MB that gzip cannot shrink: three chunks.
    let mut noise = vec![0u8; 40 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(dir.join("noise.bin"), &noise).unwrap();
    fs::write(
        dir.join("kiln.toml"),
        "[image.big]\nfrom = \"scratch\"\nversion = \"1\"\ncopy = [{ src = \"noise.bin\", dest = \"/noise.bin\" }]\n",
    )
    .unwrap();
    let digest = bake_digests(&home, &dir, &[])[0].clone();
    let t = json(&kiln_ok(&home, &dir, &["push", "big:1", &reg.repo("team/big:1"), "--json"]));
    assert_eq!((t["blobs_chunked"].as_u64(), t["blobs_mounted"].as_u64()), (Some(1), Some(0)), "{t}");
    assert!(t["bytes"].as_u64().unwrap() > 40 << 20, "{t}");
    // What arrived is whole: another home pulls it, every blob verified.
    let other = tempdir("reg-chunk-other");
    assert_eq!(json(&kiln_ok(&other, &dir, &["pull", &reg.repo("team/big:1"), "--json"]))["digest"], digest.as_str());
    // Another repository: mounted, nothing sent.
    let t = json(&kiln_ok(&home, &dir, &["push", "big:1", &reg.repo("team/copy:1"), "--json"]));
    assert_eq!((t["blobs_mounted"].as_u64(), t["bytes"].as_u64()), (Some(2), Some(0)), "config and layer: {t}");
    let out = run("skopeo", &["inspect", "--tls-verify=false", &format!("docker://{}", reg.repo("team/copy:1"))]);
    assert_eq!(json(&String::from_utf8_lossy(&out.stdout))["Digest"], digest.as_str());
}

/// A plain HTTP GET to the registry; (status, body).
fn backend_get(port: u16, path: &str, accept: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: r\r\nAccept: {accept}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&out[9..12]).parse().unwrap();
    (status, out[split + 4..].to_vec())
}

/// A front that gives docker-registry (2.8, which has none) the OCI 1.1
/// referrers API, answered from the backend's cosign-scheme tags as a
/// registry indexing `subject` would, and that refuses the tag list: a
/// pull through it that brings every artifact used the referrers API.
/// Counts referrers requests and refused tag lists.
fn referrers_front(backend: u16) -> (u16, Arc<AtomicU64>, Arc<AtomicU64>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (asked, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (a, rf) = (asked.clone(), refused.clone());
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let (a, rf) = (a.clone(), rf.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line);
                }
                let len = head
                    .iter()
                    .find_map(|h| h.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let target = head[0].split(' ').nth(1).unwrap_or("/").to_owned();
                let answer = |c: &mut std::net::TcpStream, status: &str, ctype: &str, body: &[u8]| {
                    let _ = write!(
                        c,
                        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = c.write_all(body);
                };
                if target.ends_with("/tags/list") {
                    rf.fetch_add(1, Ordering::Relaxed);
                    return answer(&mut c, "404 Not Found", "text/plain", b"no tag list here");
                }
                if let Some((repo, subject)) = target.strip_prefix("/v2/").and_then(|t| t.split_once("/referrers/")) {
                    a.fetch_add(1, Ordering::Relaxed);
                    let (_, list) = backend_get(backend, &format!("/v2/{repo}/tags/list"), "*/*");
                    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
                    let prefix = format!("sha256-{}.", subject.trim_start_matches("sha256:"));
                    let mut entries = Vec::new();
                    for tag in list["tags"].as_array().unwrap().iter().filter_map(|t| t.as_str()) {
                        if !tag.starts_with(&prefix) {
                            continue;
                        }
                        let accept = "application/vnd.oci.image.manifest.v1+json";
                        let (_, m) = backend_get(backend, &format!("/v2/{repo}/manifests/{tag}"), accept);
                        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
                        entries.push(serde_json::json!({
                            "mediaType": accept,
                            "digest": kiln::digest::Digest::of(&m).to_string(),
                            "size": m.len(),
                            "artifactType": v.get("artifactType").cloned().unwrap_or(v["config"]["mediaType"].clone()),
                            "annotations": v.get("annotations").cloned().unwrap_or_default(),
                        }));
                    }
                    let ix = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
                    return answer(
                        &mut c,
                        "200 OK",
                        "application/vnd.oci.image.index.v1+json",
                        ix.to_string().as_bytes(),
                    );
                }
                let mut b = std::net::TcpStream::connect(("127.0.0.1", backend)).unwrap();
                for h in &head {
                    b.write_all(h.as_bytes()).unwrap();
                }
                b.write_all(b"\r\n").unwrap();
                b.write_all(&body).unwrap();
                let mut out = Vec::new();
                let _ = b.read_to_end(&mut out);
                let _ = c.write_all(&out);
            });
        }
    });
    (port, asked, refused)
}

/// Through a registry with the referrers API, a pull finds the image's
/// records, SBOMs and signatures (and the signatures of those) there,
/// without the tag list; the signature still verifies.
#[test]
fn a_registry_with_the_referrers_api_is_asked_through_it() {
    let _room = common::room("registry");
    let reg = Registry::start();
    let (dir, home, digest) = baked();
    kiln_ok(&home, &dir, &["push", "web:1.0.0", &reg.repo("team/web:1.0.0")]);
    let (front, asked, refused) = referrers_front(reg.port);
    let other = tempdir("reg-referrers-home");
    let remote = format!("127.0.0.1:{front}/team/web:1.0.0");
    let p = json(&kiln_ok(&other, &dir, &["pull", &remote, "--json"]));
    assert_eq!((p["digest"].as_str(), p["referrers_api"].as_bool()), (Some(digest.as_str()), Some(true)), "{p}");
    let artifacts: Vec<&str> = p["artifacts"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for kind in ["secrets", "spdx", "cdx", "sig"] {
        assert!(artifacts.iter().any(|a| a.ends_with(&format!(".{kind}"))), "{kind} in {artifacts:?}");
    }
    assert!(asked.load(Ordering::Relaxed) >= 2, "the image and its artifacts were asked about");
    assert_eq!(refused.load(Ordering::Relaxed), 0, "the tag list was never needed");
    let key = home.join("keys/default.pub");
    kiln_ok(&other, &dir, &["verify", "web:1.0.0", "--key", key.to_str().unwrap()]);
}

/// The sigstore project's own verifier (`sigstore` on crates.io, what
/// `cosign verify --key` does) over what a registry holds: the image's
/// `.sig` found by triangulation, every layer checked against the key.
/// Ok(number of layers) when a signature verifies with `pem`.
fn sigstore_verify(image: &str, pem: &[u8]) -> Result<usize, String> {
    use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
    use sigstore::cosign::{verify_constraints, ClientBuilder, CosignCapabilities};
    use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let image: OciReference = image.parse().map_err(|e| format!("{e:?}"))?;
        let config = ClientConfig { protocol: ClientProtocol::Http, ..Default::default() };
        let mut client = ClientBuilder::default().with_oci_client_config(config).build().map_err(|e| e.to_string())?;
        let layers = client.trusted_signature_layers(&Auth::Anonymous, &image).await.map_err(|e| e.to_string())?;
        let key: VerificationConstraintVec =
            vec![Box::new(PublicKeyVerifier::try_from(pem).map_err(|e| e.to_string())?)];
        verify_constraints(&layers, key.iter()).map_err(|e| format!("{e:?}"))?;
        Ok(layers.len())
    })
}

/// cosign's verification, by the sigstore project's crate, accepts what
/// `kiln push --sign` wrote, with kiln's public key; refuses it with a key
/// made by openssl; and refuses an image whose `.sig` another key wrote.
#[test]
fn sigstore_s_cosign_verifier_accepts_kiln_s_signatures_and_refuses_other_keys() {
    let _room = common::room("registry");
    let reg = Registry::start();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/bin/demo-app");
    let (dir, home) = (tempdir("reg-cosign-src"), tempdir("reg-cosign-home"));
    fs::copy(&demo, dir.join("demo-app")).unwrap();
    fs::write(dir.join("kiln.toml"), demo_image("1.0.0", "")).unwrap();
    bake_digests(&home, &dir, &[]);
    kiln_ok(&home, &dir, &["key", "generate", "release"]);
    let image = reg.repo("team/web:1.0.0");
    kiln_ok(&home, &dir, &["push", "web:1.0.0", &image, "--sign", "release"]);
    let kiln_key = fs::read(home.join("keys/release.pub")).unwrap();
    assert_eq!(sigstore_verify(&image, &kiln_key), Ok(1));

    let other = dir.join("other.pem");
    run(
        "openssl",
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", dir.join("other.key").to_str().unwrap()],
    );
    run("openssl", &["ec", "-in", dir.join("other.key").to_str().unwrap(), "-pubout", "-out", other.to_str().unwrap()]);
    let e = sigstore_verify(&image, &fs::read(&other).unwrap()).unwrap_err();
    assert!(e.contains("unsatisfied"), "{e}");

    // Another key's signature written over the `.sig`: kiln's key no
    // longer verifies it, by cosign's rules either.
    let (mallory, elsewhere) = (tempdir("reg-cosign-mallory"), tempdir("reg-cosign-elsewhere"));
    kiln_ok(&mallory, &elsewhere, &["pull", &image]);
    kiln_ok(&mallory, &elsewhere, &["key", "generate", "release"]);
    kiln_ok(&mallory, &elsewhere, &["push", "web:1.0.0", &image, "--sign", "release"]);
    assert!(sigstore_verify(&image, &kiln_key).is_err());
    assert_eq!(sigstore_verify(&image, &fs::read(mallory.join("keys/release.pub")).unwrap()), Ok(1));
}
