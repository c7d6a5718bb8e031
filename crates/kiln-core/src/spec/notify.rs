//! `[[notify]]`: webhooks that receive a signed JSON POST on every failure
//! path. Validated here once; delivery is `crate::notify`'s.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{field_err, FieldError};

/// What a webhook can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alert {
    /// A release ended failed.
    ReleaseFailed,
    /// A release was rolled back (by analysis, a failed step, or a person).
    RolledBack,
    /// Canary analysis could not decide (too little traffic): a person is needed.
    Inconclusive,
    /// Instances keep failing; replacements back off.
    CrashLoop,
    /// An instance drifted from its release and was replaced.
    Drift,
    /// An instance was quarantined for a post-mortem.
    Quarantine,
    /// A rollout step made no progress within `progress_deadline`.
    Deadline,
    /// A service cannot be reconciled; it is retried with backoff.
    Failing,
    /// A served certificate expires within 14 days (again each day).
    CertExpiring,
    /// A fleet host's lease expired: its slots were moved elsewhere.
    HostLost,
}

impl Alert {
    pub const ALL: [Alert; 10] = [
        Alert::ReleaseFailed,
        Alert::RolledBack,
        Alert::Inconclusive,
        Alert::CrashLoop,
        Alert::Drift,
        Alert::Quarantine,
        Alert::Deadline,
        Alert::Failing,
        Alert::CertExpiring,
        Alert::HostLost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alert::ReleaseFailed => "release-failed",
            Alert::RolledBack => "rolled-back",
            Alert::Inconclusive => "inconclusive",
            Alert::CrashLoop => "crash-loop",
            Alert::Drift => "drift",
            Alert::Quarantine => "quarantine",
            Alert::Deadline => "deadline",
            Alert::Failing => "failing",
            Alert::CertExpiring => "cert-expiring",
            Alert::HostLost => "host-lost",
        }
    }
}

/// One webhook (kept with each pending delivery, so it round-trips).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifySpec {
    /// `http://HOST:PORT/PATH` (plain HTTP: TLS is not built).
    pub url: String,
    /// `HOST:PORT` and the path of `url`.
    pub authority: String,
    pub path: String,
    /// The alerts it wants (default: all).
    pub events: Vec<Alert>,
    /// The kiln secret (`kiln secret set NAME`) whose value keys the
    /// HMAC-SHA256 signature of each body.
    pub secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    url: Spanned<String>,
    events: Option<Spanned<Vec<String>>>,
    secret: Option<Spanned<String>>,
}

pub(super) fn validate(i: usize, raw: Spanned<RawNotify>) -> Result<NotifySpec, FieldError> {
    let raw = raw.into_inner();
    let key = |k: &str| format!("notify[{i}].{k}");
    let url = raw.url.get_ref().clone();
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(field_err(
            raw.url.span(),
            &key("url"),
            format!("{url:?}: an http:// URL (kiln does not speak TLS yet; use a relay on this host)"),
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(p) => (&rest[..p], &rest[p..]),
        None => (rest, "/"),
    };
    let port_ok =
        authority.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok || path.bytes().any(|b| b <= b' ') {
        return Err(field_err(raw.url.span(), &key("url"), format!("{url:?}: expected http://HOST:PORT/PATH")));
    }
    let events = match raw.events {
        None => Alert::ALL.to_vec(),
        Some(e) => {
            let span = e.span();
            let mut out = Vec::new();
            for name in e.into_inner() {
                let a = Alert::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| {
                    let all: Vec<&str> = Alert::ALL.iter().map(|a| a.name()).collect();
                    field_err(span.clone(), &key("events"), format!("{name:?} is not one of {}", all.join(", ")))
                })?;
                out.push(a);
            }
            if out.is_empty() {
                return Err(field_err(span, &key("events"), "name at least one event (or leave it out for all)"));
            }
            out
        }
    };
    let secret = match raw.secret {
        Some(s) if !crate::spec::valid_secret_name(s.get_ref()) => {
            return Err(field_err(s.span(), &key("secret"), format!("{:?} is not a secret name", s.get_ref())));
        }
        s => s.map(Spanned::into_inner),
    };
    Ok(NotifySpec { url: url.clone(), authority: authority.to_owned(), path: path.to_owned(), events, secret })
}
