//! Deterministic layer tarballs and their compression.
//!
//! A layer is described as a sorted list of [`Entry`]s; [`write_tar`] turns
//! that list into the same bytes every time: GNU headers only, mtime 0,
//! numeric ids as declared, empty user and group names, no device numbers.
//! Compression is pinned ([`COMPRESSOR`]) and recorded in the manifest,
//! because compressed bytes differ between gzip implementations and levels.
//! This module never decides *what* goes into a layer, only how it is encoded.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use flate2::{Compression, GzBuilder};

use crate::digest::{Digest, HashingWriter};

/// gzip level used for every layer kiln writes. Level 1 compresses about
/// three times faster than 6 here for layers about 6% larger (see
/// bench/RESULTS.md). Changing it changes every digest.
pub const GZIP_LEVEL: u32 = 1;

/// The compressor, recorded in the `dev.kiln.layer.compressor` annotation
/// and in cache keys. The zlib-rs version is pinned by Cargo.lock; a test
/// keeps this string and the lock file in step.
pub const COMPRESSOR: &str = "gzip:zlib-rs-0.6.8:level-1:mtime-0:os-255";

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A regular file whose bytes are read from `source` when the tar is
    /// written; `size` is what was declared and must still hold then.
    File {
        source: PathBuf,
        size: u64,
    },
    Symlink {
        target: String,
    },
    /// A hard link to an earlier entry's path in the same layer.
    Hardlink {
        target: String,
    },
    /// An OCI whiteout: removes `path`'s last component from lower layers.
    Whiteout,
    /// An opaque-directory marker for the directory `path`.
    Opaque,
}

/// One entry of a layer. `path` is relative to the image root, `/`-separated,
/// without a leading or trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl Entry {
    /// The name this entry has inside the tar stream.
    fn tar_name(&self) -> String {
        match self.kind {
            Kind::Dir => format!("{}/", self.path),
            Kind::Whiteout => match self.path.rsplit_once('/') {
                Some((dir, base)) => format!("{dir}/.wh.{base}"),
                None => format!(".wh.{}", self.path),
            },
            Kind::Opaque => format!("{}/.wh..wh..opq", self.path),
            _ => self.path.clone(),
        }
    }
}

/// Sorts entries the way kiln always writes them: by tar name, bytewise,
/// which keeps every directory before its contents.
pub fn sort_entries(entries: &mut [Entry]) {
    entries.sort_by_cached_key(Entry::tar_name);
}

/// Writes `entries` (already sorted) as a tar stream into `out`.
pub fn write_tar<W: Write>(entries: &[Entry], out: W) -> io::Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mode(e.mode & 0o7777);
        let name = e.tar_name();
        match &e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                builder.append_data(&mut h, &name, io::empty())?;
            }
            Kind::Whiteout | Kind::Opaque => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0);
                h.set_uid(0);
                h.set_gid(0);
                h.set_size(0);
                builder.append_data(&mut h, &name, io::empty())?;
            }
            Kind::File { source, size } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*size);
                let file = File::open(source)?;
                let mut reader = ExactReader { inner: file.take(*size), left: *size };
                builder.append_data(&mut h, &name, &mut reader)?;
                if reader.left != 0 {
                    return Err(io::Error::other(format!(
                        "{} changed size while it was being added to a layer",
                        source.display()
                    )));
                }
            }
            Kind::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                builder.append_link(&mut h, &name, target)?;
            }
            Kind::Hardlink { target } => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                builder.append_link(&mut h, &name, target)?;
            }
        }
    }
    builder.into_inner()
}

struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The digest of the uncompressed tar (the OCI `diff_id`), without
/// compressing anything: this is what cache keys are made of.
pub fn diff_id(entries: &[Entry]) -> io::Result<Digest> {
    let w = write_tar(entries, HashingWriter::new(io::sink()))?;
    Ok(w.finish().1)
}

/// The digests of a written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
}

/// A gzip encoder with kiln's pinned settings: no timestamp, no file name,
/// OS byte 255 ("unknown") whatever the host.
pub fn gzip_encoder<W: Write>(out: W) -> flate2::write::GzEncoder<W> {
    GzBuilder::new().mtime(0).operating_system(255).write(out, Compression::new(GZIP_LEVEL))
}

/// Writes `entries` as a gzip-compressed layer into `out`, returning `out`
/// and the layer's digests.
pub fn write_gzip_layer<W: Write>(entries: &[Entry], out: W) -> io::Result<(W, LayerDigests)> {
    let inner = HashingWriter::new(gzip_encoder(HashingWriter::new(out)));
    let (gz, diff_id, _) = write_tar(entries, inner)?.finish();
    let (out, digest, size) = gz.finish()?.finish();
    Ok((out, LayerDigests { diff_id, digest, size }))
}

/// Compresses an existing uncompressed tar stream, returning the digests.
pub fn gzip_stream<R: Read, W: Write>(mut tar: R, out: W) -> io::Result<(W, LayerDigests)> {
    let mut inner = HashingWriter::new(gzip_encoder(HashingWriter::new(out)));
    io::copy(&mut tar, &mut inner)?;
    let (gz, diff_id, _) = inner.finish();
    let (out, digest, size) = gz.finish()?.finish();
    Ok((out, LayerDigests { diff_id, digest, size }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &std::path::Path) -> Vec<Entry> {
        std::fs::write(dir.join("f"), b"hello").unwrap();
        let mut v = vec![
            Entry {
                path: "app/f".into(),
                kind: Kind::File { source: dir.join("f"), size: 5 },
                mode: 0o644,
                uid: 1,
                gid: 2,
            },
            Entry { path: "app".into(), kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0 },
            Entry { path: "app/l".into(), kind: Kind::Symlink { target: "f".into() }, mode: 0o777, uid: 0, gid: 0 },
            Entry { path: "gone".into(), kind: Kind::Whiteout, mode: 0, uid: 0, gid: 0 },
        ];
        sort_entries(&mut v);
        v
    }

    #[test]
    fn tar_is_deterministic_and_normalised() {
        let dir = tempdir();
        let e = entries(&dir);
        let a = write_tar(&e, Vec::new()).unwrap();
        let b = write_tar(&e, Vec::new()).unwrap();
        assert_eq!(a, b);
        let mut ar = tar::Archive::new(&a[..]);
        let names: Vec<_> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                assert_eq!(e.header().mtime().unwrap(), 0);
                assert_eq!(e.header().username().unwrap(), Some(""));
                e.path().unwrap().to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(names, vec![".wh.gone", "app/", "app/f", "app/l"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn gzip_layer_digests_are_consistent() {
        let dir = tempdir();
        let e = entries(&dir);
        let (blob, d) = write_gzip_layer(&e, Vec::new()).unwrap();
        assert_eq!(d.digest, Digest::of(&blob));
        assert_eq!(d.size, blob.len() as u64);
        assert_eq!(d.diff_id, diff_id(&e).unwrap());
        // Header: magic, deflate, no flags, mtime 0, XFL 4 ("fastest", level 1), OS byte 255.
        assert_eq!(&blob[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255]);
        let (blob2, _) = write_gzip_layer(&e, Vec::new()).unwrap();
        assert_eq!(blob, blob2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn compressor_string_names_the_locked_zlib_rs() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock")).unwrap();
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"zlib-rs\""))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .map(|v| v.trim_matches('"').to_owned())
            .expect("zlib-rs in Cargo.lock");
        assert!(
            COMPRESSOR.contains(&format!("zlib-rs-{version}:level-{GZIP_LEVEL}:")),
            "update COMPRESSOR: {COMPRESSOR}"
        );
    }

    /// Guards reproducibility across builds of kiln: if the compressor's
    /// output for a fixed input ever changes, digests change, and
    /// COMPRESSOR (part of every cache key) must change with it.
    #[test]
    fn compressed_bytes_are_stable() {
        let mut data = Vec::with_capacity(300_000);
        let mut x: u32 = 1;
        for i in 0..300_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            data.push(if i % 3 == 0 { (x >> 16) as u8 } else { b"kiln layer "[(i % 11) as usize] });
        }
        let (out, d) = gzip_stream(&data[..], Vec::new()).unwrap();
        assert_eq!(d.diff_id, Digest::of(&data));
        assert_eq!(
            (d.digest.as_str(), out.len()),
            (GOLDEN.0, GOLDEN.1),
            "compressed output changed: bump COMPRESSOR and this golden value together"
        );
    }
    const GOLDEN: (&str, usize) = ("sha256:deb34e65c8440ab120f57c876ee58af6e88e08677c9a7a369e901a5310e3b16a", 207_928);

    #[test]
    fn long_names_survive() {
        let long = "d/".repeat(80) + "file-with-a-long-name";
        let e = vec![Entry {
            path: long.clone(),
            kind: Kind::Symlink { target: "x".repeat(200) },
            mode: 0o777,
            uid: 0,
            gid: 0,
        }];
        let tar = write_tar(&e, Vec::new()).unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        let first = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(first.path().unwrap().to_str().unwrap(), long);
        assert_eq!(first.link_name().unwrap().unwrap().to_str().unwrap(), "x".repeat(200));
    }

    #[test]
    fn a_file_that_shrank_is_an_error() {
        let dir = tempdir();
        std::fs::write(dir.join("f"), b"abc").unwrap();
        let e = vec![Entry {
            path: "f".into(),
            kind: Kind::File { source: dir.join("f"), size: 10 },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }];
        let err = write_tar(&e, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("changed size"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        kiln_testutil::tempdir("layer")
    }
}
