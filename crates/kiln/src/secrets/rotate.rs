//! A store's key rotation: every entry re-sealed under a new data key,
//! itself sealed by the current KEK; the new files become the store in
//! one atomic write of its `dek` file (a crash before it leaves the old
//! store whole, after it `recover` finishes the switch).
//!
//! For: rotation. Must never: leave a store where some entries open with
//! the old data key and some with the new.

use std::fs;
use std::io;

use super::{kek, DataKey, Kek, Rotated, SecretError, Secrets};

impl Secrets {
    /// Re-encrypts every entry under a new data key sealed by the current
    /// KEK. `old` opens the store when it was sealed with another KEK (the
    /// current one otherwise; a store from before the KEK needs none).
    pub fn rotate(&self, old: Option<Kek>) -> Result<Rotated, SecretError> {
        self.need_kek()?;
        let _lock = self.lock()?;
        self.recover()?;
        self.rotate_locked(old)
    }

    /// [`Secrets::rotate`] with the store's lock held (and recovered).
    pub(super) fn rotate_locked(&self, old: Option<Kek>) -> Result<Rotated, SecretError> {
        let new_kek = self.need_kek()?;
        let (current, migrated) = match self.read_dek()? {
            Some((dek, _)) => {
                let opener = old.as_ref().unwrap_or(&new_kek);
                (Some(DataKey::Sealed { key: self.unwrap_with(&dek, opener)?, id: dek.id }), false)
            }
            None => {
                let legacy = self.dir.join("key");
                match fs::read(&legacy) {
                    Ok(k) => {
                        let k: [u8; 32] = k.try_into().map_err(|_| SecretError::BadKey(legacy.clone()))?;
                        (Some(DataKey::Legacy(k)), true)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => (None, false),
                    Err(e) => return Err(SecretError::Io { path: legacy, source: e }),
                }
            }
        };
        if current.is_none() {
            kek::confirm(&new_kek)?;
        }
        let (dek, key) = self.seal_new(&new_kek)?;
        let names = self.list()?;
        if let Some(current) = &current {
            for name in &names {
                let (value, version) = Self::unseal(current, name, &self.read_file(name)?)?;
                let sealed = Self::seal(&key, &dek.id, &version, name, value.expose())
                    .ok_or_else(|| SecretError::Undecryptable(name.clone()))?;
                let next = self.dir.join(format!("{name}.enc.new"));
                self.write_atomic(&next, &sealed)?;
            }
        }
        // The commit: from here on the new files are the store.
        self.write_atomic(&self.dir.join("dek"), dek.render(self.purpose).as_bytes())?;
        self.recover()?;
        Ok(Rotated {
            count: if current.is_some() { names.len() } else { 0 },
            sealed_with: new_kek.origin.to_string(),
            migrated,
        })
    }

    /// Re-seals `entries` (a secret's name and its sealed bytes, each
    /// opened with this store's data key) under a new data key sealed by
    /// the current KEK, every version kept; returns the new key's `dek`
    /// file and the re-sealed bytes, in order. Nothing is written here: a
    /// fleet keeps both in etcd, one key and many versions of a name.
    pub fn reseal(&self, entries: &[(String, Vec<u8>)]) -> Result<(Vec<u8>, Vec<Vec<u8>>), SecretError> {
        let kek = self.need_kek()?;
        let current = self.open()?.ok_or_else(|| SecretError::BadStore {
            path: self.dir.join("dek"),
            message: "no data key: nothing was sealed yet".into(),
        })?;
        let (dek, key) = self.seal_new(&kek)?;
        let mut out = Vec::with_capacity(entries.len());
        for (name, bytes) in entries {
            let (value, version) = Self::unseal(&current, name, bytes)?;
            out.push(
                Self::seal(&key, &dek.id, &version, name, value.expose())
                    .ok_or_else(|| SecretError::Undecryptable(name.clone()))?,
            );
        }
        Ok((dek.render(self.purpose).into_bytes(), out))
    }

    /// Where the current KEK comes from (never its bytes).
    pub fn kek_origin(&self) -> Result<String, SecretError> {
        Ok(self.need_kek()?.origin.to_string())
    }

    /// Seals the store's data key under the current KEK, opened with
    /// `old` (else the previous KEK the process was given): every entry
    /// stays as it is, the same data key and versions; only who can open
    /// the store changes. False when the current KEK opens it already.
    pub fn rewrap(&self, old: Option<Kek>) -> Result<bool, SecretError> {
        let new_kek = self.need_kek()?;
        let _lock = self.lock()?;
        let Some((dek, _)) = self.read_dek()? else {
            return Err(SecretError::BadStore {
                path: self.dir.join("dek"),
                message: "no data key: nothing was sealed yet".into(),
            });
        };
        let wrong = match self.unwrap_with(&dek, &new_kek) {
            Ok(_) => return Ok(false),
            Err(e) => e,
        };
        let opener = match old {
            Some(k) => k,
            None => self.previous_kek()?.ok_or(wrong)?,
        };
        let mut key = self.unwrap_with(&dek, &opener)?;
        let rewrapped = self.wrap(&new_kek, &key, dek.id);
        key.iter_mut().for_each(|b| *b = 0);
        let rewrapped = rewrapped?;
        self.write_atomic(&self.dir.join("dek"), rewrapped.render(self.purpose).as_bytes())?;
        Ok(true)
    }
}
