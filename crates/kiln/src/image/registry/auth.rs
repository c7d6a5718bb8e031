//! Registry credentials: from `kiln login` (kept in `$KILN_HOME/auth`,
//! encrypted like the secrets), else from docker's `config.json` `auths`
//! (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), so a host
//! that already pushes with docker needs nothing more.
//!
//! For: finding and keeping a registry's username and password. Must
//! never: print or log a password (`Debug` shows the username only).

use std::path::{Path, PathBuf};

use crate::secrets::{SecretError, Secrets};

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

impl Credentials {
    /// The `Authorization` header value of Basic authentication.
    pub fn basic(&self) -> String {
        format!("Basic {}", crate::verify::sign::base64(format!("{}:{}", self.username, self.password).as_bytes()))
    }
}

/// The store's name for `host`'s credentials.
fn name(host: &str) -> String {
    let safe: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') { c } else { '_' }).collect();
    format!("registry-{safe}")
}

/// Keeps `creds` for `host` (`kiln login`).
pub fn save(home: &Path, host: &str, creds: &Credentials) -> Result<(), SecretError> {
    let v = serde_json::json!({ "username": creds.username, "password": creds.password }).to_string();
    Secrets::credentials(home).set(&name(host), v.as_bytes())
}

/// Forgets `host`'s credentials (`kiln logout`); whether there were any.
pub fn remove(home: &Path, host: &str) -> Result<bool, SecretError> {
    match Secrets::credentials(home).remove(&name(host)) {
        Ok(()) => Ok(true),
        Err(SecretError::Missing(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn docker_config() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => Some(PathBuf::from(d).join("config.json")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
    }
}

/// `host`'s credentials: `kiln login`'s, else docker's, else none.
pub fn lookup(home: &Path, host: &str) -> Result<Option<Credentials>, SecretError> {
    if home.join("auth").join("dek").exists() {
        match Secrets::credentials(home).get(&name(host)) {
            Ok(v) => {
                let j: serde_json::Value = serde_json::from_slice(v.expose()).unwrap_or_default();
                if let (Some(u), Some(p)) = (j["username"].as_str(), j["password"].as_str()) {
                    return Ok(Some(Credentials { username: u.to_owned(), password: p.to_owned() }));
                }
            }
            Err(SecretError::Missing(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(docker_config().and_then(|p| from_docker(&p, host)))
}

/// `auths[host]` of a docker config file: `auth` (base64 `user:password`)
/// or `username` and `password`.
fn from_docker(path: &Path, host: &str) -> Option<Credentials> {
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let auths = j["auths"].as_object()?;
    let entry = auths.iter().find(|(k, _)| {
        let k = k.trim_start_matches("https://").trim_start_matches("http://");
        k.split('/').next() == Some(host)
    })?;
    let e = entry.1;
    if let (Some(u), Some(p)) = (e["username"].as_str(), e["password"].as_str()) {
        return Some(Credentials { username: u.to_owned(), password: p.to_owned() });
    }
    let raw = crate::verify::sign::unbase64(e["auth"].as_str()?)?;
    let (u, p) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    Some(Credentials { username: u.to_owned(), password: p.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_s_config_is_read_by_host() {
        let dir = kiln_testutil::tempdir("docker-config");
        let p = dir.join("config.json");
        let auth = crate::verify::sign::base64(b"alice:s3cret:with:colons");
        std::fs::write(&p, format!(r#"{{"auths":{{"https://registry.test:5000/v1/":{{"auth":"{auth}"}},"other.test":{{"username":"bob","password":"pw"}}}}}}"#)).unwrap();
        let c = from_docker(&p, "registry.test:5000").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("alice", "s3cret:with:colons"));
        assert_eq!(from_docker(&p, "other.test").unwrap().username, "bob");
        assert!(from_docker(&p, "nowhere.test").is_none());
        assert!(!format!("{c:?}").contains("s3cret"), "Debug never shows the password");
        assert_eq!(c.basic(), format!("Basic {}", crate::verify::sign::base64(b"alice:s3cret:with:colons")));
    }
}
