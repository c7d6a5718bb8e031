//! The ACME request signatures (RFC 8555 §6.2, RFC 7515): flattened JWS
//! with ES256 (P-256, the signature as `r || s`), the account key as a JWK
//! until the account has a URL, and the JWK thumbprint (RFC 7638) that
//! key authorizations end with.
//!
//! For: turning a payload and a key into the body ACME takes. Must never:
//! do I/O or choose a nonce.

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest as _, Sha256};

/// Base64url without padding (RFC 4648 §5), as JOSE writes every part.
pub fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The public half of `key` as a JWK, members in the order RFC 7638's
/// thumbprint hashes them.
pub fn jwk(key: &SigningKey) -> String {
    let point = key.verifying_key().to_encoded_point(false);
    let (x, y) = (point.x().map(|x| b64url(x)), point.y().map(|y| b64url(y)));
    format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, x.unwrap_or_default(), y.unwrap_or_default())
}

/// The JWK thumbprint of `key` (RFC 7638), base64url.
pub fn thumbprint(key: &SigningKey) -> String {
    b64url(&Sha256::digest(jwk(key).as_bytes()))
}

/// Who signs: the new account's key (as a JWK) or the account (its URL).
#[derive(Debug, Clone, Copy)]
pub enum By<'a> {
    Jwk,
    Kid(&'a str),
}

/// A flattened JWS of `payload` (`None`: POST-as-GET, an empty payload)
/// for `url` with `nonce`.
pub fn sign(key: &SigningKey, by: By<'_>, nonce: &str, url: &str, payload: Option<&str>) -> String {
    let who = match by {
        By::Jwk => format!(r#""jwk":{}"#, jwk(key)),
        By::Kid(kid) => format!(r#""kid":{}"#, serde_json::Value::from(kid)),
    };
    let protected = format!(
        r#"{{"alg":"ES256",{who},"nonce":{},"url":{}}}"#,
        serde_json::Value::from(nonce),
        serde_json::Value::from(url)
    );
    let protected = b64url(protected.as_bytes());
    let payload = payload.map(|p| b64url(p.as_bytes())).unwrap_or_default();
    let sig: Signature = key.sign(format!("{protected}.{payload}").as_bytes());
    format!(r#"{{"protected":"{protected}","payload":"{payload}","signature":"{}"}}"#, b64url(&sig.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    #[test]
    fn base64url_has_no_padding_and_the_url_alphabet() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn the_thumbprint_is_rfc_7638_s() {
        // RFC 7638 §3.1's example is RSA; this checks the EC member order
        // and that the hash is over that exact text.
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let j = jwk(&key);
        assert!(j.starts_with(r#"{"crv":"P-256","kty":"EC","x":""#), "{j}");
        assert_eq!(thumbprint(&key), b64url(&Sha256::digest(j.as_bytes())));
        assert_eq!(thumbprint(&key).len(), 43);
    }

    #[test]
    fn a_jws_verifies_with_the_key_and_says_who_signed() {
        let key = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let body = sign(&key, By::Kid("https://ca.test/acct/1"), "n0nce", "https://ca.test/new-order", Some("{}"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let (p, pl, s) =
            (v["protected"].as_str().unwrap(), v["payload"].as_str().unwrap(), v["signature"].as_str().unwrap());
        let decode = |t: &str| {
            let std = t.replace('-', "+").replace('_', "/");
            let pad = "=".repeat((4 - std.len() % 4) % 4);
            crate::verify::sign::unbase64(&format!("{std}{pad}")).unwrap()
        };
        let header: serde_json::Value = serde_json::from_slice(&decode(p)).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "https://ca.test/acct/1");
        assert_eq!(header["nonce"], "n0nce");
        assert_eq!(header["url"], "https://ca.test/new-order");
        assert_eq!(decode(pl), b"{}");
        let sig = Signature::from_slice(&decode(s)).unwrap();
        assert!(key.verifying_key().verify(format!("{p}.{pl}").as_bytes(), &sig).is_ok());
        let get = sign(&key, By::Jwk, "n", "u", None);
        assert!(get.contains(r#""payload":"""#), "POST-as-GET: an empty payload");
        assert!(String::from_utf8(decode(
            serde_json::from_str::<serde_json::Value>(&get).unwrap()["protected"].as_str().unwrap()
        ))
        .unwrap()
        .contains(r#""jwk":{"crv":"P-256""#));
    }
}
