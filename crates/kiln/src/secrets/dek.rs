//! A store's data key: its `dek` file (the key wrapped by the KEK, with
//! the KEK's kind, a salt and the key's id) and the opened key, zeroed
//! when dropped.
//!
//! For: the file's format. Must never: hold a key in clear past its use.

use super::*;

/// A store's `dek` file: how its data key is wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DekFile {
    pub(super) kind: kek::Kind,
    pub(super) salt: Vec<u8>,
    pub(super) id: [u8; ID_LEN],
    pub(super) wrapped: Vec<u8>,
}

impl DekFile {
    pub(super) fn render(&self, purpose: Purpose) -> String {
        format!(
            "kiln-store 1\npurpose {}\nkek {}\nsalt {}\nid {}\nwrapped {}\n",
            purpose.label(),
            self.kind.as_str(),
            hex(&self.salt),
            hex(&self.id),
            hex(&self.wrapped)
        )
    }

    pub(super) fn parse(text: &str, path: &Path, purpose: Purpose) -> Result<DekFile, SecretError> {
        let bad = |message: String| SecretError::BadStore { path: path.to_owned(), message };
        let mut fields: HashMap<&str, &str> = HashMap::new();
        let mut lines = text.lines();
        if lines.next() != Some("kiln-store 1") {
            return Err(bad("not a kiln store key file (expected `kiln-store 1` first)".into()));
        }
        for (n, line) in lines.enumerate() {
            let (k, v) = line.split_once(' ').ok_or_else(|| bad(format!("line {}: expected `KEY VALUE`", n + 2)))?;
            fields.insert(k, v);
        }
        let field = |k: &str| fields.get(k).copied().ok_or_else(|| bad(format!("no `{k}` line")));
        if field("purpose")? != purpose.label() {
            return Err(bad(format!("purpose {:?}, expected {:?}", field("purpose")?, purpose.label())));
        }
        let kind = kek::Kind::parse(field("kek")?).ok_or_else(|| bad("kek: expected file or passphrase".into()))?;
        let salt = unhex(field("salt")?).ok_or_else(|| bad("salt: not hex".into()))?;
        let id: [u8; ID_LEN] = unhex(field("id")?)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad(format!("id: not {ID_LEN} hex bytes")))?;
        let wrapped = unhex(field("wrapped")?).ok_or_else(|| bad("wrapped: not hex".into()))?;
        if wrapped.len() != 12 + 32 + 16 {
            return Err(bad("wrapped: not a wrapped 32-byte key".into()));
        }
        Ok(DekFile { kind, salt, id, wrapped })
    }
}

/// An opened store's data key.
#[derive(Clone)]
pub(super) enum DataKey {
    Sealed {
        key: [u8; 32],
        id: [u8; ID_LEN],
    },
    /// A store from before the KEK: the bare `key` file's bytes.
    Legacy([u8; 32]),
}

impl Drop for DataKey {
    fn drop(&mut self) {
        match self {
            DataKey::Sealed { key, .. } | DataKey::Legacy(key) => key.iter_mut().for_each(|b| *b = 0),
        }
    }
}
