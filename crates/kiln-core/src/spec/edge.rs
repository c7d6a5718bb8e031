//! A service's edge keys: `hosts` (the names it answers for), `tls` (its
//! certificate and key files) and `redirect_http` (a plain-HTTP listener
//! that sends clients to HTTPS).
//!
//! For: checking those keys once, each error naming its key. Must never:
//! read a certificate (the engine checks the files, with the crypto this
//! crate does not have) or look at other services.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::release::{address, Claim};
use super::{field_err, FieldError};

/// Where and how a service meets its clients, beyond its `listen` address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EdgeSpec {
    /// Lower-case host names (`*.example.com` stands for one label); none:
    /// every name.
    pub hosts: Vec<String>,
    /// Path prefixes it answers on its address (none: every path); the
    /// longest match wins when services share an address.
    pub paths: Vec<String>,
    pub tls: Option<TlsSpec>,
    pub redirect_http: Option<SocketAddr>,
    /// Line of the `tls` key (0 when absent), for a certificate found bad
    /// when its files are read.
    #[serde(skip)]
    pub tls_line: usize,
    /// Line of the `hosts` key (0 when absent), for a host another service
    /// of the same address claims.
    #[serde(skip)]
    pub hosts_line: usize,
}

/// A certificate chain and its key, as PEM files (beside kiln.toml when
/// relative; [`super::load`] makes them absolute), or obtained from an
/// ACME CA (then `cert` and `key` are empty: kiln chooses where they go).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub acme: Option<AcmeSpec>,
}

/// `tls = { acme = URL, email = …, ca = …, renew_before = … }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AcmeSpec {
    /// The CA's directory URL (https).
    pub directory: String,
    pub email: Option<String>,
    /// An extra CA file that signs the ACME server's own certificate (a
    /// private CA, Pebble in tests).
    pub ca: Option<PathBuf>,
    /// A certificate is renewed this long before it expires.
    pub renew_before_secs: i64,
}

/// Let's Encrypt's advice: renew with a third of a 90-day life left.
pub const RENEW_BEFORE_SECS: i64 = 30 * 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    acme: Option<String>,
    email: Option<String>,
    ca: Option<String>,
    renew_before: Option<String>,
}

pub(super) struct RawEdge {
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub paths: Option<Spanned<Vec<Spanned<String>>>>,
    pub tls: Option<Spanned<RawTls>>,
    pub redirect_http: Option<Spanned<String>>,
    pub has_listen: bool,
}

/// A host name as `hosts` takes it: DNS labels of letters, digits and
/// '-', optionally under a leading `*.`; lower-cased. Pure.
pub fn host_name(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{s:?} is not a host name (DNS labels, optionally under a leading \"*.\")"));
    }
    if name.split('.').next_back().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("{s:?} is an address, not a host name"));
    }
    Ok(lower)
}

pub(super) fn validate(raw: RawEdge) -> Result<(EdgeSpec, Vec<Claim>), FieldError> {
    let mut edge = EdgeSpec::default();
    let mut claims = Vec::new();
    if let Some(h) = &raw.hosts {
        edge.hosts_line = h.span().start;
        if !raw.has_listen {
            return Err(field_err(h.span(), "hosts", "needs a listen address to serve the hosts on"));
        }
        for (i, name) in h.get_ref().iter().enumerate() {
            let n = host_name(name.get_ref()).map_err(|m| field_err(name.span(), &format!("hosts[{i}]"), m))?;
            if edge.hosts.contains(&n) {
                return Err(field_err(name.span(), &format!("hosts[{i}]"), format!("{n:?} is listed twice")));
            }
            edge.hosts.push(n);
        }
    }
    if let Some(ps) = &raw.paths {
        if !raw.has_listen {
            return Err(field_err(ps.span(), "paths", "needs a listen address to serve the paths on"));
        }
        for (i, p) in ps.get_ref().iter().enumerate() {
            let v = p.get_ref();
            let ok = v.starts_with('/') && !v.contains(['?', '#', ' ']) && !v.split('/').any(|s| s == "..");
            if !ok {
                return Err(field_err(
                    p.span(),
                    &format!("paths[{i}]"),
                    format!("{v:?} is not a path prefix like \"/api\""),
                ));
            }
            if edge.paths.contains(v) {
                return Err(field_err(p.span(), &format!("paths[{i}]"), format!("{v:?} is listed twice")));
            }
            edge.paths.push(v.clone());
        }
    }
    if let Some(t) = &raw.tls {
        let span = t.span();
        edge.tls_line = span.start;
        if !raw.has_listen {
            return Err(field_err(span, "tls", "needs a listen address to serve HTTPS on"));
        }
        let tls = t.get_ref();
        match &tls.acme {
            Some(url) => {
                if tls.cert.is_some() || tls.key.is_some() {
                    let key = if tls.cert.is_some() { "tls.cert" } else { "tls.key" };
                    return Err(field_err(
                        span,
                        key,
                        "with `acme`, kiln obtains the certificate: give files or acme, not both",
                    ));
                }
                if !url.starts_with("https://") || url.len() <= "https://".len() {
                    return Err(field_err(span, "tls.acme", format!("{url:?} is not an https:// directory URL")));
                }
                if raw.hosts.as_ref().is_none_or(|h| h.get_ref().is_empty()) {
                    return Err(field_err(span, "tls.acme", "needs `hosts`: the names the certificate is asked for"));
                }
                if raw.redirect_http.is_none() {
                    return Err(field_err(
                        span,
                        "tls.acme",
                        "needs `redirect_http`: the http-01 challenge is answered there (port 80 for a public CA)",
                    ));
                }
                if let Some(e) = tls.email.as_deref().filter(|e| !e.contains('@') || e.contains([' ', ','])) {
                    return Err(field_err(span, "tls.email", format!("{e:?} is not an email address")));
                }
                let renew_before_secs = match &tls.renew_before {
                    None => RENEW_BEFORE_SECS,
                    Some(d) => crate::time::parse_duration(d).filter(|s| *s > 0).ok_or_else(|| {
                        field_err(span.clone(), "tls.renew_before", format!("{d:?}: expected a duration like 30d"))
                    })?,
                };
                let acme = AcmeSpec {
                    directory: url.clone(),
                    email: tls.email.clone(),
                    ca: tls.ca.as_ref().map(PathBuf::from),
                    renew_before_secs,
                };
                edge.tls = Some(TlsSpec { cert: PathBuf::new(), key: PathBuf::new(), acme: Some(acme) });
            }
            None => {
                for (v, key) in
                    [(&tls.email, "tls.email"), (&tls.ca, "tls.ca"), (&tls.renew_before, "tls.renew_before")]
                {
                    if v.is_some() {
                        return Err(field_err(span, key, "is an ACME setting: it needs `acme`"));
                    }
                }
                let file = |v: &Option<String>, key: &str| match v.as_deref() {
                    Some(p) if !p.trim().is_empty() => Ok(PathBuf::from(p)),
                    _ => Err(field_err(
                        span.clone(),
                        key,
                        "names the PEM file (`tls = { cert = \"...\", key = \"...\" }`, or `{ acme = URL }`)",
                    )),
                };
                edge.tls =
                    Some(TlsSpec { cert: file(&tls.cert, "tls.cert")?, key: file(&tls.key, "tls.key")?, acme: None });
            }
        }
    }
    if let Some(r) = &raw.redirect_http {
        if edge.tls.is_none() {
            return Err(field_err(r.span(), "redirect_http", "redirects to HTTPS: it needs `tls`"));
        }
        let a = address(r, "redirect_http", false)?;
        claims.push((a, "redirect_http".to_owned(), r.span()));
        edge.redirect_http = Some(a);
    }
    Ok((edge, claims))
}

/// Whether `second` may claim `addr` (its `key`) that `first` claimed as
/// `first_key`: services share a listen address when each names its
/// hosts, all serve HTTPS or none does, and no host and path prefix is
/// claimed twice; and they share a redirect listener when they share the
/// address it redirects to. `Err((at_hosts, message))`: the error is the
/// second's `hosts` key (a host claimed twice), or the claim's key. Pure.
pub(super) fn share(
    first: &super::ServiceSpec,
    first_key: &str,
    second: &super::ServiceSpec,
    key: &str,
    addr: SocketAddr,
) -> Result<(), (bool, String)> {
    let already = format!("{addr} is already service.{}.{first_key}", first.name);
    match (first_key, key) {
        ("listen", "listen") => {
            if first.edge.hosts.is_empty() || second.edge.hosts.is_empty() {
                return Err((false, format!("{already}: services share an address only when each names its hosts")));
            }
            if first.edge.tls.is_some() != second.edge.tls.is_some() {
                return Err((false, format!("{already}: services sharing an address all have tls, or none has")));
            }
            let prefixes = |e: &EdgeSpec| if e.paths.is_empty() { vec!["/".to_owned()] } else { e.paths.clone() };
            let (p1, p2) = (prefixes(&first.edge), prefixes(&second.edge));
            for h in second.edge.hosts.iter().filter(|h| first.edge.hosts.contains(h)) {
                if let Some(p) = p2.iter().find(|p| p1.contains(p)) {
                    let on = if p == "/" { String::new() } else { format!(" with path {p:?}") };
                    return Err((true, format!("{h:?}{on} is already service.{}'s on {addr}", first.name)));
                }
            }
            Ok(())
        }
        ("redirect_http", "redirect_http") if first.release.listen == second.release.listen => Ok(()),
        _ => Err((false, already)),
    }
}

/// How long before a certificate expires its service's webhooks hear of it.
pub const EXPIRY_WARNING_SECS: i64 = 14 * 86_400;
/// How often the warning is repeated while the certificate is not renewed.
pub const EXPIRY_REPEAT_SECS: i64 = 86_400;

/// Whether to warn now that a certificate valid until `not_after` expires
/// (its days left, rounded down), given the last warning for it
/// (`(not_after, at)`, Unix seconds): within [`EXPIRY_WARNING_SECS`] of the
/// end, once per certificate and then once a day; a renewed certificate
/// (another `not_after`) starts afresh. Pure.
pub fn expiry_warning(not_after: i64, now: i64, last: Option<(i64, i64)>) -> Option<i64> {
    let left = not_after - now;
    if left > EXPIRY_WARNING_SECS {
        return None;
    }
    match last {
        Some((warned_for, at)) if warned_for == not_after && now - at < EXPIRY_REPEAT_SECS => None,
        _ => Some(left.max(0) / 86_400),
    }
}

/// Whether a certificate obtained by ACME is due: there is none yet (or
/// it cannot be read), or it ends within `renew_before` of `now` (Unix
/// seconds). Pure.
pub fn acme_due(not_after: Option<i64>, now: i64, renew_before: i64) -> bool {
    not_after.is_none_or(|end| end - now < renew_before)
}

/// How long to wait after `failures` failed issuances in a row: 1 minute,
/// doubling, at most 1 hour (a CA's rate limits count failures). Pure.
pub fn acme_retry_secs(failures: u32) -> i64 {
    (60i64 << failures.saturating_sub(1).min(6)).min(3600)
}

/// Makes the certificate paths absolute, from the directory of kiln.toml.
pub(super) fn resolve(edge: &mut EdgeSpec, dir: &Path) {
    if let Some(t) = &mut edge.tls {
        match &mut t.acme {
            Some(a) => {
                if let Some(ca) = &mut a.ca {
                    *ca = dir.join(&*ca);
                }
            }
            None => {
                t.cert = dir.join(&t.cert);
                t.key = dir.join(&t.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_issues_when_there_is_nothing_or_renewal_is_due_and_backs_off() {
        let day = 86_400;
        assert!(acme_due(None, 0, 30 * day));
        assert!(!acme_due(Some(90 * day), 0, 30 * day));
        assert!(acme_due(Some(90 * day), 61 * day, 30 * day));
        assert_eq!([1, 2, 3, 7, 8, 40].map(acme_retry_secs), [60, 120, 240, 3600, 3600, 3600]);
    }

    #[test]
    fn expiry_warnings_start_14_days_before_and_repeat_daily_until_renewed() {
        let day = 86_400;
        let end = 100 * day;
        assert_eq!(expiry_warning(end, end - 15 * day, None), None);
        assert_eq!(expiry_warning(end, end - 14 * day, None), Some(14));
        assert_eq!(expiry_warning(end, end - 10 * day, Some((end, end - 10 * day - 3600))), None, "warned an hour ago");
        assert_eq!(expiry_warning(end, end - 9 * day, Some((end, end - 10 * day))), Some(9), "a day later: again");
        assert_eq!(expiry_warning(end + 90 * day, end - 9 * day, Some((end, end - 9 * day))), None, "renewed");
        assert_eq!(expiry_warning(end + day, end, Some((end, end))), Some(1), "renewed, but not for long: afresh");
        assert_eq!(expiry_warning(end, end + day, None), Some(0), "expired: still warned");
    }

    #[test]
    fn host_names_are_dns_names_lower_cased() {
        assert_eq!(host_name("Shop.Example.com").unwrap(), "shop.example.com");
        assert_eq!(host_name("*.apps.test").unwrap(), "*.apps.test");
        for bad in ["", "a..b", "-a.test", "a-.test", "a_b.test", "*.*.test", "a*.test", "10.0.0.1", "x.test:443"] {
            assert!(host_name(bad).is_err(), "{bad:?}");
        }
    }
}
