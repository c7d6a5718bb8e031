//! Where an image starts: importing an OCI layout's image or a rootfs
//! tarball into the store. Imported layer blobs are kept byte for byte (an
//! OCI layout's layers are never recompressed); a rootfs tarball is checked
//! entry by entry with the safe unpacker's rules and compressed once.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use crate::digest::{Digest, HashingReader};
use crate::layer::{self, LayerDigests};
use crate::oci::{self, Descriptor, ImageConfig, Index, LayerEncoding, Manifest};
use crate::spec::OciRef;
use crate::store::Store;
use crate::unpack;

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
    if config.os != "linux" {
        return Err(format!("base image is for {:?}, not linux", config.os));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(format!(
            "manifest {} lists {} layers but its config lists {} diff_ids",
            desc.digest,
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        ));
    }
    let mut layers = Vec::new();
    for l in &manifest.layers {
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
        layers.push(Descriptor::new(media_type, l.digest.clone(), l.size));
    }
    Ok(Base { manifest_digest: desc.digest, config, layers })
}

/// The digest of a file's bytes, streaming.
pub fn file_digest(path: &Path) -> io::Result<Digest> {
    let mut r = HashingReader::new(File::open(path)?);
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.finish().0)
}

/// Checks every entry of a rootfs tarball (plain or gzip) with the safe
/// unpacker's rules and stores it, verbatim, as one gzip layer.
pub fn import_rootfs(store: &Store, path: &Path) -> Result<LayerDigests, String> {
    let shown = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut f = BufReader::new(File::open(path).map_err(|e| shown(&e))?);
    let mut magic = [0u8; 2];
    let gzip = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let f = File::open(path).map_err(|e| shown(&e))?;
    let reader: Box<dyn Read> =
        if gzip { Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f))) } else { Box::new(BufReader::new(f)) };
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
    Ok(LayerDigests { diff_id, digest, size })
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
