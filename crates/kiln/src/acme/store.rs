//! Where certificates from ACME live: the account keys, each service's
//! certificate key and chain in `$KILN_HOME/tls`, a store encrypted like
//! the secrets (`secrets::Secrets::tls_keys`); and the one clear copy the
//! load balancer reads, `<run dir>/tls/<service>/{cert,key}.pem` (mode
//! 0600, on tmpfs where `/run` is one), written again from the store when
//! it is missing (after a reboot).
//!
//! For: keeping and handing out those files. Must never: write a key in
//! clear under `$KILN_HOME`.

use std::path::{Path, PathBuf};

use p256::ecdsa::SigningKey;

use super::Issued;
use crate::proxy::tls::TlsFiles;
use crate::secrets::{SecretError, Secrets};

/// The files the load balancer serves for `service`'s ACME certificate.
pub fn live_files(home: &Path, service: &str) -> TlsFiles {
    let d = crate::runtime::run_dir(home).join("tls").join(service);
    TlsFiles { cert: d.join("cert.pem"), key: d.join("key.pem") }
}

fn account_name(directory: &str) -> String {
    format!("acme-account-{}", &crate::digest::Digest::of(directory.as_bytes()).hex()[..16])
}

/// The store of certificates and keys kiln obtained.
#[derive(Debug)]
pub struct TlsStore {
    home: PathBuf,
    secrets: Secrets,
}

impl TlsStore {
    pub fn open(home: &Path) -> TlsStore {
        TlsStore { home: home.to_owned(), secrets: Secrets::tls_keys(home) }
    }

    /// The account key for the CA at `directory`, made on first use.
    pub fn account_key(&self, directory: &str) -> Result<SigningKey, SecretError> {
        let name = account_name(directory);
        let bad = |message: String| SecretError::BadStore { path: self.home.join("tls").join(&name), message };
        match self.secrets.get(&name) {
            Ok(v) => SigningKey::from_slice(v.expose()).map_err(|e| bad(format!("not a P-256 key: {e}"))),
            Err(SecretError::Missing(_)) => {
                let key = super::new_key().map_err(|e| bad(format!("a new account key: {e}")))?;
                self.secrets.set(&name, &key.to_bytes())?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps `issued` as `service`'s certificate, then writes its clear copy.
    pub fn save(&self, service: &str, issued: &Issued) -> Result<(), SecretError> {
        self.secrets.set(&format!("tls-{service}-key"), issued.key_pem.as_bytes())?;
        self.secrets.set(&format!("tls-{service}-chain"), issued.chain_pem.as_bytes())?;
        self.write_live(service).map(drop)
    }

    /// Writes the clear copy the load balancer reads from the store, if
    /// the store has a certificate for `service`; returns whether it has.
    pub fn write_live(&self, service: &str) -> Result<bool, SecretError> {
        let (key, chain) = match (
            self.secrets.get(&format!("tls-{service}-key")),
            self.secrets.get(&format!("tls-{service}-chain")),
        ) {
            (Ok(k), Ok(c)) => (k, c),
            (Err(SecretError::Missing(_)), _) | (_, Err(SecretError::Missing(_))) => return Ok(false),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let files = live_files(&self.home, service);
        let io = |path: &Path| {
            let p = path.to_owned();
            move |e: std::io::Error| SecretError::Io { path: p.clone(), source: e }
        };
        if let Some(d) = files.cert.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io(d))?;
        }
        // The key first: a reader that sees the new certificate finds its key.
        crate::sys::atomic::write_mode(&files.key, key.expose(), 0o600).map_err(io(&files.key))?;
        crate::sys::atomic::write_mode(&files.cert, chain.expose(), 0o600).map_err(io(&files.cert))?;
        Ok(true)
    }
}
