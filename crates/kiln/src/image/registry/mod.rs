//! Push and pull through an OCI distribution registry (`kiln push`,
//! `kiln pull`): an image with everything about it (verification records,
//! SBOMs, signatures, and the signatures of those), so that another host
//! gets the same verified, promoted digest. This is what a fleet of hosts
//! will use.
//!
//! kiln's own small client over `std::net`, not `oci-client`: the
//! distribution API needs a handful of requests (`HEAD`/`GET` blob, a
//! monolithic upload, `PUT`/`GET` manifest, the tag list), kiln already
//! speaks HTTP/1.1, and `oci-client` would bring an async HTTP stack into
//! a lean build. [`client`] is the transport (TLS, credentials, retries);
//! [`auth`] finds credentials (`kiln login`, docker's config).
//!
//! Artifacts travel as tags in the cosign scheme (`sha256-<hex>.<kind>`),
//! which every registry carries, referrers API or not. A pull writes
//! every blob (each verified against its digest on the way in) and every
//! manifest before it sets any tag, so an interrupted pull leaves the
//! store as it was, plus unreferenced blobs `kiln gc` removes; a push
//! sends the image's manifest only after all its blobs.

use std::io;
use std::time::Instant;

use serde::Serialize;

use crate::digest::Digest;
use crate::image::store::{Store, StoreError};
use crate::oci::{self, Descriptor, Manifest};

/// The manifest types kiln sends and accepts.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// What a base's reference may resolve through: an index or a Docker
/// manifest list, then one of the image manifests above.
const ACCEPT_ANY: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// Blobs moved at once: each on its own connection.
const PARALLEL: usize = 4;
/// A blob larger than this goes up in chunks of this size (`PATCH` with
/// `Content-Range`), as registries behind a proxy with a body limit need;
/// a smaller one in a single `PUT`.
const CHUNK: u64 = 16 << 20;
/// A manifest or a tag list larger than this is refused.
const MAX_DOCUMENT: u64 = 4 << 20;

/// Why a transfer failed, naming the registry, the request or the blob.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{input:?}: {why}")]
    BadRemote { input: String, why: String },
    #[error("registry {host}: {source}")]
    Io { host: String, source: io::Error },
    #[error("registry {host}: {method} {path} answered {status}: {body}")]
    Status { host: String, method: String, path: String, status: u16, body: String },
    #[error("registry {host}: {what} is {actual}, not {expected} as asked: refused")]
    Digest { host: String, what: String, expected: Digest, actual: Digest },
    #[error("registry {host}: {what}: {why}")]
    Invalid { host: String, what: String, why: String },
    /// The registry wants credentials, or refused the ones given.
    #[error("registry {host}: unauthorized: {why}")]
    Unauthorized { host: String, why: String },
}

pub use crate::spec::registries::{Remote, RemoteError};

impl From<RemoteError> for RegistryError {
    fn from(e: RemoteError) -> Self {
        RegistryError::BadRemote { input: e.input, why: e.why }
    }
}

/// What a push or pull moved.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Transfer {
    pub reference: String,
    pub remote: String,
    pub digest: Option<Digest>,
    /// Blobs sent or fetched, and those the other side had already.
    pub blobs: u64,
    pub blobs_present: u64,
    /// Blobs the registry linked from another of its repositories
    /// (cross-repository mount) instead of receiving them.
    #[serde(default)]
    pub blobs_mounted: u64,
    /// Blobs sent in chunks (larger than 16 MiB).
    #[serde(default)]
    pub blobs_chunked: u64,
    /// The artifacts were found through the registry's referrers API
    /// (else through their tags).
    #[serde(default)]
    pub referrers_api: bool,
    pub bytes: u64,
    /// The artifacts' tags (records, SBOMs, signatures) carried along.
    pub artifacts: Vec<String>,
    /// The local tags set (pull).
    pub tags: Vec<String>,
    /// The public key the image's signature was checked with (a pull from
    /// a registry with `signed_by`), or the key a push signed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    pub duration_ms: u64,
}

mod auth;
mod client;
mod push;

use crate::net::http::Body;
use crate::spec::registries::RegistrySpec;
pub use auth::{lookup as credentials, remove as forget_credentials, save as save_credentials, Credentials};
use client::Client;
pub use push::push;
use push::remember_repo;

impl Client<'_> {
    /// A request that must answer one of `ok`.
    fn expect(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
        ok: &[u16],
    ) -> Result<client::Resp, RegistryError> {
        let r = self.request(method, path, headers, body)?;
        if ok.contains(&r.status) {
            return Ok(r);
        }
        let status = r.status;
        let text = if method == "HEAD" { Vec::new() } else { r.bytes(64 << 10).unwrap_or_default() };
        Err(RegistryError::Status {
            host: self.host.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            status,
            body: String::from_utf8_lossy(&text).trim().chars().take(400).collect(),
        })
    }
}

/// A client for `remote`'s registry with its settings and the credentials
/// `kiln login` (or docker) has for it.
fn client<'a>(store: &Store, host: &'a str, access: &RegistrySpec) -> Result<Client<'a>, RegistryError> {
    let creds = auth::lookup(store.home(), host).map_err(|e| RegistryError::Invalid {
        host: host.to_owned(),
        what: "the stored credentials".into(),
        why: e.to_string(),
    })?;
    Client::new(host, access, creds)
}

/// `kiln login`: checks `creds` against the registry (`GET /v2/`), then
/// keeps them, encrypted. Wrong ones are refused, naming the registry.
pub fn login(
    home: &std::path::Path,
    host: &str,
    access: &RegistrySpec,
    creds: &Credentials,
) -> Result<(), RegistryError> {
    if !crate::spec::registries::valid_host(host) {
        return Err(RegistryError::BadRemote {
            input: host.to_owned(),
            why: "name a registry as HOST or HOST:PORT".into(),
        });
    }
    let c = Client::new(host, access, Some(creds.clone()))?;
    c.expect("GET", "/v2/", &[], Body::None, &[200])?;
    auth::save(home, host, creds).map_err(|e| RegistryError::Invalid {
        host: host.to_owned(),
        what: "keeping the credentials".into(),
        why: e.to_string(),
    })
}

/// The path part of a `Location` header (registries send absolute URLs
/// or paths).
fn location_path(loc: &str) -> String {
    match loc.strip_prefix("http://").or_else(|| loc.strip_prefix("https://")) {
        Some(rest) => rest.find('/').map_or("/".to_owned(), |i| rest[i..].to_owned()),
        None => loc.to_owned(),
    }
}

/// Fetches one blob into the store, verified against its digest.
fn pull_blob(c: &Client<'_>, store: &Store, repo: &str, d: &Descriptor, t: &mut Transfer) -> Result<(), RegistryError> {
    if store.has_blob(&d.digest) {
        t.blobs_present += 1;
        return Ok(());
    }
    let path = format!("/v2/{repo}/blobs/{}", d.digest);
    let r = c.expect("GET", &path, &[], Body::None, &[200])?;
    let mut w = store.blob_writer()?;
    let n = r.copy_to(&mut w, d.size).map_err(|e| c.io(e))?;
    if n != d.size {
        return Err(RegistryError::Invalid {
            host: c.host.to_owned(),
            what: format!("blob {}", d.digest),
            why: format!("{n} bytes, the manifest says {}", d.size),
        });
    }
    crate::sys::faults::crash_point("pull-blob");
    let (actual, _) = w.commit_as(&d.digest).map_err(|e| match e {
        StoreError::Corrupt { actual, .. } => RegistryError::Digest {
            host: c.host.to_owned(),
            what: format!("blob {path}"),
            expected: d.digest.clone(),
            actual,
        },
        other => other.into(),
    })?;
    debug_assert_eq!(actual, d.digest);
    t.blobs += 1;
    t.bytes += n;
    Ok(())
}

/// Fetches a manifest (verified when asked by digest, or against the
/// registry's `Docker-Content-Digest`) and its blobs; stores them all.
fn pull_manifest(
    c: &Client<'_>,
    store: &Store,
    repo: &str,
    reference: &str,
    t: &mut Transfer,
) -> Result<(Digest, Manifest), RegistryError> {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let r = c.expect("GET", &path, &[("Accept", ACCEPT)], Body::None, &[200])?;
    let claimed = r.header("docker-content-digest").and_then(|d| Digest::parse(d).ok());
    let bytes = r.bytes(MAX_DOCUMENT).map_err(|e| c.io(e))?;
    let digest = Digest::of(&bytes);
    let expected = Digest::parse(reference).ok().or(claimed);
    if let Some(e) = expected.filter(|e| *e != digest) {
        return Err(RegistryError::Digest {
            host: c.host.to_owned(),
            what: format!("manifest {reference}"),
            expected: e,
            actual: digest,
        });
    }
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
        host: c.host.to_owned(),
        what: format!("manifest {reference}"),
        why: format!("not an OCI image manifest: {e}"),
    })?;
    let blobs: Vec<&Descriptor> = std::iter::once(&m.config).chain(&m.layers).collect();
    in_parallel(&blobs, t, |d, t| pull_blob(c, store, repo, d, t))?;
    store.put_blob(&bytes)?;
    Ok((digest, m))
}

/// Runs `f` over `items` on up to [`PARALLEL`] threads, each request on a
/// connection of its own, adding what each moved to `t`. The first error
/// stops the others from taking more items, and is returned.
fn in_parallel<T: Sync>(
    items: &[T],
    t: &mut Transfer,
    f: impl Fn(&T, &mut Transfer) -> Result<(), RegistryError> + Sync,
) -> Result<(), RegistryError> {
    if items.len() < 2 {
        return items.iter().try_for_each(|i| f(i, t));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: std::sync::Mutex<Vec<Result<Transfer, RegistryError>>> = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(items.len()) {
            s.spawn(|| {
                let mut mine = Transfer::default();
                let r = loop {
                    let Some(item) = items.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) else {
                        break Ok(mine);
                    };
                    if let Err(e) = f(item, &mut mine) {
                        next.store(items.len(), std::sync::atomic::Ordering::Relaxed);
                        break Err(e);
                    }
                };
                if let Ok(mut d) = done.lock() {
                    d.push(r);
                }
            });
        }
    });
    for r in done.into_inner().unwrap_or_default() {
        let mine = r?;
        t.blobs += mine.blobs;
        t.blobs_present += mine.blobs_present;
        t.blobs_mounted += mine.blobs_mounted;
        t.blobs_chunked += mine.blobs_chunked;
        t.bytes += mine.bytes;
    }
    Ok(())
}

/// The manifests whose `subject` is `subject`, from the OCI 1.1 referrers
/// API; None when the registry does not offer it (404).
fn referrers(c: &Client<'_>, repo: &str, subject: &Digest) -> Result<Option<Vec<Digest>>, RegistryError> {
    let path = format!("/v2/{repo}/referrers/{subject}");
    let r = c.expect("GET", &path, &[("Accept", oci::MEDIA_INDEX)], Body::None, &[200, 404])?;
    if r.status == 404 {
        return Ok(None);
    }
    let bytes = r.bytes(MAX_DOCUMENT).map_err(|e| c.io(e))?;
    let ix: oci::Index = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
        host: c.host.to_owned(),
        what: format!("GET {path}"),
        why: format!("not an image index: {e}"),
    })?;
    Ok(Some(ix.manifests.into_iter().map(|d| d.digest).collect()))
}

/// The repository's tags.
fn tag_list(c: &Client<'_>, repo: &str) -> Result<Vec<String>, RegistryError> {
    let r = c.expect("GET", &format!("/v2/{repo}/tags/list"), &[], Body::None, &[200])?;
    let list: serde_json::Value =
        serde_json::from_slice(&r.bytes(MAX_DOCUMENT).map_err(|e| c.io(e))?).map_err(|e| RegistryError::Invalid {
            host: c.host.to_owned(),
            what: "the tag list".into(),
            why: e.to_string(),
        })?;
    Ok(list["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect())
}

/// The kind (tag suffix) of an artifact found through the referrers API:
/// kiln's records and SBOMs name it in an annotation; a cosign signature
/// is known by its payload's media type.
fn kind_of(m: &Manifest) -> Option<String> {
    if let Some(k) = m.annotation(oci::ANNOTATION_ARTIFACT_KIND) {
        return Some(k.to_owned());
    }
    m.layers.iter().any(|l| l.media_type == oci::MEDIA_SIMPLE_SIGNING).then(|| "sig".to_owned())
}

/// Where a registry reference leads on this host's platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Resolved {
    /// The image manifest for `linux/<this host's architecture>`.
    pub manifest: Digest,
    /// The index (or Docker manifest list) the reference named, if any.
    pub index: Option<Digest>,
}

/// Resolves `remote`'s tag or digest to this platform's image manifest,
/// through an image index or a manifest list; each document verified and
/// kept in the store. Moves no layer.
pub fn resolve(store: &Store, remote: &Remote, access: &RegistrySpec) -> Result<Resolved, RegistryError> {
    let reference = remote
        .reference
        .clone()
        .ok_or_else(|| RegistryError::BadRemote { input: remote.to_string(), why: "name a tag or a digest".into() })?;
    let c = client(store, &remote.host, access)?;
    let mut index = None;
    let mut at = reference;
    // An index may name an index; four levels is more than any registry uses.
    for _ in 0..4 {
        let path = format!("/v2/{}/manifests/{at}", remote.repo);
        let r = c.expect("GET", &path, &[("Accept", ACCEPT_ANY)], Body::None, &[200])?;
        let claimed = r.header("docker-content-digest").and_then(|d| Digest::parse(d).ok());
        let bytes = r.bytes(MAX_DOCUMENT).map_err(|e| c.io(e))?;
        let digest = Digest::of(&bytes);
        if let Some(e) = Digest::parse(&at).ok().or(claimed).filter(|e| *e != digest) {
            return Err(RegistryError::Digest {
                host: c.host.to_owned(),
                what: format!("manifest {}:{at}", remote.repo),
                expected: e,
                actual: digest,
            });
        }
        store.put_blob(&bytes)?;
        if !oci::Index::is_index(&bytes) {
            return Ok(Resolved { manifest: digest, index });
        }
        let ix: oci::Index = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
            host: c.host.to_owned(),
            what: format!("image index {digest}"),
            why: e.to_string(),
        })?;
        let arch = oci::host_architecture();
        let entry = ix.for_platform(arch).ok_or_else(|| RegistryError::Invalid {
            host: c.host.to_owned(),
            what: format!("image index {}@{digest}", remote.repository()),
            why: format!("no linux/{arch} image in it"),
        })?;
        at = entry.digest.to_string();
        index.get_or_insert(digest);
    }
    Err(RegistryError::Invalid {
        host: c.host.to_owned(),
        what: remote.to_string(),
        why: "indexes nested more than four deep".into(),
    })
}

/// Fetches image manifest `digest` of `remote`'s repository and every blob
/// it names (in parallel, each verified against its digest) into the
/// store, unless the store holds them all already.
pub fn fetch_image(
    store: &Store,
    remote: &Remote,
    digest: &Digest,
    access: &RegistrySpec,
) -> Result<(Manifest, Transfer), RegistryError> {
    let started = Instant::now();
    let mut t = Transfer { reference: remote.to_string(), remote: remote.repository(), ..Transfer::default() };
    if let Some(m) = local_image(store, digest) {
        t.digest = Some(digest.clone());
        t.blobs_present = 1 + m.layers.len() as u64;
        return Ok((m, t));
    }
    let c = client(store, &remote.host, access)?;
    let (d, m) = pull_manifest(&c, store, &remote.repo, digest.as_str(), &mut t)?;
    remember_repo(store, &remote.host, &remote.repo);
    t.digest = Some(d);
    t.duration_ms = started.elapsed().as_millis() as u64;
    Ok((m, t))
}

/// The manifest `digest` when the store holds it and every blob it names.
fn local_image(store: &Store, digest: &Digest) -> Option<Manifest> {
    let m: Manifest = serde_json::from_slice(&store.read_blob(digest).ok()?).ok()?;
    std::iter::once(&m.config).chain(&m.layers).all(|d| store.has_blob(&d.digest)).then_some(m)
}

/// What a pull fetched into the store, before any tag is set: checks
/// (a signature) come between [`fetch`] and [`tag_fetched`].
#[derive(Debug)]
pub struct Fetched {
    transfer: Transfer,
    started: Instant,
    reference: String,
    name: String,
    /// The image's manifest digest.
    pub digest: Digest,
    /// Artifacts about it (and about those), with their registry tags.
    pub artifacts: Vec<(Digest, String)>,
}

impl Fetched {
    /// The image's signature artifact (`sha256-<hex>.sig`), if it came.
    pub fn signature(&self) -> Option<&Digest> {
        let tag = format!("sha256-{}.sig", self.digest.hex());
        self.artifacts.iter().find(|(_, t)| *t == tag).map(|(d, _)| d)
    }
}

/// `kiln pull REGISTRY/REPO:TAG [--as NAME]`: the image and everything
/// tagged about it; tags are set only once all of it is in the store.
pub fn pull(
    store: &Store,
    remote: &Remote,
    access: &RegistrySpec,
    local_name: Option<&str>,
    now: i64,
) -> Result<Transfer, RegistryError> {
    let f = fetch(store, remote, access, local_name)?;
    tag_fetched(store, f, now)
}

/// The first half of a pull: every blob and manifest, verified, into the
/// store; no tag set.
pub fn fetch(
    store: &Store,
    remote: &Remote,
    access: &RegistrySpec,
    local_name: Option<&str>,
) -> Result<Fetched, RegistryError> {
    let started = Instant::now();
    let reference = remote
        .reference
        .clone()
        .ok_or_else(|| RegistryError::BadRemote { input: remote.to_string(), why: "name a tag or a digest".into() })?;
    let c = client(store, &remote.host, access)?;
    let mut t = Transfer { reference: remote.to_string(), remote: remote.to_string(), ..Transfer::default() };
    let (digest, m) = pull_manifest(&c, store, &remote.repo, &reference, &mut t)?;
    if m.artifact_type.is_some() {
        return Err(RegistryError::Invalid {
            host: c.host.to_owned(),
            what: reference,
            why: "an artifact, not an image".into(),
        });
    }
    // Artifacts about the image, then about those (signatures of records):
    // through the referrers API where the registry offers it, else
    // through the cosign-scheme tags.
    let mut tags: Option<Vec<String>> = None;
    let mut subjects = vec![digest.clone()];
    let mut artifacts: Vec<(Digest, String)> = Vec::new();
    while let Some(s) = subjects.pop() {
        let found: Vec<(String, Option<String>)> = match referrers(&c, &remote.repo, &s)? {
            Some(list) => {
                t.referrers_api = true;
                list.into_iter().map(|d| (d.to_string(), None)).collect()
            }
            None => {
                if tags.is_none() {
                    tags = Some(tag_list(&c, &remote.repo)?);
                }
                let prefix = format!("sha256-{}.", s.hex());
                let all = tags.as_deref().unwrap_or_default();
                all.iter().filter(|t| t.starts_with(&prefix)).map(|t| (t.clone(), Some(t.clone()))).collect()
            }
        };
        for (at, tag) in found {
            let (a, am) = pull_manifest(&c, store, &remote.repo, &at, &mut t)?;
            let tag = match tag.or_else(|| kind_of(&am).map(|k| format!("sha256-{}.{k}", s.hex()))) {
                Some(tag) => tag,
                // A referrer kiln does not know (another tool's
                // attestation): its blobs are in, it is not tagged.
                None => continue,
            };
            if am.subject.as_ref().is_some_and(|d| d.digest == s) && !artifacts.iter().any(|(d, _)| *d == a) {
                subjects.push(a.clone());
                artifacts.push((a, tag));
            }
        }
    }
    let name = local_name
        .map(str::to_owned)
        .or_else(|| m.annotation(oci::ANNOTATION_TITLE).map(str::to_owned))
        .unwrap_or_else(|| remote.repo.rsplit('/').next().unwrap_or("image").to_owned());
    if !crate::spec::valid_image_name(&name) {
        return Err(RegistryError::BadRemote {
            input: name,
            why: "not a valid local image name (use --as NAME)".into(),
        });
    }
    remember_repo(store, &remote.host, &remote.repo);
    Ok(Fetched { transfer: t, started, reference, name, digest, artifacts })
}

/// The second half of a pull: the local tags, the image's first.
pub fn tag_fetched(store: &Store, f: Fetched, now: i64) -> Result<Transfer, RegistryError> {
    let Fetched { transfer: mut t, started, reference, name, digest, artifacts } = f;
    let size = store.read_blob(&digest)?.len() as u64;
    let desc = Descriptor::new(oci::MEDIA_MANIFEST, digest.clone(), size);
    if !reference.starts_with("sha256:") {
        let tag = format!("{name}:{reference}");
        store.set_tags(std::slice::from_ref(&tag), &desc, false, now)?;
        t.tags.push(tag);
    }
    for (a, tag) in artifacts {
        let size = store.read_blob(&a)?.len() as u64;
        let local = format!("{name}:{tag}");
        store.set_tags(std::slice::from_ref(&local), &Descriptor::new(oci::MEDIA_MANIFEST, a, size), true, now)?;
        t.artifacts.push(local);
    }
    t.digest = Some(digest);
    t.duration_ms = started.elapsed().as_millis() as u64;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_become_paths() {
        assert_eq!(
            location_path("http://127.0.0.1:5000/v2/web/blobs/uploads/abc?_state=x"),
            "/v2/web/blobs/uploads/abc?_state=x"
        );
        assert_eq!(location_path("/v2/web/blobs/uploads/abc"), "/v2/web/blobs/uploads/abc");
    }
}
