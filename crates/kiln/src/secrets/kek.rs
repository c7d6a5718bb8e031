//! The key-encryption key (KEK) that opens kiln's encrypted stores (the
//! secrets, the signing keys): where it comes from, and the wrapping key a
//! store derives from it.
//!
//! For: keeping the key that unlocks KILN_HOME's secrets outside KILN_HOME,
//! so that a reader of KILN_HOME, a backup of it or a stolen disk without
//! the key learns secret names, sizes and versions, never a value.
//!
//! Sources, first found wins: the file `$KILN_KEY_FILE`; the systemd
//! credential `kiln-key` (`$CREDENTIALS_DIRECTORY/kiln-key`, what
//! `LoadCredential=kiln-key:/etc/kiln/key` gives a unit); the passphrase in
//! `$KILN_PASSPHRASE`; a passphrase typed at `/dev/tty` (unless
//! `KILN_NO_PROMPT` is set).
//!
//! Must never: accept a key file that group or others can read, or one
//! inside KILN_HOME; print, log or write a key or a passphrase.

use std::fmt;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const KEY_FILE_ENV: &str = "KILN_KEY_FILE";
pub const PASSPHRASE_ENV: &str = "KILN_PASSPHRASE";
pub const NO_PROMPT_ENV: &str = "KILN_NO_PROMPT";
/// The passphrase a store was sealed with, for a rotation to a new KEK.
pub const OLD_PASSPHRASE_ENV: &str = "KILN_OLD_PASSPHRASE";
/// The key file a store may still be sealed with (an agent given both
/// keys while a fleet's KEK is rotated).
pub const OLD_KEY_FILE_ENV: &str = "KILN_OLD_KEY_FILE";
/// The systemd credential's name.
pub const CREDENTIAL: &str = "kiln-key";
/// PBKDF2-HMAC-SHA256 rounds for a passphrase (OWASP's 2023 figure).
pub const PBKDF2_ROUNDS: u32 = 600_000;
/// The fewest bytes a key file may hold (`openssl rand -hex 32` writes 64).
pub const MIN_KEY_FILE: usize = 32;

/// Where a KEK came from: what errors and reports name (never its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A key file, and what named it (`KILN_KEY_FILE`, `--old-key-file`).
    File { path: PathBuf, named_by: &'static str },
    /// A systemd credential file.
    Credential(PathBuf),
    /// A passphrase from an environment variable.
    PassphraseEnv(&'static str),
    /// A passphrase typed at the terminal.
    Prompt,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, named_by } => write!(f, "the key file {} ({named_by})", path.display()),
            Origin::Credential(p) => write!(f, "the systemd credential {}", p.display()),
            Origin::PassphraseEnv(var) => write!(f, "the passphrase in {var}"),
            Origin::Prompt => write!(f, "the passphrase typed at the prompt"),
        }
    }
}

/// How a KEK turns into a wrapping key: recorded in each store, so a
/// store sealed with a passphrase says so when a key file is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HMAC-SHA256 keyed by the file's bytes (whitespace at either end
    /// trimmed, so an editor's newline changes nothing).
    File,
    /// PBKDF2-HMAC-SHA256 with [`PBKDF2_ROUNDS`].
    Passphrase,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Passphrase => "passphrase",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "file" => Some(Kind::File),
            "passphrase" => Some(Kind::Passphrase),
            _ => None,
        }
    }
}

/// A key-encryption key; its `Debug` shows where it came from, never it.
#[derive(Clone)]
pub struct Kek {
    pub origin: Origin,
    pub kind: Kind,
    material: Vec<u8>,
}

impl Kek {
    /// A digest of the key (for a process's cache of what it opened;
    /// never written anywhere).
    pub fn fingerprint(&self) -> String {
        crate::digest::Digest::of(&[self.kind.as_str().as_bytes(), b"\0", &self.material].concat()).hex().to_owned()
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({}, {} bytes)", self.origin, self.material.len())
    }
}

impl Drop for Kek {
    fn drop(&mut self) {
        self.material.iter_mut().for_each(|b| *b = 0);
    }
}

/// Why no usable KEK could be had, naming the file or variable.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("{origin}: {source}")]
    Read { origin: Origin, source: io::Error },
    #[error("{}: mode {mode:04o} lets other users read it; a key file must be readable by its owner alone (chmod 600 {})", path.display(), path.display())]
    Readable { path: PathBuf, mode: u32 },
    #[error("{}: the key file is inside KILN_HOME ({}), so whoever reads KILN_HOME or a backup of it reads the key too; keep it elsewhere (/etc/kiln/key)", path.display(), home.display())]
    InsideHome { path: PathBuf, home: PathBuf },
    #[error("{}: {len} bytes; a key file holds at least {MIN_KEY_FILE} (make one with `(umask 077; openssl rand -hex 32 > FILE)`)", path.display())]
    TooShort { path: PathBuf, len: usize },
    #[error("{}: not a regular file", path.display())]
    NotFile { path: PathBuf },
    #[error("{var} is empty")]
    EmptyPassphrase { var: &'static str },
    #[error("the passphrases typed differ; nothing was changed")]
    Mismatch,
}

/// What the environment offers, read once ([`Sources::from_env`]) or
/// given by a test.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub key_file: Option<PathBuf>,
    pub credentials_dir: Option<PathBuf>,
    pub passphrase: Option<String>,
    /// A passphrase may be asked for at /dev/tty.
    pub prompt: bool,
}

impl Sources {
    pub fn from_env() -> Sources {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Sources {
            key_file: var(KEY_FILE_ENV).map(PathBuf::from),
            credentials_dir: var("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            passphrase: std::env::var(PASSPHRASE_ENV).ok(),
            prompt: var(NO_PROMPT_ENV).is_none(),
        }
    }
}

/// The previous KEK the environment names: `KILN_OLD_KEY_FILE`, else
/// `KILN_OLD_PASSPHRASE`, else none.
pub fn old_from_env(home: &Path) -> Result<Option<Kek>, KekError> {
    if let Some(path) = std::env::var_os(OLD_KEY_FILE_ENV).filter(|v| !v.is_empty()) {
        return from_file(Path::new(&path), OLD_KEY_FILE_ENV, home).map(Some);
    }
    match std::env::var(OLD_PASSPHRASE_ENV) {
        Ok(pass) if !pass.is_empty() => from_passphrase(&pass, Origin::PassphraseEnv(OLD_PASSPHRASE_ENV)).map(Some),
        _ => Ok(None),
    }
}

/// Reads a key file, refusing one others can read, one inside `home`, or
/// one too short to be a key.
pub fn from_file(path: &Path, named_by: &'static str, home: &Path) -> Result<Kek, KekError> {
    let origin = Origin::File { path: path.to_owned(), named_by };
    read_key(path, origin, home)
}

fn read_key(path: &Path, origin: Origin, home: &Path) -> Result<Kek, KekError> {
    let meta = std::fs::metadata(path).map_err(|source| KekError::Read { origin: origin.clone(), source })?;
    if !meta.is_file() {
        return Err(KekError::NotFile { path: path.to_owned() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KekError::Readable { path: path.to_owned(), mode });
    }
    if let (Ok(file), Ok(home_real)) = (path.canonicalize(), home.canonicalize()) {
        if file.starts_with(&home_real) {
            return Err(KekError::InsideHome { path: path.to_owned(), home: home.to_owned() });
        }
    }
    let bytes = std::fs::read(path).map_err(|source| KekError::Read { origin: origin.clone(), source })?;
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    let material = bytes[start..end].to_vec();
    let mut bytes = bytes;
    bytes.iter_mut().for_each(|b| *b = 0);
    if material.len() < MIN_KEY_FILE {
        return Err(KekError::TooShort { path: path.to_owned(), len: material.len() });
    }
    Ok(Kek { origin, kind: Kind::File, material })
}

/// A KEK from a passphrase.
pub fn from_passphrase(passphrase: &str, origin: Origin) -> Result<Kek, KekError> {
    if passphrase.is_empty() {
        return Err(KekError::EmptyPassphrase { var: PASSPHRASE_ENV });
    }
    Ok(Kek { origin, kind: Kind::Passphrase, material: passphrase.as_bytes().to_vec() })
}

/// The KEK the environment offers, in the documented order; none when
/// it offers none.
pub fn resolve(src: &Sources, home: &Path) -> Result<Option<Kek>, KekError> {
    if let Some(p) = &src.key_file {
        return from_file(p, KEY_FILE_ENV, home).map(Some);
    }
    if let Some(dir) = &src.credentials_dir {
        let p = dir.join(CREDENTIAL);
        if p.exists() {
            return read_key(&p, Origin::Credential(p.clone()), home).map(Some);
        }
    }
    if let Some(pass) = &src.passphrase {
        return from_passphrase(pass, Origin::PassphraseEnv(PASSPHRASE_ENV)).map(Some);
    }
    if src.prompt {
        if let Some(pass) = prompt("kiln: passphrase for the secrets and signing keys: ")? {
            return from_passphrase(&pass, Origin::Prompt).map(Some);
        }
    }
    Ok(None)
}

/// Asks again for a prompted passphrase before a store is first sealed
/// with it (a typo would seal it with a passphrase nobody knows).
pub fn confirm(kek: &Kek) -> Result<(), KekError> {
    if kek.origin != Origin::Prompt {
        return Ok(());
    }
    match prompt("kiln: the same passphrase again: ")? {
        Some(again) if again.as_bytes() == kek.material => Ok(()),
        _ => Err(KekError::Mismatch),
    }
}

/// Reads a line from /dev/tty with echo off; none without a terminal.
fn prompt(question: &str) -> Result<Option<String>, KekError> {
    let origin = || Origin::Prompt;
    let Ok(tty) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty") else {
        return Ok(None);
    };
    use std::os::fd::AsRawFd;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd
    // (the tty opened above, alive for this whole function).
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `saved` is a valid, writable termios.
    let have_termios = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_termios {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: a valid fd and a termios derived from its own settings.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut w = &tty;
    let _ = w.write_all(question.as_bytes()).and_then(|()| w.flush());
    let mut line = String::new();
    let read = io::BufReader::new(&tty).read_line(&mut line);
    if have_termios {
        // SAFETY: restores the settings read from the same valid fd.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    let _ = w.write_all(b"\n");
    read.map_err(|source| KekError::Read { origin: origin(), source })?;
    let pass = line.trim_end_matches(['\n', '\r']).to_owned();
    line.clear();
    Ok(Some(pass))
}

/// The 32-byte key that wraps a store's data key: bound to the KEK, the
/// store's purpose (secrets and signing keys never share one) and its salt.
pub fn wrapping_key(kek: &Kek, purpose: &str, salt: &[u8]) -> [u8; 32] {
    let mut label = b"kiln kek v1\0".to_vec();
    label.extend_from_slice(purpose.as_bytes());
    label.push(0);
    label.extend_from_slice(salt);
    match kek.kind {
        Kind::File => hmac_sha256(&kek.material, &[&label]),
        Kind::Passphrase => pbkdf2_sha256(&kek.material, &label, PBKDF2_ROUNDS),
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts a key of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 (RFC 8018), one 32-byte block.
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 32] {
    let keyed = <Hmac<Sha256> as Mac>::new_from_slice(password).unwrap_or_else(|_| unreachable!());
    let mut first = keyed.clone();
    first.update(salt);
    first.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = first.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..rounds {
        let mut m = keyed.clone();
        m.update(&u);
        u = m.finalize().into_bytes().into();
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn pbkdf2_matches_rfc_7914s_vectors() {
        // RFC 7914 §11, the first 32 bytes of each.
        assert_eq!(
            hex(&pbkdf2_sha256(b"passwd", b"salt", 1)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        assert_eq!(
            hex(&pbkdf2_sha256(b"Password", b"NaCl", 80000)),
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
        );
    }

    #[test]
    fn key_files_others_can_read_inside_the_home_or_short_are_refused() {
        let dir = kiln_testutil::tempdir("kek");
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let write = |p: &Path, body: &str, mode: u32| {
            std::fs::write(p, body).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let good = dir.join("key");
        write(&good, &format!("{}\n", "a1".repeat(32)), 0o600);
        let k = from_file(&good, KEY_FILE_ENV, &home).unwrap();
        assert_eq!(k.kind, Kind::File);
        write(&good, &"a1".repeat(32), 0o600);
        let trimmed = from_file(&good, KEY_FILE_ENV, &home).unwrap();
        assert_eq!(
            wrapping_key(&k, "secrets", b"s"),
            wrapping_key(&trimmed, "secrets", b"s"),
            "a final newline changes nothing"
        );
        assert!(!format!("{k:?}").contains("a1a1"), "Debug never shows the key");
        write(&good, &"a1".repeat(32), 0o644);
        assert!(matches!(from_file(&good, KEY_FILE_ENV, &home), Err(KekError::Readable { mode: 0o644, .. })));
        write(&good, &"a1".repeat(32), 0o640);
        let e = from_file(&good, KEY_FILE_ENV, &home).unwrap_err().to_string();
        assert!(e.contains("lets other users read it") && e.contains(good.to_str().unwrap()), "{e}");
        let inside = home.join("key");
        write(&inside, &"a1".repeat(32), 0o600);
        assert!(matches!(from_file(&inside, KEY_FILE_ENV, &home), Err(KekError::InsideHome { .. })));
        write(&good, "short\n", 0o600);
        assert!(matches!(from_file(&good, KEY_FILE_ENV, &home), Err(KekError::TooShort { len: 5, .. })));
        let none = Sources::default();
        assert!(resolve(&none, &home).unwrap().is_none());
        let pass = Sources { passphrase: Some("correct horse".into()), ..Sources::default() };
        assert_eq!(resolve(&pass, &home).unwrap().unwrap().kind, Kind::Passphrase);
        // A key file wins over a passphrase; the credential over both's absence.
        write(&good, &"b2".repeat(32), 0o600);
        let both = Sources { key_file: Some(good.clone()), ..pass };
        assert_eq!(resolve(&both, &home).unwrap().unwrap().kind, Kind::File);
        let creds = dir.join("creds");
        std::fs::create_dir_all(&creds).unwrap();
        write(&creds.join(CREDENTIAL), &"c3".repeat(32), 0o400);
        let cred = Sources { credentials_dir: Some(creds.clone()), ..Sources::default() };
        assert_eq!(resolve(&cred, &home).unwrap().unwrap().origin, Origin::Credential(creds.join(CREDENTIAL)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wrapping_keys_differ_by_key_purpose_and_salt() {
        let k = |m: &str| Kek { origin: Origin::Prompt, kind: Kind::File, material: m.as_bytes().to_vec() };
        let a = wrapping_key(&k("x".repeat(40).as_str()), "secrets", b"salt");
        assert_ne!(a, wrapping_key(&k("y".repeat(40).as_str()), "secrets", b"salt"));
        assert_ne!(a, wrapping_key(&k("x".repeat(40).as_str()), "signing-keys", b"salt"));
        assert_ne!(a, wrapping_key(&k("x".repeat(40).as_str()), "secrets", b"pepper"));
        assert_eq!(a, wrapping_key(&k("x".repeat(40).as_str()), "secrets", b"salt"));
    }
}
