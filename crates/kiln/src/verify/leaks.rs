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
//!
//! A file byte for byte as its package installed it (dpkg's `md5sums`,
//! apk's SHA-1s in its `installed` database) is not searched: it is the distribution's public content,
//! and its test vectors (gnutls carries real PEM test keys) are no leak.
//! A packaged file changed after installation is searched like any other.

use std::collections::HashMap;
use std::io::Read;

use serde::Serialize;

use crate::digest::Digest;
use crate::image::store::{Store, StoreError};
use crate::oci::{self, ImageConfig, Manifest};
pub use crate::spec::verify::AllowSecret as Allow;

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
    /// Files left unsearched because they are byte for byte what their
    /// Debian package installed.
    #[serde(default)]
    pub packaged: u64,
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
            b'-' if rest.starts_with(b"-----BEGIN ") => private_key_block(rest).map(|n| ("private-key", n)),
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
            b'h' if rest.starts_with(b"https://hooks.slack.com/services/") => {
                let n = run(data, i + 33, 120, |b| is_alnum(b) || b == b'/' || b == b'_');
                (n >= 20 && data[i + 33..i + 33 + n].iter().filter(|b| **b == b'/').count() >= 2)
                    .then_some(("slack-webhook", 33 + n))
            }
            b':' if rest.starts_with(b"://") && i > 0 && data[i - 1].is_ascii_alphanumeric() => {
                url_credentials(&data[i + 3..]).map(|n| ("url-credentials", 3 + n))
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

/// `user:password@` right after a URL's `://`, when the password is not
/// a placeholder (`password`, `${DB_PASS}`, `<pass>`, `****`): its length
/// up to the `@`.
fn url_credentials(rest: &[u8]) -> Option<usize> {
    let userinfo = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
    let user = run(rest, 0, 128, userinfo);
    if user == 0 || rest.get(user) != Some(&b':') {
        return None;
    }
    let pass = run(rest, user + 1, 256, userinfo);
    if rest.get(user + 1 + pass) != Some(&b'@') {
        return None;
    }
    let p = &rest[user + 1..user + 1 + pass];
    let lower = String::from_utf8_lossy(p).to_ascii_lowercase();
    let placeholder =
        ["pass", "secret", "changeme", "example", "xxx", "***", "$", "{", "<", "%"].iter().any(|w| lower.contains(w));
    let distinct = p.iter().collect::<std::collections::BTreeSet<_>>().len();
    (pass >= 6 && distinct >= 4 && !placeholder).then_some(user + 1 + pass + 1)
}

/// A PEM private key block at the start of `rest`, BEGIN line to END
/// line, whose body decodes as a key: DER whose outer SEQUENCE spans it
/// exactly (PKCS#1, PKCS#8, SEC1, encrypted PKCS#8), or OpenSSH's format.
/// Its length, so that the finding (and its fingerprint) is this one key;
/// a header alone (the read-only data of a TLS library) is none.
fn private_key_block(rest: &[u8]) -> Option<usize> {
    let head = &rest[..rest.len().min(80)];
    let head_end = head.windows(16).position(|w| w == b"PRIVATE KEY-----")? + 16;
    let label = &rest[11..head_end - 5];
    let end = [b"-----END ".as_slice(), label, b"-----"].concat();
    let window = &rest[head_end..rest.len().min(head_end + (64 << 10))];
    let body_len = window.windows(end.len()).position(|w| w == end.as_slice())?;
    // Header lines of a traditional encrypted key (`Proc-Type:`,
    // `DEK-Info:`) are skipped; the rest must be base64.
    let mut text = String::new();
    for line in window[..body_len].split(|b| *b == b'\n') {
        if line.contains(&b':') {
            continue;
        }
        text.push_str(std::str::from_utf8(line).ok()?.trim());
    }
    let der = crate::verify::sign::unbase64(&text)?;
    let whole = match (der.first(), der.get(1).copied()) {
        _ if der.starts_with(b"openssh-key-v1\0") => true,
        (Some(0x30), Some(n)) if n < 0x80 => der.len() == 2 + usize::from(n),
        (Some(0x30), Some(n @ 0x81..=0x83)) => {
            let k = usize::from(n - 0x80);
            let len = der.get(2..2 + k)?.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
            der.len() == 2 + k + len
        }
        _ => false,
    };
    (whole && der.len() >= 32).then_some(head_end + body_len + end.len())
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

/// A packaged file's checksum as its package manager recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sum {
    /// dpkg's `md5sums`.
    Md5([u8; 16]),
    /// apk's `Z:Q1…`.
    Sha1([u8; 20]),
}

impl Sum {
    fn matches(&self, data: &[u8]) -> bool {
        match self {
            Sum::Md5(s) => {
                use md5::Digest as _;
                md5::Md5::digest(data)[..] == s[..]
            }
            Sum::Sha1(s) => {
                use sha1::Digest as _;
                sha1::Sha1::digest(data)[..] == s[..]
            }
        }
    }
}

/// What the package managers recorded of the packaged files in `m`'s
/// layers: path (with its leading `/`) to checksum, from every dpkg
/// `var/lib/dpkg/info/*.md5sums` and apk's `lib/apk/db/installed`.
fn packaged_sums(store: &Store, m: &Manifest) -> Result<HashMap<String, Sum>, StoreError> {
    let mut sums = HashMap::new();
    store.each_entry(m, |_, path, mut entry| {
        let dpkg = path.strip_prefix("var/lib/dpkg/info/").is_some_and(|f| f.ends_with(".md5sums") && !f.contains('/'));
        let apk = path == "lib/apk/db/installed";
        if !(dpkg || apk) || entry.header().entry_type() != tar::EntryType::Regular {
            return Ok(());
        }
        let mut text = String::new();
        // A checksum list that is not text lists nothing kiln can trust.
        if entry.read_to_string(&mut text).is_err() {
            return Ok(());
        }
        if apk {
            sums.extend(super::apk::file_sums(&text).into_iter().map(|(file, sum)| (file, Sum::Sha1(sum))));
            return Ok(());
        }
        for line in text.lines() {
            let Some((hex, file)) = line.split_once("  ") else { continue };
            if let Some(sum) = md5_hex(hex) {
                sums.insert(format!("/{}", file.trim_start_matches('/')), Sum::Md5(sum));
            }
        }
        Ok::<(), StoreError>(())
    })?;
    Ok(sums)
}

fn md5_hex(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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
    let sums = packaged_sums(store, &m)?;
    let mut buf = Vec::new();
    store.each_entry(&m, |layer, path, entry| {
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Ok(());
        }
        let at = |source| StoreError::Io { path: store.blob_path(&layer.digest), source };
        let path = format!("/{path}");
        let size = entry.header().size().map_err(at)?;
        buf.clear();
        entry.take(MAX_FILE).read_to_end(&mut buf).map_err(at)?;
        if size <= MAX_FILE {
            if sums.get(&path).is_some_and(|sum| sum.matches(&buf)) {
                report.packaged += 1;
                return Ok(());
            }
        } else {
            report.truncated.push(path.clone());
        }
        report.files += 1;
        report.bytes += buf.len() as u64;
        add(&mut report, &buf, Some(&layer.digest), &path, allow);
        Ok::<(), StoreError>(())
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(s: &str) -> Vec<&'static str> {
        scan_bytes(s.as_bytes()).iter().map(|h| h.rule).collect()
    }

    /// A real PKCS#8 key (P-256, from fixed bytes) as PEM.
    fn pem_key(seed: u8) -> String {
        use p256::pkcs8::EncodePrivateKey;
        let key = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap().to_string()
    }

    #[test]
    fn a_private_key_is_found_whole_and_its_fingerprint_names_that_key_alone() {
        let (a, b) = (pem_key(7), pem_key(9));
        let text = format!("config\n{a}more\n{b}");
        let hits = scan_bytes(text.as_bytes());
        assert_eq!(hits.iter().map(|h| h.rule).collect::<Vec<_>>(), ["private-key", "private-key"]);
        let block = |h: &Hit| &text.as_bytes()[h.start..h.end];
        assert_eq!(block(&hits[0]), a.trim_end().as_bytes(), "BEGIN line to END line");
        let (fa, fb) = (fingerprint(block(&hits[0])), fingerprint(block(&hits[1])));
        assert_ne!(fa, fb, "one fingerprint per key, not per header");
        let allow = [Allow { fingerprint: Some(fa.clone()), path: None, reason: "test key".into() }];
        assert!(allowed(&allow, "/a.pem", &fa).is_some() && allowed(&allow, "/b.pem", &fb).is_none());
        // A body that does not decode as a key is none.
        let broken = a.replace("MI", "!!");
        assert!(scan_bytes(broken.as_bytes()).is_empty());
        // An OpenSSH key and a traditional encrypted one are keys.
        let body = super::super::sign::base64(b"openssh-key-v1\0 and the rest of a key of some length");
        let ssh = format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----\n");
        assert_eq!(rules(&ssh), ["private-key"]);
        let der = &a.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
        let enc = format!(
            "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n{der}\n-----END EC PRIVATE KEY-----"
        );
        assert_eq!(rules(&enc), ["private-key"]);
    }

    #[test]
    fn slack_webhooks_and_credentials_in_urls_are_found_and_placeholders_are_not() {
        assert_eq!(
            rules("url = \"https://hooks.slack.com/services/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\""),
            ["slack-webhook"]
        );
        assert_eq!(rules("DATABASE_URL=postgres://app:Zr8!kq2Lw@db:5432/shop"), ["url-credentials"]);
        assert_eq!(rules("git clone https://deploy:ghx7Tq93kLm0@git.example.com/repo"), ["url-credentials"]);
        for fine in [
            "postgres://user:password@localhost/db",
            "http://user:pass@proxy:3128/",
            "amqp://guest:${RABBIT_PASSWORD}@mq/",
            "https://user:<token>@host/",
            "mysql://root:****@db/",
            "http://[::1]:8080/",
            "https://example.com:443/path",
            "ftp://anonymous@ftp.debian.org/",
        ] {
            assert!(rules(fine).is_empty(), "{fine}: {:?}", rules(fine));
        }
    }

    #[test]
    fn well_known_formats_are_found() {
        // A PEM header alone is no key (TLS libraries carry it as a string).
        assert!(rules("-----BEGIN RSA PRIVATE KEY-----\nMIIE").is_empty());
        assert!(rules("x\0-----BEGIN PRIVATE KEY-----\0-----END PRIVATE KEY-----\0").is_empty());
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
