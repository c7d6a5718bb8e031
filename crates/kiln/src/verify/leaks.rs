//! The secret scan: credentials baked into an image. Every layer's files
//! are read, including files a later layer deletes (they are still in the
//! image, one `tar` away), and so is the image config (env, labels,
//! entrypoint, cmd, history): where kiln.toml's values end up.
//!
//! Rules are matchers for well-known credential formats plus a keyword
//! assignment whose value must look random (Shannon entropy). A finding
//! names the rule, the layer, the path and the line, and a fingerprint
//! (a hash of the match) to mark a known false positive with; it never
//! holds the matched text. [`scan_bytes`] is pure.

use std::io::Read;

use serde::Serialize;

use crate::digest::Digest;
use crate::oci::{self, ImageConfig, Manifest};
pub use crate::spec::verify::AllowSecret as Allow;
use crate::store::{Store, StoreError};

/// A file larger than this is scanned up to it (and says so).
pub const MAX_FILE: u64 = 64 << 20;

/// One match inside a byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub rule: &'static str,
    pub start: usize,
    pub end: usize,
}

/// A finding in an image; never the secret itself.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Finding {
    pub rule: String,
    /// The layer blob, or none for the image config.
    pub layer: Option<Digest>,
    /// The file's path in the layer, or `config:env[2]` and the like.
    pub path: String,
    pub line: usize,
    /// `sha256:` of the matched bytes, for an allowlist entry.
    pub fingerprint: String,
    /// The reason, when an allowlist entry covers it.
    pub allowed: Option<String>,
}

/// What the scan read and found.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct LeakReport {
    pub findings: Vec<Finding>,
    pub files: u64,
    pub bytes: u64,
    /// Files read only up to [`MAX_FILE`].
    pub truncated: Vec<String>,
}

impl LeakReport {
    /// Findings no allowlist entry covers.
    pub fn failing(&self) -> usize {
        self.findings.iter().filter(|f| f.allowed.is_none()).count()
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Bits per byte of `s` (Shannon).
pub fn entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / n).map(|p| -p * p.log2()).sum()
}

/// The length of the run of `class` bytes at `data[at..]`, at most `max`.
fn run(data: &[u8], at: usize, max: usize, class: fn(u8) -> bool) -> usize {
    data[at.min(data.len())..].iter().take(max).take_while(|&&b| class(b)).count()
}

/// Whether `data[at]` starts a token (the byte before is not part of one).
fn boundary(data: &[u8], at: usize) -> bool {
    at == 0 || !is_b64url(data[at - 1])
}

/// Keywords whose assigned value is a secret if it looks random.
const KEYWORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "client_secret",
    "auth",
];

fn value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+/=_-.!@#%^*~".contains(&b)
}

/// Every credential-looking match in `data`.
pub fn scan_bytes(data: &[u8]) -> Vec<Hit> {
    let mut hits = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let rest = &data[i..];
        let hit = match rest[0] {
            b'-' if rest.starts_with(b"-----BEGIN ") => {
                let head = &rest[..rest.len().min(64)];
                head.windows(16).position(|w| w == b"PRIVATE KEY-----").map(|p| ("private-key", p + 16))
            }
            b'A' if boundary(data, i) && (rest.starts_with(b"AKIA") || rest.starts_with(b"ASIA")) => {
                let n = run(data, i + 4, 17, |b| b.is_ascii_uppercase() || b.is_ascii_digit());
                (n == 16).then_some(("aws-access-key-id", 20))
            }
            b'A' if boundary(data, i) && rest.starts_with(b"AIza") => {
                (run(data, i + 4, 36, is_b64url) == 35).then_some(("google-api-key", 39))
            }
            b'g' if boundary(data, i)
                && rest.len() > 4
                && rest.starts_with(b"gh")
                && b"pousr".contains(&rest[2])
                && rest[3] == b'_' =>
            {
                (run(data, i + 4, 37, is_alnum) == 36).then_some(("github-token", 40))
            }
            b'g' if boundary(data, i) && rest.starts_with(b"github_pat_") => {
                let n = run(data, i + 11, 100, |b| is_alnum(b) || b == b'_');
                (n >= 60).then_some(("github-token", 11 + n))
            }
            b'x' if boundary(data, i)
                && rest.len() > 5
                && rest.starts_with(b"xox")
                && b"baprs".contains(&rest[3])
                && rest[4] == b'-' =>
            {
                let n = run(data, i + 5, 200, |b| is_alnum(b) || b == b'-');
                (n >= 10).then_some(("slack-token", 5 + n))
            }
            b's' | b'r' if boundary(data, i) && (rest.starts_with(b"sk_live_") || rest.starts_with(b"rk_live_")) => {
                let n = run(data, i + 8, 200, is_alnum);
                (n >= 24).then_some(("stripe-live-key", 8 + n))
            }
            b'e' if boundary(data, i) && rest.starts_with(b"eyJ") => {
                let a = run(data, i, 4096, is_b64url);
                let b = if data.get(i + a) == Some(&b'.') { run(data, i + a + 1, 8192, is_b64url) } else { 0 };
                let c = if b > 0 && data.get(i + a + 1 + b) == Some(&b'.') {
                    run(data, i + a + b + 2, 4096, is_b64url)
                } else {
                    0
                };
                (a >= 10 && b >= 10 && c >= 10).then_some(("jwt", a + b + c + 2))
            }
            _ => None,
        };
        if let Some((rule, len)) = hit {
            hits.push(Hit { rule, start: i, end: i + len });
            i += len;
            continue;
        }
        if let Some(h) = assignment(data, i) {
            i = h.end;
            hits.push(h);
            continue;
        }
        i += 1;
    }
    hits
}

/// `KEYWORD = "value"` (also `:`, `=>`, quotes, env style `FOO_PASSWORD=`)
/// at `i`, when the value is long and random enough to be a real secret.
fn assignment(data: &[u8], i: usize) -> Option<Hit> {
    let c = data[i].to_ascii_lowercase();
    if !b"pstack".contains(&c) {
        return None;
    }
    let kw = KEYWORDS.iter().find(|k| {
        data.len() >= i + k.len()
            && data[i..i + k.len()].iter().zip(k.bytes()).all(|(a, b)| a.to_ascii_lowercase() == b)
    })?;
    let mut j = i + kw.len();
    // The rest of an identifier (`password_hash`, `SECRET_KEY`): allowed
    // up to a few bytes, then the operator.
    j += run(data, j, 12, |b| b.is_ascii_alphanumeric() || b == b'_');
    j += run(data, j, 3, |b| b == b' ' || b == b'"' || b == b'\'');
    if !matches!(data.get(j), Some(b'=' | b':')) {
        return None;
    }
    j += 1;
    j += run(data, j, 2, |b| b == b'>' || b == b'=');
    j += run(data, j, 4, |b| b == b' ' || b == b'"' || b == b'\'');
    let n = run(data, j, 256, value_byte);
    let value = &data[j..j + n];
    (n >= 16 && entropy(value) >= 3.5).then_some(Hit { rule: "keyword-assignment", start: i, end: j + n })
}

fn fingerprint(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

fn line_of(data: &[u8], at: usize) -> usize {
    data[..at].iter().filter(|&&b| b == b'\n').count() + 1
}

fn allowed(allow: &[Allow], path: &str, fp: &str) -> Option<String> {
    allow
        .iter()
        .find(|a| {
            a.fingerprint.as_deref().is_none_or(|f| f == fp)
                && a.path.as_deref().is_none_or(|p| path.starts_with(p))
                && (a.fingerprint.is_some() || a.path.is_some())
        })
        .map(|a| a.reason.clone())
}

fn add(report: &mut LeakReport, data: &[u8], layer: Option<&Digest>, path: &str, allow: &[Allow]) {
    for h in scan_bytes(data) {
        let fp = fingerprint(&data[h.start..h.end]);
        report.findings.push(Finding {
            rule: h.rule.into(),
            layer: layer.cloned(),
            path: path.to_owned(),
            line: line_of(data, h.start),
            allowed: allowed(allow, path, &fp),
            fingerprint: fp,
        });
    }
}

/// Scans every layer of `digest` and its config.
pub fn scan(store: &Store, digest: &Digest, allow: &[Allow]) -> Result<LeakReport, StoreError> {
    let m: Manifest = store.read_json(digest)?;
    let mut report = LeakReport::default();
    let config: ImageConfig = store.read_json(&m.config.digest)?;
    let c = &config.config;
    let lists: [(&str, Vec<String>); 4] = [
        ("env", c.env.clone().unwrap_or_default()),
        ("entrypoint", c.entrypoint.clone().unwrap_or_default()),
        ("cmd", c.cmd.clone().unwrap_or_default()),
        ("labels", c.labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect()),
    ];
    for (what, items) in lists {
        for (i, s) in items.iter().enumerate() {
            add(&mut report, s.as_bytes(), None, &format!("config:{what}[{i}]"), allow);
        }
    }
    for (i, h) in config.history.iter().enumerate() {
        if let Some(s) = &h.created_by {
            add(&mut report, s.as_bytes(), None, &format!("config:history[{i}]"), allow);
        }
    }
    for layer in &m.layers {
        let at = |source| StoreError::Io { path: store.blob_path(&layer.digest), source };
        let mut tar = tar::Archive::new(store.open_layer(layer)?);
        let mut buf = Vec::new();
        for entry in tar.entries().map_err(at)? {
            let entry = entry.map_err(at)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = format!("/{}", entry.path().map_err(at)?.display());
            let size = entry.header().size().map_err(at)?;
            buf.clear();
            entry.take(MAX_FILE).read_to_end(&mut buf).map_err(at)?;
            if size > MAX_FILE {
                report.truncated.push(path.clone());
            }
            report.files += 1;
            report.bytes += buf.len() as u64;
            add(&mut report, &buf, Some(&layer.digest), &path, allow);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(s: &str) -> Vec<&'static str> {
        scan_bytes(s.as_bytes()).iter().map(|h| h.rule).collect()
    }

    #[test]
    fn well_known_formats_are_found() {
        assert_eq!(rules("-----BEGIN RSA PRIVATE KEY-----\nMIIE"), ["private-key"]);
        assert_eq!(rules("-----BEGIN OPENSSH PRIVATE KEY-----"), ["private-key"]);
        assert_eq!(rules("-----BEGIN PUBLIC KEY-----"), Vec::<&str>::new());
        assert_eq!(rules("id=AKIAIOSFODNN7EXAMPLE;"), ["aws-access-key-id"]);
        assert_eq!(rules("XAKIAIOSFODNN7EXAMPLE"), Vec::<&str>::new(), "inside a longer token");
        assert_eq!(rules("AKIAIOSFODNN7EXAMPL"), Vec::<&str>::new(), "too short");
        assert_eq!(rules("t ghp_0123456789abcdefghijABCDEFGHIJ012345 x"), ["github-token"]);
        assert_eq!(rules("xoxb-1234567890-abcdefABCDEF"), ["slack-token"]);
        assert_eq!(rules("sk_live_4eC39HqLyjWDarjtT1zdp7dc"), ["stripe-live-key"]);
        assert_eq!(rules("sk_test_4eC39HqLyjWDarjtT1zdp7dc"), Vec::<&str>::new());
        assert_eq!(rules("key=AIzaSyA1234567890abcdefghijklmnopqrstuv"), ["google-api-key"]);
        assert_eq!(
            rules(
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
            ),
            ["jwt"]
        );
    }

    #[test]
    fn keyword_assignments_need_a_random_looking_value() {
        assert_eq!(rules("DB_PASSWORD=Xq3v9LmZ2pR8tK1wYb7N"), ["keyword-assignment"]);
        assert_eq!(
            rules("aws_secret_access_key = \"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\""),
            ["keyword-assignment"]
        );
        assert_eq!(rules("password: ${DB_PASSWORD}"), Vec::<&str>::new(), "a reference, not a value");
        assert_eq!(rules("password=aaaaaaaaaaaaaaaaaaaa"), Vec::<&str>::new(), "not random");
        assert_eq!(rules("token = short"), Vec::<&str>::new());
        assert_eq!(rules("the password is in the vault"), Vec::<&str>::new());
    }

    #[test]
    fn entropy_is_bits_per_byte() {
        assert_eq!(entropy(b"aaaa"), 0.0);
        assert!((entropy(b"ab") - 1.0).abs() < 1e-9);
        assert!(entropy(b"Xq3v9LmZ2pR8tK1wYb7N") > 4.0);
    }

    #[test]
    fn allowlist_entries_match_by_fingerprint_or_path() {
        let fp = fingerprint(b"x");
        let by_fp = [Allow { fingerprint: Some(fp.clone()), path: None, reason: "fixture".into() }];
        assert_eq!(allowed(&by_fp, "/a", &fp).as_deref(), Some("fixture"));
        assert_eq!(allowed(&by_fp, "/a", "sha256:other"), None);
        let by_path = [Allow { fingerprint: None, path: Some("/usr/share/doc/".into()), reason: "docs".into() }];
        assert_eq!(allowed(&by_path, "/usr/share/doc/x/README", &fp).as_deref(), Some("docs"));
        assert_eq!(allowed(&by_path, "/etc/app.conf", &fp), None);
        let empty = [Allow { fingerprint: None, path: None, reason: "all".into() }];
        assert_eq!(allowed(&empty, "/etc/app.conf", &fp), None, "an entry must name something");
    }
}

/// The secret-scan gate's result for one image.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LeakGate {
    pub reference: String,
    pub digest: Digest,
    pub passed: bool,
    #[serde(flatten)]
    pub report: LeakReport,
    pub duration_ms: u64,
    /// The verification record's artifact.
    pub record: Digest,
}

/// Scans `reference` with the allowlist of the `[image.X]` it was baked
/// from (when `file` has it) and records the result on its digest.
pub fn gate(
    store: &Store,
    file: Option<&crate::spec::SpecFile>,
    reference: &str,
    now: i64,
) -> Result<LeakGate, StoreError> {
    let started = std::time::Instant::now();
    let (desc, tags) = store.resolve(reference)?;
    let m: Manifest = store.read_json(&desc.digest)?;
    let title = m.annotation(oci::ANNOTATION_TITLE).map(str::to_owned);
    let allow = title
        .as_deref()
        .and_then(|t| file.and_then(|f| f.images.get(t)))
        .map(|i| i.scan.allow_secrets.clone())
        .unwrap_or_default();
    let report = scan(store, &desc.digest, &allow)?;
    let passed = report.failing() == 0;
    let duration_ms = started.elapsed().as_millis() as u64;
    let name = super::repository(&m, &tags);
    let record = super::Record {
        kind: "secrets".into(),
        subject: desc.digest.clone(),
        passed,
        at: crate::time::rfc3339(now),
        duration_ms,
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        detail: serde_json::to_value(&report).unwrap_or_default(),
    };
    let record = super::attach(store, &name, &desc, &record, now)?;
    Ok(LeakGate { reference: reference.to_owned(), digest: desc.digest, passed, report, duration_ms, record })
}
