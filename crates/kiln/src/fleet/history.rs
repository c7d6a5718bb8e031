//! A fleet's release history, in etcd: the same hash-chained entries as
//! one host's `state.db` ([`crate::serve::history`]), one key each under
//! `/kiln/history/SEQ` (zero-padded, so etcd's key order is the chain's),
//! and the chain's head (its last sequence number and hash) at
//! `/kiln/history-head`.
//!
//! Log before state, in one step: an entry is appended in the same etcd
//! transaction as the change it records (a person's deploy, rollback,
//! promote, abort, down, place or drain; the leader's canary steps), and
//! the transaction is conditioned on the head not having moved since it
//! was read. A change is never written without its entry, an entry never
//! without its change, and two writers never chain to the same entry (the
//! second one's transaction fails, and it reads again).
//!
//! The head is anchored in what no etcd client can set: the revisions
//! etcd gives every write. kiln writes each entry once (its `version` is
//! 1), entries in the order of their create revisions, and the head in
//! each appending transaction (its version is the number of those
//! transactions; its create revision the first entry's). So an edited
//! entry, one deleted and written again, and entries removed from the end
//! with the head rewritten are each named by [`verify`]. What it cannot
//! see: someone with write access to `/kiln/` who deletes the whole
//! history and writes a new one from entry 1 (etcd's auth, a role limited
//! to what each part needs, is the guard there).
//!
//! For: appending entries to a change's transaction, reading and checking
//! the chain. Must never: update or delete an entry, or write one outside
//! the transaction of the change it records.

use serde::{Deserialize, Serialize};

use super::etcd::{Compare, Etcd, EtcdError, Kv};
use crate::serve::history::{check_chain, Entry, Event, Stored};

/// Where entries are: `/kiln/history/0000000000000001`, ...
pub const ENTRIES: &str = "/kiln/history/";
/// The chain's head: the last entry's sequence number and hash.
pub const HEAD: &str = "/kiln/history-head";

/// Why the fleet's history cannot be read, or does not check out.
#[derive(Debug, thiserror::Error)]
pub enum FleetHistoryError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// An entry was edited, removed, reordered or written again.
    #[error("etcd key {key}: history entry {seq} (release {release}): {problem}")]
    Broken { key: String, seq: i64, release: String, problem: String },
    /// The head does not match the entries: entries were removed from the
    /// end, or the head was written by something else.
    #[error("etcd key {key}: {problem}")]
    Head { key: String, problem: String },
}

/// The chain's end as read: what the next entry chains to, and the head's
/// revision the appending transaction is conditioned on (0: no history).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tip {
    pub last: Option<(i64, String)>,
    pub revision: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    seq: i64,
    hash: String,
}

/// One entry to append: its service, its release (the image's short
/// digest) and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub service: String,
    pub release: String,
    pub event: Event,
}

/// The key of entry `seq`.
pub fn key(seq: i64) -> String {
    format!("{ENTRIES}{seq:016}")
}

/// The release name of `image` in the history: the first 12 hex digits of
/// its digest (the image itself when it names none).
pub fn release_of(image: &str) -> String {
    match image.rsplit_once("@sha256:") {
        Some((_, hex)) => hex.chars().take(12).collect(),
        None => image.to_owned(),
    }
}

/// Reads the chain's end.
pub fn tip(cluster: &Etcd) -> Result<Tip, FleetHistoryError> {
    let Some(kv) = cluster.range_prefix(HEAD)?.into_iter().find(|kv| kv.key == HEAD) else {
        return Ok(Tip::default());
    };
    let head: Head = serde_json::from_slice(&kv.value)
        .map_err(|e| FleetHistoryError::Head { key: HEAD.into(), problem: format!("unreadable: {e}") })?;
    Ok(Tip { last: Some((head.seq, head.hash)), revision: kv.mod_revision })
}

/// Appends `records` with `puts` (the act they record) in one
/// transaction, reading the head again when another writer moved it
/// (a few times); whether it was written.
pub fn record(
    cluster: &Etcd,
    records: &[Record],
    puts: &[(String, Vec<u8>, i64)],
    deletes: &[String],
) -> Result<bool, FleetHistoryError> {
    for _ in 0..5 {
        let tip = tip(cluster)?;
        let (compare, mut all) = append(&tip, records, crate::time::now_ms() as i64);
        all.extend(puts.iter().cloned());
        if cluster.txn(&[compare], &all, deletes)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What appends `records` after `tip` in a change's transaction: the
/// compare that keeps the head where it was read, and the puts of the
/// entries and the new head.
pub fn append(tip: &Tip, records: &[Record], at_ms: i64) -> (Compare, Vec<(String, Vec<u8>, i64)>) {
    let compare = Compare::Modified { key: HEAD.to_owned(), revision: tip.revision };
    let mut last = tip.last.clone();
    let mut puts = Vec::new();
    for r in records {
        let row = Stored::next(last.as_ref().map(|(s, h)| (*s, h.as_str())), &r.service, &r.release, at_ms, &r.event);
        puts.push((key(row.seq), serde_json::to_vec(&row).unwrap_or_default(), 0));
        last = Some((row.seq, row.hash));
    }
    if let Some((seq, hash)) = last.filter(|_| !records.is_empty()) {
        puts.push((HEAD.to_owned(), serde_json::to_vec(&Head { seq, hash }).unwrap_or_default(), 0));
    }
    (compare, puts)
}

fn stored(kvs: &[Kv]) -> Result<Vec<Stored>, FleetHistoryError> {
    kvs.iter()
        .map(|kv| {
            serde_json::from_slice::<Stored>(&kv.value).map_err(|e| FleetHistoryError::Broken {
                key: kv.key.clone(),
                seq: kv.key.trim_start_matches(ENTRIES).parse().unwrap_or(0),
                release: String::new(),
                problem: format!("not a history entry: {e}"),
            })
        })
        .collect()
}

/// Every entry (of `service`, if given), oldest first.
pub fn entries(cluster: &Etcd, service: Option<&str>) -> Result<Vec<Entry>, FleetHistoryError> {
    read(cluster, 1, service)
}

/// The entries after sequence number `seq`, oldest first.
pub fn entries_after(cluster: &Etcd, seq: i64) -> Result<Vec<Entry>, FleetHistoryError> {
    read(cluster, seq + 1, None)
}

fn read(cluster: &Etcd, from: i64, service: Option<&str>) -> Result<Vec<Entry>, FleetHistoryError> {
    let kvs = cluster.range_from(&key(from.max(1)), ENTRIES)?;
    let mut out = Vec::new();
    for (row, kv) in stored(&kvs)?.iter().zip(&kvs) {
        if service.is_some_and(|s| s != row.service) {
            continue;
        }
        out.push(row.entry().map_err(|e| FleetHistoryError::Broken {
            key: kv.key.clone(),
            seq: row.seq,
            release: row.release.clone(),
            problem: format!("unreadable body: {e}"),
        })?);
    }
    Ok(out)
}

/// Checks the whole history; how many entries it holds.
pub fn verify(cluster: &Etcd) -> Result<u64, FleetHistoryError> {
    let kvs = cluster.range_prefix(ENTRIES)?;
    let head = cluster.range_prefix(HEAD)?.into_iter().find(|kv| kv.key == HEAD);
    check(&kvs, head.as_ref())
}

/// [`verify`] on what was read: the chain itself, then each entry's and
/// the head's etcd revisions.
pub fn check(kvs: &[Kv], head: Option<&Kv>) -> Result<u64, FleetHistoryError> {
    let rows = stored(kvs)?;
    let broken = |i: usize, problem: String| FleetHistoryError::Broken {
        key: kvs[i].key.clone(),
        seq: rows[i].seq,
        release: rows[i].release.clone(),
        problem,
    };
    check_chain(&rows).map_err(|b| broken(b.index, b.problem))?;
    let mut appends = 0u64;
    for (i, (row, kv)) in rows.iter().zip(kvs).enumerate() {
        if kv.key != key(row.seq) {
            return Err(broken(i, format!("it holds entry {} under another key: entries were moved", row.seq)));
        }
        if kv.version != 1 || kv.mod_revision != kv.create_revision {
            return Err(broken(
                i,
                format!("written {} times in etcd, kiln writes an entry once: the entry was edited", kv.version),
            ));
        }
        match i.checked_sub(1).map(|p| kvs[p].create_revision) {
            Some(before) if kv.create_revision < before => {
                return Err(broken(
                    i,
                    "written after the entries that follow it: it was removed and written again".into(),
                ))
            }
            Some(before) if kv.create_revision == before => {}
            _ => appends += 1,
        }
    }
    let head_problem = |problem: String| FleetHistoryError::Head { key: HEAD.into(), problem };
    let (Some(first), Some(last)) = (kvs.first(), kvs.last()) else {
        return match head {
            Some(_) => Err(head_problem("the head names entries that are all gone: the history was removed".into())),
            None => Ok(0),
        };
    };
    let Some(head) = head else {
        return Err(head_problem(format!(
            "missing: the end of the history ({} entries) cannot be checked; entries may have been removed from its end",
            rows.len()
        )));
    };
    let h: Head = serde_json::from_slice(&head.value).map_err(|e| head_problem(format!("unreadable: {e}")))?;
    let end = &rows[rows.len() - 1];
    if h.seq != end.seq || h.hash != end.hash {
        return Err(head_problem(format!(
            "names entry {} ({}), the history ends at entry {}: entries were removed from its end",
            h.seq, h.hash, end.seq
        )));
    }
    if head.mod_revision != last.mod_revision || head.create_revision != first.create_revision {
        return Err(head_problem(
            "was not written with the entries (its etcd revisions do not match theirs): it was rewritten".into(),
        ));
    }
    if head.version as u64 != appends {
        return Err(head_problem(format!(
            "was written {} times for {appends} appends: entries were removed from the end and the head rewritten",
            head.version
        )));
    }
    Ok(rows.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::history::Outcome;

    fn record(service: &str, n: u32) -> Record {
        Record {
            service: service.into(),
            release: format!("r{n}"),
            event: Event::Scaled { from: n, to: n + 1, actor: "ops@a".into() },
        }
    }

    /// What etcd would hold after each `appends` transaction, one
    /// revision each: the entries and the head.
    fn written(appends: &[Vec<Record>]) -> (Vec<Kv>, Option<Kv>) {
        let (mut entries, mut head): (Vec<Kv>, Option<Kv>) = (Vec::new(), None);
        let mut tip = Tip::default();
        for (i, records) in appends.iter().enumerate() {
            let revision = 10 + i as i64;
            let (compare, puts) = append(&tip, records, 1_000 + i as i64);
            assert_eq!(compare, Compare::Modified { key: HEAD.into(), revision: tip.revision });
            for (k, value, _) in puts {
                if k == HEAD {
                    let (create_revision, version) =
                        head.as_ref().map_or((revision, 1), |h| (h.create_revision, h.version + 1));
                    head = Some(Kv { key: k, value, create_revision, mod_revision: revision, version, lease: 0 });
                } else {
                    entries.push(Kv {
                        key: k,
                        value,
                        create_revision: revision,
                        mod_revision: revision,
                        version: 1,
                        lease: 0,
                    });
                }
            }
            let h: Head = serde_json::from_slice(&head.as_ref().unwrap().value).unwrap();
            tip = Tip { last: Some((h.seq, h.hash)), revision };
        }
        (entries, head)
    }

    #[test]
    fn entries_appended_with_their_changes_check_out_and_read_back_in_order() {
        let (kvs, head) =
            written(&[vec![record("web", 1)], vec![record("api", 2), record("web", 3)], vec![record("web", 4)]]);
        assert_eq!(check(&kvs, head.as_ref()).unwrap(), 4);
        assert_eq!(
            kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>()[..2],
            ["/kiln/history/0000000000000001", "/kiln/history/0000000000000002"]
        );
        let rows = stored(&kvs).unwrap();
        assert_eq!(rows.iter().map(|r| r.release.as_str()).collect::<Vec<_>>(), ["r1", "r2", "r3", "r4"]);
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        assert!(check(&[], None).is_ok());
        // Nothing appended: no head written.
        let (_, puts) = append(&Tip::default(), &[], 1);
        assert!(puts.is_empty());
    }

    #[test]
    fn an_edited_entry_is_named_by_its_key_even_when_its_hashes_are_recomputed() {
        let (mut kvs, head) = written(&[vec![record("web", 1)], vec![record("web", 2)], vec![record("web", 3)]]);
        // The body changed, hash not: the chain breaks there.
        let mut row: Stored = serde_json::from_slice(&kvs[1].value).unwrap();
        row.body = serde_json::to_string(&Event::Finished {
            outcome: Outcome::Succeeded,
            reason: "x".into(),
            deadline: false,
        })
        .unwrap();
        let mut edited = kvs.clone();
        edited[1].value = serde_json::to_vec(&row).unwrap();
        edited[1].version = 2;
        edited[1].mod_revision = 99;
        let e = check(&edited, head.as_ref()).unwrap_err();
        assert!(matches!(&e, FleetHistoryError::Broken { seq: 2, .. }), "{e}");
        assert!(e.to_string().contains("/kiln/history/0000000000000002"), "{e}");
        // The same entry put again unchanged (a careful forger's rewrite
        // keeps every hash): etcd's version still shows it.
        kvs[1].version = 2;
        kvs[1].mod_revision = 99;
        let e = check(&kvs, head.as_ref()).unwrap_err().to_string();
        assert!(e.contains("written 2 times") && e.contains("0000000000000002"), "{e}");
        // Deleted and written again: version 1, but a later create revision.
        kvs[1].version = 1;
        kvs[1].create_revision = 99;
        let e = check(&kvs, head.as_ref()).unwrap_err().to_string();
        assert!(e.contains("0000000000000003") && e.contains("removed and written again"), "{e}");
    }

    #[test]
    fn entries_removed_from_the_end_are_named_even_with_the_head_rewritten() {
        let (kvs, head) = written(&[vec![record("web", 1)], vec![record("web", 2)], vec![record("web", 3)]]);
        let cut = &kvs[..2];
        let e = check(cut, head.as_ref()).unwrap_err().to_string();
        assert!(e.contains("history-head") && e.contains("ends at entry 2"), "{e}");
        // The head rewritten to the new end: one more write of it.
        let mut rewritten = head.clone().unwrap();
        let second: Stored = serde_json::from_slice(&kvs[1].value).unwrap();
        rewritten.value = serde_json::to_vec(&Head { seq: 2, hash: second.hash }).unwrap();
        rewritten.version += 1;
        rewritten.mod_revision = kvs[1].mod_revision;
        let e = check(cut, Some(&rewritten)).unwrap_err().to_string();
        assert!(e.contains("written 4 times for 2 appends"), "{e}");
        // The head deleted: named, with how many entries are left.
        let e = check(&kvs, None).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("3 entries"), "{e}");
        // An entry removed from the middle: the chain names the next one.
        let gap = [kvs[0].clone(), kvs[2].clone()];
        let e = check(&gap, head.as_ref()).unwrap_err().to_string();
        assert!(e.contains("0000000000000003") && e.contains("expected entry 2"), "{e}");
    }

    #[test]
    fn a_release_is_named_by_its_short_digest() {
        assert_eq!(release_of("127.0.0.1:5000/web@sha256:0123456789abcdef0123"), "0123456789ab");
        assert_eq!(release_of("web:1.0"), "web:1.0");
    }
}
