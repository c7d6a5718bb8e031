//! Alpine packages, for the vulnerability scan and the SBOM: [`parse_installed`]
//! reads apk's database (`/lib/apk/db/installed`) and [`compare`] orders
//! versions as apk does (`1.2.3a_rc1-r4`: dot-separated numbers, an
//! optional letter, suffixes where `_alpha`, `_beta`, `_pre` and `_rc` come
//! before the release and `_cvs`, `_svn`, `_git`, `_hg` and `_p` after it,
//! then the `-rN` revision). Pure: no I/O.

use std::cmp::Ordering;

/// An installed Alpine package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: Option<String>,
    /// The origin (source) package: what Alpine's advisories name.
    pub origin: String,
    pub license: Option<String>,
}

/// The packages of apk's `installed` database: paragraphs of `K:value`
/// lines. A paragraph without `P:` or `V:` is an error naming its line.
pub fn parse_installed(text: &str) -> Result<Vec<Package>, String> {
    let mut out = Vec::new();
    let mut fields: Vec<(char, &str)> = Vec::new();
    let mut start = 1;
    for (n, line) in text.lines().chain(std::iter::once("")).enumerate() {
        if line.trim().is_empty() {
            if !fields.is_empty() {
                let get = |k: char| fields.iter().find(|(f, _)| *f == k).map(|(_, v)| (*v).to_owned());
                let name = get('P').ok_or_else(|| format!("line {start}: a package without P: (its name)"))?;
                let version = get('V').ok_or_else(|| format!("line {start}: package {name} has no V: (version)"))?;
                out.push(Package {
                    origin: get('o').unwrap_or_else(|| name.clone()),
                    architecture: get('A'),
                    license: get('L'),
                    name,
                    version,
                });
                fields.clear();
            }
            start = n + 2;
            continue;
        }
        match line.split_once(':') {
            Some((k, v)) if k.chars().count() == 1 => fields.push((k.chars().next().unwrap_or(' '), v)),
            _ => return Err(format!("line {}: {line:?} is not a `K:value` line", n + 1)),
        }
    }
    Ok(out)
}

/// One parsed apk version.
#[derive(Debug, PartialEq, Eq)]
struct Parsed<'a> {
    numbers: Vec<&'a str>,
    letter: Option<u8>,
    /// (rank, number): rank < 0 before the release, > 0 after it.
    suffixes: Vec<(i8, u64)>,
    revision: u64,
}

fn suffix_rank(s: &str) -> Option<i8> {
    Some(match s {
        "alpha" => -4,
        "beta" => -3,
        "pre" => -2,
        "rc" => -1,
        "cvs" => 1,
        "svn" => 2,
        "git" => 3,
        "hg" => 4,
        "p" => 5,
        _ => return None,
    })
}

fn parse(v: &str) -> Option<Parsed<'_>> {
    let (main, revision) = match v.rsplit_once("-r") {
        Some((m, r)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => (m, r.parse().ok()?),
        _ => (v, 0),
    };
    let (head, suffix_part) = match main.find('_') {
        Some(i) => (&main[..i], &main[i + 1..]),
        None => (main, ""),
    };
    let (numbers_part, letter) = match head.as_bytes().last() {
        Some(c) if c.is_ascii_lowercase() => (&head[..head.len() - 1], Some(*c)),
        _ => (head, None),
    };
    let numbers: Vec<&str> = numbers_part.split('.').collect();
    if numbers.iter().any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let mut suffixes = Vec::new();
    if !suffix_part.is_empty() {
        for s in suffix_part.split('_') {
            let end = s.find(|c: char| c.is_ascii_digit()).unwrap_or(s.len());
            let rank = suffix_rank(&s[..end])?;
            let n = if end == s.len() { 0 } else { s[end..].parse().ok()? };
            suffixes.push((rank, n));
        }
    }
    Some(Parsed { numbers, letter, suffixes, revision })
}

/// Compares two digit runs as numbers (any length).
fn numeric(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// apk's order of two versions; `None` when either is not a version.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse(a)?, parse(b)?);
    for (x, y) in a.numbers.iter().zip(&b.numbers) {
        match numeric(x, y) {
            Ordering::Equal => {}
            o => return Some(o),
        }
    }
    let o = a.numbers.len().cmp(&b.numbers.len());
    if o != Ordering::Equal {
        return Some(o);
    }
    let o = a.letter.cmp(&b.letter);
    if o != Ordering::Equal {
        return Some(o);
    }
    let none = (0i8, 0u64);
    for i in 0..a.suffixes.len().max(b.suffixes.len()) {
        let (x, y) = (a.suffixes.get(i).unwrap_or(&none), b.suffixes.get(i).unwrap_or(&none));
        match x.cmp(y) {
            Ordering::Equal => {}
            o => return Some(o),
        }
    }
    Some(a.revision.cmp(&b.revision))
}

/// The files apk recorded in its `installed` database with their SHA-1:
/// `F:` names a directory, each `R:` a file in it, and the `Z:` after it
/// its checksum (`Q1` and base64). Paths get a leading `/`; a file without
/// a readable `Z:` is left out.
pub fn file_sums(text: &str) -> Vec<(String, [u8; 20])> {
    let mut out = Vec::new();
    let (mut dir, mut file) = (String::new(), None::<String>);
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("F:") {
            dir = d.trim_matches('/').to_owned();
            file = None;
        } else if let Some(r) = line.strip_prefix("R:") {
            file = Some(if dir.is_empty() { format!("/{r}") } else { format!("/{dir}/{r}") });
        } else if let Some(z) = line.strip_prefix("Z:Q1") {
            let sum = crate::verify::sign::unbase64(z).and_then(|b| <[u8; 20]>::try_from(b).ok());
            if let (Some(path), Some(sum)) = (file.take(), sum) {
                out.push((path, sum));
            }
        } else if line.is_empty() {
            dir.clear();
            file = None;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_apk_does() {
        use Ordering::*;
        let cases = [
            ("1.2.3-r0", "1.2.3-r1", Less),
            ("1.2.3", "1.2.3-r0", Equal),
            ("1.2", "1.2.1", Less),
            ("1.10", "1.9", Greater),
            ("1.2.3_rc1", "1.2.3", Less),
            ("1.2.3_alpha", "1.2.3_beta", Less),
            ("1.2.3_p1", "1.2.3", Greater),
            ("1.2.3a", "1.2.3", Greater),
            ("1.2.3a", "1.2.3b", Less),
            ("3.1.4-r5", "3.1.4_p1-r0", Less),
            ("2.0_rc2", "2.0_rc10", Less),
            ("1.36.1-r15", "1.36.1-r2", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), Some(want), "{a} vs {b}");
            assert_eq!(compare(b, a), Some(want.reverse()), "{b} vs {a}");
        }
        assert_eq!(compare("1.x", "1"), None);
        assert_eq!(compare("1.0_foo", "1"), None);
    }

    #[test]
    fn the_installed_database_gives_packages_with_origins() {
        let db =
            "C:Q1abc=\nP:libcrypto3\nV:3.1.4-r5\nA:x86_64\nL:Apache-2.0\no:openssl\n\nP:musl\nV:1.2.4_git20230717-r4\n";
        let p = parse_installed(db).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].name.as_str(), p[0].origin.as_str(), p[0].version.as_str()),
            ("libcrypto3", "openssl", "3.1.4-r5")
        );
        assert_eq!(p[0].license.as_deref(), Some("Apache-2.0"));
        assert_eq!(p[1].origin, "musl", "no o: means its own origin");
        let e = parse_installed("P:a\n\nP:b\nV:1\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("package a"), "{e}");
        assert!(parse_installed("garbage\n").unwrap_err().contains("line 1"));
    }

    #[test]
    fn file_sums_pair_each_file_with_its_sha1() {
        use sha1::Digest as _;
        let sum = sha1::Sha1::digest(b"#!/bin/sh\n");
        let q1 = format!("Q1{}", crate::verify::sign::base64(&sum));
        let db = format!(
            "P:busybox\nV:1.36.1-r2\nF:bin\nR:busybox\na:0:0:755\nZ:{q1}\nR:sh\nZ:Q1notbase64!\n\
             F:etc/profile.d\nR:color.sh\nZ:{q1}\n\nP:other\nV:1\nR:top\nZ:{q1}\n"
        );
        let sums = file_sums(&db);
        let paths: Vec<&str> = sums.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/bin/busybox", "/etc/profile.d/color.sh", "/top"], "a bad Z: is left out");
        assert_eq!(&sums[0].1[..], &sum[..]);
    }
}
