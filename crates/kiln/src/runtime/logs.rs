//! Central instance logs.
//!
//! A container writes its stdout and stderr straight into
//! `instances/<id>/{stdout,stderr}.log` (no process in between, so nothing
//! is lost if kiln or the shim dies). [`LogStore::ingest`] moves complete
//! lines from there into `$KILN_HOME/logs/<id>.jsonl`, each tagged with
//! time, service, instance, image digest, git revision, release and stream;
//! those files outlive their instance. The shim ingests every 200 ms, and
//! `kiln logs` catches up whatever is left, so line times are ingestion
//! times (within ~200 ms of the write while the shim lives).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a line came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMeta {
    pub service: String,
    pub instance: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Unix milliseconds.
    pub ts: i64,
    #[serde(flatten)]
    pub meta: LogMeta,
    pub stream: String,
    pub line: String,
}

/// Which lines `kiln logs` (and `GET /v1/logs`) shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFilter {
    pub service: Option<String>,
    /// A release id (`web-3`).
    #[serde(default)]
    pub release: Option<String>,
    /// An instance id or a unique prefix of one.
    pub instance: Option<String>,
    /// An image digest, with or without `sha256:`, or a prefix.
    pub image: Option<String>,
    /// Unix milliseconds.
    pub since: Option<i64>,
}

impl LogFilter {
    pub fn matches(&self, l: &LogLine) -> bool {
        self.service.as_ref().is_none_or(|s| *s == l.meta.service)
            && self.release.as_ref().is_none_or(|r| l.meta.release.as_ref() == Some(r))
            && self.instance.as_ref().is_none_or(|i| l.meta.instance.starts_with(i.as_str()))
            && self.image.as_ref().is_none_or(|d| {
                let want = d.strip_prefix("sha256:").unwrap_or(d);
                l.meta.image.strip_prefix("sha256:").unwrap_or(&l.meta.image).starts_with(want)
            })
            && self.since.is_none_or(|s| l.ts >= s)
    }
}

/// How much log to keep; applies to instances that no longer exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_bytes: u64,
    pub max_age_secs: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_bytes: 1 << 30, max_age_secs: 7 * 86_400 }
    }
}

#[derive(Debug, Clone)]
pub struct LogStore {
    dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Offsets {
    stdout: u64,
    stderr: u64,
}

impl LogStore {
    pub fn new(home: &Path) -> Self {
        LogStore { dir: home.join("logs") }
    }

    /// Moves new complete lines of an instance's raw files into the store.
    /// With `last`, a final line without a newline is taken too. Returns
    /// how many lines were ingested.
    pub fn ingest(&self, meta: &LogMeta, instance_dir: &Path, now_ms: i64, last: bool) -> io::Result<usize> {
        fs::create_dir_all(&self.dir)?;
        let lock = File::create(self.dir.join(format!("{}.lock", meta.instance)))?;
        lock.lock()?;
        let off_path = self.dir.join(format!("{}.offsets", meta.instance));
        let mut offsets: Offsets =
            fs::read(&off_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let before = (offsets.stdout, offsets.stderr);
        let mut out = Vec::new();
        let mut count = 0;
        for (stream, offset) in [("stdout", &mut offsets.stdout), ("stderr", &mut offsets.stderr)] {
            let path = instance_dir.join(format!("{stream}.log"));
            let Ok(mut f) = File::open(&path) else { continue };
            f.seek(SeekFrom::Start(*offset))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            let end = if last { buf.len() } else { buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) };
            for raw in buf[..end].split(|&b| b == b'\n') {
                if raw.is_empty() {
                    continue;
                }
                let line = LogLine {
                    ts: now_ms,
                    meta: meta.clone(),
                    stream: stream.to_owned(),
                    line: String::from_utf8_lossy(raw.strip_suffix(b"\r").unwrap_or(raw)).into_owned(),
                };
                out.extend(serde_json::to_vec(&line).unwrap_or_default());
                out.push(b'\n');
                count += 1;
            }
            *offset += end as u64;
        }
        if count > 0 {
            let path = self.dir.join(format!("{}.jsonl", meta.instance));
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            f.write_all(&out)?;
            f.sync_data()?;
        }
        // Nothing new (an agent ingests every round): nothing to write.
        if (offsets.stdout, offsets.stderr) == before && off_path.exists() {
            return Ok(count);
        }
        // Offsets after the lines: a crash in between repeats lines, never loses them.
        let tmp = off_path.with_extension("offsets.tmp");
        fs::write(&tmp, serde_json::to_vec(&offsets).unwrap_or_default())?;
        fs::rename(&tmp, &off_path)?;
        Ok(count)
    }

    /// Every stored line matching `filter`, oldest first.
    pub fn query(&self, filter: &LogFilter) -> io::Result<Vec<LogLine>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "jsonl") {
                continue;
            }
            if let Some(i) = &filter.instance {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                if !stem.starts_with(i.as_str()) {
                    continue;
                }
            }
            for line in fs::read_to_string(&path)?.lines() {
                if let Ok(l) = serde_json::from_str::<LogLine>(line) {
                    if filter.matches(&l) {
                        out.push(l);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.meta.instance.cmp(&b.meta.instance)));
        Ok(out)
    }

    /// Deletes the logs of instances not in `live`, oldest first, until they
    /// are younger than the max age and all logs fit the max size.
    pub fn prune(&self, retention: &Retention, now_secs: i64, live: &HashSet<String>) -> io::Result<Vec<String>> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Ok(Vec::new()) };
        let mut files = Vec::new();
        let mut total = 0u64;
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "jsonl") {
                continue;
            }
            let m = e.metadata()?;
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            total += m.len();
            let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            files.push((mtime, m.len(), id, path));
        }
        files.sort();
        let mut removed = Vec::new();
        for (mtime, len, id, path) in files {
            if live.contains(&id) {
                continue;
            }
            if total > retention.max_bytes || now_secs - mtime > retention.max_age_secs {
                fs::remove_file(&path)?;
                for ext in ["offsets", "lock"] {
                    let _ = fs::remove_file(self.dir.join(format!("{id}.{ext}")));
                }
                total -= len;
                removed.push(id);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> LogMeta {
        LogMeta {
            service: "web".into(),
            instance: id.into(),
            image: "sha256:abcd".into(),
            revision: Some("r1".into()),
            release: None,
        }
    }

    #[test]
    fn ingests_complete_lines_once_and_the_tail_at_the_end() {
        let home = kiln_testutil::tempdir("logs");
        let inst = home.join("inst");
        fs::create_dir_all(&inst).unwrap();
        fs::write(inst.join("stdout.log"), "one\ntwo\npart").unwrap();
        fs::write(inst.join("stderr.log"), "oops\n").unwrap();
        let s = LogStore::new(&home);
        assert_eq!(s.ingest(&meta("web-1"), &inst, 1000, false).unwrap(), 3);
        assert_eq!(s.ingest(&meta("web-1"), &inst, 2000, false).unwrap(), 0, "nothing new, the partial line waits");
        let mut f = OpenOptions::new().append(true).open(inst.join("stdout.log")).unwrap();
        f.write_all(b"ial\nfinal-no-newline").unwrap();
        assert_eq!(s.ingest(&meta("web-1"), &inst, 3000, false).unwrap(), 1);
        assert_eq!(s.ingest(&meta("web-1"), &inst, 4000, true).unwrap(), 1);
        let all = s.query(&LogFilter::default()).unwrap();
        let lines: Vec<&str> = all.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(lines, vec!["one", "two", "oops", "partial", "final-no-newline"]);
        assert_eq!(all[2].stream, "stderr");
        assert_eq!(all[0].meta.revision.as_deref(), Some("r1"));
        let since = s.query(&LogFilter { since: Some(2500), ..Default::default() }).unwrap();
        assert_eq!(since.len(), 2);
        assert!(s.query(&LogFilter { image: Some("abce".into()), ..Default::default() }).unwrap().is_empty());
        assert_eq!(s.query(&LogFilter { image: Some("sha256:ab".into()), ..Default::default() }).unwrap().len(), 5);
        fs::remove_dir_all(home).unwrap();
    }

    #[test]
    fn prune_keeps_live_instances_and_drops_old_or_excess() {
        let home = kiln_testutil::tempdir("logs");
        let s = LogStore::new(&home);
        fs::create_dir_all(home.join("logs")).unwrap();
        for id in ["a", "b", "c"] {
            fs::write(home.join(format!("logs/{id}.jsonl")), vec![b'x'; 100]).unwrap();
        }
        let live: HashSet<String> = ["a".to_owned()].into();
        let now = crate::time::now_secs();
        let r = s.prune(&Retention { max_bytes: 1000, max_age_secs: 3600 }, now, &live).unwrap();
        assert!(r.is_empty());
        let mut r = s.prune(&Retention { max_bytes: 150, max_age_secs: 3600 }, now, &live).unwrap();
        r.sort();
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(home.join("logs/a.jsonl").exists(), "a live instance's log is kept");
        fs::remove_dir_all(home).unwrap();
    }
}
