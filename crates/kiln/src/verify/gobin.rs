//! Go binaries: their build information (Go 1.18 and later write it
//! inline after the `\xff Go buildinf:` header) names the toolchain and
//! the modules compiled in (`path`, `mod`, `dep` lines), which is what the
//! SBOM lists and OSV's `Go` ecosystem matches (`stdlib` and module
//! paths). Older binaries keep pointers instead of strings: not read, and
//! said so. Pure: no I/O.

/// The header that starts the build information.
const MAGIC: &[u8] = b"\xff Go buildinf:";

/// A module (or the standard library) compiled into a Go binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    /// As the binary says (`v1.2.3`, `(devel)`; `go1.21.5` for `stdlib`).
    pub version: String,
    /// The main module (the binary's own).
    pub main: bool,
}

fn uvarint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut x = 0u64;
    for shift in (0..64).step_by(7) {
        let c = *b.get(*at)?;
        *at += 1;
        x |= u64::from(c & 0x7f) << shift;
        if c < 0x80 {
            return Some(x);
        }
    }
    None
}

fn bytes<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let n = usize::try_from(uvarint(b, at)?).ok()?;
    let s = b.get(*at..at.checked_add(n)?)?;
    *at += n;
    Some(s)
}

/// The modules of a Go binary: `Ok(None)` when it is not one, `Err` when
/// it is one whose build information kiln cannot read.
pub fn modules(elf: &[u8]) -> Result<Option<Vec<Module>>, String> {
    // The header is 16-byte aligned inside .go.buildinfo.
    let Some(start) = (0..elf.len().saturating_sub(32)).step_by(16).find(|&i| elf[i..].starts_with(MAGIC)) else {
        return Ok(None);
    };
    let flags = elf[start + 15];
    if flags & 2 == 0 {
        return Err("a Go binary from before Go 1.18 (its build information is not inline)".into());
    }
    let mut at = start + 32;
    let version = bytes(elf, &mut at).ok_or("truncated Go build information")?;
    let version = String::from_utf8_lossy(version).into_owned();
    let mut info = bytes(elf, &mut at).ok_or("truncated Go build information")?;
    // The module information is framed by 16-byte sentinels.
    if info.len() >= 33 && info[info.len() - 17] == b'\n' {
        info = &info[16..info.len() - 16];
    }
    let info = String::from_utf8_lossy(info);
    let mut out = vec![Module { path: "stdlib".into(), version, main: false }];
    let mut main_path = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["path", p, ..] => main_path = Some((*p).to_owned()),
            ["mod", p, v, ..] => out.push(Module { path: (*p).to_owned(), version: (*v).to_owned(), main: true }),
            ["dep", p, v, ..] => out.push(Module { path: (*p).to_owned(), version: (*v).to_owned(), main: false }),
            // A replacement applies to the module just listed.
            ["=>", p, v, ..] => {
                if let Some(last) = out.last_mut() {
                    last.path = (*p).to_owned();
                    last.version = (*v).to_owned();
                }
            }
            _ => {}
        }
    }
    if !out.iter().any(|m| m.main) {
        if let Some(p) = main_path {
            out.push(Module { path: p, version: "(devel)".into(), main: true });
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(version: &str, info: &str) -> Vec<u8> {
        let mut b = vec![0u8; 48];
        let mut h = MAGIC.to_vec();
        h.extend([8, 2]);
        h.resize(32, 0);
        b.extend(h);
        for s in [version.as_bytes(), info.as_bytes()] {
            let mut n = s.len();
            while n >= 0x80 {
                b.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            b.push(n as u8);
            b.extend(s);
        }
        b.extend([0u8; 40]);
        b
    }

    #[test]
    fn build_information_names_the_toolchain_and_modules() {
        let info = format!(
            "{}path\texample.com/app\nmod\texample.com/app\tv1.2.0\th1:x=\ndep\tgolang.org/x/net\tv0.17.0\th1:y=\n\
             dep\tgithub.com/a/b\tv1.0.0\n=>\tgithub.com/fork/b\tv1.0.1\th1:z=\nbuild\tGOOS=linux\n{}",
            "0".repeat(16),
            "\n".to_owned() + &"1".repeat(16)
        );
        let m = modules(&binary("go1.21.5", &info)).unwrap().unwrap();
        let got: Vec<(&str, &str, bool)> = m.iter().map(|m| (m.path.as_str(), m.version.as_str(), m.main)).collect();
        assert_eq!(
            got,
            [
                ("stdlib", "go1.21.5", false),
                ("example.com/app", "v1.2.0", true),
                ("golang.org/x/net", "v0.17.0", false),
                ("github.com/fork/b", "v1.0.1", false),
            ]
        );
        let gopath =
            modules(&binary("go1.19.8", "path\tgithub.com/docker/distribution/cmd/registry\n")).unwrap().unwrap();
        assert_eq!(gopath[1].version, "(devel)");
        assert_eq!(modules(b"\x7fELF no go here at all, padding padding padding").unwrap(), None);
    }
}
