//! `[registries."HOST[:PORT]"]`: how kiln reaches a registry: an extra CA
//! for its TLS certificate, or plain HTTP (`insecure = true`).
//!
//! `signed_by` makes every pull from it require a signature by a key.
//!
//! For: checking those tables once, naming the key. Must never: read the
//! CA file (the registry client does) or hold a credential (those come
//! from `kiln login` or docker's config, never from kiln.toml).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{field_err, FieldError};

/// One registry's access settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrySpec {
    /// A CA file (PEM) that signs the registry's certificate, beside
    /// kiln.toml when relative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Plain HTTP, not TLS (loudly logged).
    #[serde(default)]
    pub insecure: bool,
    /// A PEM public key: an image pulled from this registry must carry a
    /// valid signature by it, else the pull is refused (beside kiln.toml
    /// when relative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    ca: Option<String>,
    insecure: Option<bool>,
    signed_by: Option<String>,
}

/// Whether `host` is `HOST[:PORT]` as registries are named. Pure.
pub fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        // A bare IPv6 address: no port.
        Some((n, _)) if !n.ends_with(']') && n.contains(':') => (host, None),
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    port_ok && name_ok
}

/// An image in a registry: `HOST[:PORT]/REPO[:TAG|@DIGEST]`, as `kiln
/// push`, `kiln pull` and a registry base (`from`) name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Remote {
    pub host: String,
    pub repo: String,
    /// A tag, or a `sha256:` digest.
    pub reference: Option<String>,
}

/// A registry reference that does not parse, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {why}")]
pub struct RemoteError {
    pub input: String,
    pub why: String,
}

impl Remote {
    /// Parses `HOST[:PORT]/REPO[:TAG|@DIGEST]`. Pure.
    pub fn parse(input: &str) -> Result<Remote, RemoteError> {
        let bad = |why: &str| RemoteError { input: input.to_owned(), why: why.to_owned() };
        let input_s = input.strip_prefix("http://").unwrap_or(input);
        let (host, rest) = input_s.split_once('/').ok_or_else(|| bad("expected HOST:PORT/REPO[:TAG]"))?;
        if !valid_host(host) {
            return Err(bad("expected HOST[:PORT]/REPO[:TAG]"));
        }
        let (repo, reference) = if let Some((r, d)) = rest.split_once('@') {
            crate::digest::Digest::parse(d).map_err(|_| bad("the part after '@' is not a sha256: digest"))?;
            (r, Some(d.to_owned()))
        } else {
            match rest.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, Some(t.to_owned())),
                _ => (rest, None),
            }
        };
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/');
        if repo.is_empty()
            || !repo.chars().all(ok)
            || repo.starts_with('/')
            || repo.ends_with('/')
            || repo.contains("//")
        {
            return Err(bad("the repository is lowercase letters, digits, '.', '_', '-' and '/'"));
        }
        if let Some(t) = reference.as_deref().filter(|t| !t.starts_with("sha256:")) {
            if t.is_empty()
                || t.len() > 128
                || !t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(bad("the tag is letters, digits, '.', '_' and '-', at most 128"));
            }
        }
        Ok(Remote { host: host.to_owned(), repo: repo.to_owned(), reference })
    }

    /// The host the distribution API answers on: Docker Hub's images are
    /// named `docker.io/…` but served by `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        api_host(&self.host)
    }

    /// This image without its tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.host, self.repo)
    }
}

/// The host the distribution API of registry `host` answers on.
pub fn api_host(host: &str) -> &str {
    match host {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        h => h,
    }
}

/// Whether a `from` value names a registry image: its first path segment
/// is a host (it has a '.' or a port, or is `localhost`), as docker reads it.
pub fn looks_like_registry(s: &str) -> bool {
    s.split_once('/').is_some_and(|(first, _)| first.contains('.') || first.contains(':') || first == "localhost")
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.repo)?;
        match &self.reference {
            Some(r) if r.starts_with("sha256:") => write!(f, "@{r}"),
            Some(r) => write!(f, ":{r}"),
            None => Ok(()),
        }
    }
}

pub(super) fn validate(
    raw: BTreeMap<String, Spanned<RawRegistry>>,
) -> Result<BTreeMap<String, RegistrySpec>, FieldError> {
    let mut out = BTreeMap::new();
    for (host, r) in raw {
        let span = r.span();
        let key = format!("registries.\"{host}\"");
        if !valid_host(&host) {
            return Err(field_err(span, &key, "name a registry as HOST or HOST:PORT (no scheme, no path)"));
        }
        let r = r.into_inner();
        let insecure = r.insecure.unwrap_or(false);
        if insecure && r.ca.is_some() {
            return Err(field_err(span, &format!("{key}.ca"), "insecure is plain HTTP: a CA has nothing to check"));
        }
        if r.signed_by.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(field_err(span, &format!("{key}.signed_by"), "name a PEM public key file"));
        }
        out.insert(
            host,
            RegistrySpec { ca: r.ca.map(PathBuf::from), insecure, signed_by: r.signed_by.map(PathBuf::from) },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_parse_with_any_registry_host() {
        let r = Remote::parse("127.0.0.1:5000/team/web:1.0").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.reference.as_deref()),
            ("127.0.0.1:5000", "team/web", Some("1.0"))
        );
        assert_eq!(r.to_string(), "127.0.0.1:5000/team/web:1.0");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Remote::parse(&format!("localhost:5000/web@{d}")).unwrap();
        assert_eq!(r.reference.as_deref(), Some(d.as_str()));
        assert_eq!(Remote::parse("localhost:5000/web").unwrap().reference, None);
        let r = Remote::parse("docker.io/library/debian:12").unwrap();
        assert_eq!((r.api_host(), r.repository().as_str()), ("registry-1.docker.io", "docker.io/library/debian"));
        assert!(Remote::parse("https://registry.example.com/web:1").is_err(), "a host, not a URL");
        assert!(Remote::parse("127.0.0.1:5000/Web:1").unwrap_err().to_string().contains("lowercase"));
        assert!(Remote::parse("127.0.0.1:5000").is_err());
        assert!(Remote::parse("127.0.0.1:5000/web@sha256:zz").is_err());
        assert!(looks_like_registry("ghcr.io/team/app:1") && looks_like_registry("localhost/app:1"));
        assert!(!looks_like_registry("debian:12") && !looks_like_registry("team/app:1"));
    }

    #[test]
    fn registry_hosts_are_host_and_port() {
        for ok in ["registry.example.com", "127.0.0.1:5000", "localhost:5000", "[::1]:5000", "ghcr.io"] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in ["", "https://ghcr.io", "ghcr.io/team", "host:", "host:99999999", "a b"] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}
