//! The vulnerability gate, `kiln scan`: an image's inventory matched
//! against an offline OSV database, judged by the `[image.NAME.scan]`
//! policy, recorded on the digest. [`judge`] is pure; [`gate`] reads the
//! store and the database and writes the record.

use serde::Serialize;

use super::inventory::{self, InventoryError, Os};
use super::osv::{Database, Finding, Level, OsvError};
use crate::digest::Digest;
use crate::image::store::{Store, StoreError};
use crate::oci::{self, Manifest};
use crate::spec::verify::{ScanSpec, Severity};

/// Why a scan could not judge an image.
#[derive(Debug, thiserror::Error)]
pub enum VulnError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("vulnerability database {}: {source}", path.display())]
    Database { path: std::path::PathBuf, source: OsvError },
    #[error(
        "no vulnerability database: run `kiln db update` (osv.dev's exports), or give --db PATH (a directory or zip \
         of OSV JSON) or set KILN_OSV_DB"
    )]
    NoDatabase,
    #[error(
        "vulnerability database {}: its newest record is {age_days} days old, over the limit of {limit_days} days \
         ([image.NAME.scan] max_db_age); fetch a new export, or pass --force to scan with it anyway",
        path.display()
    )]
    Stale { path: std::path::PathBuf, age_days: i64, limit_days: i64 },
}

/// What the report says of the database.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DbInfo {
    pub path: std::path::PathBuf,
    pub advisories: usize,
    /// RFC 3339: the newest `modified` of any record.
    pub newest_record: Option<String>,
    pub age_days: Option<i64>,
    /// Scanned although older than the limit (`--force`).
    pub forced: bool,
}

/// One finding as judged by the policy.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Judged {
    #[serde(flatten)]
    pub finding: Finding,
    /// The allowlist entry's reason, when accepted.
    pub allowed: Option<String>,
    pub failing: bool,
}

/// An allowlist entry that has expired (which fails the gate by itself).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Expired {
    pub index: usize,
    pub id: String,
    pub expires: String,
}

/// The scan's verdict on one image.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VulnReport {
    pub reference: String,
    pub digest: Digest,
    pub os: Option<Os>,
    pub packages: usize,
    pub db: DbInfo,
    pub fail_on: Severity,
    pub fail_unknown: bool,
    pub findings: Vec<Judged>,
    pub expired_allows: Vec<Expired>,
    pub notes: Vec<String>,
    pub failing: usize,
    pub passed: bool,
    pub duration_ms: u64,
    /// The verification record's artifact.
    pub record: Digest,
}

fn fails(level: Level, policy: &ScanSpec) -> bool {
    let threshold = match policy.fail_on {
        Severity::Low => Level::Low,
        Severity::Medium => Level::Medium,
        Severity::High => Level::High,
        Severity::Critical => Level::Critical,
        Severity::Never => return false,
    };
    if level == Level::Unknown {
        return policy.fail_unknown;
    }
    level >= threshold
}

/// Applies the policy at time `now`: each finding failing or not (an
/// allowlist entry matches the id or any alias, until it expires), and the
/// expired entries.
pub fn judge(findings: Vec<Finding>, policy: &ScanSpec, now: i64) -> (Vec<Judged>, Vec<Expired>) {
    let live = |a: &&crate::spec::verify::AllowVuln| a.expires_at > now;
    let judged = findings
        .into_iter()
        .map(|f| {
            let allowed = policy
                .allow
                .iter()
                .filter(live)
                .find(|a| a.id == f.id || f.aliases.contains(&a.id))
                .map(|a| a.reason.clone());
            let failing = allowed.is_none() && fails(f.severity, policy);
            Judged { finding: f, allowed, failing }
        })
        .collect();
    let expired = policy
        .allow
        .iter()
        .enumerate()
        .filter(|(_, a)| a.expires_at <= now)
        .map(|(index, a)| Expired { index, id: a.id.clone(), expires: a.expires.clone() })
        .collect();
    (judged, expired)
}

/// Scans `reference` against the database at `db` with the policy of the
/// `[image.X]` it was baked from (the defaults otherwise), and records the
/// result on its digest.
pub fn gate(
    store: &Store,
    file: Option<&crate::spec::SpecFile>,
    reference: &str,
    db: &std::path::Path,
    force: bool,
    now: i64,
) -> Result<VulnReport, VulnError> {
    let started = std::time::Instant::now();
    let (desc, tags) = store.resolve(reference)?;
    let m: Manifest = store.read_json(&desc.digest)?;
    let policy = m
        .annotation(oci::ANNOTATION_TITLE)
        .and_then(|t| file.and_then(|f| f.images.get(t)))
        .map(|i| i.scan.clone())
        .unwrap_or_default();
    // The inventory first: only the records about its packages are kept
    // (from kiln's own store, only those are read).
    let inv = inventory::collect(store, &desc.digest)?;
    let keys = Database::keys(&inv);
    let database =
        Database::load_for(db, Some(&keys)).map_err(|source| VulnError::Database { path: db.to_owned(), source })?;
    let age_days = database.newest_modified.map(|t| (now - t).max(0) / 86_400);
    let too_old = database.newest_modified.is_none_or(|t| now - t > policy.max_db_age_secs);
    if too_old && !force {
        return Err(VulnError::Stale {
            path: db.to_owned(),
            age_days: age_days.unwrap_or(i64::MAX),
            limit_days: policy.max_db_age_secs / 86_400,
        });
    }
    let (found, mut notes) = database.matches(&inv);
    notes.extend(inv.notes.iter().cloned());
    let (findings, expired_allows) = judge(found, &policy, now);
    let failing = findings.iter().filter(|j| j.failing).count();
    let passed = failing == 0 && expired_allows.is_empty();
    let mut report = VulnReport {
        reference: reference.to_owned(),
        digest: desc.digest.clone(),
        os: inv.os.clone(),
        packages: inv.packages.len(),
        db: DbInfo {
            path: db.to_owned(),
            advisories: database.total,
            newest_record: database.newest_modified.map(crate::time::rfc3339),
            age_days,
            forced: too_old && force,
        },
        fail_on: policy.fail_on,
        fail_unknown: policy.fail_unknown,
        findings,
        expired_allows,
        notes,
        failing,
        passed,
        duration_ms: started.elapsed().as_millis() as u64,
        record: desc.digest.clone(),
    };
    let record = super::Record {
        kind: "vulns".into(),
        subject: desc.digest.clone(),
        passed,
        at: crate::time::rfc3339(now),
        duration_ms: report.duration_ms,
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        detail: serde_json::to_value(&report).unwrap_or_default(),
    };
    report.record = super::attach(store, &super::repository(&m, &tags), &desc, &record, now)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::verify::AllowVuln;
    use crate::verify::inventory::Kind;

    fn finding(id: &str, alias: &str, severity: Level) -> Finding {
        Finding {
            id: id.into(),
            aliases: vec![alias.into()],
            summary: None,
            severity,
            score: None,
            severity_from: None,
            kind: Kind::Deb,
            package: "libc6".into(),
            version: "2.36-9".into(),
            source: "glibc".into(),
            source_version: "2.36-9".into(),
            fixed: None,
            location: "/var/lib/dpkg/status".into(),
        }
    }

    #[test]
    fn the_policy_fails_on_severity_and_expired_entries() {
        let day = 86_400;
        let policy = ScanSpec {
            allow: vec![
                AllowVuln {
                    id: "CVE-1".into(),
                    reason: "not reachable".into(),
                    expires: "d".into(),
                    expires_at: 10 * day,
                },
                AllowVuln { id: "X-2".into(), reason: "old".into(), expires: "d".into(), expires_at: 5 * day },
            ],
            fail_unknown: true,
            ..ScanSpec::default()
        };
        let list = || {
            vec![
                finding("X-1", "CVE-1", Level::Critical),
                finding("X-2", "CVE-2", Level::High),
                finding("X-3", "CVE-3", Level::Medium),
                finding("X-4", "CVE-4", Level::Unknown),
            ]
        };
        let (j, expired) = judge(list(), &policy, 4 * day);
        let failing: Vec<&str> = j.iter().filter(|j| j.failing).map(|j| j.finding.id.as_str()).collect();
        assert_eq!(failing, ["X-4"], "allowed by alias and by id; medium is under high; unknown fails");
        assert_eq!(j[0].allowed.as_deref(), Some("not reachable"));
        assert!(expired.is_empty());
        let (j, expired) = judge(list(), &policy, 5 * day);
        let failing: Vec<&str> = j.iter().filter(|j| j.failing).map(|j| j.finding.id.as_str()).collect();
        assert_eq!(failing, ["X-2", "X-4"], "from the expiry day on, the entry no longer accepts");
        assert_eq!(expired.len(), 1);
        assert_eq!((expired[0].index, expired[0].id.as_str()), (1, "X-2"));
        let lenient = ScanSpec { fail_on: Severity::Never, fail_unknown: false, ..ScanSpec::default() };
        assert!(judge(list(), &lenient, 0).0.iter().all(|j| !j.failing));
        let strict = ScanSpec { fail_on: Severity::Medium, fail_unknown: true, ..ScanSpec::default() };
        assert_eq!(judge(list(), &strict, 0).0.iter().filter(|j| j.failing).count(), 4);
        let default: Vec<String> =
            judge(list(), &ScanSpec::default(), 0).0.into_iter().filter(|j| j.failing).map(|j| j.finding.id).collect();
        assert_eq!(default, ["X-1", "X-2"], "by default: high and above; unknown is reported, not failing");
    }
}
