//! `kiln.lock`, beside kiln.toml: the digest each registry base (`from =
//! "HOST/REPO:TAG"`) resolved to, per platform, so that a bake is the same
//! bake tomorrow and offline. The first bake of a tag writes its pin;
//! later bakes use the pin even when the tag has moved; `kiln bake
//! --update-base` moves it; `kiln bases outdated` compares it with the tag.
//! Commit it with kiln.toml, as a Cargo.lock.
//!
//! For: reading, looking up and rewriting the pins (whole, atomically).
//! Must never: reach a registry (the bake does), or drop a pin it did not
//! replace (other images' and other platforms' pins are kept as read).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The lock file's name, beside kiln.toml.
pub const FILE: &str = "kiln.lock";
const VERSION: u32 = 1;

/// One pinned base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The `from` value as kiln.toml writes it.
    pub from: String,
    /// `linux/<architecture>`.
    pub platform: String,
    /// The image manifest for that platform.
    pub digest: Digest,
    /// The index or manifest list the tag named, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    version: u32,
    #[serde(default, rename = "base")]
    bases: Vec<Pin>,
}

/// kiln.lock that cannot be read or written, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// Not a lock file kiln can read (the message names line and key).
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// The pins of one kiln.toml's directory.
#[derive(Debug, Clone)]
pub struct Lock {
    path: PathBuf,
    pins: Vec<Pin>,
}

impl Lock {
    /// Reads `dir/kiln.lock`; no file is no pins.
    pub fn load(dir: &Path) -> Result<Lock, LockError> {
        let path = dir.join(FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lock { path, pins: Vec::new() }),
            Err(source) => return Err(LockError::Io { path, source }),
        };
        let f: LockFile =
            toml::from_str(&text).map_err(|e| LockError::Invalid { path: path.clone(), why: one_line(&e) })?;
        if f.version != VERSION {
            return Err(LockError::Invalid {
                path,
                why: format!("version = {}: this kiln reads version {VERSION}", f.version),
            });
        }
        for (i, a) in f.bases.iter().enumerate() {
            if f.bases[..i].iter().any(|b| b.from == a.from && b.platform == a.platform) {
                return Err(LockError::Invalid {
                    path,
                    why: format!("base[{i}]: {} for {} is pinned twice", a.from, a.platform),
                });
            }
        }
        Ok(Lock { path, pins: f.bases })
    }

    /// The pin of `from` on `platform`.
    pub fn get(&self, from: &str, platform: &str) -> Option<&Pin> {
        self.pins.iter().find(|p| p.from == from && p.platform == platform)
    }

    /// Sets a pin; returns the digest it replaced.
    pub fn set(&mut self, pin: Pin) -> Option<Digest> {
        match self.pins.iter_mut().find(|p| p.from == pin.from && p.platform == pin.platform) {
            Some(p) => Some(std::mem::replace(p, pin).digest),
            None => {
                self.pins.push(pin);
                None
            }
        }
    }

    /// Writes the file whole: a reader sees the old pins or the new ones.
    pub fn save(&mut self) -> Result<(), LockError> {
        self.pins.sort_by(|a, b| (&a.from, &a.platform).cmp(&(&b.from, &b.platform)));
        // Written by hand: four string keys do not need a TOML writer.
        let mut text = format!(
            "# kiln.lock: the digest each registry base of kiln.toml resolved to.\n\
             # Written by `kiln bake`; `kiln bake --update-base` moves a pin. Commit it.\n\n\
             version = {VERSION}\n"
        );
        for p in &self.pins {
            text.push_str(&format!(
                "\n[[base]]\nfrom = {}\nplatform = {}\ndigest = \"{}\"\n",
                quote(&p.from),
                quote(&p.platform),
                p.digest
            ));
            if let Some(i) = &p.index {
                text.push_str(&format!("index = \"{i}\"\n"));
            }
        }
        let io_err = |source| LockError::Io { path: self.path.clone(), source };
        let tmp = self.path.with_extension("lock.tmp");
        let mut f = fs::File::create(&tmp).map_err(io_err)?;
        f.write_all(text.as_bytes()).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        fs::rename(&tmp, &self.path).map_err(io_err)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML error on one line: "line N, column M: why".
fn one_line(e: &toml::de::Error) -> String {
    e.to_string()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('|'))
        .collect::<Vec<_>>()
        .join(": ")
}

/// This host's platform as a pin names it.
pub fn platform() -> String {
    format!("linux/{}", crate::oci::host_architecture())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn pins_round_trip_and_a_move_reports_the_old_digest() {
        let dir = std::env::temp_dir().join(format!("kiln-lock-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut l = Lock::load(&dir).unwrap();
        assert!(l.get("r/x:1", "linux/amd64").is_none(), "no file, no pins");
        let pin = |c| Pin { from: "r:5000/x:1".into(), platform: "linux/amd64".into(), digest: d(c), index: None };
        assert_eq!(l.set(pin('a')), None);
        l.set(Pin { platform: "linux/arm64".into(), ..pin('b') });
        l.save().unwrap();
        let mut again = Lock::load(&dir).unwrap();
        assert_eq!(again.get("r:5000/x:1", "linux/amd64").unwrap().digest, d('a'));
        assert_eq!(again.set(pin('c')), Some(d('a')));
        again.save().unwrap();
        let text = fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(text.contains(&d('c').to_string()) && text.contains(&d('b').to_string()), "{text}");
        assert!(!text.contains(&d('a').to_string()), "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_lock_is_refused_naming_file_line_and_key() {
        let dir = std::env::temp_dir().join(format!("kiln-lock-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for (text, wants) in [
            (
                "version = 1\n\n[[base]]\nfrom = \"r/x:1\"\nplatform = \"linux/amd64\"\ndigest = \"sha256:zz\"\n",
                "line 6",
            ),
            ("version = 1\n[[base]]\nfrom = \"r/x:1\"\nplatform = \"linux/amd64\"\n", "digest"),
            ("version = 2\n", "version = 2"),
            ("version = 1\n[[base]]\nfrom = \"r/x:1\"\nplatfrom = \"linux/amd64\"\n", "platfrom"),
        ] {
            fs::write(dir.join(FILE), text).unwrap();
            let e = Lock::load(&dir).unwrap_err().to_string();
            assert!(e.contains("kiln.lock") && e.contains(wants), "{text:?}: {e}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
