//! Debian package versions and the dpkg database, for the vulnerability
//! scan: [`Version`] orders exactly as `dpkg --compare-versions` does
//! (epoch, then upstream and revision by dpkg's `verrevcmp`: `~` before
//! everything, even the end; letters before other characters; digit runs
//! compared as numbers), and [`parse_status`] reads `/var/lib/dpkg/status`
//! (or a `status.d/` file) into installed packages with their source
//! package, which is what Debian advisories name. Pure: no I/O.

use std::cmp::Ordering;

use serde::Serialize;

/// A Debian version: `[epoch:]upstream[-revision]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub epoch: u64,
    pub upstream: String,
    pub revision: String,
}

impl Version {
    /// Parses a version; `Err` says what is wrong with it.
    pub fn parse(s: &str) -> Result<Version, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty version".into());
        }
        if s.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(format!("{s:?}: a version holds no spaces"));
        }
        let (epoch, rest) = match s.split_once(':') {
            Some((e, rest)) => {
                let epoch = e.parse::<u64>().map_err(|_| format!("{s:?}: the epoch {e:?} is not a number"))?;
                (epoch, rest)
            }
            None => (0, s),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        if upstream.is_empty() {
            return Err(format!("{s:?}: no upstream version"));
        }
        Ok(Version { epoch, upstream: upstream.to_owned(), revision: revision.to_owned() })
    }
}

/// dpkg's weight of a character in a non-digit run.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp`: alternating non-digit and digit runs.
fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (wa, wb) = (weight(a.get(i).copied()), weight(b.get(j).copied()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first == Ordering::Equal {
                first = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first != Ordering::Equal {
            return first;
        }
    }
    Ordering::Equal
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(self.upstream.as_bytes(), other.upstream.as_bytes()))
            .then_with(|| verrevcmp(self.revision.as_bytes(), other.revision.as_bytes()))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// An installed package, as the dpkg database says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: Option<String>,
    /// The source package (the package's own name when `Source:` is absent).
    pub source: String,
    /// The source version (`Source: name (version)`), else the package's.
    pub source_version: String,
    /// Fully installed (`Status: ... installed`, or no `Status`). A package
    /// removed but for its conffiles (`config-files`) or half-installed is
    /// still listed, since some of its files are on disk.
    pub installed: bool,
}

/// The packages of a dpkg `status` file (or a `status.d/` file, the same
/// format): every paragraph but those whose `Status` ends in
/// `not-installed`, with `installed` true when it ends in `installed` (or
/// a paragraph has no `Status`, as in distroless `status.d/`).
/// Continuation lines are skipped; a paragraph without `Package` or
/// `Version` is an error naming its line.
pub fn parse_status(text: &str) -> Result<Vec<Package>, String> {
    let mut out = Vec::new();
    let mut fields: Vec<(&str, &str)> = Vec::new();
    let mut start = 1;
    let lines: Vec<&str> = text.lines().collect();
    for (n, line) in lines.iter().chain(std::iter::once(&"")).enumerate() {
        if line.trim().is_empty() {
            if !fields.is_empty() {
                if let Some(p) = paragraph(&fields).map_err(|e| format!("line {start}: {e}"))? {
                    out.push(p);
                }
                fields.clear();
            }
            start = n + 2;
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim(), v.trim()));
        } else {
            return Err(format!("line {}: {line:?} is not a `Field: value` line", n + 1));
        }
    }
    Ok(out)
}

fn paragraph(fields: &[(&str, &str)]) -> Result<Option<Package>, String> {
    let get = |k: &str| fields.iter().find(|(f, _)| f.eq_ignore_ascii_case(k)).map(|(_, v)| *v);
    let state = get("Status").map_or("installed", |s| s.split_whitespace().last().unwrap_or(""));
    if state == "not-installed" {
        return Ok(None);
    }
    let name = get("Package").ok_or("a paragraph without Package")?;
    let version = get("Version").ok_or_else(|| format!("package {name} has no Version"))?;
    Version::parse(version).map_err(|e| format!("package {name}: {e}"))?;
    let (source, source_version) = match get("Source") {
        Some(s) => match s.split_once('(') {
            Some((src, v)) => (src.trim().to_owned(), v.trim_end_matches(')').trim().to_owned()),
            None => (s.to_owned(), version.to_owned()),
        },
        None => (name.to_owned(), version.to_owned()),
    };
    Ok(Some(Package {
        name: name.to_owned(),
        version: version.to_owned(),
        architecture: get("Architecture").map(str::to_owned),
        source,
        source_version,
        installed: state == "installed",
    }))
}

/// The licenses a Debian `copyright` file names, sorted and deduplicated:
/// the value of every `License:` line (DEP-5, the machine-readable format;
/// a `GPL-2+ or Artistic` value gives both) and every file named under
/// `/usr/share/common-licenses/` (the free-form files that point there).
/// `none` and empty values are skipped; a sentence's final `.` is dropped.
pub fn copyright_licenses(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        let name = name.trim().trim_end_matches(['.', ',', ';', ')']).trim_start_matches('(');
        if !name.is_empty() && !name.eq_ignore_ascii_case("none") && name.len() <= 64 {
            out.push(name.to_owned());
        }
    };
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("License:") {
            let value = value.trim();
            // `A or B`, `A and B`, `A, and B`: each one is a license of the package.
            let mut rest = value.replace(" | ", " or ").replace(", and ", " and ").replace(", or ", " or ");
            for sep in [" or ", " and ", " OR ", " AND ", ", "] {
                rest = rest.replace(sep, "\n");
            }
            for part in rest.split('\n') {
                // A DEP-5 value is one short name; words after it are prose.
                if let Some(first) = part.split_whitespace().next() {
                    add(first);
                }
            }
        }
        let mut at = line;
        while let Some(i) = at.find("/usr/share/common-licenses/") {
            let tail = &at[i + "/usr/share/common-licenses/".len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+')))
                .unwrap_or(tail.len());
            add(&tail[..end]);
            at = &tail[end..];
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(a: &str, b: &str) -> Ordering {
        Version::parse(a).unwrap().cmp(&Version::parse(b).unwrap())
    }

    #[test]
    fn versions_order_as_dpkg_does() {
        use Ordering::*;
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0", "1.0+b1", Less),
            ("1.0-1", "1.0-1+deb12u1", Less),
            ("1:0.9", "2.0", Greater),
            ("1.10", "1.9", Greater),
            ("1.001", "1.1", Equal),
            ("1.0a", "1.0+", Less),
            ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
            ("3.0.11-1~deb12u2", "3.0.11-1", Less),
            ("0:1.2", "1.2", Equal),
            ("1.2-0", "1.2", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(cmp(a, b), want, "{a} vs {b}");
            assert_eq!(cmp(b, a), want.reverse(), "{b} vs {a}");
        }
        assert!(Version::parse("x:1").is_err());
        assert!(Version::parse("").is_err());
        assert!(Version::parse("1.0 2").is_err());
        assert_eq!(Version::parse("1:2.3-4-5").unwrap().revision, "5", "the revision follows the last '-'");
    }

    #[test]
    fn the_status_file_gives_installed_packages_with_their_sources() {
        let text = "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\n\
                    Source: openssl\nVersion: 3.0.11-1~deb12u2\nDescription: TLS\n continued line\n\n\
                    Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\nSource: bash (5.2.15-2)\n\n\
                    Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\n\
                    Package: purged\nStatus: purge ok not-installed\nVersion: 1.0\n\n\
                    Package: base-files\nVersion: 12.4+deb12u5\n";
        let p = parse_status(text).unwrap();
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!((p[2].name.as_str(), p[2].installed), ("gone", false), "its conffiles remain");
        assert!(p[0].installed && p[3].installed, "no Status: installed (distroless status.d/)");
        let p: Vec<Package> = p.into_iter().filter(|p| p.name != "gone").collect();
        assert_eq!((p[0].source.as_str(), p[0].source_version.as_str()), ("openssl", "3.0.11-1~deb12u2"));
        assert_eq!((p[1].source.as_str(), p[1].source_version.as_str()), ("bash", "5.2.15-2"));
        assert_eq!(p[1].version, "5.2.15-2+b2");
        assert_eq!(p[2].source, "base-files");
        let e = parse_status("Package: a\nStatus: install ok installed\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("package a has no Version"), "{e}");
        let e = parse_status("Package: a\nVersion: 1\n\nPackage: b\nVersion: x:1\n").unwrap_err();
        assert!(e.contains("line 4") && e.contains("package b") && e.contains("epoch"), "{e}");
        assert!(parse_status("garbage\n").unwrap_err().contains("line 1"));
    }

    #[test]
    fn copyright_files_name_their_licenses_in_both_formats() {
        let dep5 = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
                    \nFiles: *\nCopyright: 2001 A\nLicense: GPL-2+\n This program is free software\n\
                    \nFiles: lib/*\nLicense: BSD-3-clause or Expat\n\
                    \nFiles: doc/*\nLicense: GFDL-1.3\n On Debian systems, see /usr/share/common-licenses/GFDL-1.3.\n\
                    \nFiles: t/*\nLicense: none\n";
        assert_eq!(copyright_licenses(dep5), ["BSD-3-clause", "Expat", "GFDL-1.3", "GPL-2+"]);
        let prose = "This package is Copyright 1995 B.\n\nIt is licensed under the GPL; on Debian systems the\n\
                     full text is in /usr/share/common-licenses/GPL-2, and the\n\
                     library under /usr/share/common-licenses/LGPL-2.1.\n";
        assert_eq!(copyright_licenses(prose), ["GPL-2", "LGPL-2.1"]);
        assert!(copyright_licenses("no license named here\n").is_empty());
    }
}
