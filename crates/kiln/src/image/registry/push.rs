//! `kiln push`: an image's blobs (mounted from another repository of the
//! registry when it can, else uploaded whole or in chunks), then its
//! manifest, then everything about it as cosign-scheme tags; and the
//! hint of which repositories this home moved images through.
//!
//! For: the push side. Must never: send a manifest before all its blobs.

use std::time::Instant;

use super::*;

/// Sends one blob unless the repository has it: linked from `mount_from`
/// (another repository of the same registry kiln moved images through)
/// when the registry can, else uploaded, in one `PUT` or in chunks.
fn push_blob(
    c: &Client<'_>,
    store: &Store,
    repo: &str,
    mount_from: Option<&str>,
    d: &Descriptor,
    t: &mut Transfer,
) -> Result<(), RegistryError> {
    let path = format!("/v2/{repo}/blobs/{}", d.digest);
    if c.request("HEAD", &path, &[], Body::None)?.status == 200 {
        t.blobs_present += 1;
        return Ok(());
    }
    // A registry that cannot mount (or lacks the blob there) answers 202
    // and the same request has opened an ordinary upload.
    let post = match mount_from.filter(|f| *f != repo) {
        Some(from) => format!("/v2/{repo}/blobs/uploads/?mount={}&from={from}", d.digest),
        None => format!("/v2/{repo}/blobs/uploads/"),
    };
    let r = c.expect("POST", &post, &[], Body::None, &[201, 202])?;
    if r.status == 201 {
        t.blobs_mounted += 1;
        return Ok(());
    }
    let location = |r: &client::Resp, what: &str| {
        r.header("location").map(location_path).ok_or_else(|| RegistryError::Invalid {
            host: c.host.to_owned(),
            what: what.to_owned(),
            why: "no Location for the upload".into(),
        })
    };
    let mut loc = location(&r, &post)?;
    let file_path = store.blob_path(&d.digest);
    // Verified before it leaves: a swapped blob is never sent.
    store.verify_blob(&d.digest)?;
    let mut f = std::fs::File::open(&file_path).map_err(|e| StoreError::Io { path: file_path.clone(), source: e })?;
    let size = f.metadata().map_err(|e| StoreError::Io { path: file_path, source: e })?.len();
    let headers = [("Content-Type", "application/octet-stream")];
    if size <= CHUNK {
        let sep = if loc.contains('?') { '&' } else { '?' };
        c.expect("PUT", &format!("{loc}{sep}digest={}", d.digest), &headers, Body::Reader(&mut f, size), &[201])?;
    } else {
        let mut sent = 0u64;
        while sent < size {
            let n = CHUNK.min(size - sent);
            let range = format!("{sent}-{}", sent + n - 1);
            let mut part = std::io::Read::take(&mut f, n);
            let h = [headers[0], ("Content-Range", range.as_str())];
            let r = c.expect("PATCH", &loc, &h, Body::Reader(&mut part, n), &[202])?;
            loc = location(&r, &format!("PATCH {loc}"))?;
            sent += n;
        }
        let sep = if loc.contains('?') { '&' } else { '?' };
        c.expect("PUT", &format!("{loc}{sep}digest={}", d.digest), &[], Body::None, &[201])?;
        t.blobs_chunked += 1;
    }
    t.blobs += 1;
    t.bytes += size;
    crate::sys::faults::crash_point("push-blob");
    Ok(())
}

/// The file listing, per registry, the repositories this home moved
/// images through (newest first): where a cross-repository mount may find
/// a blob. A hint only: a wrong one costs a 202.
fn repos_file(store: &Store) -> std::path::PathBuf {
    store.home().join("meta/registry-repos.json")
}

fn known_repos(store: &Store, host: &str) -> Vec<String> {
    std::fs::read(repos_file(store))
        .ok()
        .and_then(|b| serde_json::from_slice::<std::collections::BTreeMap<String, Vec<String>>>(&b).ok())
        .and_then(|mut m| m.remove(host))
        .unwrap_or_default()
}

pub(super) fn remember_repo(store: &Store, host: &str, repo: &str) {
    let path = repos_file(store);
    let mut all: std::collections::BTreeMap<String, Vec<String>> =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let list = all.entry(host.to_owned()).or_default();
    list.retain(|r| r != repo);
    list.insert(0, repo.to_owned());
    list.truncate(16);
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    if let Ok(bytes) = serde_json::to_vec(&all) {
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

/// Pushes one manifest's blobs, then the manifest under `tag`.
fn push_manifest(
    c: &Client<'_>,
    store: &Store,
    repo: &str,
    digest: &Digest,
    tag: &str,
    t: &mut Transfer,
) -> Result<(), RegistryError> {
    let bytes = store.read_blob(digest)?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
        host: c.host.to_owned(),
        what: format!("local manifest {digest}"),
        why: e.to_string(),
    })?;
    let blobs: Vec<&Descriptor> = std::iter::once(&m.config).chain(&m.layers).collect();
    let known = known_repos(store, c.host);
    let mount_from = known.iter().find(|r| *r != repo).map(String::as_str);
    in_parallel(&blobs, t, |d, t| push_blob(c, store, repo, mount_from, d, t))?;
    let media = m.media_type.clone().unwrap_or_else(|| oci::MEDIA_MANIFEST.to_owned());
    let r = c.expect(
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", &media)],
        Body::Bytes(&bytes),
        &[201],
    )?;
    if let Some(sent) = r.header("docker-content-digest").and_then(|d| Digest::parse(d).ok()) {
        if &sent != digest {
            return Err(RegistryError::Digest {
                host: c.host.to_owned(),
                what: format!("manifest {tag}"),
                expected: digest.clone(),
                actual: sent,
            });
        }
    }
    Ok(())
}

/// Everything tagged about `subject` (and about those): (artifact, kind).
pub(super) fn related(store: &Store, subject: &Digest) -> Result<Vec<(Digest, Digest, String)>, StoreError> {
    let mut out = Vec::new();
    let mut todo = vec![subject.clone()];
    while let Some(s) = todo.pop() {
        for (artifact, _, kind) in crate::verify::about(store, &s)? {
            if !out.iter().any(|(a, _, _): &(Digest, Digest, String)| *a == artifact) {
                todo.push(artifact.clone());
                out.push((artifact, s.clone(), kind));
            }
        }
    }
    Ok(out)
}

/// `kiln push REF REGISTRY/REPO[:TAG]`: the image, then everything about it.
pub fn push(store: &Store, reference: &str, remote: &Remote, access: &RegistrySpec) -> Result<Transfer, RegistryError> {
    let started = Instant::now();
    let (desc, _) = store.resolve(reference)?;
    let tag = match &remote.reference {
        Some(r) if r.starts_with("sha256:") && *r != desc.digest.to_string() => {
            return Err(RegistryError::BadRemote {
                input: remote.to_string(),
                why: format!("{reference} is {}, not that digest", desc.digest),
            })
        }
        Some(r) if !r.starts_with("sha256:") => r.clone(),
        _ => match reference.split_once(':') {
            Some((_, t)) if !reference.starts_with("sha256:") => t.to_owned(),
            _ => {
                return Err(RegistryError::BadRemote {
                    input: remote.to_string(),
                    why: "name a tag (REGISTRY/REPO:TAG)".into(),
                })
            }
        },
    };
    let c = client(store, &remote.host, access)?;
    let mut t = Transfer {
        reference: reference.to_owned(),
        remote: format!("{}/{}:{tag}", remote.host, remote.repo),
        digest: Some(desc.digest.clone()),
        ..Transfer::default()
    };
    push_manifest(&c, store, &remote.repo, &desc.digest, &tag, &mut t)?;
    for (artifact, about, kind) in related(store, &desc.digest)? {
        let atag = format!("sha256-{}.{kind}", about.hex());
        push_manifest(&c, store, &remote.repo, &artifact, &atag, &mut t)?;
        t.artifacts.push(atag);
    }
    remember_repo(store, &remote.host, &remote.repo);
    t.duration_ms = started.elapsed().as_millis() as u64;
    Ok(t)
}
