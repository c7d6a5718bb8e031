//! An offline OSV database and the matching of an inventory against it.
//!
//! The database is what osv.dev publishes per ecosystem: a directory of
//! OSV JSON files, or a zip of them (`all.zip`), read here with a small zip
//! reader of our own (stored and deflated entries, the only kinds those
//! exports use). Matching follows the OSV schema: an `affected` entry names
//! an ecosystem and a package, and lists exact `versions` and `ranges` of
//! `introduced` / `fixed` / `last_affected` / `limit` events, evaluated
//! with the ecosystem's own version order (dpkg's for `Debian:N`, apk's
//! for `Alpine:vX.Y`, SemVer for `crates.io`). Debian advisories name the
//! source package and its version, so that is what a binary package is
//! matched by.
//!
//! Loading does I/O; [`Database::matches`] and [`cvss3_score`] are pure.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::inventory::{Inventory, Kind, Package};
pub use super::zip::{unzip, unzip_each, EntryFn};
use super::{apk, auditable, dpkg};

/// One OSV record (the fields matching and reporting need).
#[derive(Debug, Clone, Deserialize)]
pub struct Advisory {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub summary: Option<String>,
    pub modified: String,
    #[serde(default)]
    pub withdrawn: Option<String>,
    #[serde(default)]
    pub severity: Vec<Severity>,
    #[serde(default)]
    pub affected: Vec<Affected>,
    #[serde(default)]
    pub database_specific: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Severity {
    #[serde(rename = "type")]
    pub kind: String,
    pub score: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Affected {
    #[serde(default)]
    pub package: Option<AffectedPackage>,
    #[serde(default)]
    pub ranges: Vec<Range>,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub severity: Vec<Severity>,
    #[serde(default)]
    pub ecosystem_specific: Option<serde_json::Value>,
    #[serde(default)]
    pub database_specific: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AffectedPackage {
    pub ecosystem: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Range {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Event {
    pub introduced: Option<String>,
    pub fixed: Option<String>,
    pub last_affected: Option<String>,
    pub limit: Option<String>,
}

/// How bad a vulnerability is, from its CVSS score or its database's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Neither a CVSS vector nor a severity word.
    Unknown,
    None,
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "unknown" => Level::Unknown,
            "none" => Level::None,
            "low" | "negligible" => Level::Low,
            "medium" | "moderate" => Level::Medium,
            "high" | "important" => Level::High,
            "critical" => Level::Critical,
            _ => return None,
        })
    }

    fn of_score(score: f64) -> Level {
        match score {
            s if s >= 9.0 => Level::Critical,
            s if s >= 7.0 => Level::High,
            s if s >= 4.0 => Level::Medium,
            s if s > 0.0 => Level::Low,
            _ => Level::None,
        }
    }
}

/// CVSS v3.0/v3.1 base score of a vector (`CVSS:3.1/AV:N/AC:L/...`), by
/// the specification's formulas; `None` for anything else.
pub fn cvss3_score(vector: &str) -> Option<f64> {
    let mut parts = vector.split('/');
    if !matches!(parts.next()?, "CVSS:3.0" | "CVSS:3.1") {
        return None;
    }
    let m: HashMap<&str, &str> = parts.filter_map(|p| p.split_once(':')).collect();
    let changed = match *m.get("S")? {
        "U" => false,
        "C" => true,
        _ => return None,
    };
    let av = match *m.get("AV")? {
        "N" => 0.85,
        "A" => 0.62,
        "L" => 0.55,
        "P" => 0.2,
        _ => return None,
    };
    let ac = match *m.get("AC")? {
        "L" => 0.77,
        "H" => 0.44,
        _ => return None,
    };
    let pr = match (*m.get("PR")?, changed) {
        ("N", _) => 0.85,
        ("L", false) => 0.62,
        ("L", true) => 0.68,
        ("H", false) => 0.27,
        ("H", true) => 0.5,
        _ => return None,
    };
    let ui = match *m.get("UI")? {
        "N" => 0.85,
        "R" => 0.62,
        _ => return None,
    };
    let cia = |k: &str| -> Option<f64> {
        match *m.get(k)? {
            "H" => Some(0.56),
            "L" => Some(0.22),
            "N" => Some(0.0),
            _ => None,
        }
    };
    let iss = 1.0 - (1.0 - cia("C")?) * (1.0 - cia("I")?) * (1.0 - cia("A")?);
    let impact = if changed { 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02).powi(15) } else { 6.42 * iss };
    let exploitability = 8.22 * av * ac * pr * ui;
    if impact <= 0.0 {
        return Some(0.0);
    }
    let raw = if changed { (1.08 * (impact + exploitability)).min(10.0) } else { (impact + exploitability).min(10.0) };
    // The specification's Roundup, exact in integers.
    let int = (raw * 100_000.0).round() as i64;
    Some(if int % 10_000 == 0 { int as f64 / 100_000.0 } else { ((int / 10_000) + 1) as f64 / 10.0 })
}

/// A package affected by an advisory.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Finding {
    pub id: String,
    pub aliases: Vec<String>,
    pub summary: Option<String>,
    pub severity: Level,
    pub score: Option<f64>,
    /// Where the severity came from: `cvss`, `debian urgency`, the alias
    /// whose score it took, or the database's word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity_from: Option<String>,
    pub kind: Kind,
    pub package: String,
    pub version: String,
    /// The source package the advisory names (Debian, Alpine).
    pub source: String,
    pub source_version: String,
    /// The first fixed version after the installed one, if any.
    pub fixed: Option<String>,
    pub location: String,
}

/// Why a database could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OsvError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// A loaded OSV database, indexed by (ecosystem, package).
#[derive(Debug, Default)]
pub struct Database {
    pub source: PathBuf,
    /// The records loaded: all of them, or those about the packages asked
    /// for ([`Database::load_for`]).
    pub advisories: Vec<Advisory>,
    /// How many records the database holds, loaded or not.
    pub total: usize,
    /// The newest `modified` of any record (Unix seconds): the data's age.
    pub newest_modified: Option<i64>,
    /// The CVSS v3 score of every record that has one, by id: a record
    /// without one (Debian's) takes its CVE alias's.
    pub scores: HashMap<String, f64>,
    index: HashMap<(String, String), Vec<(usize, usize)>>,
}

/// (ecosystem, package) pairs, as records name them.
pub type Keys = std::collections::HashSet<(String, String)>;

/// The name of the index file of a database kiln wrote (`kiln db update`).
pub const INDEX: &str = "index.json";

/// Where a stored record is: (file number, offset, length).
pub type Spot = (usize, u64, u64);

/// The index of a database `kiln db update` wrote: each record once, as a
/// line of `files[i]`, found by (ecosystem, package) without reading the
/// others.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredIndex {
    pub format: u32,
    pub records: usize,
    pub newest_modified: Option<i64>,
    pub files: Vec<String>,
    /// Ecosystem → package → (file, offset, length) of each record naming it.
    pub packages: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<Spot>>>,
    pub scores: std::collections::BTreeMap<String, f64>,
}

impl Database {
    /// Reads a directory (recursively) of `*.json`, a `.zip` of them, or a
    /// database `kiln db update` wrote.
    pub fn load(path: &Path) -> Result<Database, OsvError> {
        Self::load_for(path, None)
    }

    /// [`Database::load`], keeping only the records about `keys` (every
    /// record is still read and checked, except from kiln's own store,
    /// where the index finds them).
    pub fn load_for(path: &Path, keys: Option<&Keys>) -> Result<Database, OsvError> {
        let io = |source| OsvError::Io { path: path.to_owned(), source };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mut db = Database { source: path.to_owned(), ..Database::default() };
        if meta.is_dir() && path.join(INDEX).is_file() {
            db.load_stored(path, keys)?;
            return Ok(db);
        }
        let mut take = |name: &str, bytes: &[u8]| -> Result<(), OsvError> {
            let a = parse_record(name, bytes)?;
            db.note(&a);
            if keys.is_none_or(|k| {
                a.affected.iter().flat_map(|x| &x.package).any(|p| k.contains(&(p.ecosystem.clone(), p.name.clone())))
            }) {
                db.add(a);
            }
            Ok(())
        };
        if meta.is_dir() {
            let mut files = Vec::new();
            let mut dirs = vec![path.to_owned()];
            while let Some(d) = dirs.pop() {
                let rd = std::fs::read_dir(&d).map_err(|source| OsvError::Io { path: d.clone(), source })?;
                for e in rd {
                    let e = e.map_err(|source| OsvError::Io { path: d.clone(), source })?;
                    let p = e.path();
                    if p.is_dir() {
                        dirs.push(p);
                    } else if p.extension().is_some_and(|x| x == "json") {
                        files.push(p);
                    }
                }
            }
            files.sort();
            for p in files {
                let bytes = std::fs::read(&p).map_err(|source| OsvError::Io { path: p.clone(), source })?;
                take(&p.display().to_string(), &bytes)?;
            }
        } else {
            let bytes = std::fs::read(path).map_err(io)?;
            let mut failed = None;
            unzip_each(&bytes, &mut |name, data| {
                if name.ends_with(".json") {
                    if let Err(e) = take(&format!("{}!{name}", path.display()), &data) {
                        failed = Some(e);
                        return Err(String::new());
                    }
                }
                Ok(())
            })
            .map_err(|message| failed.take().unwrap_or(OsvError::Invalid { path: path.to_owned(), message }))?;
        }
        Ok(db)
    }

    /// Counts a record read, its time and its score.
    fn note(&mut self, a: &Advisory) {
        self.total += 1;
        if let Some(m) = crate::time::parse_rfc3339(&a.modified) {
            self.newest_modified = Some(self.newest_modified.map_or(m, |n| n.max(m)));
        }
        if let Some(s) = cvss_of(&a.severity) {
            self.scores.insert(a.id.clone(), s);
        }
    }

    /// The records of a stored database about `keys` (all, without keys).
    fn load_stored(&mut self, dir: &Path, keys: Option<&Keys>) -> Result<(), OsvError> {
        use std::io::{Seek, SeekFrom};
        let ipath = dir.join(INDEX);
        let text = std::fs::read(&ipath).map_err(|source| OsvError::Io { path: ipath.clone(), source })?;
        let index: StoredIndex = serde_json::from_slice(&text)
            .map_err(|e| OsvError::Invalid { path: ipath.clone(), message: format!("not kiln's index: {e}") })?;
        self.total = index.records;
        self.newest_modified = index.newest_modified;
        self.scores = index.scores.into_iter().collect();
        let mut wanted: Vec<Spot> = Vec::new();
        for (eco, packages) in &index.packages {
            for (name, spots) in packages {
                if keys.is_none_or(|k| k.contains(&(eco.clone(), name.clone()))) {
                    wanted.extend(spots);
                }
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        let mut files: HashMap<usize, std::fs::File> = HashMap::new();
        for (f, offset, len) in wanted {
            let name = index.files.get(f).ok_or_else(|| OsvError::Invalid {
                path: ipath.clone(),
                message: format!("file {f} is not in the index's list"),
            })?;
            let path = dir.join(name);
            let io = |source| OsvError::Io { path: path.clone(), source };
            let file = match files.entry(f) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(std::fs::File::open(&path).map_err(io)?),
            };
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
            let mut bytes = vec![0; len as usize];
            file.read_exact(&mut bytes).map_err(io)?;
            let a = parse_record(&format!("{}@{offset}", path.display()), &bytes)?;
            self.add(a);
        }
        Ok(())
    }

    /// The (ecosystem, package) pairs [`Database::matches`] looks up for
    /// `inv`: what to load.
    pub fn keys(inv: &Inventory) -> Keys {
        let os = inv.os.as_ref().and_then(|o| o.ecosystem());
        inv.packages
            .iter()
            .filter(|p| p.installed)
            .filter_map(|p| Some((ecosystem_of(p, os.as_deref())?, p.source.clone())))
            .collect()
    }

    /// Adds one record (withdrawn ones are kept out of the index).
    pub fn add(&mut self, a: Advisory) {
        let i = self.advisories.len();
        if a.withdrawn.is_none() {
            for (j, aff) in a.affected.iter().enumerate() {
                if let Some(p) = &aff.package {
                    self.index.entry((p.ecosystem.clone(), p.name.clone())).or_default().push((i, j));
                }
            }
        }
        if let Some(s) = cvss_of(&a.severity) {
            self.scores.entry(a.id.clone()).or_insert(s);
        }
        self.advisories.push(a);
    }

    /// Every advisory affecting a package of `inv`, with notes on packages
    /// that could not be matched (no OS to name their ecosystem).
    pub fn matches(&self, inv: &Inventory) -> (Vec<Finding>, Vec<String>) {
        let os_ecosystem = inv.os.as_ref().and_then(|o| o.ecosystem());
        let mut findings = Vec::new();
        let mut notes = Vec::new();
        for p in inv.packages.iter().filter(|p| p.installed) {
            let Some(eco) = ecosystem_of(p, os_ecosystem.as_deref()) else {
                if matches!(p.kind, Kind::Deb | Kind::Apk) {
                    notes.push(format!("{} {}: no os-release names its distribution", p.name, p.version));
                }
                continue;
            };
            let Some(hits) = self.index.get(&(eco, p.source.clone())) else { continue };
            let mut seen: Vec<usize> = Vec::new();
            for &(i, j) in hits {
                let a = &self.advisories[i];
                let aff = &a.affected[j];
                if seen.contains(&i) {
                    continue;
                }
                if let Some(fixed) = affects(aff, p) {
                    seen.push(i);
                    let (severity, score, severity_from) = severity_of(a, aff, &self.scores);
                    findings.push(Finding {
                        id: a.id.clone(),
                        aliases: a.aliases.clone(),
                        summary: a.summary.clone(),
                        severity,
                        score,
                        severity_from,
                        kind: p.kind,
                        package: p.name.clone(),
                        version: p.version.clone(),
                        source: p.source.clone(),
                        source_version: p.source_version.clone(),
                        fixed,
                        location: p.location.clone(),
                    });
                }
            }
        }
        findings
            .sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| (&a.package, &a.id).cmp(&(&b.package, &b.id))));
        (findings, notes)
    }
}

/// The ecosystem's order of two versions.
fn compare(kind: Kind, a: &str, b: &str) -> Option<Ordering> {
    match kind {
        Kind::Deb => Some(dpkg::Version::parse(a).ok()?.cmp(&dpkg::Version::parse(b).ok()?)),
        Kind::Apk => apk::compare(a, b),
        Kind::Cargo | Kind::Golang | Kind::Binary => auditable::compare_semver(a, b),
    }
}

/// `Some(first fixed version after it)` when `aff` affects `p`.
fn affects(aff: &Affected, p: &Package) -> Option<Option<String>> {
    let v = p.source_version.as_str();
    if aff.versions.iter().any(|x| compare(p.kind, x, v) == Some(Ordering::Equal)) {
        return Some(first_fix(aff, p));
    }
    for r in aff.ranges.iter().filter(|r| matches!(r.kind.as_str(), "ECOSYSTEM" | "SEMVER")) {
        // (version, what it does), in version order; "0" is before all.
        let mut events: Vec<(&str, u8)> = Vec::new();
        for e in &r.events {
            for (x, what) in [(&e.introduced, 0u8), (&e.fixed, 1), (&e.last_affected, 2), (&e.limit, 3)] {
                if let Some(x) = x {
                    events.push((x, what));
                }
            }
        }
        let order = |a: &str, b: &str| match (a, b) {
            ("0", "0") => Ordering::Equal,
            ("0", _) => Ordering::Less,
            (_, "0") => Ordering::Greater,
            _ => compare(p.kind, a, b).unwrap_or(Ordering::Equal),
        };
        events.sort_by(|a, b| order(a.0, b.0));
        let mut affected = false;
        for (x, what) in events {
            let at = order(x, v);
            match what {
                0 if at != Ordering::Greater => affected = true,
                1 | 3 if at != Ordering::Greater => affected = false,
                2 if at == Ordering::Less => affected = false,
                _ => {}
            }
        }
        if affected {
            return Some(first_fix(aff, p));
        }
    }
    None
}

/// The least `fixed` version above the installed one.
fn first_fix(aff: &Affected, p: &Package) -> Option<String> {
    aff.ranges
        .iter()
        .flat_map(|r| r.events.iter().filter_map(|e| e.fixed.clone()))
        .filter(|f| compare(p.kind, f, &p.source_version) == Some(Ordering::Greater))
        .min_by(|a, b| compare(p.kind, a, b).unwrap_or(Ordering::Equal))
}

/// Parses one record, checking its `modified` time.
pub(crate) fn parse_record(name: &str, bytes: &[u8]) -> Result<Advisory, OsvError> {
    let a: Advisory = serde_json::from_slice(bytes)
        .map_err(|e| OsvError::Invalid { path: PathBuf::from(name), message: format!("not an OSV record: {e}") })?;
    if crate::time::parse_rfc3339(&a.modified).is_none() {
        return Err(OsvError::Invalid {
            path: PathBuf::from(name),
            message: format!("modified: {:?} is not an RFC 3339 time", a.modified),
        });
    }
    Ok(a)
}

/// The ecosystem a package's advisories are filed under.
fn ecosystem_of(p: &Package, os: Option<&str>) -> Option<String> {
    match p.kind {
        Kind::Cargo => Some("crates.io".to_owned()),
        Kind::Golang => Some("Go".to_owned()),
        Kind::Binary => None,
        Kind::Deb | Kind::Apk => os.map(str::to_owned),
    }
}

/// The highest CVSS v3 base score among `severity`.
pub fn cvss_of(severity: &[Severity]) -> Option<f64> {
    severity
        .iter()
        .filter(|s| s.kind == "CVSS_V3")
        .filter_map(|s| cvss3_score(&s.score))
        .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))))
}

/// Debian's urgency word (the security tracker's, carried in the Debian
/// export's `ecosystem_specific` or `database_specific`), when assigned:
/// `unimportant` is Debian saying its build is not affected in practice.
fn debian_urgency(v: &serde_json::Value) -> Option<Level> {
    let u = v.get("urgency")?.as_str()?.trim_end_matches('*').to_ascii_lowercase();
    Some(match u.as_str() {
        "unimportant" | "low" => Level::Low,
        "medium" => Level::Medium,
        "high" => Level::High,
        // "not yet assigned", "end-of-life": no word from Debian.
        _ => return None,
    })
}

/// A record's severity and where it came from, in this order: its own
/// CVSS v3 score (record or entry); Debian's urgency, when assigned;
/// the CVSS score of an alias (a Debian record names its CVE) that the
/// database holds; the database's severity word; else unknown.
fn severity_of(a: &Advisory, aff: &Affected, scores: &HashMap<String, f64>) -> (Level, Option<f64>, Option<String>) {
    let score = cvss_of(&a.severity)
        .into_iter()
        .chain(cvss_of(&aff.severity))
        .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))));
    if let Some(s) = score {
        return (Level::of_score(s), Some(s), Some("cvss".into()));
    }
    let specific = [&aff.ecosystem_specific, &aff.database_specific, &a.database_specific];
    if let Some(l) = specific.iter().copied().flatten().find_map(debian_urgency) {
        return (l, None, Some("debian urgency".into()));
    }
    if let Some((alias, s)) =
        a.aliases.iter().filter_map(|x| scores.get(x).map(|s| (x, *s))).max_by(|x, y| x.1.total_cmp(&y.1))
    {
        return (Level::of_score(s), Some(s), Some(alias.clone()));
    }
    let word =
        specific.into_iter().flatten().find_map(|v| v.get("severity").and_then(|s| s.as_str()).and_then(Level::parse));
    match word {
        Some(l) => (l, None, Some("severity".into())),
        None => (Level::Unknown, None, None),
    }
}

#[cfg(test)]
mod tests;
