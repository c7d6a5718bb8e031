//! The controller's state file, `$KILN_HOME/state.db`, and in it the
//! release history: an append-only, hash-chained log of every release.
//!
//! SQLite (bundled, so every host has the same one) in WAL mode with
//! `synchronous=FULL`: a committed entry survives a power cut, and a reader
//! (`kiln history`, or a person with `sqlite3 state.db`) never blocks the
//! controller. The schema version is `PRAGMA user_version`; [`migrate`]
//! brings an older file forward in one transaction and refuses a newer one.
//!
//! Each entry's `hash` is `sha256(prev_hash, seq, service, release, at_ms,
//! kind, body)` (each field length-prefixed) and names the hash of the
//! entry before it, so editing, removing or reordering an entry breaks the
//! chain at that entry, and [`History::verify`] names it. Entries are
//! written before the step they describe is taken (log before state).
//!
//! The chain cannot show that its newest entries were removed: the head is
//! anchored outside the database too. After each append its sequence
//! number and hash are appended (and synced) to `state.anchor` beside it,
//! a plain append-only text file, so a truncation of `state.db` alone is
//! named by `verify`; only an edit of both files together goes unseen.
//! This module must never update or delete an entry, nor rewrite the
//! anchor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};
use crate::heal::Cause;
use crate::release::analysis::Verdict;

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = 3;

/// The hash an empty chain starts from.
const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// What can go wrong with the state file, naming it.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{}: {source}", path.display())]
    Db { path: PathBuf, source: rusqlite::Error },
    #[error("{}: schema version {found} is newer than this kiln understands ({SCHEMA_VERSION}); upgrade kiln", path.display())]
    TooNew { path: PathBuf, found: i64 },
    #[error("{}: history entry {seq} (release {release}): {problem}", path.display())]
    Broken { path: PathBuf, seq: i64, release: String, problem: String },
    /// The history does not reach the head its anchor file holds
    /// (entries were removed from its end), or the anchor is gone.
    #[error("{}: {problem}", path.display())]
    Anchor { path: PathBuf, problem: String },
    #[error("{}: {source}", path.display())]
    AnchorIo { path: PathBuf, source: std::io::Error },
}

/// What happened, one entry each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A release began: what it deploys and who asked.
    Started {
        digest: String,
        tags: Vec<String>,
        revision: Option<String>,
        strategy: String,
        actor: String,
        /// The release it replaces, if any.
        previous: Option<String>,
        /// The service settings that changed with it, by name (`env.X
        /// changed`). Absent when none, so older entries hash as before.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        changed: Vec<String>,
    },
    /// Traffic moved: every release's weight at this step.
    Step { index: u32, weights: BTreeMap<String, u32> },
    /// A canary step's analysis, with its figures.
    Verdict {
        step: u32,
        verdict: Verdict,
        /// The release now waits for a person (inconclusive past
        /// `inconclusive_limit`). Absent when false, so older entries hash
        /// as they did.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        paused: bool,
    },
    /// The release ended.
    Finished {
        outcome: Outcome,
        reason: String,
        /// It failed because a step made no progress in time
        /// (`progress_deadline`). Absent when false, so entries written
        /// before the field existed hash as they did.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deadline: bool,
    },
    /// An instance of the release failed (or is recycled) and leaves;
    /// a replacement from the same digest follows.
    Replacing { instance: String, cause: Cause, detail: String },
    /// A replacement serves, `took_ms` after the failure.
    Replaced { instance: String, replacement: String, took_ms: u64 },
    /// Instances keep failing: replacements back off.
    CrashLoop { failures: u32, backoff_ms: u64 },
    /// An instance was frozen for a post-mortem.
    Quarantined { instance: String, reason: String, actor: String },
    /// A quarantined instance was destroyed (released or expired).
    Unquarantined { instance: String, actor: String },
    /// The service could not be reconciled (its load balancer cannot
    /// start, say); it is retried with backoff while the others go on.
    /// Recorded when it begins, not at every retry.
    Failing { error: String, retry_ms: u64 },
    /// A failing service reconciled again.
    Recovered { failed_ms: u64, attempts: u32 },
    /// The stable release's instance count changed (`replicas` alone
    /// changed: a scale, not a release).
    Scaled { from: u32, to: u32, actor: String },
    /// The service was taken down (`kiln down`): its instances drain and
    /// go, then its load balancer; with `purge` its volumes too.
    Down { actor: String, purge: bool },
    /// A certificate the service serves expires soon (`not_after`, Unix
    /// seconds): renew it before clients refuse it.
    CertExpiring { cert: String, not_after: i64, days_left: i64 },
    /// A certificate for `hosts` was obtained from the ACME CA at
    /// `directory`, valid until `not_after` (Unix seconds), and every
    /// host's load balancer is given it (a fleet's leading controller
    /// records it with the desired state that carries it).
    CertObtained { hosts: Vec<String>, not_after: i64, directory: String },
    /// A fleet host was set draining (`on`) or no longer: its slots move
    /// away surge-first. Fleet-wide: the entry names no service.
    Drain { host: String, on: bool, actor: String },
    /// A fleet host's lease expired; the leader moved these slots off it.
    HostLost { host: String, slots: Vec<String> },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Started { .. } => "started",
            Event::Step { .. } => "step",
            Event::Verdict { .. } => "verdict",
            Event::Finished { .. } => "finished",
            Event::Replacing { .. } => "replacing",
            Event::Replaced { .. } => "replaced",
            Event::CrashLoop { .. } => "crash_loop",
            Event::Quarantined { .. } => "quarantined",
            Event::Unquarantined { .. } => "unquarantined",
            Event::Failing { .. } => "failing",
            Event::Recovered { .. } => "recovered",
            Event::Down { .. } => "down",
            Event::Scaled { .. } => "scaled",
            Event::CertExpiring { .. } => "cert_expiring",
            Event::CertObtained { .. } => "cert_obtained",
            Event::Drain { .. } => "drain",
            Event::HostLost { .. } => "host_lost",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Succeeded,
    Failed,
    RolledBack,
    Aborted,
    Superseded,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::Aborted => "aborted",
            Outcome::Superseded => "superseded",
        }
    }
}

/// One entry of the log, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Entry {
    pub seq: i64,
    pub service: String,
    pub release: String,
    pub at_ms: i64,
    pub event: Event,
    pub prev_hash: String,
    pub hash: String,
}

/// The state file, open.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    db: Connection,
}

fn entry_hash(prev: &str, seq: i64, service: &str, release: &str, at_ms: i64, kind: &str, body: &str) -> Digest {
    let mut h = Hasher::new();
    for f in [prev.as_bytes(), &seq.to_be_bytes(), service.as_bytes(), release.as_bytes(), &at_ms.to_be_bytes()] {
        h.field(f);
    }
    h.field(kind.as_bytes());
    h.field(body.as_bytes());
    h.finish()
}

/// One entry as it is stored: its event still the exact text that was
/// hashed, so a check never depends on how this build serializes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub seq: i64,
    pub service: String,
    pub release: String,
    pub at_ms: i64,
    pub kind: String,
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

impl Stored {
    /// The entry after `last` (None: the first), chained to it.
    pub fn next(last: Option<(i64, &str)>, service: &str, release: &str, at_ms: i64, event: &Event) -> Stored {
        let (seq, prev_hash) = match last {
            Some((s, h)) => (s + 1, h.to_owned()),
            None => (1, GENESIS.to_owned()),
        };
        let body = serde_json::to_string(event).expect("history events serialize");
        let hash = entry_hash(&prev_hash, seq, service, release, at_ms, event.kind(), &body).to_string();
        Stored {
            seq,
            service: service.to_owned(),
            release: release.to_owned(),
            at_ms,
            kind: event.kind().to_owned(),
            body,
            prev_hash,
            hash,
        }
    }

    /// The entry with its event read.
    pub fn entry(&self) -> Result<Entry, serde_json::Error> {
        Ok(Entry {
            seq: self.seq,
            service: self.service.clone(),
            release: self.release.clone(),
            at_ms: self.at_ms,
            event: serde_json::from_str(&self.body)?,
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        })
    }
}

/// Where a chain breaks (the index of the entry in the rows checked), and
/// how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub index: usize,
    pub problem: String,
}

/// Checks a whole chain, entry 1 first: numbered without a gap, each
/// naming the hash of the one before it, each matching its own hash.
pub fn check_chain(rows: &[Stored]) -> Result<(), ChainBreak> {
    let mut prev = GENESIS;
    for (i, r) in rows.iter().enumerate() {
        let broken = |problem: String| ChainBreak { index: i, problem };
        let expect_seq = i as i64 + 1;
        if r.seq != expect_seq {
            return Err(broken(format!("expected entry {expect_seq} here: an entry was removed")));
        }
        if r.prev_hash != prev {
            return Err(broken("does not follow the entry before it: entries were removed or reordered".into()));
        }
        if entry_hash(&r.prev_hash, r.seq, &r.service, &r.release, r.at_ms, &r.kind, &r.body).as_str() != r.hash {
            return Err(broken("its contents do not match its hash: the entry was edited".into()));
        }
        prev = &r.hash;
    }
    Ok(())
}

/// Brings the schema to [`SCHEMA_VERSION`], one step per version, each in
/// the same transaction as its version bump.
fn migrate(db: &mut Connection, path: &Path) -> Result<(), HistoryError> {
    let err = |source| HistoryError::Db { path: path.to_owned(), source };
    let found: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
    if found > SCHEMA_VERSION {
        return Err(HistoryError::TooNew { path: path.to_owned(), found });
    }
    const STEPS: &[&str] = &[
        // 0 → 1: the history log and the archive of digests kept for rollback.
        "CREATE TABLE history (
            seq       INTEGER PRIMARY KEY,
            service   TEXT NOT NULL,
            release   TEXT NOT NULL,
            at_ms     INTEGER NOT NULL,
            kind      TEXT NOT NULL,
            body      TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash      TEXT NOT NULL UNIQUE
        );
        CREATE INDEX history_service ON history (service, seq);
        CREATE TABLE archive (
            digest  TEXT NOT NULL,
            service TEXT NOT NULL,
            release TEXT NOT NULL,
            at_ms   INTEGER NOT NULL,
            PRIMARY KEY (service, digest)
        );",
        // 1 → 2: the controller's current state per service (JSON), the
        // part of state that is not history: what serves, what is warm,
        // the release in progress and its step.
        "CREATE TABLE services (
            name       TEXT PRIMARY KEY,
            state      TEXT NOT NULL,
            updated_ms INTEGER NOT NULL
        );",
        // 2 → 3: no table; the head is anchored in `state.anchor` from
        // here on (History::open writes the first line).
        "SELECT 1;",
    ];
    for (v, sql) in STEPS.iter().enumerate().skip(found as usize) {
        let tx = db.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", v as i64 + 1).map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

impl History {
    /// Opens (creating and migrating as needed) the state file at `path`.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let err = |source| HistoryError::Db { path: path.to_owned(), source };
        let mut db = Connection::open(path).map_err(err)?;
        db.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        let mode: String = db.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(err(rusqlite::Error::InvalidParameterName(format!("journal_mode is {mode}, not wal"))));
        }
        db.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        let before: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
        migrate(&mut db, path)?;
        let h = History { path: path.to_owned(), db };
        // The first anchor: of a new file, or of one from before anchors
        // (trusted as it is then). Later, a missing anchor is reported.
        if before < 3 && !h.anchor_path().exists() {
            if let Some((seq, hash)) = h.head()? {
                h.anchor(seq, &hash)?;
            } else {
                h.anchor_file()?;
            }
        }
        Ok(h)
    }

    /// The file the chain's head is anchored in, beside the state file.
    pub fn anchor_path(&self) -> PathBuf {
        self.path.with_extension("anchor")
    }

    fn anchor_file(&self) -> Result<std::fs::File, HistoryError> {
        let path = self.anchor_path();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| HistoryError::AnchorIo { path, source })
    }

    /// Appends `seq hash` to the anchor, synced before it returns.
    fn anchor(&self, seq: i64, hash: &str) -> Result<(), HistoryError> {
        use std::io::Write;
        let mut f = self.anchor_file()?;
        let path = self.anchor_path();
        f.write_all(format!("{seq} {hash}\n").as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|source| HistoryError::AnchorIo { path, source })
    }

    /// The newest entry's sequence number and hash.
    fn head(&self) -> Result<Option<(i64, String)>, HistoryError> {
        self.db
            .query_row("SELECT seq, hash FROM history ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(self.err())
    }

    /// The state file of a kiln home.
    pub fn path_in(home: &Path) -> PathBuf {
        home.join("state.db")
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> HistoryError + '_ {
        |source| HistoryError::Db { path: self.path.clone(), source }
    }

    /// Appends one entry, chained to the last; durable when this returns.
    pub fn append(&mut self, service: &str, release: &str, at_ms: i64, event: &Event) -> Result<Entry, HistoryError> {
        let path = self.path.clone();
        let err = |source| HistoryError::Db { path: path.clone(), source };
        // IMMEDIATE: the read of the chain's end and the write are one step,
        // so two writers cannot both chain to the same entry.
        let tx = self.db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(err)?;
        let last: Option<(i64, String)> = tx
            .query_row("SELECT seq, hash FROM history ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(err)?;
        let row = Stored::next(last.as_ref().map(|(s, h)| (*s, h.as_str())), service, release, at_ms, event);
        tx.execute(
            "INSERT INTO history (seq, service, release, at_ms, kind, body, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![row.seq, service, release, at_ms, row.kind, row.body, row.prev_hash, row.hash],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        // After the commit: a crash between the two leaves the newest
        // entry unanchored, which verify allows for that one entry only.
        self.anchor(row.seq, &row.hash)?;
        Ok(Entry {
            seq: row.seq,
            service: service.to_owned(),
            release: release.to_owned(),
            at_ms,
            event: event.clone(),
            prev_hash: row.prev_hash,
            hash: row.hash,
        })
    }

    /// Every entry (of one service, if given), oldest first.
    pub fn entries(&self, service: Option<&str>) -> Result<Vec<Entry>, HistoryError> {
        let mut stmt = self
            .db
            .prepare(
                "SELECT seq, service, release, at_ms, kind, body, prev_hash, hash FROM history
                 WHERE ?1 IS NULL OR service = ?1 ORDER BY seq",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![service], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, service, release, at_ms, body, prev_hash, hash) = row.map_err(self.err())?;
            let event = serde_json::from_str(&body).map_err(|e| HistoryError::Broken {
                path: self.path.clone(),
                seq,
                release: release.clone(),
                problem: format!("unreadable body: {e}"),
            })?;
            out.push(Entry { seq, service, release, at_ms, event, prev_hash, hash });
        }
        Ok(out)
    }

    /// Checks the whole chain; returns how many entries it holds, or the
    /// first entry that was edited, removed or reordered.
    pub fn verify(&self) -> Result<u64, HistoryError> {
        let mut stmt = self
            .db
            .prepare("SELECT seq, service, release, at_ms, kind, body, prev_hash, hash FROM history ORDER BY seq")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Stored {
                    seq: r.get(0)?,
                    service: r.get(1)?,
                    release: r.get(2)?,
                    at_ms: r.get(3)?,
                    kind: r.get(4)?,
                    body: r.get(5)?,
                    prev_hash: r.get(6)?,
                    hash: r.get(7)?,
                })
            })
            .map_err(self.err())?;
        let rows: Vec<Stored> = rows.collect::<Result<_, _>>().map_err(self.err())?;
        check_chain(&rows).map_err(|b| HistoryError::Broken {
            path: self.path.clone(),
            seq: rows[b.index].seq,
            release: rows[b.index].release.clone(),
            problem: b.problem,
        })?;
        let hashes: Vec<String> = rows.into_iter().map(|r| r.hash).collect();
        self.check_anchor(&hashes)?;
        Ok(hashes.len() as u64)
    }

    /// Checks the chain's hashes (entry 1 first) against the anchor: every
    /// anchored head is there with its hash, and at most the newest entry
    /// is not anchored yet (a crash between its commit and its anchor).
    fn check_anchor(&self, hashes: &[String]) -> Result<(), HistoryError> {
        let path = self.anchor_path();
        let problem = |problem: String| HistoryError::Anchor { path: path.clone(), problem };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(problem(format!(
                    "missing: the head of the history ({} entries) cannot be checked; entries may have been removed from its end",
                    hashes.len()
                )))
            }
            Err(source) => return Err(HistoryError::AnchorIo { path, source }),
        };
        let mut last = 0usize;
        for (i, line) in text.lines().enumerate() {
            let parsed = line.split_once(' ').and_then(|(s, h)| Some((s.parse::<usize>().ok()?, h)));
            let Some((seq, hash)) = parsed else {
                return Err(problem(format!("line {}: not \"SEQ HASH\": the anchor was edited", i + 1)));
            };
            if seq > hashes.len() {
                return Err(problem(format!(
                    "the history was truncated: the anchor holds entry {seq} ({hash}), the state file ends at entry {}",
                    hashes.len()
                )));
            }
            if seq == 0 || hashes[seq - 1] != hash {
                return Err(problem(format!(
                    "entry {seq} is not the one anchored ({hash}): the history was rewritten"
                )));
            }
            last = last.max(seq);
        }
        if hashes.len() > last + 1 {
            return Err(problem(format!(
                "entries {} to {} are not anchored: they were not written by kiln, or the anchor was cut",
                last + 1,
                hashes.len()
            )));
        }
        Ok(())
    }

    /// Keeps `digest` as a gc root for `service`'s rollbacks: recorded here
    /// and as `meta/archive/<hex>` in the store, which gc reads. The oldest
    /// beyond `keep` per service are let go (their files removed).
    pub fn archive(
        &mut self,
        store_home: &Path,
        service: &str,
        release: &str,
        digest: &Digest,
        at_ms: i64,
        keep: usize,
    ) -> Result<Vec<Digest>, HistoryError> {
        let path = self.path.clone();
        let err = |source| HistoryError::Db { path: path.clone(), source };
        let dir = store_home.join("meta/archive");
        let io = |e: std::io::Error| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e)));
        std::fs::create_dir_all(&dir).map_err(io)?;
        // The root exists on disk before the database says it does: a crash
        // in between leaves an extra root (kept), never a missing one.
        std::fs::write(dir.join(digest.hex()), format!("{service} {release}\n")).map_err(io)?;
        let tx = self.db.transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO archive (digest, service, release, at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (service, digest) DO UPDATE SET release = excluded.release, at_ms = excluded.at_ms",
            params![digest.as_str(), service, release, at_ms],
        )
        .map_err(err)?;
        let old: Vec<String> = {
            let mut stmt = tx
                .prepare("SELECT digest FROM archive WHERE service = ?1 ORDER BY at_ms DESC, digest LIMIT -1 OFFSET ?2")
                .map_err(err)?;
            let rows = stmt.query_map(params![service, keep as i64], |r| r.get(0)).map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)?
        };
        for d in &old {
            tx.execute("DELETE FROM archive WHERE service = ?1 AND digest = ?2", params![service, d]).map_err(err)?;
        }
        // A digest another service still archives stays a root.
        let mut released = Vec::new();
        for d in old {
            let still: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM archive WHERE digest = ?1)", params![d], |r| r.get(0))
                .map_err(err)?;
            if !still {
                if let Ok(d) = Digest::parse(&d) {
                    released.push(d);
                }
            }
        }
        tx.commit().map_err(err)?;
        for d in &released {
            let _ = std::fs::remove_file(dir.join(d.hex()));
        }
        Ok(released)
    }

    /// Records a service's controller state (JSON), durable on return.
    pub fn save_service(&mut self, name: &str, state: &str, at_ms: i64) -> Result<(), HistoryError> {
        self.db
            .execute(
                "INSERT INTO services (name, state, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
                params![name, state, at_ms],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// A service's recorded controller state, if any.
    pub fn load_service(&self, name: &str) -> Result<Option<String>, HistoryError> {
        self.db
            .query_row("SELECT state FROM services WHERE name = ?1", params![name], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    /// How many releases of `service` have started (the next one's number
    /// is one more).
    pub fn releases_started(&self, service: &str) -> Result<u64, HistoryError> {
        self.db
            .query_row("SELECT count(*) FROM history WHERE service = ?1 AND kind = 'started'", params![service], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(self.err())
    }

    /// The archived digests of a service, newest first.
    pub fn archived(&self, service: &str) -> Result<Vec<(Digest, String)>, HistoryError> {
        let mut stmt = self
            .db
            .prepare("SELECT digest, release FROM archive WHERE service = ?1 ORDER BY at_ms DESC, digest")
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![service], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (d, release) = row.map_err(self.err())?;
            if let Ok(d) = Digest::parse(&d) {
                out.push((d, release));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
