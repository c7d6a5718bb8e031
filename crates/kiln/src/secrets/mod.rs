//! Secrets: stored encrypted at rest, given to instances only at run time.
//!
//! Envelope encryption. Each store (`$KILN_HOME/secrets`, and the signing
//! keys' `$KILN_HOME/keys/private`) has a random 256-bit data key, kept in
//! the store's `dek` file only wrapped (ChaCha20-Poly1305) by a key derived
//! from the key-encryption key, which lives outside KILN_HOME (see
//! [`kek`]). Each secret is `<NAME>.enc`: a header (format, the data key's
//! id, the secret's version) and a random 96-bit nonce, then the
//! ChaCha20-Poly1305 ciphertext of the value with the name and version as
//! associated data (a ciphertext renamed to another secret fails to
//! decrypt). So a reader of KILN_HOME learns names, sizes and versions,
//! never a value.
//!
//! `rotate` re-encrypts a store under a new data key wrapped by the
//! current KEK (which may be a new one): every secret is written beside
//! the old one as `NAME.enc.new`, then `dek` is replaced (the commit), then
//! the new files take the old ones' places. A rotation cut short is
//! finished or undone by the next writer: a `.enc.new` of the committed
//! data key replaces its `.enc`, any other is removed.
//!
//! A store from before the KEK (a bare `key` file beside the secrets) is
//! still read, with a warning, and is sealed under the KEK the first time
//! one is given. This module must never log, print or write a value or a
//! key in clear; the only clear copies of values are the ones the runtime
//! writes to tmpfs for an instance.

mod dek;
pub mod kek;
mod rotate;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use dek::{DataKey, DekFile};

pub use kek::{Kek, KekError};

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
    /// No key-encryption key is offered, and the store needs one.
    #[error(
        "{}: no key-encryption key: set KILN_KEY_FILE to a file only its owner can read, outside KILN_HOME \
         (`(umask 077; openssl rand -hex 32 > /etc/kiln/key)`), give kiln serve the systemd credential \
         `kiln-key`, or set KILN_PASSPHRASE",
        store.display()
    )]
    NoKek { store: PathBuf },
    #[error(transparent)]
    Kek(#[from] KekError),
    /// The store was sealed with another KEK than the one offered.
    #[error(
        "{}: sealed with another key-encryption key ({sealed}) than {offered}; offer the one it was sealed with, \
         or re-seal it: `kiln {command} --old-key-file OLD` (or KILN_OLD_PASSPHRASE) with the new one in KILN_KEY_FILE",
        store.display()
    )]
    WrongKek { store: PathBuf, sealed: String, offered: String, command: &'static str },
    /// A store file kiln cannot read as its own.
    #[error("{}: {message}", path.display())]
    BadStore { path: PathBuf, message: String },
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

/// Which store: each has its own data key, and its wrapping key is bound
/// to its purpose, so one store's files never open with the other's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Secrets,
    SigningKeys,
    /// ACME account keys, certificate keys and chains (`$KILN_HOME/tls`).
    TlsKeys,
    /// Registry credentials from `kiln login` (`$KILN_HOME/auth`).
    Credentials,
    /// A fleet's secrets, sealed in etcd (`kiln secret set --cluster`),
    /// opened by each host with the fleet's KEK.
    FleetSecrets,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::Secrets => "secrets",
            Purpose::SigningKeys => "signing-keys",
            Purpose::TlsKeys => "tls-keys",
            Purpose::Credentials => "registry-credentials",
            Purpose::FleetSecrets => "fleet-secrets",
        }
    }

    /// The command that re-seals this store.
    fn rotate_command(self) -> &'static str {
        match self {
            Purpose::Secrets | Purpose::TlsKeys | Purpose::Credentials => "secret rotate-key",
            Purpose::FleetSecrets => "secret rotate-key --cluster URLS",
            Purpose::SigningKeys => "key rotate",
        }
    }
}

/// Where a store's KEK comes from.
#[derive(Debug, Clone)]
enum KekSource {
    /// The process's environment, resolved once (see [`kek::Sources`]).
    Process,
    /// Given (tests, and `rotate`'s callers).
    Given(Option<Kek>),
}

/// An encrypted store: `$KILN_HOME/secrets` or `$KILN_HOME/keys/private`.
#[derive(Debug, Clone)]
pub struct Secrets {
    dir: PathBuf,
    home: PathBuf,
    purpose: Purpose,
    kek: KekSource,
    /// A KEK the store may still be sealed with, tried when `kek` does
    /// not open it: `KILN_OLD_KEY_FILE` or `KILN_OLD_PASSPHRASE`, so that
    /// a fleet's agents given both keys keep opening its secrets across
    /// `kiln secret rotate-key --cluster`.
    previous: KekSource,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// How many entries were re-encrypted.
    pub count: usize,
    /// The KEK the store is sealed with now (its origin, never its bytes).
    pub sealed_with: String,
    /// A store from before the KEK was sealed (its bare `key` is gone).
    pub migrated: bool,
}

pub use crate::spec::valid_secret_name as valid_name;

fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The first bytes of a v2 secret file.
const MAGIC: &[u8; 5] = b"kiln\x02";
const ID_LEN: usize = 8;
const VERSION_LEN: usize = 6;
const HEADER: usize = MAGIC.len() + ID_LEN + VERSION_LEN;

/// The process's KEK, resolved once (a prompt is answered once).
fn process_kek(home: &Path) -> Result<Option<Kek>, SecretError> {
    static KEK: Mutex<Option<(PathBuf, Option<Kek>)>> = Mutex::new(None);
    let mut slot = KEK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((h, k)) = slot.as_ref() {
        if h == home {
            return Ok(k.clone());
        }
    }
    let k = kek::resolve(&kek::Sources::from_env(), home)?;
    *slot = Some((home.to_owned(), k.clone()));
    Ok(k)
}

/// The process's previous KEK (`KILN_OLD_KEY_FILE`, `KILN_OLD_PASSPHRASE`),
/// resolved once.
fn process_old_kek(home: &Path) -> Result<Option<Kek>, SecretError> {
    static OLD: Mutex<Option<(PathBuf, Option<Kek>)>> = Mutex::new(None);
    let mut slot = OLD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((h, k)) = slot.as_ref() {
        if h == home {
            return Ok(k.clone());
        }
    }
    let k = kek::old_from_env(home)?;
    *slot = Some((home.to_owned(), k.clone()));
    Ok(k)
}

/// Data keys already unwrapped in this process, by store, `dek` file
/// contents and KEK: a passphrase's 600,000 rounds are paid once, not
/// per read.
type Unwrapped = HashMap<(PathBuf, String), [u8; 32]>;

fn unwrapped_cache() -> &'static Mutex<Unwrapped> {
    static CACHE: OnceLock<Mutex<Unwrapped>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn warn_legacy(dir: &Path) {
    static WARNED: OnceLock<()> = OnceLock::new();
    WARNED.get_or_init(|| {
        eprintln!(
            "kiln: warning: {} is encrypted with a key stored beside it; whoever reads KILN_HOME reads the secrets. \
             Set KILN_KEY_FILE (see README, \"Keys at rest\") and it is sealed on next use.",
            dir.display()
        );
    });
}

impl Secrets {
    pub fn new(home: &Path) -> Self {
        Secrets {
            dir: home.join("secrets"),
            home: home.to_owned(),
            purpose: Purpose::Secrets,
            kek: KekSource::Process,
            previous: KekSource::Process,
        }
    }

    /// The signing keys' store, apart from the secrets services may mount.
    pub fn signing_keys(home: &Path) -> Self {
        Secrets {
            dir: home.join("keys/private"),
            home: home.to_owned(),
            purpose: Purpose::SigningKeys,
            kek: KekSource::Process,
            previous: KekSource::Process,
        }
    }

    /// The certificates kiln obtains (ACME) and their keys, apart from
    /// the secrets services may mount.
    pub fn tls_keys(home: &Path) -> Self {
        Secrets {
            dir: home.join("tls"),
            home: home.to_owned(),
            purpose: Purpose::TlsKeys,
            kek: KekSource::Process,
            previous: KekSource::Process,
        }
    }

    /// Registry credentials (`kiln login`).
    pub fn credentials(home: &Path) -> Self {
        Secrets {
            dir: home.join("auth"),
            home: home.to_owned(),
            purpose: Purpose::Credentials,
            kek: KekSource::Process,
            previous: KekSource::Process,
        }
    }

    /// A fleet's secrets as one process holds them for a moment: the sealed
    /// files in `dir` (the data key and `NAME.enc`, as etcd keeps them),
    /// opened with the fleet's KEK, which every host is given.
    pub fn fleet(dir: &Path, home: &Path) -> Self {
        Secrets {
            dir: dir.to_owned(),
            home: home.to_owned(),
            purpose: Purpose::FleetSecrets,
            kek: KekSource::Process,
            previous: KekSource::Process,
        }
    }

    /// The same store with `kek` instead of the environment's (and no
    /// previous one).
    pub fn with_kek(mut self, kek: Option<Kek>) -> Self {
        self.kek = KekSource::Given(kek);
        self.previous = KekSource::Given(None);
        self
    }

    /// The same store with `previous` as the KEK tried when its own does
    /// not open it.
    pub fn with_previous_kek(mut self, previous: Option<Kek>) -> Self {
        self.previous = KekSource::Given(previous);
        self
    }

    fn previous_kek(&self) -> Result<Option<Kek>, SecretError> {
        match &self.previous {
            KekSource::Process => process_old_kek(&self.home),
            KekSource::Given(k) => Ok(k.clone()),
        }
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> SecretError + '_ {
        move |source| SecretError::Io { path: path.to_owned(), source }
    }

    fn kek(&self) -> Result<Option<Kek>, SecretError> {
        match &self.kek {
            KekSource::Process => process_kek(&self.home),
            KekSource::Given(k) => Ok(k.clone()),
        }
    }

    fn need_kek(&self) -> Result<Kek, SecretError> {
        self.kek()?.ok_or_else(|| SecretError::NoKek { store: self.dir.clone() })
    }

    fn file(&self, name: &str) -> Result<PathBuf, SecretError> {
        if !valid_name(name) {
            return Err(SecretError::BadName(name.to_owned()));
        }
        Ok(self.dir.join(format!("{name}.enc")))
    }

    fn ensure_dir(&self) -> Result<(), SecretError> {
        fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(Self::io(&self.dir))
    }

    /// Holds the store's write lock until dropped (writers take turns;
    /// readers never wait: every file is replaced by a rename).
    fn lock(&self) -> Result<fs::File, SecretError> {
        self.ensure_dir()?;
        let path = self.dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(Self::io(&path))?;
        f.lock().map_err(Self::io(&path))?;
        Ok(f)
    }

    fn read_dek(&self) -> Result<Option<(DekFile, String)>, SecretError> {
        let path = self.dir.join("dek");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some((DekFile::parse(&text, &path, self.purpose)?, text))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SecretError::Io { path, source: e }),
        }
    }

    fn unwrap_with(&self, dek: &DekFile, kek: &Kek) -> Result<[u8; 32], SecretError> {
        let wk = kek::wrapping_key(kek, self.purpose.label(), &dek.salt);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&wk));
        let (nonce, sealed) = dek.wrapped.split_at(12);
        let key = cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: &dek.id }).map_err(|_| {
            SecretError::WrongKek {
                store: self.dir.clone(),
                sealed: format!("a {}", if dek.kind == kek::Kind::File { "key file" } else { "passphrase" }),
                offered: kek.origin.to_string(),
                command: self.purpose.rotate_command(),
            }
        })?;
        key.try_into().map_err(|_| SecretError::BadStore {
            path: self.dir.join("dek"),
            message: "the wrapped data key is not 32 bytes".into(),
        })
    }

    /// The store's data key: none for a store never written.
    fn open(&self) -> Result<Option<DataKey>, SecretError> {
        if let Some((dek, text)) = self.read_dek()? {
            let kek = self.need_kek()?;
            // Cached by the KEK that opened it: a key opened with the
            // previous KEK is no proof the current one opens it.
            let opened_with = |k: &Kek| -> Result<[u8; 32], SecretError> {
                let cache_key = (self.dir.clone(), format!("{text}{}", k.fingerprint()));
                if let Some(key) = unwrapped_cache().lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key) {
                    return Ok(*key);
                }
                let key = self.unwrap_with(&dek, k)?;
                unwrapped_cache().lock().unwrap_or_else(|p| p.into_inner()).insert(cache_key, key);
                Ok(key)
            };
            let key = match opened_with(&kek) {
                Ok(key) => key,
                // Sealed with the previous KEK (a rotation under way):
                // opened with it, if this process was given it.
                Err(wrong @ SecretError::WrongKek { .. }) => match self.previous_kek()? {
                    Some(previous) => opened_with(&previous).map_err(|_| wrong)?,
                    None => return Err(wrong),
                },
                Err(e) => return Err(e),
            };
            return Ok(Some(DataKey::Sealed { key, id: dek.id }));
        }
        let legacy = self.dir.join("key");
        if !legacy.exists() {
            return Ok(None);
        }
        warn_legacy(&self.dir);
        let meta = fs::metadata(&legacy).map_err(Self::io(&legacy))?;
        let key = fs::read(&legacy).map_err(Self::io(&legacy))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(SecretError::BadKey(legacy));
        }
        let key: [u8; 32] = key.try_into().map_err(|_| SecretError::BadKey(legacy.clone()))?;
        Ok(Some(DataKey::Legacy(key)))
    }

    /// A new data key sealed under `kek`: the `dek` file's contents, and the key.
    fn seal_new(&self, kek: &Kek) -> Result<(DekFile, [u8; 32]), SecretError> {
        let dek_path = self.dir.join("dek");
        let key: [u8; 32] = random().map_err(Self::io(&dek_path))?;
        let id: [u8; ID_LEN] = random().map_err(Self::io(&dek_path))?;
        Ok((self.wrap(kek, &key, id)?, key))
    }

    /// Data key `key` (its id `id`) sealed under `kek`, with a new salt
    /// and nonce: the `dek` file's contents.
    fn wrap(&self, kek: &Kek, key: &[u8; 32], id: [u8; ID_LEN]) -> Result<DekFile, SecretError> {
        let dek_path = self.dir.join("dek");
        let salt: [u8; 16] = random().map_err(Self::io(&dek_path))?;
        let nonce: [u8; 12] = random().map_err(Self::io(&dek_path))?;
        let wk = kek::wrapping_key(kek, self.purpose.label(), &salt);
        let sealed = ChaCha20Poly1305::new(Key::from_slice(&wk))
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: key, aad: &id })
            .map_err(|_| SecretError::BadStore {
                path: dek_path.clone(),
                message: "cannot seal the data key".into(),
            })?;
        let wrapped = [nonce.as_slice(), &sealed].concat();
        Ok(DekFile { kind: kek.kind, salt: salt.to_vec(), id, wrapped })
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = self.dir.join(format!(".{file_name}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(Self::io(&tmp))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).map_err(Self::io(&tmp))?;
        fs::rename(&tmp, path).map_err(Self::io(path))
    }

    fn seal(
        key: &[u8; 32],
        id: &[u8; ID_LEN],
        version: &[u8; VERSION_LEN],
        name: &str,
        value: &[u8],
    ) -> Option<Vec<u8>> {
        let nonce: [u8; 12] = random().ok()?;
        let aad = [name.as_bytes(), b"\0", version].concat();
        let sealed = ChaCha20Poly1305::new(Key::from_slice(key))
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value, aad: &aad })
            .ok()?;
        Some([MAGIC.as_slice(), id, version, &nonce, &sealed].concat())
    }

    /// A secret file's value and version, with the data key `key`.
    fn unseal(key: &DataKey, name: &str, bytes: &[u8]) -> Result<(SecretValue, [u8; VERSION_LEN]), SecretError> {
        let bad = || SecretError::Undecryptable(name.to_owned());
        match key {
            DataKey::Sealed { key, id } => {
                if bytes.len() < HEADER + 12 + 16 || &bytes[..MAGIC.len()] != MAGIC {
                    return Err(bad());
                }
                if &bytes[MAGIC.len()..MAGIC.len() + ID_LEN] != id {
                    return Err(bad());
                }
                let version: [u8; VERSION_LEN] = bytes[MAGIC.len() + ID_LEN..HEADER].try_into().map_err(|_| bad())?;
                let aad = [name.as_bytes(), b"\0", &version].concat();
                let plain = ChaCha20Poly1305::new(Key::from_slice(key))
                    .decrypt(
                        Nonce::from_slice(&bytes[HEADER..HEADER + 12]),
                        Payload { msg: &bytes[HEADER + 12..], aad: &aad },
                    )
                    .map_err(|_| bad())?;
                Ok((SecretValue(plain), version))
            }
            DataKey::Legacy(key) => {
                if bytes.len() < 12 + 16 {
                    return Err(bad());
                }
                let plain = ChaCha20Poly1305::new(Key::from_slice(key))
                    .decrypt(Nonce::from_slice(&bytes[..12]), Payload { msg: &bytes[12..], aad: name.as_bytes() })
                    .map_err(|_| bad())?;
                Ok((SecretValue(plain), legacy_version(bytes)))
            }
        }
    }

    /// Finishes or undoes a rotation cut short (under the lock).
    fn recover(&self) -> Result<(), SecretError> {
        let committed = self.read_dek()?.map(|(d, _)| d.id);
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SecretError::Io { path: self.dir.clone(), source: e }),
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "dek.new" {
                fs::remove_file(&path).map_err(Self::io(&path))?;
            } else if let Some(target) = name.strip_suffix(".new").filter(|t| t.ends_with(".enc")) {
                let bytes = fs::read(&path).map_err(Self::io(&path))?;
                let id = bytes.get(MAGIC.len()..MAGIC.len() + ID_LEN);
                if committed.is_some_and(|c| id == Some(&c[..])) {
                    fs::rename(&path, self.dir.join(target)).map_err(Self::io(&path))?;
                } else {
                    fs::remove_file(&path).map_err(Self::io(&path))?;
                }
            } else if name == "key" && committed.is_some() {
                // A migration that committed: the bare key goes.
                fs::remove_file(&path).map_err(Self::io(&path))?;
            }
        }
        Ok(())
    }

    /// Stores (or replaces) a secret; a new version.
    pub fn set(&self, name: &str, value: &[u8]) -> Result<(), SecretError> {
        let path = self.file(name)?;
        let _lock = self.lock()?;
        self.recover()?;
        if self.is_legacy() && self.kek()?.is_some() {
            self.rotate_locked(None)?;
        }
        let (key, id) = match self.open()? {
            Some(DataKey::Sealed { key, id }) => (key, id),
            Some(DataKey::Legacy(_)) => return Err(SecretError::NoKek { store: self.dir.clone() }),
            None => {
                let kek = self.need_kek()?;
                kek::confirm(&kek)?;
                let (dek, key) = self.seal_new(&kek)?;
                self.write_atomic(&self.dir.join("dek"), dek.render(self.purpose).as_bytes())?;
                (key, dek.id)
            }
        };
        let version: [u8; VERSION_LEN] = random().map_err(Self::io(&path))?;
        let sealed =
            Self::seal(&key, &id, &version, name, value).ok_or_else(|| SecretError::Undecryptable(name.to_owned()))?;
        self.write_atomic(&path, &sealed)
    }

    fn read_file(&self, name: &str) -> Result<Vec<u8>, SecretError> {
        let path = self.file(name)?;
        match fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SecretError::Missing(name.to_owned())),
            Err(e) => Err(SecretError::Io { path, source: e }),
        }
    }

    /// A store from before the KEK, not sealed yet.
    fn is_legacy(&self) -> bool {
        !self.dir.join("dek").exists() && self.dir.join("key").exists()
    }

    /// Seals a store from before the KEK, once a KEK is offered.
    fn migrate(&self) -> Result<(), SecretError> {
        if self.is_legacy() && self.kek()?.is_some() {
            let _lock = self.lock()?;
            self.recover()?;
            if self.is_legacy() {
                self.rotate_locked(None)?;
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<SecretValue, SecretError> {
        self.migrate()?;
        let bytes = self.read_file(name)?;
        let key = self.open()?.ok_or_else(|| SecretError::Undecryptable(name.to_owned()))?;
        match Self::unseal(&key, name, &bytes) {
            Ok((v, _)) => Ok(v),
            // A rotation committed between reading `dek` and the file:
            // once more, with both read again.
            Err(_) => Self::unseal(
                &self.open()?.ok_or_else(|| SecretError::Missing(name.to_owned()))?,
                name,
                &self.read_file(name)?,
            )
            .map(|(v, _)| v),
        }
    }

    /// The stored version of a secret: set by each `set` (so every rotation
    /// of the value is a new version), kept by a re-encryption, and nothing
    /// of the value can be learnt from it. Needs no key.
    pub fn version(&self, name: &str) -> Result<String, SecretError> {
        let bytes = self.read_file(name)?;
        if bytes.len() >= HEADER && &bytes[..MAGIC.len()] == MAGIC {
            Ok(hex(&bytes[MAGIC.len() + ID_LEN..HEADER]))
        } else {
            Ok(hex(&legacy_version(&bytes)))
        }
    }

    pub fn remove(&self, name: &str) -> Result<(), SecretError> {
        let path = self.file(name)?;
        let _lock = self.lock()?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SecretError::Missing(name.to_owned())),
            Err(e) => Err(SecretError::Io { path, source: e }),
        }
    }

    /// Whether the store opens with the KEK on offer (a store never
    /// written needs none).
    pub fn check(&self) -> Result<(), SecretError> {
        self.migrate()?;
        self.open().map(drop)
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

/// A pre-KEK secret's version: a digest of its ciphertext (as it was
/// computed before, so sealing an old store changes no version).
fn legacy_version(bytes: &[u8]) -> [u8; VERSION_LEN] {
    let d = crate::digest::Digest::of(bytes);
    let h = d.hex();
    let mut v = [0u8; VERSION_LEN];
    for (i, b) in v.iter_mut().enumerate() {
        *b = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    v
}

#[cfg(test)]
mod tests;
