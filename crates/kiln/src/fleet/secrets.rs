//! A fleet's secrets, in etcd, sealed: the same envelope encryption as
//! one host's store ([`crate::secrets`]), with a data key of the fleet's
//! own (`/kiln/secret-key`, wrapped by the fleet's key-encryption key,
//! bound to its purpose) and every version of every secret kept apart
//! (`/kiln/secrets/NAME/VERSION`, the sealed file). etcd, its snapshots
//! and whoever reads them learn names, sizes and versions, never a value.
//!
//! `kiln secret set --cluster` seals on the caller's machine; an agent
//! copies the sealed files a slot needs into a scratch directory and opens
//! them with the KEK every host is given (`KILN_KEY_FILE`, the systemd
//! credential, or a passphrase), only to start the instance, which gets
//! the value on tmpfs as on one host. A release names the version of each
//! secret it uses, so a rotation is a new release (rolled like any other)
//! and a host that starts a slot later starts it with the same value.
//!
//! For: setting, listing, removing and handing out sealed secrets. Must
//! never: put a value in clear into etcd, a log or an error, or delete a
//! version a service's desired state still names.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::etcd::{Compare, Etcd, EtcdError};
use super::place::FleetSecret;
use crate::secrets::{SecretError, Secrets};

/// The fleet's data key, wrapped by its KEK.
pub const KEY: &str = "/kiln/secret-key";
/// Sealed versions: `/kiln/secrets/NAME/VERSION`.
pub const SECRETS: &str = "/kiln/secrets/";

/// Why a fleet secret could not be set, listed, removed or handed out.
#[derive(Debug, thiserror::Error)]
pub enum FleetSecretError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// Sealing or opening failed (no KEK, another KEK, a bad name).
    #[error("the fleet's secrets: {0}")]
    Secret(#[from] SecretError),
    #[error(
        "no fleet secret {name:?} (kiln secret ls --cluster; set it with `kiln secret set {name} --cluster URLS`)"
    )]
    Missing { name: String },
    /// A release names a version that is gone from etcd.
    #[error("fleet secret {name:?}: version {version} is not in etcd ({SECRETS}{name}/{version})")]
    MissingVersion { name: String, version: String },
    /// Services whose desired state still uses it.
    #[error("fleet secret {name:?} is used by {}: deploy them without it first", services.join(", "))]
    InUse { name: String, services: Vec<String> },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A rotation with nothing to rotate.
    #[error("the fleet has no secrets yet ({KEY} is not in etcd): nothing to rotate")]
    NoKey,
    /// More sealed versions than one etcd transaction carries: a new data
    /// key re-encrypts them all in one write.
    #[error(
        "the fleet keeps {versions} sealed versions, more than the {limit} one etcd transaction carries \
         (--max-txn-ops, 128 by default): remove secrets no service uses first (kiln secret rm NAME --cluster)"
    )]
    TooManyVersions { versions: usize, limit: usize },
    /// Another writer created the fleet's data key at the same time, each
    /// time it was tried.
    #[error("the fleet's data key kept changing while {name:?} was set; try again")]
    Contended { name: String },
}

/// A secret as `kiln secret ls --cluster` shows it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRow {
    pub name: String,
    /// The newest version: what the next deploy uses.
    pub version: String,
    /// Versions kept (older ones stay for the releases that name them).
    pub versions: usize,
}

/// A directory for sealed files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(home: &Path, what: &str) -> Result<Scratch, FleetSecretError> {
        use std::os::unix::fs::PermissionsExt;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = home.join("tmp").join(format!("{what}-{}-{nanos}", std::process::id()));
        let io = |source| FleetSecretError::Io { path: path.clone(), source };
        std::fs::create_dir_all(&path).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(path: &Path) -> Result<Vec<u8>, FleetSecretError> {
    std::fs::read(path).map_err(|source| FleetSecretError::Io { path: path.to_owned(), source })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), FleetSecretError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| FleetSecretError::Io { path: path.to_owned(), source };
    let mut f =
        std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)
}

/// Seals `value` as a new version of `name` (the fleet's data key made on
/// first use, with this process's KEK); returns the version.
pub fn set(cluster: &Etcd, home: &Path, name: &str, value: &[u8]) -> Result<String, FleetSecretError> {
    if !crate::secrets::valid_name(name) {
        return Err(SecretError::BadName(name.to_owned()).into());
    }
    const TRIES: u32 = 5;
    for _ in 0..TRIES {
        let dir = Scratch::new(home, "fleet-secret")?;
        let key = cluster.range_prefix(KEY)?.into_iter().find(|kv| kv.key == KEY);
        if let Some(kv) = &key {
            write(&dir.0.join("dek"), &kv.value)?;
        }
        let store = Secrets::fleet(&dir.0, home);
        store.set(name, value)?;
        let version = store.version(name)?;
        let mut puts = vec![(format!("{SECRETS}{name}/{version}"), read(&dir.0.join(format!("{name}.enc")))?, 0)];
        // The data key is written once; a second writer's txn fails and
        // it seals again under the first one's key. Put again as it is,
        // so that a new data key being made meanwhile (which re-seals the
        // versions it read) sees this one came and tries again.
        let compare = match &key {
            Some(kv) => {
                puts.push((KEY.to_owned(), kv.value.clone(), 0));
                Compare::Modified { key: KEY.into(), revision: kv.mod_revision }
            }
            None => {
                puts.push((KEY.to_owned(), read(&dir.0.join("dek"))?, 0));
                Compare::Created { key: KEY.into(), revision: 0 }
            }
        };
        if cluster.txn(&[compare], &puts, &[])? {
            return Ok(version);
        }
    }
    Err(FleetSecretError::Contended { name: name.to_owned() })
}

/// What a rotation of the fleet's KEK did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedKek {
    /// False: the current KEK sealed the data key already.
    pub rewrapped: bool,
    /// Where the current KEK came from (never its bytes).
    pub sealed_with: String,
    /// Secrets kept (each with every version), all still opened by the
    /// same data key.
    pub secrets: usize,
}

/// Seals the fleet's data key (`/kiln/secret-key`) under this process's
/// KEK, opened with `old` (else the previous KEK the environment names):
/// one etcd write, conditioned on the key not having changed since it was
/// read. Every sealed version stays as it is: the data key is the same,
/// so no release's pinned version changes; from then on only the new KEK
/// opens them.
pub fn rotate_key(
    cluster: &Etcd,
    home: &Path,
    old: Option<crate::secrets::kek::Kek>,
) -> Result<RotatedKek, FleetSecretError> {
    let Some(kv) = cluster.range_prefix(KEY)?.into_iter().find(|kv| kv.key == KEY) else {
        return Err(FleetSecretError::NoKey);
    };
    let dir = Scratch::new(home, "fleet-rotate")?;
    write(&dir.0.join("dek"), &kv.value)?;
    let store = Secrets::fleet(&dir.0, home);
    let rewrapped = store.rewrap(old)?;
    let sealed_with = store.kek_origin()?;
    if rewrapped {
        let compare = Compare::Modified { key: KEY.into(), revision: kv.mod_revision };
        let put = (KEY.to_owned(), read(&dir.0.join("dek"))?, 0);
        if !cluster.txn(&[compare], &[put], &[])? {
            return Err(FleetSecretError::Contended { name: KEY.into() });
        }
    }
    Ok(RotatedKek { rewrapped, sealed_with, secrets: list(cluster)?.len() })
}

/// What a new data key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDataKey {
    /// Sealed versions re-encrypted (every one the fleet keeps).
    pub versions: usize,
    pub secrets: usize,
    /// Where the KEK that seals the new key came from (never its bytes).
    pub sealed_with: String,
}

/// The most versions a new data key re-encrypts: with the key itself, one
/// transaction's puts (etcd's `--max-txn-ops` is 128 by default).
pub const MAX_VERSIONS: usize = 127;

/// Makes the fleet a new data key, sealed under this process's KEK, and
/// re-encrypts every sealed version of every secret under it, each
/// keeping its version (so no release's pinned version changes). The old
/// key opens them first (with `old`, else the environment's previous KEK,
/// when it was sealed with another KEK). One etcd write puts the key and
/// every version, conditioned on the key and each version being as read:
/// a version set or removed meanwhile (a `set` puts the key again) makes
/// it read and re-encrypt again. An agent that reads the key and a
/// version across that write fails that one start, and starts again the
/// next round.
pub fn new_data_key(
    cluster: &Etcd,
    home: &Path,
    old: Option<crate::secrets::kek::Kek>,
) -> Result<NewDataKey, FleetSecretError> {
    const TRIES: u32 = 5;
    for _ in 0..TRIES {
        let Some(key) = cluster.range_prefix(KEY)?.into_iter().find(|kv| kv.key == KEY) else {
            return Err(FleetSecretError::NoKey);
        };
        let versions = cluster.range_prefix(SECRETS)?;
        if versions.len() > MAX_VERSIONS {
            return Err(FleetSecretError::TooManyVersions { versions: versions.len(), limit: MAX_VERSIONS });
        }
        let dir = Scratch::new(home, "fleet-new-key")?;
        write(&dir.0.join("dek"), &key.value)?;
        // Without `old`, the environment's previous KEK (if any) opens it.
        let store = match &old {
            Some(k) => Secrets::fleet(&dir.0, home).with_previous_kek(Some(k.clone())),
            None => Secrets::fleet(&dir.0, home),
        };
        let entries: Vec<(String, Vec<u8>)> = versions
            .iter()
            .map(|kv| {
                let name = kv.key.trim_start_matches(SECRETS).split('/').next().unwrap_or_default();
                (name.to_owned(), kv.value.clone())
            })
            .collect();
        let (dek, resealed) = store.reseal(&entries)?;
        let mut compares = vec![Compare::Modified { key: KEY.into(), revision: key.mod_revision }];
        compares.extend(versions.iter().map(|kv| Compare::Modified { key: kv.key.clone(), revision: kv.mod_revision }));
        let mut puts = vec![(KEY.to_owned(), dek, 0)];
        puts.extend(versions.iter().zip(resealed).map(|(kv, sealed)| (kv.key.clone(), sealed, 0)));
        if cluster.txn(&compares, &puts, &[])? {
            let secrets: std::collections::BTreeSet<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
            return Ok(NewDataKey {
                versions: versions.len(),
                secrets: secrets.len(),
                sealed_with: store.kek_origin()?,
            });
        }
    }
    Err(FleetSecretError::Contended { name: KEY.into() })
}

/// Every secret with its newest version (the newest written) and how
/// many versions are kept.
pub fn list(cluster: &Etcd) -> Result<Vec<SecretRow>, FleetSecretError> {
    let mut by: std::collections::BTreeMap<String, (i64, String, usize)> = std::collections::BTreeMap::new();
    for kv in cluster.range_prefix(SECRETS)? {
        let Some((name, version)) = kv.key.trim_start_matches(SECRETS).split_once('/') else { continue };
        let e = by.entry(name.to_owned()).or_insert((0, String::new(), 0));
        e.2 += 1;
        if kv.create_revision > e.0 {
            (e.0, e.1) = (kv.create_revision, version.to_owned());
        }
    }
    Ok(by.into_iter().map(|(name, (_, version, versions))| SecretRow { name, version, versions }).collect())
}

/// `secrets` with each one's newest version; one never set is named.
pub fn resolve(cluster: &Etcd, secrets: &[FleetSecret]) -> Result<Vec<FleetSecret>, FleetSecretError> {
    if secrets.is_empty() {
        return Ok(Vec::new());
    }
    let rows = list(cluster)?;
    secrets
        .iter()
        .map(|s| match rows.iter().find(|r| r.name == s.name) {
            Some(r) => Ok(FleetSecret { version: r.version.clone(), ..s.clone() }),
            None => Err(FleetSecretError::Missing { name: s.name.clone() }),
        })
        .collect()
}

/// Removes every version of `name`, unless a service's desired state
/// (its stable release or its canary) still names it.
pub fn remove(cluster: &Etcd, name: &str) -> Result<(), FleetSecretError> {
    let using: Vec<String> = super::services(cluster, &|_| {})?
        .into_iter()
        .filter(|(_, (d, _))| {
            d.secrets.iter().any(|s| s.name == name) || d.edge.tls.as_ref().is_some_and(|t| t.key.name == name)
        })
        .map(|(service, _)| service)
        .collect();
    if !using.is_empty() {
        return Err(FleetSecretError::InUse { name: name.to_owned(), services: using });
    }
    let prefix = format!("{SECRETS}{name}/");
    let keys: Vec<String> = cluster.range_prefix(&prefix)?.into_iter().map(|kv| kv.key).collect();
    if keys.is_empty() {
        return Err(FleetSecretError::Missing { name: name.to_owned() });
    }
    cluster.txn(&[], &[], &keys)?;
    Ok(())
}

/// The sealed files of `secrets` (each at the version it names) in a
/// directory of their own under `home`, for [`Secrets::fleet`] to open;
/// removed when the returned guard is dropped.
pub fn sealed(cluster: &Etcd, home: &Path, secrets: &[FleetSecret]) -> Result<SealedDir, FleetSecretError> {
    let dir = Scratch::new(home, "fleet-secrets")?;
    let key = cluster.range_prefix(KEY)?.into_iter().find(|kv| kv.key == KEY);
    let Some(key) = key else {
        let name = secrets.first().map(|s| s.name.clone()).unwrap_or_default();
        return Err(FleetSecretError::Missing { name });
    };
    write(&dir.0.join("dek"), &key.value)?;
    for s in secrets {
        let k = format!("{SECRETS}{}/{}", s.name, s.version);
        let Some(kv) = cluster.range_prefix(&k)?.into_iter().find(|kv| kv.key == k) else {
            return Err(FleetSecretError::MissingVersion { name: s.name.clone(), version: s.version.clone() });
        };
        write(&dir.0.join(format!("{}.enc", s.name)), &kv.value)?;
    }
    Ok(SealedDir(dir))
}

/// Sealed files handed out for one start; removed when dropped.
pub struct SealedDir(Scratch);

impl SealedDir {
    pub fn path(&self) -> &Path {
        &self.0 .0
    }
}

impl std::fmt::Debug for SealedDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedDir({})", self.path().display())
    }
}
