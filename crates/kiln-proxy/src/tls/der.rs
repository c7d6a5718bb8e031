//! Just enough DER to read an X.509 certificate's validity: rustls and
//! webpki check a certificate but do not say when it expires, and expiry
//! is a metric, a reload check and a webhook's alert here.
//!
//! For: `notBefore` and `notAfter` of one certificate. Must never: trust a
//! length it has not checked against what is left of the input (a
//! certificate file is input like any other).

pub use kiln_core::time::rfc3339;

/// What is wrong with the certificate's encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct DerError(pub &'static str);

/// One DER element: its tag and its contents; `rest` follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), DerError> {
    let (&tag, after) = input.split_first().ok_or(DerError("truncated"))?;
    let (&first, mut after) = after.split_first().ok_or(DerError("truncated length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || after.len() < n {
            return Err(DerError("bad length"));
        }
        let len = after[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        after = &after[n..];
        len
    };
    if after.len() < len {
        return Err(DerError("an element runs past the end"));
    }
    Ok((tag, &after[..len], &after[len..]))
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT`, the version in a TBSCertificate.
const VERSION: u8 = 0xa0;

/// The certificate's `(notBefore, notAfter)` in Unix seconds.
pub fn validity(cert: &[u8]) -> Result<(i64, i64), DerError> {
    let (tag, cert, _) = element(cert)?;
    if tag != SEQUENCE {
        return Err(DerError("not a SEQUENCE"));
    }
    let (tag, mut tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return Err(DerError("no TBSCertificate"));
    }
    // version (optional), serialNumber, signature, issuer, then validity.
    let (tag, _, rest) = element(tbs)?;
    if tag == VERSION {
        tbs = rest;
        tbs = element(tbs)?.2;
    } else {
        tbs = rest;
    }
    for _ in 0..2 {
        tbs = element(tbs)?.2;
    }
    let (tag, validity, _) = element(tbs)?;
    if tag != SEQUENCE {
        return Err(DerError("no validity"));
    }
    let (t1, before, rest) = element(validity)?;
    let (t2, after, _) = element(rest)?;
    Ok((time(t1, before)?, time(t2, after)?))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, 1950-2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`) in Unix seconds.
fn time(tag: u8, bytes: &[u8]) -> Result<i64, DerError> {
    let s = std::str::from_utf8(bytes).map_err(|_| DerError("a time is not text"))?;
    let full = match (tag, s.len()) {
        (UTC_TIME, 13) => {
            let yy: u32 = s[..2].parse().map_err(|_| DerError("bad UTCTime"))?;
            format!("{}{s}", if yy >= 50 { "19" } else { "20" })
        }
        (GENERALIZED_TIME, 15) => s.to_owned(),
        _ => return Err(DerError("a time is neither UTCTime nor GeneralizedTime in seconds")),
    };
    if !full.ends_with('Z') || !full[..14].bytes().all(|b| b.is_ascii_digit()) {
        return Err(DerError("a time is not in UTC"));
    }
    let text =
        format!("{}-{}-{}T{}:{}:{}Z", &full[..4], &full[4..6], &full[6..8], &full[8..10], &full[10..12], &full[12..14]);
    kiln_core::time::parse_rfc3339(&text).ok_or(DerError("a time is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_both_kinds_read_as_unix_seconds() {
        assert_eq!(time(UTC_TIME, b"700101000000Z"), Ok(0));
        assert_eq!(time(UTC_TIME, b"491231235959Z"), Ok(2_524_607_999));
        assert_eq!(time(GENERALIZED_TIME, b"20500101000000Z"), Ok(2_524_608_000));
        assert!(time(UTC_TIME, b"700101000000+0100").is_err());
        assert!(time(GENERALIZED_TIME, b"700101000000Z").is_err());
    }

    #[test]
    fn lengths_past_the_end_are_refused() {
        assert!(element(&[0x30, 0x05, 1, 2]).is_err());
        assert!(element(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(element(&[0x30]).is_err());
        assert!(validity(&[0x30, 0x00]).is_err());
        assert_eq!(element(&[0x02, 0x01, 7, 9]), Ok((0x02, &[7u8][..], &[9u8][..])));
    }
}
