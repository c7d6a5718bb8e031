//! The read-only rootfs cache shared by instances: each image digest is
//! unpacked once, with the safe unpacker, into `$KILN_HOME/images/<hex>/`.
//!
//! Before every start the chain manifest → config → layers is verified
//! against the store's digests, and the unpacked tree against the listing
//! recorded when it was unpacked (paths, types, modes, owners, content
//! hashes). A tampered blob or cache fails the start, naming what differs.
//! The one tolerated difference: empty directories the runtime creates as
//! mount points for volumes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader};
use crate::image::store::{Store, StoreError};
use crate::image::unpack::{UnpackError, Unpacker};
use crate::oci::{ImageConfig, LayerEncoding, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image {image}: {message}")]
    Invalid { image: Digest, message: String },
    #[error("unpacking image {image}: {source}")]
    Unpack { image: Digest, source: UnpackError },
    #[error("image cache {}: {message} (the cache was modified; remove that directory to unpack the image again)", dir.display())]
    Tampered { dir: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_owned(), source }
}

/// A verified image, ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub digest: Digest,
    pub manifest: Manifest,
    pub config: ImageConfig,
    pub rootfs: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Content digest (files) or link target (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}

type Listing = BTreeMap<String, Node>;

/// Directories the runtime mounts over; created at unpack time so that no
/// instance start ever writes into the shared tree.
const MOUNT_POINTS: &[&str] = &["proc", "dev", "sys", "tmp", "run"];

/// Verifies the image's chain and returns its verified rootfs, unpacking it
/// on first use.
pub fn prepare(store: &Store, digest: &Digest) -> Result<Prepared, CacheError> {
    let manifest: Manifest = store.read_json(digest)?;
    let config: ImageConfig = store.read_json(&manifest.config.digest)?;
    let invalid = |message: String| CacheError::Invalid { image: digest.clone(), message };
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(invalid(format!(
            "{} layers but {} diff_ids in its config",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    if config.os != "linux" {
        return Err(invalid(format!("built for {:?}, not linux", config.os)));
    }
    for l in &manifest.layers {
        if LayerEncoding::of_media_type(&l.media_type).is_none() {
            return Err(invalid(format!("layer {} has unsupported media type {:?}", l.digest, l.media_type)));
        }
        store.verify_blob(&l.digest)?;
    }
    let dir = store.home().join("images").join(digest.hex());
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let lock_path = dir.join("lock");
    let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    let listing_path = dir.join("listing.json");
    if listing_path.exists() {
        let listing: Listing = serde_json::from_slice(&fs::read(&listing_path).map_err(io_err(&listing_path))?)
            .map_err(|e| CacheError::Tampered { dir: dir.clone(), message: format!("listing.json: {e}") })?;
        verify_tree(&rootfs, &listing).map_err(|message| CacheError::Tampered { dir: dir.clone(), message })?;
    } else {
        unpack_image(store, digest, &manifest, &config, &dir)?;
    }
    Ok(Prepared { digest: digest.clone(), manifest, config, rootfs })
}

/// Checks an unpacked image's tree against its listing again (drift of a
/// running instance's root); `Err` names the first difference.
pub fn verify_cache(store: &Store, digest: &Digest) -> Result<(), CacheError> {
    let dir = store.home().join("images").join(digest.hex());
    let tampered = |message: String| CacheError::Tampered { dir: dir.clone(), message };
    let listing_path = dir.join("listing.json");
    let bytes = fs::read(&listing_path).map_err(|e| tampered(format!("listing.json: {e}")))?;
    let listing: Listing = serde_json::from_slice(&bytes).map_err(|e| tampered(format!("listing.json: {e}")))?;
    verify_tree(&dir.join("rootfs"), &listing).map_err(tampered)
}

/// Moves a tampered cache aside (`<hex>.tampered-<ms>`, kept for a
/// post-mortem) so that the next start unpacks the image afresh. The
/// instances still running from it keep their mount.
pub fn set_aside(store: &Store, digest: &Digest, now_ms: u64) -> Result<PathBuf, CacheError> {
    let images = store.home().join("images");
    let dir = images.join(digest.hex());
    let aside = images.join(format!("{}.tampered-{now_ms}", digest.hex()));
    fs::rename(&dir, &aside).map_err(io_err(&dir))?;
    Ok(aside)
}

fn unpack_image(store: &Store, digest: &Digest, m: &Manifest, c: &ImageConfig, dir: &Path) -> Result<(), CacheError> {
    let tmp = dir.join("rootfs.partial");
    let _ = fs::remove_dir_all(&tmp);
    let mut u = Unpacker::new(&tmp).map_err(io_err(&tmp))?;
    for (i, (l, diff_id)) in m.layers.iter().zip(&c.rootfs.diff_ids).enumerate() {
        let mut reader = HashingReader::new(store.open_layer(l)?);
        u.apply_layer(i, &mut reader).map_err(|source| CacheError::Unpack { image: digest.clone(), source })?;
        io::copy(&mut reader, &mut io::sink())
            .map_err(|e| CacheError::Invalid { image: digest.clone(), message: e.to_string() })?;
        let (actual, _) = reader.finish();
        if &actual != diff_id {
            return Err(CacheError::Invalid {
                image: digest.clone(),
                message: format!("layer {} uncompresses to {actual}, but the config says {diff_id}", l.digest),
            });
        }
    }
    u.finish().map_err(io_err(&tmp))?;
    for m in MOUNT_POINTS {
        let p = tmp.join(m);
        if fs::symlink_metadata(&p).is_err() {
            fs::create_dir(&p).map_err(io_err(&p))?;
        }
    }
    // runc gives a tmpfs the mode of the directory it covers, and /tmp is
    // always a tmpfs in an instance: make it world-writable and sticky.
    let t = tmp.join("tmp");
    if fs::symlink_metadata(&t).is_ok_and(|m| m.is_dir()) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&t, fs::Permissions::from_mode(0o1777)).map_err(io_err(&t))?;
    }
    let listing = list_tree(&tmp).map_err(io_err(&tmp))?;
    let rootfs = dir.join("rootfs");
    let _ = fs::remove_dir_all(&rootfs);
    fs::rename(&tmp, &rootfs).map_err(io_err(&rootfs))?;
    let listing_path = dir.join("listing.json");
    fs::write(&listing_path, serde_json::to_vec(&listing).unwrap_or_default()).map_err(io_err(&listing_path))?;
    Ok(())
}

fn node(path: &Path) -> io::Result<Node> {
    let m = fs::symlink_metadata(path)?;
    let ft = m.file_type();
    let (kind, content) = if ft.is_dir() {
        ('d', None)
    } else if ft.is_symlink() {
        ('l', Some(fs::read_link(path)?.to_string_lossy().into_owned()))
    } else if ft.is_file() {
        let mut r = HashingReader::new(File::open(path)?);
        io::copy(&mut r, &mut io::sink())?;
        ('f', Some(r.finish().0.to_string()))
    } else {
        ('o', None)
    };
    Ok(Node { kind, mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), content })
}

fn walk(root: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
    let dir = if rel.is_empty() { root.to_owned() } else { root.join(rel) };
    for e in fs::read_dir(&dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let is_dir = e.file_type()?.is_dir();
        out.push(r.clone());
        if is_dir {
            walk(root, &r, out)?;
        }
    }
    Ok(())
}

fn list_tree(root: &Path) -> io::Result<Listing> {
    let mut paths = Vec::new();
    walk(root, "", &mut paths)?;
    paths.into_iter().map(|p| Ok((p.clone(), node(&root.join(&p))?))).collect()
}

/// Compares the tree with its listing; `Err` names the first difference.
fn verify_tree(root: &Path, listing: &Listing) -> Result<(), String> {
    let mut paths = Vec::new();
    walk(root, "", &mut paths).map_err(|e| format!("cannot read: {e}"))?;
    for p in &paths {
        let full = root.join(p);
        let actual = node(&full).map_err(|e| format!("/{p}: {e}"))?;
        match listing.get(p) {
            Some(expected) if *expected == actual => {}
            Some(_) => return Err(format!("/{p} differs from the image")),
            None if actual.kind == 'd' && fs::read_dir(&full).map(|mut d| d.next().is_none()).unwrap_or(false) => {}
            None => return Err(format!("/{p} is not part of the image")),
        }
    }
    let present: std::collections::HashSet<&String> = paths.iter().collect();
    if let Some(missing) = listing.keys().find(|p| !present.contains(p)) {
        return Err(format!("/{missing} is missing"));
    }
    Ok(())
}
