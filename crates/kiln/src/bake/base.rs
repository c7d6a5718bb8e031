//! Where an image starts: importing an OCI layout's image, a registry's
//! image (pinned in kiln.lock) or a rootfs tarball into the store.
//! Imported layer blobs are kept byte for byte (an OCI layout's or a
//! registry's layers are never recompressed); a rootfs tarball is checked
//! entry by entry with the safe unpacker's rules and compressed once.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::lock::{self, Lock};
use crate::digest::{Digest, HashingReader};
use crate::image::layer::{self, LayerDigests};
use crate::image::registry::{self, Remote};
use crate::image::store::Store;
use crate::image::unpack;
use crate::oci::{self, Descriptor, ImageConfig, Index, LayerEncoding, Manifest};
use crate::spec::registries::RegistrySpec;
use crate::spec::OciRef;

/// An imported base image.
#[derive(Debug, Clone)]
pub struct Base {
    pub manifest_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<Descriptor>,
}

/// Reads a blob from a foreign OCI layout, verifying its digest.
fn read_layout_blob(layout: &Path, d: &Digest) -> Result<Vec<u8>, String> {
    let path = layout.join("blobs/sha256").join(d.hex());
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let actual = Digest::of(&bytes);
    if &actual != d {
        return Err(format!("blob {d} in {} is corrupted: its content hashes to {actual}", layout.display()));
    }
    Ok(bytes)
}

fn parse<T: for<'de> serde::Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("invalid {what}: {e}"))
}

/// Imports the image `reference` names from the OCI layout at `layout`.
pub fn import_oci(store: &Store, layout: &Path, reference: Option<&OciRef>) -> Result<Base, String> {
    let index_path = layout.join("index.json");
    let index: Index = parse(
        "index.json",
        &fs::read(&index_path).map_err(|e| format!("{}: {e} (is it an OCI image layout?)", index_path.display()))?,
    )?;
    let tag_of = |d: &Descriptor| d.annotation(oci::ANNOTATION_REF_NAME).map(str::to_owned);
    let mut desc = match reference {
        Some(OciRef::Tag(t)) => {
            index.manifests.iter().find(|m| tag_of(m).as_deref() == Some(t.as_str())).cloned().ok_or_else(|| {
                let tags: Vec<_> = index.manifests.iter().filter_map(tag_of).collect();
                format!(
                    "no image tagged {t:?} in {} (it has: {})",
                    layout.display(),
                    if tags.is_empty() { "no tags".into() } else { tags.join(", ") }
                )
            })?
        }
        Some(OciRef::Digest(d)) => match index.manifests.iter().find(|m| &m.digest == d) {
            Some(m) => m.clone(),
            None => Descriptor::new(oci::MEDIA_MANIFEST, d.clone(), 0),
        },
        None => match index.manifests.as_slice() {
            [one] => one.clone(),
            [] => return Err(format!("{} holds no image", layout.display())),
            many => {
                let names: Vec<_> = many.iter().map(|m| tag_of(m).unwrap_or_else(|| m.digest.to_string())).collect();
                return Err(format!(
                    "{} holds {} images ({}); name one with :TAG or @DIGEST",
                    layout.display(),
                    many.len(),
                    names.join(", ")
                ));
            }
        },
    };
    // A multi-platform index: take this host's platform.
    for _ in 0..4 {
        if desc.media_type != oci::MEDIA_INDEX && desc.media_type != oci::DOCKER_MANIFEST_LIST {
            break;
        }
        let inner: Index = parse("image index", &read_layout_blob(layout, &desc.digest)?)?;
        let arch = oci::host_architecture();
        desc = inner
            .manifests
            .into_iter()
            .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
            .ok_or_else(|| format!("image index {} has no linux/{arch} image", desc.digest))?;
    }
    let manifest_bytes = read_layout_blob(layout, &desc.digest)?;
    let manifest: Manifest = parse("manifest", &manifest_bytes)?;
    let config: ImageConfig = parse("image config", &read_layout_blob(layout, &manifest.config.digest)?)?;
    let layers = checked_layers(&desc.digest, &manifest, &config)?;
    for l in &manifest.layers {
        // Copy the blob unless the store already has it intact.
        if store.verify_blob(&l.digest).is_err() {
            let src = layout.join("blobs/sha256").join(l.digest.hex());
            let mut f = File::open(&src).map_err(|e| format!("{}: {e}", src.display()))?;
            let mut w = store.blob_writer().map_err(|e| e.to_string())?;
            io::copy(&mut f, &mut w).map_err(|e| format!("{}: {e}", src.display()))?;
            let (d, _) = w.commit().map_err(|e| e.to_string())?;
            if d != l.digest {
                let _ = fs::remove_file(store.blob_path(&d));
                return Err(format!(
                    "blob {} in {} is corrupted: its content hashes to {d}",
                    l.digest,
                    layout.display()
                ));
            }
        }
    }
    Ok(Base { manifest_digest: desc.digest, config, layers })
}

/// A base's layers as kiln's manifests name them (OCI media types, the
/// same bytes), once its config is checked against its manifest.
fn checked_layers(digest: &Digest, manifest: &Manifest, config: &ImageConfig) -> Result<Vec<Descriptor>, String> {
    if config.os != "linux" {
        return Err(format!("base image is for {:?}, not linux", config.os));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(format!(
            "manifest {digest} lists {} layers but its config lists {} diff_ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        ));
    }
    manifest
        .layers
        .iter()
        .map(|l| {
            let media_type = match LayerEncoding::of_media_type(&l.media_type) {
                Some(LayerEncoding::Gzip) => oci::MEDIA_LAYER_GZIP,
                Some(LayerEncoding::Tar) => oci::MEDIA_LAYER_TAR,
                None => {
                    return Err(format!(
                        "layer {} has media type {:?}, which kiln cannot read (only tar and tar+gzip)",
                        l.digest, l.media_type
                    ))
                }
            };
            Ok(Descriptor::new(media_type, l.digest.clone(), l.size))
        })
        .collect()
}

/// A registry base and how it was pinned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BasePin {
    /// The `from` value.
    pub from: String,
    /// The image manifest baked on.
    pub digest: Digest,
    /// The index the tag named, if any.
    pub index: Option<Digest>,
    /// The pin kiln.lock held before this bake (None: no pin yet, or a
    /// base named by digest in kiln.toml).
    pub previous: Option<Digest>,
    /// Whether kiln.lock is to be written (a new or moved pin).
    pub changed: bool,
    /// What was fetched from the registry (0 when the store had it all).
    pub pulled_blobs: u64,
    pub pulled_bytes: u64,
}

/// A registry base of kiln.toml against its tag today.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseStatus {
    pub image: String,
    pub from: String,
    /// kiln.lock's pin (None: never baked, so nothing pinned yet).
    pub pinned: Option<Digest>,
    /// What the tag names today; None when the registry could not say.
    pub current: Option<Digest>,
    /// The pin differs from the tag (or there is none yet).
    pub outdated: bool,
    /// Why `current` is unknown: one unreachable registry does not hide
    /// the others' answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every registry base named by tag in `file`, against kiln.lock: one
/// manifest request per base, no layer moved. Bases named by digest are
/// pinned by kiln.toml itself and left out.
pub fn statuses(store: &Store, file: &crate::spec::SpecFile) -> Result<Vec<BaseStatus>, super::BakeError> {
    let lock = Lock::load(file.dir())
        .map_err(|e| super::BakeError::Step { at: file.path.display().to_string(), message: e.to_string() })?;
    let platform = lock::platform();
    let mut out = Vec::new();
    for (name, spec) in &file.images {
        let crate::spec::BaseRef::Registry(remote) = &spec.from else { continue };
        if remote.reference.as_deref().is_some_and(|r| r.starts_with("sha256:")) {
            continue;
        }
        let from = remote.to_string();
        let pinned = lock.get(&from, &platform).map(|p| p.digest.clone());
        let access = file.registries.get(&remote.host).cloned().unwrap_or_default();
        let (current, error) = match registry::resolve(store, remote, &access) {
            Ok(r) => (Some(r.manifest), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let outdated = current.is_some() && current != pinned;
        out.push(BaseStatus { image: name.clone(), from, pinned, current, outdated, error });
    }
    Ok(out)
}

/// Where a base named by digest leads, from what the store holds: an
/// index's entry for this platform, or the manifest itself.
fn resolve_stored(store: &Store, d: &Digest) -> Option<registry::Resolved> {
    let bytes = store.read_blob(d).ok()?;
    if !Index::is_index(&bytes) {
        return Some(registry::Resolved { manifest: d.clone(), index: None });
    }
    let ix: Index = serde_json::from_slice(&bytes).ok()?;
    let m = ix.for_platform(oci::host_architecture())?.digest.clone();
    store.has_blob(&m).then(|| registry::Resolved { manifest: m, index: Some(d.clone()) })
}

/// Imports a registry base: by kiln.lock's pin for its tag (no request
/// when the store has the image), by a fresh resolution when there is no
/// pin or `update` asks for one, or by the digest kiln.toml names.
pub fn import_registry(
    store: &Store,
    remote: &Remote,
    access: &RegistrySpec,
    lock: &Lock,
    update: bool,
) -> Result<(Base, BasePin), String> {
    let from = remote.to_string();
    let platform = lock::platform();
    let named_digest = remote.reference.as_deref().and_then(|r| Digest::parse(r).ok());
    let (resolved, previous) = match (&named_digest, lock.get(&from, &platform)) {
        (Some(d), _) => {
            let r = match resolve_stored(store, d) {
                Some(r) => r,
                None => registry::resolve(store, remote, access).map_err(|e| e.to_string())?,
            };
            (r, None)
        }
        (None, Some(p)) if !update => {
            (registry::Resolved { manifest: p.digest.clone(), index: p.index.clone() }, Some(p.digest.clone()))
        }
        (None, pinned) => {
            (registry::resolve(store, remote, access).map_err(|e| e.to_string())?, pinned.map(|p| p.digest.clone()))
        }
    };
    let (manifest, t) = registry::fetch_image(store, remote, &resolved.manifest, access).map_err(|e| e.to_string())?;
    let config_bytes = store.read_blob(&manifest.config.digest).map_err(|e| e.to_string())?;
    let config: ImageConfig = parse("image config", &config_bytes)?;
    let layers = checked_layers(&resolved.manifest, &manifest, &config)?;
    let changed = named_digest.is_none() && previous.as_ref() != Some(&resolved.manifest);
    let pin = BasePin {
        from,
        digest: resolved.manifest.clone(),
        index: resolved.index,
        previous,
        changed,
        pulled_blobs: t.blobs,
        pulled_bytes: t.bytes,
    };
    Ok((Base { manifest_digest: resolved.manifest, config, layers }, pin))
}

/// The digest of a file's bytes, streaming.
pub fn file_digest(path: &Path) -> io::Result<Digest> {
    let mut r = HashingReader::new(File::open(path)?);
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.finish().0)
}

/// What a rootfs tarball's entry becomes in the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// As it is.
    Verbatim,
    /// Under its normalised name (`./usr/x` and `/usr/x` are `usr/x`), with
    /// a hardlink's target normalised too.
    Renamed { path: Vec<u8>, link: Option<Vec<u8>> },
    /// A device node, fifo or socket under `/dev`: the runtime provides
    /// `/dev`, so it is left out (and said).
    Dropped,
}

/// `./x`, `/x` and `x` are one path: leading `/` and `./` removed.
fn normal_name(p: &[u8]) -> &[u8] {
    let mut p = p;
    loop {
        match p {
            [b'/', rest @ ..] => p = rest,
            [b'.', b'/', rest @ ..] => p = rest,
            _ => return p,
        }
    }
}

/// Judges one rootfs entry. Pure: the unpacker's rules, after the name is
/// normalised; special files only under `dev/`.
pub fn rootfs_entry(p: &[u8], kind: tar::EntryType, link: Option<&[u8]>) -> Result<Keep, unpack::EntryProblem> {
    use tar::EntryType as T;
    let name = normal_name(p);
    if matches!(kind, T::Char | T::Block | T::Fifo) {
        return match name.starts_with(b"dev/") {
            true => Ok(Keep::Dropped),
            false if kind == T::Fifo => Err(unpack::EntryProblem::Unsupported("fifo (outside /dev)".into())),
            false => Err(unpack::EntryProblem::DeviceNode),
        };
    }
    let link_name = link.filter(|_| kind == T::Link).map(normal_name);
    unpack::classify(name, kind, link_name.or(link))?;
    if name == p && link_name.is_none_or(|l| Some(l) == link) {
        return Ok(Keep::Verbatim);
    }
    Ok(Keep::Renamed { path: name.to_vec(), link: link_name.map(<[u8]>::to_vec) })
}

/// A rootfs tarball, plain or gzip, read from the start.
fn rootfs_reader(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 2];
    let gzip = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let f = File::open(path)?;
    Ok(if gzip { Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f))) } else { Box::new(BufReader::new(f)) })
}

/// Checks every entry of a rootfs tarball (plain or gzip) with the safe
/// unpacker's rules and stores it as one gzip layer: verbatim when every
/// entry is clean, else rewritten once here (names normalised, special
/// files under `/dev` left out), so that the store, the scans and the SBOM
/// all see one path for one file. Returns the layer and how many entries
/// were left out.
pub fn import_rootfs(store: &Store, path: &Path) -> Result<(LayerDigests, usize), String> {
    let shown = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let refused = |p: &[u8], problem: unpack::EntryProblem| {
        format!("{}: entry {:?} refused: {problem}", path.display(), String::from_utf8_lossy(p))
    };
    // Judged first, without storing anything.
    let (mut dirty, mut dropped) = (false, 0usize);
    {
        let mut archive = tar::Archive::new(rootfs_reader(path).map_err(|e| shown(&e))?);
        for entry in archive.entries().map_err(|e| shown(&e))? {
            let entry = entry.map_err(|e| shown(&format!("not a valid tar stream: {e}")))?;
            let p = entry.path_bytes().into_owned();
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            match rootfs_entry(&p, entry.header().entry_type(), link.as_deref()).map_err(|e| refused(&p, e))? {
                Keep::Verbatim => {}
                Keep::Renamed { .. } => dirty = true,
                Keep::Dropped => {
                    dirty = true;
                    dropped += 1;
                }
            }
        }
    }
    if dirty {
        return rewrite_rootfs(store, path).map(|l| (l, dropped));
    }
    let reader = rootfs_reader(path).map_err(|e| shown(&e))?;
    let blob = store.blob_writer().map_err(|e| e.to_string())?;
    let mut tee = Tee {
        inner: reader,
        out: crate::digest::HashingWriter::new(layer::gzip_encoder(crate::digest::HashingWriter::new(blob))),
    };
    {
        let mut archive = tar::Archive::new(&mut tee);
        for entry in archive.entries().map_err(|e| shown(&e))? {
            let entry = entry.map_err(|e| shown(&format!("not a valid tar stream: {e}")))?;
            let p = entry.path_bytes().into_owned();
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            unpack::classify(&p, entry.header().entry_type(), link.as_deref()).map_err(|problem| {
                format!("{}: entry {:?} refused: {problem}", path.display(), String::from_utf8_lossy(&p))
            })?;
        }
    }
    io::copy(&mut tee, &mut io::sink()).map_err(|e| shown(&e))?;
    let (gz, diff_id, _) = tee.out.finish();
    let (blob, digest, size) = gz.finish().map_err(|e| shown(&e))?.finish();
    let (committed, _) = blob.commit().map_err(|e| e.to_string())?;
    debug_assert_eq!(committed, digest);
    Ok((LayerDigests { diff_id, digest, size }, 0))
}

/// The newest modification time among a rootfs tarball's entries (none
/// for an empty one): the tarball's own date, read from its headers.
pub fn newest_mtime(path: &Path) -> io::Result<Option<i64>> {
    let mut archive = tar::Archive::new(rootfs_reader(path)?);
    let mut newest = None;
    for entry in archive.entries()? {
        let t = entry?.header().mtime()? as i64;
        newest = Some(newest.map_or(t, |n: i64| n.max(t)));
    }
    Ok(newest)
}

/// The rewrite of [`import_rootfs`]: each kept entry with its header (and
/// its PAX records: xattrs, sub-second times) under its normalised name.
fn rewrite_rootfs(store: &Store, path: &Path) -> Result<LayerDigests, String> {
    let shown = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let blob = store.blob_writer().map_err(|e| e.to_string())?;
    let out = crate::digest::HashingWriter::new(layer::gzip_encoder(crate::digest::HashingWriter::new(blob)));
    let mut b = tar::Builder::new(out);
    let mut archive = tar::Archive::new(rootfs_reader(path).map_err(|e| shown(&e))?);
    for entry in archive.entries().map_err(|e| shown(&e))? {
        let mut entry = entry.map_err(|e| shown(&e))?;
        let p = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let kind = entry.header().entry_type();
        let (name, link) = match rootfs_entry(&p, kind, link.as_deref()).map_err(|e| shown(&e))? {
            Keep::Dropped => continue,
            Keep::Verbatim => (p.clone(), link),
            // The root itself (`./`): nothing to write.
            Keep::Renamed { path, .. } if path.is_empty() => continue,
            Keep::Renamed { path, link: l } => (path, l.or(link)),
        };
        let pax: Vec<(String, Vec<u8>)> = match entry.pax_extensions().map_err(|e| shown(&e))? {
            Some(exts) => exts
                .filter_map(Result::ok)
                .filter_map(|e| Some((e.key().ok()?.to_owned(), e.value_bytes().to_vec())))
                .filter(|(k, _)| k != "path" && k != "linkpath")
                .collect(),
            None => Vec::new(),
        };
        if !pax.is_empty() {
            let records = pax_records(&pax);
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_path("PaxHeaders/entry").map_err(|e| shown(&e))?;
            h.set_size(records.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, &records[..]).map_err(|e| shown(&e))?;
        }
        let mut h = entry.header().clone();
        let name = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&name));
        match (kind, link) {
            (tar::EntryType::Link | tar::EntryType::Symlink, Some(target)) => {
                let target = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&target));
                b.append_link(&mut h, &name, &target).map_err(|e| shown(&e))?;
            }
            _ => b.append_data(&mut h, &name, &mut entry).map_err(|e| shown(&e))?,
        }
    }
    let out = b.into_inner().map_err(|e| shown(&e))?;
    let (gz, diff_id, _) = out.finish();
    let (blob, digest, size) = gz.finish().map_err(|e| shown(&e))?.finish();
    let (committed, _) = blob.commit().map_err(|e| e.to_string())?;
    debug_assert_eq!(committed, digest);
    Ok(LayerDigests { diff_id, digest, size })
}

/// PAX extended header records: `LEN key=value\n`, LEN counting itself.
fn pax_records(pax: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pax {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body + body.to_string().len();
        if len.to_string().len() != body.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// Copies everything read from `inner` into `out`.
struct Tee<R, W> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::EntryType as T;

    #[test]
    fn rootfs_entries_get_one_name_and_special_files_only_under_dev() {
        assert_eq!(rootfs_entry(b"etc/motd", T::Regular, None), Ok(Keep::Verbatim));
        for p in [&b"./etc/motd"[..], b"/etc/motd", b"././etc/motd"] {
            assert_eq!(
                rootfs_entry(p, T::Regular, None),
                Ok(Keep::Renamed { path: b"etc/motd".to_vec(), link: None }),
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        assert_eq!(
            rootfs_entry(b"./usr/lib/x", T::Link, Some(b"./etc/motd")),
            Ok(Keep::Renamed { path: b"usr/lib/x".to_vec(), link: Some(b"etc/motd".to_vec()) })
        );
        // A symlink's target is what it says, not a name in the archive.
        assert_eq!(rootfs_entry(b"bin/sh", T::Symlink, Some(b"./busybox")), Ok(Keep::Verbatim));
        assert_eq!(rootfs_entry(b"./dev/null", T::Char, None), Ok(Keep::Dropped));
        assert_eq!(rootfs_entry(b"dev/initctl", T::Fifo, None), Ok(Keep::Dropped));
        assert_eq!(rootfs_entry(b"./etc/console", T::Char, None), Err(unpack::EntryProblem::DeviceNode));
        assert!(rootfs_entry(b"./tmp/fifo", T::Fifo, None).is_err());
        assert!(rootfs_entry(b"./../etc", T::Regular, None).is_err(), "the unpacker's rules still hold");
    }

    #[test]
    fn pax_records_count_their_own_length() {
        let r =
            pax_records(&[("SCHILY.xattr.security.capability".into(), vec![1, 0, 0, 2]), ("a".into(), b"b".to_vec())]);
        let text = String::from_utf8_lossy(&r).into_owned();
        let mut rest = &r[..];
        while !rest.is_empty() {
            let sp = rest.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            assert_eq!(rest[len - 1], b'\n', "{text:?}");
            rest = &rest[len..];
        }
        assert_eq!(pax_records(&[("k".into(), b"1234".to_vec())]), b"9 k=1234\n");
        // A record whose length gains a digit once counted: 9 + 1 digit
        // would be 10, which takes two.
        assert_eq!(pax_records(&[("k".into(), b"12345".to_vec())]), b"11 k=12345\n");
    }
}
