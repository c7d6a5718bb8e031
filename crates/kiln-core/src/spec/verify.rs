//! `[image.NAME.test]`: what `kiln test` checks on a booted instance of an
//! image before it may be promoted. Validated here once; the gate itself
//! (`verify::gate`) never re-checks a field.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::release::{duration, validate_checks, RawSmoke, SmokeCheck};
use super::{field_err, FieldError};

/// An image's test gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestSpec {
    /// HTTP checks against the instance, in order.
    pub checks: Vec<SmokeCheck>,
    /// Host-side commands (`sh -c`), run with `KILN_TEST_URL` set, in order.
    pub commands: Vec<String>,
    /// For the whole test: boot, health, checks and commands.
    pub timeout_ms: u64,
    /// Polled until it answers 200 before the checks (default: the
    /// service's health path, else `/`).
    pub health: Option<String>,
    /// The service whose env (and secret names) the instance runs with
    /// (default: the one service running this image, if there is one).
    pub service: Option<String>,
}

/// `[image.NAME.scan]`: what the scans accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScanSpec {
    /// Known false positives of the secret scan.
    pub allow_secrets: Vec<AllowSecret>,
    /// The least severity that fails the vulnerability scan.
    pub fail_on: Severity,
    /// Whether a vulnerability without any severity fails it (Debian's
    /// OSV records carry none, so this is on by default: unknown is not safe).
    pub fail_unknown: bool,
    /// The oldest vulnerability database accepted, by its newest record.
    pub max_db_age_secs: i64,
    /// Accepted vulnerabilities, each until it expires.
    pub allow: Vec<AllowVuln>,
}

impl Default for ScanSpec {
    fn default() -> Self {
        ScanSpec {
            allow_secrets: Vec::new(),
            fail_on: Severity::High,
            // Debian leaves most records unassessed ("not yet assigned"):
            // failing on those would fail every stock Debian image. They
            // are reported; `fail_unknown = true` makes them fail.
            fail_unknown: false,
            max_db_age_secs: 7 * 86_400,
            allow: Vec::new(),
        }
    }
}

/// A severity threshold of the vulnerability scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
    /// Never fail on severity (only on expired allowlist entries).
    Never,
}

/// An accepted vulnerability: by id or alias, with a reason, until a date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowVuln {
    pub id: String,
    pub reason: String,
    /// `YYYY-MM-DD`; from 00:00 UTC that day the entry fails the gate.
    pub expires: String,
    /// `expires` as Unix seconds.
    pub expires_at: i64,
}

/// A secret-scan finding marked as a false positive: by its fingerprint,
/// or every finding under a path prefix; always with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowSecret {
    pub fingerprint: Option<String>,
    pub path: Option<String>,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScan {
    #[serde(default)]
    allow_secrets: Vec<Spanned<RawAllowSecret>>,
    fail_on: Option<Spanned<String>>,
    fail_unknown: Option<bool>,
    max_db_age: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<RawAllowVuln>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowVuln {
    id: Option<String>,
    reason: Option<String>,
    expires: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowSecret {
    fingerprint: Option<String>,
    path: Option<String>,
    reason: Option<String>,
}

pub(super) fn validate_scan(raw: Spanned<RawScan>) -> Result<ScanSpec, FieldError> {
    let raw = raw.into_inner();
    let d = ScanSpec::default();
    let fail_on = match &raw.fail_on {
        None => d.fail_on,
        Some(f) => match f.get_ref().to_ascii_lowercase().as_str() {
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            "never" => Severity::Never,
            other => {
                return Err(field_err(
                    f.span(),
                    "scan.fail_on",
                    format!("{other:?}: one of low, medium, high, critical, never"),
                ))
            }
        },
    };
    let max_db_age_secs = match &raw.max_db_age {
        None => d.max_db_age_secs,
        Some(a) => crate::time::parse_duration(a.get_ref()).filter(|s| *s > 0).ok_or_else(|| {
            field_err(a.span(), "scan.max_db_age", format!("{:?}: expected a duration like 12h or 7d", a.get_ref()))
        })?,
    };
    let mut allow = Vec::new();
    for (i, a) in raw.allow.into_iter().enumerate() {
        let (span, a) = (a.span(), a.into_inner());
        let key = format!("scan.allow[{i}]");
        let need = |v: Option<String>, field: &str, why: &str| match v.filter(|v| !v.trim().is_empty()) {
            Some(v) => Ok(v),
            None => Err(field_err(span.clone(), &format!("{key}.{field}"), why)),
        };
        let id = need(a.id, "id", "name the vulnerability (an OSV id or an alias such as CVE-2024-1234)")?;
        let reason = need(a.reason, "reason", "say why this vulnerability is accepted")?;
        let expires = need(a.expires, "expires", "an allowlist entry needs an expiry date (YYYY-MM-DD)")?;
        let expires_at = (expires.len() == 10)
            .then(|| crate::time::parse_rfc3339(&format!("{expires}T00:00:00Z")))
            .flatten()
            .ok_or_else(|| {
                field_err(span.clone(), &format!("{key}.expires"), format!("{expires:?} is not a date YYYY-MM-DD"))
            })?;
        allow.push(AllowVuln { id, reason, expires, expires_at });
    }
    let mut allow_secrets = Vec::new();
    for (i, a) in raw.allow_secrets.into_iter().enumerate() {
        let (span, a) = (a.span(), a.into_inner());
        let key = format!("scan.allow_secrets[{i}]");
        let reason = a.reason.filter(|r| !r.trim().is_empty());
        let Some(reason) = reason else {
            return Err(field_err(span, &format!("{key}.reason"), "say why this finding is a false positive"));
        };
        if a.fingerprint.is_none() && a.path.is_none() {
            return Err(field_err(span, &key, "name a fingerprint (from the scan's report) or a path"));
        }
        if let Some(f) = a.fingerprint.as_deref().filter(|f| crate::digest::Digest::parse(f).is_err()) {
            return Err(field_err(span, &format!("{key}.fingerprint"), format!("{f:?} is not a sha256: digest")));
        }
        if let Some(p) = a.path.as_deref().filter(|p| !p.starts_with('/')) {
            return Err(field_err(span, &format!("{key}.path"), format!("{p:?} must be an absolute path")));
        }
        allow_secrets.push(AllowSecret { fingerprint: a.fingerprint, path: a.path, reason });
    }
    Ok(ScanSpec {
        allow_secrets,
        fail_on,
        fail_unknown: raw.fail_unknown.unwrap_or(d.fail_unknown),
        max_db_age_secs,
        allow,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTest {
    #[serde(default)]
    checks: Vec<Spanned<RawSmoke>>,
    #[serde(default)]
    commands: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    health: Option<Spanned<String>>,
    service: Option<Spanned<String>>,
}

pub(super) fn validate_test(raw: Spanned<RawTest>) -> Result<TestSpec, FieldError> {
    let span = raw.span();
    let raw = raw.into_inner();
    let checks = validate_checks(raw.checks, "test.checks")?;
    let mut commands = Vec::with_capacity(raw.commands.len());
    for (i, c) in raw.commands.into_iter().enumerate() {
        if c.get_ref().trim().is_empty() || c.get_ref().contains('\0') {
            return Err(field_err(c.span(), &format!("test.commands[{i}]"), "an empty command (or one with NUL)"));
        }
        commands.push(c.into_inner());
    }
    if checks.is_empty() && commands.is_empty() {
        return Err(field_err(span, "test", "declares no checks and no commands: nothing would be tested"));
    }
    let timeout_ms = duration(&raw.timeout, "test.timeout", 60_000)?;
    if !(1_000..=3_600_000).contains(&timeout_ms) {
        let s = raw.timeout.as_ref().map(Spanned::span).unwrap_or(span);
        return Err(field_err(s, "test.timeout", "must be 1s to 1h"));
    }
    let health = match raw.health {
        Some(h) if !h.get_ref().starts_with('/') || h.get_ref().bytes().any(|b| b <= b' ') => {
            return Err(field_err(h.span(), "test.health", "must start with '/' and hold no spaces"));
        }
        h => h.map(Spanned::into_inner),
    };
    Ok(TestSpec { checks, commands, timeout_ms, health, service: raw.service.map(Spanned::into_inner) })
}

/// `[promotion]`: the order digests move along, and whose key signs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromotionSpec {
    /// In order: a digest reaches one only from the one before.
    pub channels: Vec<String>,
    /// The signing key's name in the kiln home (`kiln key generate NAME`).
    pub key: String,
}

impl Default for PromotionSpec {
    fn default() -> Self {
        PromotionSpec { channels: vec!["dev".into(), "staging".into(), "prod".into()], key: "default".into() }
    }
}

/// A service's admission rule: the channel its digests must be promoted
/// to, checked with the public key named `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelRule {
    pub channel: String,
    pub key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPromotion {
    channels: Option<Spanned<Vec<String>>>,
    key: Option<Spanned<String>>,
}

pub(super) fn validate_promotion(raw: Spanned<RawPromotion>) -> Result<PromotionSpec, FieldError> {
    let raw = raw.into_inner();
    let d = PromotionSpec::default();
    let channels = match raw.channels {
        None => d.channels,
        Some(c) => {
            let span = c.span();
            let list = c.into_inner();
            if list.is_empty() {
                return Err(field_err(span, "channels", "name at least one channel"));
            }
            for (i, n) in list.iter().enumerate() {
                if !super::valid_image_name(n) {
                    return Err(field_err(
                        span,
                        &format!("channels[{i}]"),
                        format!("{n:?}: lowercase letters, digits, '.', '_' or '-'"),
                    ));
                }
                if list[..i].contains(n) {
                    return Err(field_err(span, &format!("channels[{i}]"), format!("{n:?} is listed twice")));
                }
            }
            list
        }
    };
    let key = match raw.key {
        None => d.key,
        Some(k) if crate::spec::valid_secret_name(k.get_ref()) => k.into_inner(),
        Some(k) => return Err(field_err(k.span(), "key", format!("{:?} is not a key name", k.get_ref()))),
    };
    Ok(PromotionSpec { channels, key })
}
