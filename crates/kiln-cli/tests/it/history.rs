//! `kiln history` over a real state file: entries written through the
//! library (as the controller writes them), read and verified by the
//! binary, and tampered with by Debian's `sqlite3`, as a person would.

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{json, kiln, kiln_ok, tempdir};
use kiln::proxy::metrics::ReleaseMetrics;
use kiln::release::analysis;
use kiln::serve::history::{Event, History, Outcome};
use kiln::spec::AnalysisSpec;

fn sqlite3(db: &std::path::Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().expect("sqlite3 (apt-get install sqlite3)");
    assert!(out.status.success(), "sqlite3 {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn history_shows_verifies_and_names_an_edited_entry() {
    let _room = common::room("no-runc");
    let home = tempdir("history");
    assert!(kiln_ok(&home, &home, &["history", "--verify"]).contains("no releases yet"));
    assert!(!History::path_in(&home).exists(), "reading creates no state file");

    let db = History::path_in(&home);
    let mut h = History::open(&db).unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    h.append(
        "web",
        "web-2",
        1_700_000_000_000,
        &Event::Started {
            digest: digest.clone(),
            tags: vec!["hello:b2".into(), "hello:0.2.0".into()],
            revision: Some("0123456789ab".into()),
            strategy: "canary".into(),
            actor: "root@ci".into(),
            previous: Some("web-1".into()),
            changed: Vec::new(),
        },
    )
    .unwrap();
    let weights = BTreeMap::from([("web-1".to_owned(), 95), ("web-2".to_owned(), 5)]);
    h.append("web", "web-2", 1_700_000_001_000, &Event::Step { index: 0, weights }).unwrap();
    // A real verdict from the proxy's own window statistics.
    let (canary, stable) = (ReleaseMetrics::default(), ReleaseMetrics::default());
    for i in 0..200u64 {
        canary.record(if i % 5 == 0 { 500 } else { 200 }, 300, 10);
        stable.record(200, 300, 10);
        stable.record(200, 300, 10);
    }
    let verdict = analysis::judge(&AnalysisSpec::default(), &canary.window(30, 10), Some(&stable.window(30, 10)));
    assert_eq!(verdict.outcome, analysis::Outcome::Fail);
    h.append("web", "web-2", 1_700_000_031_000, &Event::Verdict { step: 0, verdict, paused: false }).unwrap();
    h.append(
        "web",
        "web-2",
        1_700_000_031_100,
        &Event::Finished { outcome: Outcome::RolledBack, reason: "analysis failed at step 0".into(), deadline: false },
    )
    .unwrap();
    h.append(
        "api",
        "api-1",
        1_700_000_040_000,
        &Event::Finished { outcome: Outcome::Aborted, reason: "x".into(), deadline: false },
    )
    .unwrap();
    drop(h);

    let out = kiln_ok(&home, &home, &["history", "--verify"]);
    assert!(out.contains("hash chain verified: 5 entries"), "{out}");
    assert!(out.contains("web web-2") && out.contains("started canary") && out.contains("by root@ci"), "{out}");
    assert!(out.contains("step 1: web-1=95 web-2=5"), "{out}");
    assert!(out.contains("verdict at step 1: fail") && out.contains("error_rate FAIL: canary 0.2000"), "{out}");
    assert!(out.contains("finished rolled-back"), "{out}");
    let v = json(&kiln_ok(&home, &home, &["history", "web", "--json"]));
    assert_eq!(v["entries"].as_array().unwrap().len(), 4, "only web's");
    assert_eq!(v["entries"][0]["event"]["digest"], digest.as_str());

    // The file is plain SQLite: a person can read it, in WAL mode, at the
    // schema version kiln wrote.
    assert_eq!(sqlite3(&db, "PRAGMA journal_mode;").trim(), "wal");
    assert_eq!(sqlite3(&db, "PRAGMA user_version;").trim(), kiln::serve::history::SCHEMA_VERSION.to_string());
    assert_eq!(sqlite3(&db, "SELECT count(*) FROM history WHERE service = 'web';").trim(), "4");

    // Someone rewrites which image a release deployed.
    let other = format!("sha256:{}", "cd".repeat(32));
    sqlite3(&db, &format!("UPDATE history SET body = replace(body, '{digest}', '{other}') WHERE seq = 1;"));
    let out = kiln(&home, &home, &["history", "--verify"]);
    assert_eq!(out.status.code(), Some(3), "a broken chain exits 3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("history entry 1 (release web-2): its contents do not match its hash"), "{err}");
    // Without --verify the history still reads (and shows the edit).
    assert!(kiln_ok(&home, &home, &["history"]).contains(&other));
}

#[test]
fn deleting_the_newest_entry_with_sqlite3_is_named_by_verify() {
    let _room = common::room("no-runc");
    let home = tempdir("history-truncated");
    let db = History::path_in(&home);
    let mut h = History::open(&db).unwrap();
    for i in 0..9 {
        let event = Event::Finished { outcome: Outcome::Aborted, reason: format!("r{i}"), deadline: false };
        h.append("web", &format!("web-{i}"), 1_700_000_000_000 + i, &event).unwrap();
    }
    drop(h);
    assert!(kiln_ok(&home, &home, &["history", "--verify"]).contains("hash chain verified: 9 entries"));
    // The reproduction of issue #19: the newest entry removed, as a person would.
    sqlite3(&db, "DELETE FROM history WHERE seq = (SELECT max(seq) FROM history);");
    let out = kiln(&home, &home, &["history", "--verify"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "a truncated history exits 3: {err}");
    assert!(
        err.contains("state.anchor: the history was truncated: the anchor holds entry 9")
            && err.contains("the state file ends at entry 8"),
        "{err}"
    );
}
