//! The on-disk store under `$KILN_HOME`.
//!
//! `store/` is a plain OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) that skopeo, umoci and other OCI tools read directly;
//! tags are `org.opencontainers.image.ref.name` annotations in `index.json`.
//! Beside it kiln keeps its own metadata (`meta/`), the step cache
//! (`cache/`) and scratch space (`tmp/`, on the same file system so that
//! renames are atomic).
//!
//! Rules this module keeps: every write is atomic (temp file, fsync, rename,
//! fsync of the directory); every read of a blob verifies its digest, and a
//! corrupted blob is reported by name and never returned; a tag never moves
//! to another digest unless forced, and every tag change is appended to
//! `meta/tags.log`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::oci::{self, Descriptor, Index, Manifest};

/// A store failure, naming the file or blob concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("blob {digest} is corrupted: its content hashes to {actual} ({})", path.display())]
    Corrupt { digest: Digest, actual: Digest, path: PathBuf },
    #[error("blob {digest} is missing from the store ({})", path.display())]
    Missing { digest: Digest, path: PathBuf },
    #[error("{}: invalid content: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("tag {tag} already points to {current}; refusing to move it to {new} (pass --force to move it; the move is recorded)")]
    TagConflict { tag: String, current: Digest, new: Digest },
    #[error("no image in the store matches {0:?} (see `kiln images`)")]
    NotFound(String),
    #[error("{reference:?} matches several images: {}", candidates.join(", "))]
    Ambiguous { reference: String, candidates: Vec<String> },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// One recorded tag change (a line of `meta/tags.log`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEvent {
    pub time: String,
    pub tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Digest>,
    pub to: Digest,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
}

/// What `gc` found.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GcReport {
    pub removed: Vec<(Digest, u64)>,
    pub kept: usize,
    pub freed_bytes: u64,
}

/// `$KILN_HOME` and the OCI layout in it.
#[derive(Debug, Clone)]
pub struct Store {
    home: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The default home: `$KILN_HOME`, else `$XDG_DATA_HOME/kiln`, else
    /// `~/.local/share/kiln`.
    pub fn default_home() -> PathBuf {
        if let Some(h) = std::env::var_os("KILN_HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(h);
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(x).join("kiln");
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".local/share/kiln")
    }

    /// Opens (creating if needed) the store at `home`.
    pub fn open(home: &Path) -> Result<Store, StoreError> {
        let s = Store { home: home.to_owned() };
        for d in [s.layout().join("blobs/sha256"), s.home.join("meta"), s.home.join("cache/steps"), s.tmp_dir()] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let layout_file = s.layout().join("oci-layout");
        if !layout_file.exists() {
            s.write_atomic(&layout_file, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = s.layout().join("index.json");
        if !index.exists() {
            s.write_atomic(&index, &oci::to_canonical_json(&Index::default()))?;
        }
        Ok(s)
    }

    pub fn home(&self) -> &Path {
        &self.home
    }
    /// The OCI image layout directory (`oci:<this>:<tag>` for skopeo).
    pub fn layout(&self) -> PathBuf {
        self.home.join("store")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.home.join("tmp")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.home.join("cache")
    }
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.layout().join("blobs/sha256").join(d.hex())
    }
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// A fresh path in `tmp/` (unique within this process and across processes).
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir().join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Writes `bytes` to `path` atomically.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.tmp_path("write");
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            sync_dir(path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io_err(path))
    }

    /// Stores `bytes` as a blob and returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        if !self.has_blob(&d) {
            self.write_atomic(&self.blob_path(&d), bytes)?;
        }
        Ok(d)
    }

    /// A streaming blob writer; the blob appears only on [`BlobWriter::commit`].
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp = self.tmp_path("blob");
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            inner: Some(HashingWriter::new(BufWriter::with_capacity(256 * 1024, file))),
        })
    }

    /// Reads a whole blob, verifying its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(d);
        let bytes = fs::read(&path).map_err(|e| self.read_err(d, &path, e))?;
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(StoreError::Corrupt { digest: d.clone(), actual, path });
        }
        Ok(bytes)
    }

    /// Opens a blob for streaming; the reader fails at end of stream if the
    /// content does not match `d`, so a consumer must read it to the end.
    pub fn open_blob(&self, d: &Digest) -> Result<VerifiedReader<File>, StoreError> {
        let path = self.blob_path(d);
        let f = File::open(&path).map_err(|e| self.read_err(d, &path, e))?;
        Ok(VerifiedReader::new(f, d.clone(), path))
    }

    /// Opens a layer blob as its uncompressed tar stream (gzip is
    /// inflated; any other media type is read as plain tar). Verified like
    /// [`Store::open_blob`]: read it to the end.
    /// Calls `f` with every entry of every layer of `m`, in order: the
    /// layer, the entry's path normalised (no `./`, no leading or trailing
    /// `/`) and the entry, its contents unread. What the scans walk.
    pub fn each_entry<E: From<StoreError>>(
        &self,
        m: &oci::Manifest,
        mut f: impl FnMut(&Descriptor, &str, tar::Entry<'_, Box<dyn Read>>) -> Result<(), E>,
    ) -> Result<(), E> {
        for layer in &m.layers {
            let at = |source| StoreError::Io { path: self.blob_path(&layer.digest), source };
            let mut tar = tar::Archive::new(self.open_layer(layer)?);
            for entry in tar.entries().map_err(at)? {
                let entry = entry.map_err(at)?;
                let raw = entry.path().map_err(at)?.to_string_lossy().into_owned();
                let path = raw.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
                f(layer, path, entry)?;
            }
        }
        Ok(())
    }

    pub fn open_layer(&self, layer: &Descriptor) -> Result<Box<dyn Read>, StoreError> {
        let blob = io::BufReader::new(self.open_blob(&layer.digest)?);
        Ok(match oci::LayerEncoding::of_media_type(&layer.media_type) {
            Some(oci::LayerEncoding::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(blob)),
            _ => Box::new(blob),
        })
    }

    fn read_err(&self, d: &Digest, path: &Path, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::NotFound {
            StoreError::Missing { digest: d.clone(), path: path.to_owned() }
        } else {
            StoreError::Io { path: path.to_owned(), source: e }
        }
    }

    /// Reads and parses a JSON blob (manifest, config), verified.
    pub fn read_json<T: for<'de> Deserialize<'de>>(&self, d: &Digest) -> Result<T, StoreError> {
        let bytes = self.read_blob(d)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Invalid { path: self.blob_path(d), message: e.to_string() })
    }

    pub fn index(&self) -> Result<Index, StoreError> {
        let path = self.layout().join("index.json");
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Invalid { path, message: e.to_string() })
    }

    fn write_index(&self, index: &Index) -> Result<(), StoreError> {
        let mut bytes = serde_json::to_vec_pretty(index).unwrap_or_default();
        bytes.push(b'\n');
        self.write_atomic(&self.layout().join("index.json"), &bytes)
    }

    /// Takes the store-wide lock (released when the guard drops).
    pub fn lock(&self) -> Result<File, StoreError> {
        let path = self.home.join("lock");
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
        f.lock().map_err(io_err(&path))?;
        Ok(f)
    }

    /// Points each of `tags` at `manifest`. Refuses, changing nothing, if any
    /// tag points elsewhere and `force` is off. Returns the changes made.
    pub fn set_tags(
        &self,
        tags: &[String],
        manifest: &Descriptor,
        force: bool,
        now: i64,
    ) -> Result<Vec<TagEvent>, StoreError> {
        let _guard = self.lock()?;
        let mut index = self.index()?;
        check_tags(&index, tags, manifest, force)?;
        let mut events = Vec::new();
        for tag in tags {
            let from = tag_target(&index, tag);
            if from.as_ref() == Some(&manifest.digest) {
                continue;
            }
            index.manifests.retain(|m| m.annotation(oci::ANNOTATION_REF_NAME) != Some(tag.as_str()));
            let mut d = Descriptor::new(oci::MEDIA_MANIFEST, manifest.digest.clone(), manifest.size);
            d.annotations = Some(BTreeMap::from([(oci::ANNOTATION_REF_NAME.to_owned(), tag.clone())]));
            index.manifests.push(d);
            let forced = from.is_some();
            events.push(TagEvent {
                time: crate::time::rfc3339(now),
                tag: tag.clone(),
                from,
                to: manifest.digest.clone(),
                forced,
            });
        }
        if events.is_empty() {
            return Ok(events);
        }
        // Log first: a crash between the two leaves a logged change that did
        // not happen, never an unlogged one that did.
        self.append_tag_log(&events)?;
        self.write_index(&index)?;
        Ok(events)
    }

    /// Whether [`Store::set_tags`] would accept these tags, changing nothing.
    pub fn check_tags(&self, tags: &[String], manifest: &Descriptor, force: bool) -> Result<(), StoreError> {
        check_tags(&self.index()?, tags, manifest, force)
    }

    fn append_tag_log(&self, events: &[TagEvent]) -> Result<(), StoreError> {
        let path = self.home.join("meta/tags.log");
        let mut buf = Vec::new();
        for e in events {
            buf.extend(serde_json::to_vec(e).unwrap_or_default());
            buf.push(b'\n');
        }
        let mut f = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        f.write_all(&buf).and_then(|()| f.sync_data()).map_err(io_err(&path))
    }

    /// Every recorded tag change, oldest first.
    pub fn tag_log(&self) -> Result<Vec<TagEvent>, StoreError> {
        let path = self.home.join("meta/tags.log");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| StoreError::Invalid { path: path.clone(), message: format!("line {}: {e}", i + 1) })
            })
            .collect()
    }

    /// The next build number for image `name` (1, 2, …), persisted.
    pub fn next_build_number(&self, name: &str) -> Result<u64, StoreError> {
        let _guard = self.lock()?;
        let path = self.home.join("meta/builds.json");
        let mut numbers: BTreeMap<String, u64> = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError::Invalid { path: path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let n = numbers.get(name).copied().unwrap_or(0) + 1;
        numbers.insert(name.to_owned(), n);
        self.write_atomic(&path, &serde_json::to_vec_pretty(&numbers).unwrap_or_default())?;
        Ok(n)
    }

    /// Tags grouped by manifest digest, in index order.
    pub fn tagged(&self) -> Result<Vec<(Descriptor, Vec<String>)>, StoreError> {
        let index = self.index()?;
        let mut out: Vec<(Descriptor, Vec<String>)> = Vec::new();
        for m in index.manifests {
            let tag = m.annotation(oci::ANNOTATION_REF_NAME).map(str::to_owned);
            match out.iter_mut().find(|(d, _)| d.digest == m.digest) {
                Some((_, tags)) => tags.extend(tag),
                None => out.push((m, tag.into_iter().collect())),
            }
        }
        Ok(out)
    }

    /// Resolves a tag (`name:tag`), a digest or a unique digest prefix (at
    /// least 6 hex digits) to a manifest descriptor and its tags.
    pub fn resolve(&self, reference: &str) -> Result<(Descriptor, Vec<String>), StoreError> {
        let all = self.tagged()?;
        if let Some(found) = all.iter().find(|(_, tags)| tags.iter().any(|t| t == reference)) {
            return Ok(found.clone());
        }
        // A bare image name means its newest build.
        if crate::spec::valid_image_name(reference) {
            let prefix = format!("{reference}:b");
            let newest = all
                .iter()
                .flat_map(|(d, tags)| tags.iter().map(move |t| (d, t)))
                .filter_map(|(d, t)| Some((t.strip_prefix(&prefix)?.parse::<u64>().ok()?, d)))
                .max_by_key(|(n, _)| *n);
            if let Some((_, d)) = newest {
                if let Some(found) = all.iter().find(|(x, _)| x.digest == d.digest) {
                    return Ok(found.clone());
                }
            }
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<_> = all.iter().filter(|(d, _)| d.digest.hex().starts_with(hex)).collect();
            match hits.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                many => {
                    return Err(StoreError::Ambiguous {
                        reference: reference.to_owned(),
                        candidates: many.iter().map(|(d, _)| d.digest.to_string()).collect(),
                    })
                }
            }
            if let Ok(d) = Digest::parse(&format!("sha256:{hex}")) {
                if self.has_blob(&d) {
                    let m: Manifest = self.read_json(&d)?;
                    let size = self.read_blob(&d)?.len() as u64;
                    let mt = m.media_type.unwrap_or_else(|| oci::MEDIA_MANIFEST.to_owned());
                    return Ok((Descriptor::new(&mt, d, size), Vec::new()));
                }
            }
        }
        Err(StoreError::NotFound(reference.to_owned()))
    }

    /// Digests named as roots in `meta/archive/` (images kept for rollback
    /// without a tag). Each file there is named by a digest's hex.
    fn archived(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.home.join("meta/archive");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Io { path: dir, source: e }),
        };
        let mut out = Vec::new();
        for e in entries {
            let name = e.map_err(io_err(&dir))?.file_name();
            if let Ok(d) = Digest::parse(&format!("sha256:{}", name.to_string_lossy())) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Removes every blob that no tag and no archive record reaches, and
    /// cache records whose blobs are gone. With `dry_run`, only reports.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport, StoreError> {
        let _guard = self.lock()?;
        let mut roots: Vec<Digest> = self.index()?.manifests.into_iter().map(|m| m.digest).collect();
        roots.extend(self.archived()?);
        let mut live = BTreeSet::new();
        while let Some(d) = roots.pop() {
            if !live.insert(d.clone()) {
                continue;
            }
            // A manifest or index: follow its references. Anything else is a leaf.
            let bytes = self.read_blob(&d)?;
            if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
                roots.push(m.config.digest);
                roots.extend(m.layers.into_iter().map(|l| l.digest));
            } else if let Ok(i) = serde_json::from_slice::<Index>(&bytes) {
                roots.extend(i.manifests.into_iter().map(|m| m.digest));
            }
        }
        let mut report = GcReport::default();
        let blobs = self.layout().join("blobs/sha256");
        let mut names: Vec<_> =
            fs::read_dir(&blobs).map_err(io_err(&blobs))?.collect::<Result<_, _>>().map_err(io_err(&blobs))?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let Ok(d) = Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())) else { continue };
            if live.contains(&d) {
                report.kept += 1;
                continue;
            }
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            if !dry_run {
                fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
            }
            report.freed_bytes += size;
            report.removed.push((d, size));
        }
        if !dry_run {
            self.prune_cache()?;
            let tmp = self.tmp_dir();
            for e in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
                let p = e.path();
                let _ = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            }
        }
        Ok(report)
    }

    fn prune_cache(&self) -> Result<(), StoreError> {
        let dir = self.cache_dir().join("steps");
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let keep = fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<CachedLayer>(&b).ok())
                .is_some_and(|c| self.has_blob(&c.digest));
            if !keep {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Looks up a step's cached layer. A record whose blob is gone is a
    /// miss; a blob that no longer matches its digest is an error naming it
    /// (the caller rebuilds it), so a corrupted blob is never reused.
    pub fn cache_get(&self, key: &Digest) -> Result<Option<CachedLayer>, StoreError> {
        let Ok(bytes) = fs::read(self.cache_dir().join("steps").join(key.hex())) else { return Ok(None) };
        let Ok(c) = serde_json::from_slice::<CachedLayer>(&bytes) else { return Ok(None) };
        match self.verify_blob(&c.digest) {
            Ok(()) => Ok(Some(c)),
            Err(StoreError::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Hashes a stored blob and checks it against its digest.
    pub fn verify_blob(&self, d: &Digest) -> Result<(), StoreError> {
        let path = self.blob_path(d);
        let f = File::open(&path).map_err(|e| self.read_err(d, &path, e))?;
        let mut r = HashingReader::new(io::BufReader::with_capacity(256 * 1024, f));
        io::copy(&mut r, &mut io::sink()).map_err(io_err(&path))?;
        let (actual, _) = r.finish();
        if &actual != d {
            return Err(StoreError::Corrupt { digest: d.clone(), actual, path });
        }
        Ok(())
    }

    pub fn cache_put(&self, key: &Digest, layer: &CachedLayer) -> Result<(), StoreError> {
        self.write_atomic(
            &self.cache_dir().join("steps").join(key.hex()),
            &serde_json::to_vec(layer).unwrap_or_default(),
        )
    }
}

/// A cached step result: the layer it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLayer {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

/// Writes a blob through a temp file; [`BlobWriter::commit`] moves it into
/// place under its digest. Dropped without commit, it leaves nothing.
#[derive(Debug)]
pub struct BlobWriter {
    store: Store,
    tmp: PathBuf,
    inner: Option<HashingWriter<BufWriter<File>>>,
}

impl BlobWriter {
    /// Flushes, syncs and renames the blob into place.
    pub fn commit(self) -> Result<(Digest, u64), StoreError> {
        self.commit_checked(None)
    }

    /// Like [`BlobWriter::commit`], but only if the content is `expected`
    /// (a blob fetched from elsewhere); otherwise nothing is stored.
    pub fn commit_as(self, expected: &Digest) -> Result<(Digest, u64), StoreError> {
        self.commit_checked(Some(expected))
    }

    fn commit_checked(mut self, expected: Option<&Digest>) -> Result<(Digest, u64), StoreError> {
        let Some(inner) = self.inner.take() else {
            return Err(StoreError::Invalid {
                path: self.tmp.clone(),
                message: "blob writer already committed".into(),
            });
        };
        let (buf, digest, size) = inner.finish();
        if let Some(e) = expected.filter(|e| **e != digest) {
            let _ = fs::remove_file(&self.tmp);
            return Err(StoreError::Corrupt { digest: e.clone(), actual: digest, path: self.tmp.clone() });
        }
        let file = buf.into_inner().map_err(|e| StoreError::Io { path: self.tmp.clone(), source: e.into_error() })?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        let dest = self.store.blob_path(&digest);
        fs::rename(&self.tmp, &dest).map_err(io_err(&dest))?;
        sync_dir(&dest).map_err(io_err(&dest))?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Some(w) => w.write(buf),
            None => Err(io::Error::other("blob writer already committed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A reader that checks, at end of stream, that what it read hashes to the
/// expected digest, and fails with an error naming the blob if not.
#[derive(Debug)]
pub struct VerifiedReader<R> {
    inner: Option<HashingReader<R>>,
    expected: Digest,
    path: PathBuf,
}

impl<R: Read> VerifiedReader<R> {
    pub fn new(inner: R, expected: Digest, path: PathBuf) -> Self {
        VerifiedReader { inner: Some(HashingReader::new(inner)), expected, path }
    }
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(inner) = &mut self.inner else { return Ok(0) };
        let n = inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let (actual, _) = self.inner.take().map(HashingReader::finish).unwrap_or((self.expected.clone(), 0));
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "blob {} is corrupted: its content hashes to {actual} ({})",
                        self.expected,
                        self.path.display()
                    ),
                ));
            }
        }
        Ok(n)
    }
}

fn tag_target(index: &Index, tag: &str) -> Option<Digest> {
    index.manifests.iter().find(|m| m.annotation(oci::ANNOTATION_REF_NAME) == Some(tag)).map(|m| m.digest.clone())
}

fn check_tags(index: &Index, tags: &[String], manifest: &Descriptor, force: bool) -> Result<(), StoreError> {
    if force {
        return Ok(());
    }
    for tag in tags {
        match tag_target(index, tag) {
            Some(d) if d != manifest.digest => {
                return Err(StoreError::TagConflict { tag: tag.clone(), current: d, new: manifest.digest.clone() })
            }
            _ => {}
        }
    }
    Ok(())
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
