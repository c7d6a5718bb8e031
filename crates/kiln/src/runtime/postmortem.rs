//! Keeping a quarantined instance for a post-mortem: once it is frozen,
//! what it changed (its tmpfs mounts and its volumes), its log lines and
//! its record are copied under `$KILN_HOME/quarantine/<id>/`, so they
//! survive the instance and its replacement writing to the same volumes.
//! Secrets are never copied. This module copies; it never decides who is
//! quarantined.

use std::fs;
use std::io;
use std::path::Path;

use super::logs::LogFilter;
use super::{InstanceRecord, RunError, Runtime};

/// At most this much file content is kept per instance.
pub const KEEP_BYTES: u64 = 64 << 20;

/// What was kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Kept {
    pub files: u64,
    pub bytes: u64,
    /// Files left out past [`KEEP_BYTES`].
    pub skipped: u64,
    pub log_lines: u64,
}

fn copy_tree(from: &Path, to: &Path, skip: &[&Path], kept: &mut Kept) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(from) else { return Ok(()) };
    fs::create_dir_all(to)?;
    for e in entries {
        let e = e?;
        let src = e.path();
        if skip.iter().any(|s| src == *s) {
            continue;
        }
        let dst = to.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_dir() {
            copy_tree(&src, &dst, skip, kept)?;
        } else if ft.is_symlink() {
            let _ = std::os::unix::fs::symlink(fs::read_link(&src)?, &dst);
        } else if ft.is_file() {
            let len = e.metadata()?.len();
            if kept.bytes + len > KEEP_BYTES {
                kept.skipped += 1;
                continue;
            }
            fs::copy(&src, &dst)?;
            kept.files += 1;
            kept.bytes += len;
        }
    }
    Ok(())
}

impl Runtime<'_> {
    /// Copies a (frozen) instance's tmpfs and volume contents, logs and
    /// record into `dir`.
    pub fn keep_for_postmortem(&self, r: &InstanceRecord, dir: &Path) -> Result<Kept, RunError> {
        let io_err = |source| RunError::Io { path: dir.to_owned(), source };
        fs::create_dir_all(dir).map_err(io_err)?;
        let mut kept = Kept::default();
        if let Some(pid) = self.container_pid(&r.id) {
            // The instance's own view of its mounts, through its root.
            let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
            let secrets = root.join("run/secrets");
            for m in ["tmp", "run"] {
                copy_tree(&root.join(m), &dir.join("tmpfs").join(m), &[&secrets], &mut kept).map_err(io_err)?;
            }
        }
        for (name, _) in &r.volumes {
            let src = self.home.join("volumes").join(&r.service).join(name);
            copy_tree(&src, &dir.join("volumes").join(name), &[], &mut kept).map_err(io_err)?;
        }
        let idir = self.instance_dir(&r.id);
        let _ = self.logs().ingest(&self.log_meta(r), &idir, super::now_ms(), false);
        let filter = LogFilter { instance: Some(r.id.to_string()), ..LogFilter::default() };
        let lines = self.logs().query(&filter).map_err(io_err)?;
        let mut out = String::new();
        for l in &lines {
            out.push_str(&serde_json::to_string(l).unwrap_or_default());
            out.push('\n');
        }
        kept.log_lines = lines.len() as u64;
        fs::write(dir.join("logs.jsonl"), out).map_err(io_err)?;
        fs::write(dir.join("instance.json"), serde_json::to_vec_pretty(r).unwrap_or_default()).map_err(io_err)?;
        Ok(kept)
    }

    /// The names of the environment variables an instance was started
    /// with (never their values: some are secrets), from its bundle.
    pub fn env_names(&self, r: &InstanceRecord) -> Vec<String> {
        // The bundle is gone once the container runs (it held secret
        // values); the process's own initial environment is the truth.
        let Some(pid) = self.container_pid(&r.id) else { return Vec::new() };
        let bytes = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let mut names: Vec<String> = bytes
            .split(|b| *b == 0)
            .filter_map(|e| std::str::from_utf8(e).ok()?.split('=').next().filter(|n| !n.is_empty()).map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}
