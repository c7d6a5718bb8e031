//! Rust binaries built with cargo-auditable: their dependency tree lives in
//! the ELF section `.dep-v0` as zlib-compressed JSON
//! (`{"packages":[{"name","version","source","kind","root"},...]}`).
//! [`packages`] finds and reads it; [`compare_semver`] orders the crate
//! versions OSV's `SEMVER` ranges name. Pure: no I/O.

use std::cmp::Ordering;
use std::io::Read;

use serde::Deserialize;

/// The section cargo-auditable writes.
pub const SECTION: &str = ".dep-v0";
/// The most a section may inflate to (a dependency list, not a payload).
const MAX_JSON: u64 = 16 << 20;

/// A crate compiled into a binary.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// `crates.io`, `local`, `git`, or a registry's name.
    #[serde(default)]
    pub source: String,
    /// `runtime` (default) or `build`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The binary's own crate.
    #[serde(default)]
    pub root: bool,
}

#[derive(Deserialize)]
struct DepInfo {
    packages: Vec<Crate>,
}

/// Whether `head` begins an ELF file.
pub fn is_elf(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF")
}

/// The bytes of the section named `name` of an ELF file, if it has one.
/// `Err` when the file claims to be ELF but its headers do not hold.
pub fn section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, String> {
    if !is_elf(elf) || elf.len() < 0x34 {
        return Err("not an ELF file".into());
    }
    let wide = match elf[4] {
        1 => false,
        2 => true,
        c => return Err(format!("unknown ELF class {c}")),
    };
    let big = match elf[5] {
        1 => false,
        2 => true,
        d => return Err(format!("unknown ELF byte order {d}")),
    };
    let get = |at: usize, n: usize| -> Result<u64, String> {
        let b = elf.get(at..at + n).ok_or_else(|| format!("a header field at {at} is past the end"))?;
        let mut v = 0u64;
        for i in 0..n {
            let byte = if big { b[i] } else { b[n - 1 - i] };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    };
    let (shoff, shentsize, shnum, shstrndx) = if wide {
        (get(0x28, 8)?, get(0x3A, 2)?, get(0x3C, 2)?, get(0x3E, 2)?)
    } else {
        (get(0x20, 4)?, get(0x2E, 2)?, get(0x30, 2)?, get(0x32, 2)?)
    };
    if shoff == 0 || shnum == 0 {
        return Ok(None);
    }
    // (name offset, file offset, size) of section `i`.
    let header = |i: u64| -> Result<(u64, u64, u64), String> {
        let at = usize::try_from(shoff + i * shentsize).map_err(|_| "section headers out of range")?;
        if wide {
            Ok((get(at, 4)?, get(at + 24, 8)?, get(at + 32, 8)?))
        } else {
            Ok((get(at, 4)?, get(at + 16, 4)?, get(at + 20, 4)?))
        }
    };
    let bytes = |off: u64, size: u64| -> Result<&'a [u8], String> {
        let (s, e) = (usize::try_from(off).ok(), off.checked_add(size).and_then(|e| usize::try_from(e).ok()));
        match (s, e) {
            (Some(s), Some(e)) if e <= elf.len() => Ok(&elf[s..e]),
            _ => Err(format!("a section at {off} (+{size}) is past the end of the file")),
        }
    };
    let (_, stroff, strsize) = header(shstrndx)?;
    let names = bytes(stroff, strsize)?;
    for i in 0..shnum {
        let (n, off, size) = header(i)?;
        let Some(rest) = names.get(n as usize..) else { continue };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return bytes(off, size).map(Some);
        }
    }
    Ok(None)
}

/// The crates of a cargo-auditable binary; `Ok(None)` when it has no
/// `.dep-v0` section (not built with cargo-auditable, or not Rust).
pub fn packages(elf: &[u8]) -> Result<Option<Vec<Crate>>, String> {
    let Some(data) = section(elf, SECTION)? else { return Ok(None) };
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(MAX_JSON)
        .read_to_end(&mut json)
        .map_err(|e| format!("{SECTION} does not inflate: {e}"))?;
    let info: DepInfo =
        serde_json::from_slice(&json).map_err(|e| format!("{SECTION} is not cargo-auditable JSON: {e}"))?;
    Ok(Some(info.packages))
}

/// A semantic version's parts: `major.minor.patch[-pre][+build]`.
fn semver_parts(v: &str) -> Option<([u64; 3], Vec<&str>)> {
    let v = v.trim().trim_start_matches('v');
    let v = v.split_once('+').map_or(v, |(a, _)| a);
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, p.split('.').collect()),
        None => (v, Vec::new()),
    };
    let mut nums = [0u64; 3];
    let mut parts = core.split('.');
    for n in &mut nums {
        match parts.next() {
            Some(p) => *n = p.parse().ok()?,
            None => break,
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Some((nums, pre))
}

/// Semantic-version order (SemVer 2.0.0 §11); `None` if either is not one.
/// `0` (OSV's "from the beginning") is the least version.
pub fn compare_semver(a: &str, b: &str) -> Option<Ordering> {
    let ((na, pa), (nb, pb)) = (semver_parts(a)?, semver_parts(b)?);
    let o = na.cmp(&nb);
    if o != Ordering::Equal {
        return Some(o);
    }
    Some(match (pa.is_empty(), pb.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => {
            for (x, y) in pa.iter().zip(&pb) {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return Some(o);
                }
            }
            pa.len().cmp(&pb.len())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_orders_prereleases_before_releases() {
        use Ordering::*;
        let cases = [
            ("1.0.0", "1.0.1", Less),
            ("1.10.0", "1.9.9", Greater),
            ("1.0.0-alpha", "1.0.0", Less),
            ("1.0.0-alpha", "1.0.0-alpha.1", Less),
            ("1.0.0-alpha.1", "1.0.0-alpha.beta", Less),
            ("1.0.0-beta.2", "1.0.0-beta.11", Less),
            ("1.0.0+build", "1.0.0", Equal),
            ("0", "0.0.1", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_semver(a, b), Some(want), "{a} vs {b}");
            assert_eq!(compare_semver(b, a), Some(want.reverse()), "{b} vs {a}");
        }
        assert_eq!(compare_semver("1.x", "1.0.0"), None);
        assert_eq!(compare_semver("1.2.3.4", "1.0.0"), None);
    }

    #[test]
    fn a_bad_elf_is_an_error_not_a_panic() {
        assert!(section(b"\x7fELF\x02\x01", ".dep-v0").is_err());
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        // A section table far past the end.
        elf[0x28] = 0xff;
        elf[0x29] = 0xff;
        elf[0x3C] = 1;
        assert!(section(&elf, ".dep-v0").unwrap_err().contains("past the end"));
        elf[0x3C] = 0;
        assert_eq!(section(&elf, ".dep-v0").unwrap(), None, "no sections");
    }
}
