//! kiln's own copy of the OSV vulnerability database, `$KILN_HOME/osv`:
//! `kiln db update` fetches osv.dev's per-ecosystem exports
//! (`<source>/<Ecosystem>/all.zip`, or a mirror's) over HTTPS, checks every
//! record, and writes a new generation: each record once, one per line,
//! and an index by (ecosystem, package), so `kiln scan` reads only the
//! records about an image's packages. The generation is switched to in one
//! rename (`osv/current`); a failed update leaves the current one as it
//! was.
//!
//! For: fetching, checking and storing the exports. Must never: replace
//! the current database with one that did not check out whole, or read
//! anything but `https://` (an export is the scan's ground truth).

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::osv::{self, StoredIndex};
use crate::digest::{Digest, Hasher};
use crate::net::{http, tls};

/// osv.dev's exports, one `all.zip` per ecosystem.
pub const DEFAULT_SOURCE: &str = "https://osv-vulnerabilities.storage.googleapis.com";
/// The ecosystems `kiln scan` matches: Debian and Alpine packages, the
/// crates of cargo-auditable binaries, Go modules.
pub const ECOSYSTEMS: &[&str] = &["Debian", "Alpine", "crates.io", "Go"];
/// An export larger than this is refused.
const MAX_EXPORT: u64 = 4 << 30;

/// Why an update failed, naming the URL or the file; the current database
/// is untouched.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{url}: not an https:// URL (the database is fetched over HTTPS only)")]
    NotHttps { url: String },
    #[error("{url}: {source}")]
    Fetch { url: String, source: io::Error },
    #[error("{url}: answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {why}")]
    Invalid { url: String, why: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("--ca {}: {detail}", path.display())]
    Ca { path: PathBuf, detail: String },
    #[error("--ecosystem {name:?}: kiln matches {}", ECOSYSTEMS.join(", "))]
    Ecosystem { name: String },
}

/// One export fetched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Export {
    pub ecosystem: String,
    pub url: String,
    pub bytes: u64,
    pub sha256: Digest,
    pub records: usize,
}

/// What `kiln db update` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Updated {
    /// The new generation (`osv/current` points to it).
    pub path: PathBuf,
    pub exports: Vec<Export>,
    pub records: usize,
    /// RFC 3339: the newest `modified` of any record.
    pub newest_record: Option<String>,
    pub age_days: Option<i64>,
    pub duration_ms: u64,
}

/// Where kiln keeps the database.
pub fn dir(home: &Path) -> PathBuf {
    home.join("osv")
}

/// The current database, if `kiln db update` has written one.
pub fn current(home: &Path) -> Option<PathBuf> {
    let p = dir(home).join("current");
    p.join(osv::INDEX).is_file().then_some(p)
}

/// Fetches `ecosystems` (all of [`ECOSYSTEMS`] when empty) from `source`
/// (osv.dev's bucket, or a mirror laid out the same way; `ca` an extra CA
/// for it), checks every record, and makes the result current.
pub fn update(
    home: &Path,
    source: &str,
    ca: Option<&Path>,
    ecosystems: &[String],
    now: i64,
) -> Result<Updated, DbError> {
    let started = Instant::now();
    let source = source.trim_end_matches('/');
    if tls::split_https_url(source).is_none() {
        return Err(DbError::NotHttps { url: source.to_owned() });
    }
    let names: Vec<String> =
        if ecosystems.is_empty() { ECOSYSTEMS.iter().map(|s| (*s).to_owned()).collect() } else { ecosystems.to_vec() };
    if let Some(bad) = names.iter().find(|n| !ECOSYSTEMS.contains(&n.as_str())) {
        return Err(DbError::Ecosystem { name: bad.clone() });
    }
    let config = tls::client_config(ca).map_err(|e| DbError::Ca { path: e.path, detail: e.detail })?;
    let root = dir(home);
    let gen = root.join(format!("gen-{now}-{}", std::process::id()));
    let io_at = |path: &Path| {
        let path = path.to_owned();
        move |source| DbError::Io { path: path.clone(), source }
    };
    fs::create_dir_all(&gen).map_err(io_at(&gen))?;
    let result = fill(&gen, source, &config, &names);
    let (exports, index) = match result {
        Ok(x) => x,
        Err(e) => {
            let _ = fs::remove_dir_all(&gen);
            return Err(e);
        }
    };
    // Switch: a new symlink renamed over the old one, then the old
    // generations removed.
    let link = root.join("current");
    let tmp = root.join(format!("current.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let gen_name = gen.file_name().map(PathBuf::from).unwrap_or_default();
    std::os::unix::fs::symlink(&gen_name, &tmp).map_err(io_at(&tmp))?;
    fs::rename(&tmp, &link).map_err(io_at(&link))?;
    for e in fs::read_dir(&root).map_err(io_at(&root))?.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with("gen-") && name != gen_name.as_os_str() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    Ok(Updated {
        path: gen,
        exports,
        records: index.records,
        newest_record: index.newest_modified.map(crate::time::rfc3339),
        age_days: index.newest_modified.map(|t| (now - t).max(0) / 86_400),
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Fetches each export into `gen` and writes the records and the index.
fn fill(
    gen: &Path,
    source: &str,
    config: &std::sync::Arc<rustls::ClientConfig>,
    names: &[String],
) -> Result<(Vec<Export>, StoredIndex), DbError> {
    let mut index = StoredIndex { format: 1, ..StoredIndex::default() };
    let mut exports = Vec::new();
    for (file_no, eco) in names.iter().enumerate() {
        let url = format!("{source}/{eco}/all.zip");
        let zip_path = gen.join(format!("{eco}.zip.part"));
        let (bytes, sha256) = fetch(&url, config, &zip_path)?;
        let zip = fs::read(&zip_path).map_err(|source| DbError::Io { path: zip_path.clone(), source })?;
        let _ = fs::remove_file(&zip_path);
        let lines_name = format!("{eco}.jsonl");
        let lines_path = gen.join(&lines_name);
        let file = fs::File::create(&lines_path).map_err(|source| DbError::Io { path: lines_path.clone(), source })?;
        let mut out = BufWriter::new(file);
        let mut offset = 0u64;
        let mut records = 0usize;
        let mut failed: Option<DbError> = None;
        let invalid = |why: String| DbError::Invalid { url: url.clone(), why };
        osv::unzip_each(&zip, &mut |name, mut data| {
            if !name.ends_with(".json") {
                return Ok(());
            }
            let a = match osv::parse_record(name, &data) {
                Ok(a) => a,
                Err(e) => {
                    failed = Some(invalid(e.to_string()));
                    return Err(String::new());
                }
            };
            if a.withdrawn.is_some() {
                return Ok(());
            }
            // One line per record: a newline in JSON is only ever
            // whitespace (inside strings it is escaped).
            for b in data.iter_mut().filter(|b| matches!(**b, b'\n' | b'\r')) {
                *b = b' ';
            }
            data.push(b'\n');
            if let Err(e) = out.write_all(&data) {
                failed = Some(DbError::Io { path: lines_path.clone(), source: e });
                return Err(String::new());
            }
            let len = data.len() as u64 - 1;
            for p in a.affected.iter().filter_map(|x| x.package.as_ref()) {
                let spots = index.packages.entry(p.ecosystem.clone()).or_default().entry(p.name.clone()).or_default();
                if spots.last() != Some(&(file_no, offset, len)) {
                    spots.push((file_no, offset, len));
                }
            }
            if let Some(s) = osv::cvss_of(&a.severity) {
                index.scores.insert(a.id.clone(), s);
            }
            if let Some(m) = crate::time::parse_rfc3339(&a.modified) {
                index.newest_modified = Some(index.newest_modified.map_or(m, |n: i64| n.max(m)));
            }
            offset += data.len() as u64;
            records += 1;
            Ok(())
        })
        .map_err(|why| failed.take().unwrap_or_else(|| invalid(format!("not an OSV export: {why}"))))?;
        if records == 0 {
            return Err(invalid("no OSV record in it".into()));
        }
        out.flush().map_err(|source| DbError::Io { path: lines_path.clone(), source })?;
        out.get_ref().sync_all().map_err(|source| DbError::Io { path: lines_path.clone(), source })?;
        index.files.push(lines_name);
        index.records += records;
        exports.push(Export { ecosystem: eco.clone(), url, bytes, sha256, records });
    }
    let ipath = gen.join(osv::INDEX);
    let text = serde_json::to_vec(&index).map_err(|e| DbError::Io { path: ipath.clone(), source: e.into() })?;
    fs::write(&ipath, text).map_err(|source| DbError::Io { path: ipath.clone(), source })?;
    Ok((exports, index))
}

/// GETs `url` into `path`, hashing as it goes; (bytes, sha256).
fn fetch(url: &str, config: &std::sync::Arc<rustls::ClientConfig>, path: &Path) -> Result<(u64, Digest), DbError> {
    let (authority, _, target) = tls::split_https_url(url).ok_or_else(|| DbError::NotHttps { url: url.to_owned() })?;
    let fetch_err = |source| DbError::Fetch { url: url.to_owned(), source };
    let stream = tls::connect(&authority, Some(config), Duration::from_secs(60)).map_err(fetch_err)?;
    let req = http::Outgoing { method: "GET", target: &target, host: &authority, headers: &[], body: http::Body::None };
    let r = http::send(stream, req).map_err(fetch_err)?;
    if r.status != 200 {
        return Err(DbError::Status { url: url.to_owned(), status: r.status });
    }
    let file = fs::File::create(path).map_err(|source| DbError::Io { path: path.to_owned(), source })?;
    let mut w = HashingWriter { inner: BufWriter::new(file), hasher: Hasher::new() };
    let n = r.copy_to(&mut w, MAX_EXPORT).map_err(fetch_err)?;
    w.inner.flush().map_err(|source| DbError::Io { path: path.to_owned(), source })?;
    Ok((n, w.hasher.finish()))
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
