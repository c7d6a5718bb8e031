//! The unit tests of `osv`.

use super::*;
use crate::verify::inventory::Os;

#[test]
fn cvss3_scores_match_the_specification() {
    let cases = [
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
        ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.8),
        ("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H", 8.1),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:U/C:H/I:H/A:H", 8.8),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H", 7.5),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),
        ("CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
    ];
    for (v, want) in cases {
        assert_eq!(cvss3_score(v), Some(want), "{v}");
    }
    assert_eq!(cvss3_score("CVSS:2.0/AV:N"), None);
    assert_eq!(cvss3_score("CVSS:3.1/AV:N/AC:L"), None, "incomplete");
}

fn advisory(json: &str) -> Advisory {
    serde_json::from_str(json).unwrap()
}

fn pkg(kind: Kind, source: &str, version: &str) -> Package {
    Package {
        kind,
        name: format!("lib{source}"),
        version: version.into(),
        source: source.into(),
        source_version: version.into(),
        architecture: None,
        licenses: Vec::new(),
        location: "/var/lib/dpkg/status".into(),
        installed: true,
    }
}

#[test]
fn ranges_follow_the_osv_rules() {
    let mut db = Database::default();
    db.add(advisory(
            r#"{"id":"X-1","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"Debian:12","name":"glibc"},
               "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"2.36-9+deb12u3"},{"introduced":"2.36-9+deb12u5"},{"fixed":"2.36-9+deb12u7"}]}]}]}"#,
        ));
    db.add(advisory(
            r#"{"id":"X-2","modified":"2024-01-01T00:00:00Z","withdrawn":"2024-02-01T00:00:00Z","affected":[{"package":{"ecosystem":"Debian:12","name":"glibc"},
               "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}]}]}"#,
        ));
    db.add(advisory(
            r#"{"id":"X-3","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"Debian:11","name":"glibc"},
               "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}]}]}"#,
        ));
    db.add(advisory(
            r#"{"id":"X-4","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"crates.io","name":"time"},
               "ranges":[{"type":"SEMVER","events":[{"introduced":"0.2.0"},{"last_affected":"0.2.22"}]}],"versions":["0.1.43"]}]}"#,
        ));
    let os = Os { id: "debian".into(), version_id: Some("12".into()), pretty_name: None };
    let ids = |p: Package| -> Vec<(String, Option<String>)> {
        let inv = Inventory { os: Some(os.clone()), packages: vec![p], notes: vec![] };
        db.matches(&inv).0.into_iter().map(|f| (f.id, f.fixed)).collect()
    };
    let fix = |s: &str| Some(s.to_owned());
    assert_eq!(ids(pkg(Kind::Deb, "glibc", "2.36-9+deb12u1")), [("X-1".into(), fix("2.36-9+deb12u3"))]);
    assert_eq!(ids(pkg(Kind::Deb, "glibc", "2.36-9+deb12u3")), [], "fixed there");
    assert_eq!(ids(pkg(Kind::Deb, "glibc", "2.36-9+deb12u4")), [], "between the ranges");
    assert_eq!(
        ids(pkg(Kind::Deb, "glibc", "2.36-9+deb12u6")),
        [("X-1".into(), fix("2.36-9+deb12u7"))],
        "re-introduced"
    );
    assert_eq!(ids(pkg(Kind::Deb, "glibc", "2.36-9+deb12u10")), [], "dpkg order, not text: u10 > u7");
    assert_eq!(ids(pkg(Kind::Deb, "other", "1.0")), []);
    assert_eq!(ids(pkg(Kind::Cargo, "time", "0.2.22")), [("X-4".into(), None)], "last_affected is inclusive");
    assert_eq!(ids(pkg(Kind::Cargo, "time", "0.2.23")), []);
    assert_eq!(ids(pkg(Kind::Cargo, "time", "0.1.43")), [("X-4".into(), None)], "listed version");
    let no_os = Inventory { os: None, packages: vec![pkg(Kind::Deb, "glibc", "2.36-9")], notes: vec![] };
    let (f, notes) = db.matches(&no_os);
    assert!(f.is_empty() && notes[0].contains("no os-release"), "{notes:?}");
}

#[test]
fn severity_comes_from_cvss_else_a_word_else_unknown() {
    let a = advisory(
        r#"{"id":"A","modified":"2024-01-01T00:00:00Z","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
                "affected":[{"package":{"ecosystem":"crates.io","name":"x"}}]}"#,
    );
    let none = HashMap::new();
    assert_eq!(severity_of(&a, &a.affected[0], &none), (Level::Critical, Some(9.8), Some("cvss".into())));
    let b = advisory(
        r#"{"id":"B","modified":"2024-01-01T00:00:00Z","database_specific":{"severity":"MODERATE"},"affected":[{"package":{"ecosystem":"crates.io","name":"x"}}]}"#,
    );
    assert_eq!(severity_of(&b, &b.affected[0], &none), (Level::Medium, None, Some("severity".into())));
    let c = advisory(r#"{"id":"C","modified":"2024-01-01T00:00:00Z","affected":[{}]}"#);
    assert_eq!(severity_of(&c, &c.affected[0], &none), (Level::Unknown, None, None));
    // Debian's records: the tracker's urgency when assigned, else the
    // CVE alias's score where the database carries that record.
    let d = advisory(
        r#"{"id":"DEBIAN-CVE-1","aliases":["CVE-1"],"modified":"2024-01-01T00:00:00Z",
                "affected":[{"package":{"ecosystem":"Debian:12","name":"zlib"},"ecosystem_specific":{"urgency":"unimportant"}}]}"#,
    );
    let scores = HashMap::from([("CVE-1".to_owned(), 9.8)]);
    assert_eq!(severity_of(&d, &d.affected[0], &scores), (Level::Low, None, Some("debian urgency".into())));
    let e = advisory(
        r#"{"id":"DEBIAN-CVE-1","aliases":["CVE-1"],"modified":"2024-01-01T00:00:00Z",
                "affected":[{"package":{"ecosystem":"Debian:12","name":"zlib"},"ecosystem_specific":{"urgency":"not yet assigned"}}]}"#,
    );
    assert_eq!(severity_of(&e, &e.affected[0], &scores), (Level::Critical, Some(9.8), Some("CVE-1".into())));
    assert_eq!(severity_of(&e, &e.affected[0], &none), (Level::Unknown, None, None));
    let f = advisory(
        r#"{"id":"DSA-1","modified":"2024-01-01T00:00:00Z","database_specific":{"urgency":"medium**"},"affected":[{}]}"#,
    );
    assert_eq!(severity_of(&f, &f.affected[0], &none).0, Level::Medium);
}

#[test]
fn a_broken_zip_is_refused_by_name() {
    assert!(unzip(b"not a zip").unwrap_err().contains("not a zip"));
    let mut z = vec![0u8; 22];
    z[..4].copy_from_slice(b"PK\x05\x06");
    z[10] = 1; // one entry, at offset 0, which is no directory entry
    assert!(unzip(&z).unwrap_err().contains("central directory"));
}
