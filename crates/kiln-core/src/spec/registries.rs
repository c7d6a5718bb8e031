//! `[registries."HOST[:PORT]"]`: how kiln reaches a registry: an extra CA
//! for its TLS certificate, or plain HTTP (`insecure = true`).
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    ca: Option<String>,
    insecure: Option<bool>,
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
        out.insert(host, RegistrySpec { ca: r.ca.map(PathBuf::from), insecure });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
