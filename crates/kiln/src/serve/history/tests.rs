//! Unit tests of [`super`].

use super::*;
use kiln_testutil::tempdir;

fn started(digest: &str) -> Event {
    Event::Started {
        digest: digest.into(),
        tags: vec!["web:b1".into()],
        revision: Some("abc".into()),
        strategy: "canary".into(),
        actor: "ci".into(),
        previous: None,
        changed: Vec::new(),
    }
}

#[test]
fn entries_chain_and_verify() {
    let dir = tempdir("history");
    let path = History::path_in(dir.as_path());
    let mut h = History::open(&path).unwrap();
    assert_eq!(h.verify().unwrap(), 0);
    let a = h.append("web", "r1", 1000, &started("sha256:aa")).unwrap();
    let weights = BTreeMap::from([("r1".to_owned(), 100)]);
    let b = h.append("web", "r1", 2000, &Event::Step { index: 0, weights }).unwrap();
    h.append("api", "r2", 3000, &started("sha256:bb")).unwrap();
    assert_eq!((a.seq, a.prev_hash.as_str()), (1, GENESIS));
    assert_eq!(b.prev_hash, a.hash);
    assert_eq!(h.verify().unwrap(), 3);
    assert_eq!(h.entries(Some("web")).unwrap().len(), 2);
    assert_eq!(h.entries(None).unwrap()[2].service, "api");
    drop(h);
    // Reopening migrates nothing and keeps the chain.
    let mut h = History::open(&path).unwrap();
    assert_eq!(h.verify().unwrap(), 3);
    assert_eq!(h.releases_started("web").unwrap(), 1);
    assert_eq!(h.load_service("web").unwrap(), None);
    h.save_service("web", "{\"a\":1}", 5).unwrap();
    h.save_service("web", "{\"a\":2}", 6).unwrap();
    assert_eq!(h.load_service("web").unwrap().as_deref(), Some("{\"a\":2}"));
    let v: i64 = h.db.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let mode: String = h.db.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn an_edited_a_removed_or_a_reordered_entry_is_named() {
    let dir = tempdir("history-tamper");
    let mut h = History::open(&History::path_in(dir.as_path())).unwrap();
    for i in 0..4 {
        h.append("web", &format!("r{i}"), i * 10, &started(&format!("sha256:{i}"))).unwrap();
    }
    h.db.execute("UPDATE history SET body = replace(body, 'sha256:2', 'sha256:9') WHERE seq = 3", []).unwrap();
    let e = h.verify().unwrap_err().to_string();
    assert!(e.contains("history entry 3 (release r2): its contents do not match its hash"), "{e}");
    h.db.execute("UPDATE history SET body = replace(body, 'sha256:9', 'sha256:2') WHERE seq = 3", []).unwrap();
    assert_eq!(h.verify().unwrap(), 4, "undone");
    h.db.execute("DELETE FROM history WHERE seq = 2", []).unwrap();
    let e = h.verify().unwrap_err().to_string();
    assert!(e.contains("history entry 3 (release r2): expected entry 2 here"), "{e}");
}

#[test]
fn removing_the_newest_entries_is_named_by_the_anchor() {
    let dir = tempdir("history-truncate");
    let mut h = History::open(&History::path_in(dir.as_path())).unwrap();
    for i in 0..10 {
        h.append("web", &format!("r{i}"), i * 10, &started(&format!("sha256:{i}"))).unwrap();
    }
    assert_eq!(h.verify().unwrap(), 10);
    h.db.execute("DELETE FROM history WHERE seq = (SELECT max(seq) FROM history)", []).unwrap();
    let e = h.verify().unwrap_err().to_string();
    assert!(
        e.contains("state.anchor: the history was truncated: the anchor holds entry 10")
            && e.contains("the state file ends at entry 9"),
        "{e}"
    );
    // A crash between an entry's commit and its anchor leaves one
    // entry unanchored: accepted; two are not.
    let dir = tempdir("history-unanchored");
    let mut h = History::open(&History::path_in(dir.as_path())).unwrap();
    for i in 0..3 {
        h.append("web", &format!("r{i}"), i, &started("sha256:a")).unwrap();
    }
    let anchor = h.anchor_path();
    let text = std::fs::read_to_string(&anchor).unwrap();
    let cut: Vec<&str> = text.lines().collect();
    std::fs::write(&anchor, format!("{}\n", cut[..2].join("\n"))).unwrap();
    assert_eq!(h.verify().unwrap(), 3);
    std::fs::write(&anchor, format!("{}\n", cut[0])).unwrap();
    let e = h.verify().unwrap_err().to_string();
    assert!(e.contains("entries 2 to 3 are not anchored"), "{e}");
    // A rewritten chain does not match its anchored hashes.
    std::fs::write(&anchor, format!("{}\n1 sha256:beef\n", text.trim_end())).unwrap();
    assert!(h.verify().unwrap_err().to_string().contains("entry 1 is not the one anchored"));
    // The anchor removed: reported, not recreated.
    std::fs::remove_file(&anchor).unwrap();
    drop(h);
    let h = History::open(&History::path_in(dir.as_path())).unwrap();
    assert!(h.verify().unwrap_err().to_string().contains("missing"), "{:?}", h.verify());
}

#[test]
fn a_version_1_file_is_migrated_and_keeps_its_history() {
    let dir = tempdir("history-migrate");
    let path = History::path_in(&dir);
    {
        // What kiln with schema 1 wrote.
        let mut c = Connection::open(&path).unwrap();
        let tx = c.transaction().unwrap();
        tx.execute_batch(
            "CREATE TABLE history (seq INTEGER PRIMARY KEY, service TEXT NOT NULL, release TEXT NOT NULL,
             at_ms INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL, prev_hash TEXT NOT NULL,
             hash TEXT NOT NULL UNIQUE);
             CREATE INDEX history_service ON history (service, seq);
             CREATE TABLE archive (digest TEXT NOT NULL, service TEXT NOT NULL, release TEXT NOT NULL,
             at_ms INTEGER NOT NULL, PRIMARY KEY (service, digest));",
        )
        .unwrap();
        tx.pragma_update(None, "user_version", 1).unwrap();
        tx.commit().unwrap();
    }
    let mut h = History::open(&path).unwrap();
    h.append("web", "web-1", 1, &started("sha256:aa")).unwrap();
    h.save_service("web", "{}", 1).unwrap();
    let v: i64 = h.db.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!((v, h.verify().unwrap()), (SCHEMA_VERSION, 1));
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempdir("history-new");
    let path = History::path_in(dir.as_path());
    let c = Connection::open(&path).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let e = History::open(&path).unwrap_err().to_string();
    assert!(e.contains("schema version 99 is newer"), "{e}");
}

#[test]
fn archive_keeps_the_newest_digests_as_store_roots() {
    let dir = tempdir("history-archive");
    let mut h = History::open(&History::path_in(dir.as_path())).unwrap();
    let d = |i: u8| Digest::of(&[i]);
    for i in 0..4u8 {
        let released = h.archive(dir.as_path(), "web", &format!("r{i}"), &d(i), i64::from(i), 2).unwrap();
        assert_eq!(released, if i >= 2 { vec![d(i - 2)] } else { vec![] });
    }
    h.archive(dir.as_path(), "api", "x", &d(3), 9, 2).unwrap();
    let kept: Vec<_> = h.archived("web").unwrap().into_iter().map(|(d, _)| d).collect();
    assert_eq!(kept, vec![d(3), d(2)]);
    let files = std::fs::read_dir(dir.as_path().join("meta/archive")).unwrap().count();
    assert_eq!(files, 2);
    assert!(dir.as_path().join("meta/archive").join(d(3).hex()).exists());
}
