//! Secrets: stored encrypted at rest, given to instances only at run time.
//!
//! Each secret is `$KILN_HOME/secrets/<NAME>.enc`: a random 96-bit nonce and
//! the ChaCha20-Poly1305 ciphertext of the value, with the name as
//! associated data (a ciphertext renamed to another secret fails to
//! decrypt). The key is `$KILN_HOME/secrets/key`, 32 random bytes, mode
//! 0600. This module must never log, print or write a value in clear; the
//! only clear copies are the ones the runtime writes to tmpfs for an instance.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret name {0:?} is invalid: use letters, digits, '_', '.', '-' (at most 128)")]
    BadName(String),
    #[error("no secret named {0:?} (see `kiln secret ls`; set it with `kiln secret set {0}`)")]
    Missing(String),
    #[error("secret {0:?} cannot be decrypted: wrong key or tampered file")]
    Undecryptable(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: key file must be 32 bytes with mode 0600", .0.display())]
    BadKey(PathBuf),
}

/// A secret value; its `Debug` never shows the bytes.
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// What a test instance gets instead of the secret: its name, marked.
    pub fn placeholder(name: &str) -> SecretValue {
        SecretValue(format!("kiln-test-placeholder-{name}").into_bytes())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue(<{} bytes>)", self.0.len())
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

/// The encrypted secret store under `$KILN_HOME/secrets`.
#[derive(Debug, Clone)]
pub struct Secrets {
    dir: PathBuf,
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !name.starts_with('.')
}

fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

impl Secrets {
    pub fn new(home: &Path) -> Self {
        Secrets { dir: home.join("secrets") }
    }

    /// A store of the same kind in `dir`, with its own key (signing keys
    /// live apart from the secrets services may mount).
    pub fn at(dir: &Path) -> Self {
        Secrets { dir: dir.to_owned() }
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> SecretError + '_ {
        move |source| SecretError::Io { path: path.to_owned(), source }
    }

    /// Loads the key, creating it (mode 0600) on first use.
    fn cipher(&self) -> Result<ChaCha20Poly1305, SecretError> {
        fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(Self::io(&self.dir))?;
        let path = self.dir.join("key");
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(mut f) => {
                let key: [u8; 32] = random().map_err(Self::io(&path))?;
                f.write_all(&key).and_then(|()| f.sync_all()).map_err(Self::io(&path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(SecretError::Io { path, source: e }),
        }
        let meta = fs::metadata(&path).map_err(Self::io(&path))?;
        let key = fs::read(&path).map_err(Self::io(&path))?;
        if key.len() != 32 || meta.permissions().mode() & 0o077 != 0 {
            return Err(SecretError::BadKey(path));
        }
        Ok(ChaCha20Poly1305::new(Key::from_slice(&key)))
    }

    fn file(&self, name: &str) -> Result<PathBuf, SecretError> {
        if !valid_name(name) {
            return Err(SecretError::BadName(name.to_owned()));
        }
        Ok(self.dir.join(format!("{name}.enc")))
    }

    /// Stores (or replaces) a secret.
    pub fn set(&self, name: &str, value: &[u8]) -> Result<(), SecretError> {
        let path = self.file(name)?;
        let cipher = self.cipher()?;
        let nonce: [u8; 12] = random().map_err(Self::io(&path))?;
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value, aad: name.as_bytes() })
            .map_err(|_| SecretError::Undecryptable(name.to_owned()))?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(Self::io(&tmp))?;
        f.write_all(&nonce).and_then(|()| f.write_all(&sealed)).and_then(|()| f.sync_all()).map_err(Self::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(Self::io(&path))
    }

    pub fn get(&self, name: &str) -> Result<SecretValue, SecretError> {
        let path = self.file(name)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SecretError::Missing(name.to_owned())),
            Err(e) => return Err(SecretError::Io { path, source: e }),
        };
        if bytes.len() < 12 + 16 {
            return Err(SecretError::Undecryptable(name.to_owned()));
        }
        let cipher = self.cipher()?;
        cipher
            .decrypt(Nonce::from_slice(&bytes[..12]), Payload { msg: &bytes[12..], aad: name.as_bytes() })
            .map(SecretValue)
            .map_err(|_| SecretError::Undecryptable(name.to_owned()))
    }

    /// The stored version of a secret: a digest of its ciphertext (a fresh
    /// nonce each `set`, so every rotation is a new version, and nothing
    /// of the value can be learnt from it).
    pub fn version(&self, name: &str) -> Result<String, SecretError> {
        let path = self.file(name)?;
        match fs::read(&path) {
            Ok(b) => Ok(crate::digest::Digest::of(&b).hex()[..12].to_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SecretError::Missing(name.to_owned())),
            Err(e) => Err(SecretError::Io { path, source: e }),
        }
    }

    pub fn remove(&self, name: &str) -> Result<(), SecretError> {
        let path = self.file(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SecretError::Missing(name.to_owned())),
            Err(e) => Err(SecretError::Io { path, source: e }),
        }
    }

    /// Names of the stored secrets, sorted.
    pub fn list(&self) -> Result<Vec<String>, SecretError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SecretError::Io { path: self.dir.clone(), source: e }),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".enc").map(str::to_owned))
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_nothing_in_clear_on_disk() {
        let home = crate::testutil::tempdir("secrets");
        let s = Secrets::new(&home);
        s.set("db_password", b"hunter2-very-secret").unwrap();
        assert_eq!(s.get("db_password").unwrap().expose(), b"hunter2-very-secret");
        assert_eq!(s.list().unwrap(), vec!["db_password"]);
        for e in fs::read_dir(home.join("secrets")).unwrap() {
            let bytes = fs::read(e.unwrap().path()).unwrap();
            assert!(!bytes.windows(7).any(|w| w == b"hunter2"), "clear text on disk");
        }
        let key_mode = fs::metadata(home.join("secrets/key")).unwrap().permissions().mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert!(!format!("{:?}", s.get("db_password").unwrap()).contains("hunter2"));
        fs::remove_dir_all(home).unwrap();
    }

    #[test]
    fn renamed_or_tampered_ciphertexts_fail() {
        let home = crate::testutil::tempdir("secrets");
        let s = Secrets::new(&home);
        s.set("a", b"one").unwrap();
        fs::copy(home.join("secrets/a.enc"), home.join("secrets/b.enc")).unwrap();
        assert!(matches!(s.get("b"), Err(SecretError::Undecryptable(_))));
        let mut bytes = fs::read(home.join("secrets/a.enc")).unwrap();
        bytes[14] ^= 1;
        fs::write(home.join("secrets/a.enc"), bytes).unwrap();
        assert!(matches!(s.get("a"), Err(SecretError::Undecryptable(_))));
        assert!(matches!(s.get("zz"), Err(SecretError::Missing(_))));
        assert!(matches!(s.set("../x", b"v"), Err(SecretError::BadName(_))));
        fs::remove_dir_all(home).unwrap();
    }
}
