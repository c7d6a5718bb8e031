//! `[syslog]`: ship every instance's log lines to a collector as RFC 5424
//! syslog over TCP. Validated here once; shipping is `crate::ship`'s.

use serde::Deserialize;
use toml::Spanned;

use super::{field_err, FieldError};

/// How lines travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RELP (rsyslog's reliable protocol): each message is acknowledged,
    /// so nothing is lost when the collector restarts.
    Relp,
    /// Plain TCP with octet counting (RFC 6587): any collector, but lines
    /// the collector had not read when it went down are lost.
    Tcp,
}

/// The collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSpec {
    pub url: String,
    pub transport: Transport,
    /// `HOST:PORT`.
    pub authority: String,
    /// The facility code (local0 = 16 by default).
    pub facility: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSyslog {
    url: Spanned<String>,
    facility: Option<Spanned<String>>,
}

const FACILITIES: [(&str, u8); 10] = [
    ("user", 1),
    ("daemon", 3),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

pub(super) fn validate(raw: Spanned<RawSyslog>) -> Result<SyslogSpec, FieldError> {
    let raw = raw.into_inner();
    let url = raw.url.get_ref().clone();
    let (transport, rest) = match url.split_once("://") {
        Some(("relp", r)) => (Transport::Relp, r),
        Some(("tcp", r)) => (Transport::Tcp, r),
        _ => {
            return Err(field_err(
                raw.url.span(),
                "syslog.url",
                format!("{url:?}: expected relp://HOST:PORT (acknowledged, loses nothing) or tcp://HOST:PORT"),
            ))
        }
    };
    let port_ok = rest
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(field_err(raw.url.span(), "syslog.url", format!("{url:?}: expected HOST:PORT after the scheme")));
    }
    let facility = match raw.facility {
        None => 16,
        Some(f) => FACILITIES.iter().find(|(n, _)| n == f.get_ref()).map(|(_, c)| *c).ok_or_else(|| {
            let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
            field_err(f.span(), "syslog.facility", format!("{:?} is not one of {}", f.get_ref(), names.join(", ")))
        })?,
    };
    Ok(SyslogSpec { url: url.clone(), transport, authority: rest.to_owned(), facility })
}
