//! A PKCS#10 certificate request (RFC 2986) for a set of DNS names, signed
//! with the certificate's P-256 key: what ACME's finalize takes (DER,
//! base64url). The subject is the first name; every name is in the
//! subjectAltName extension, which is what CAs issue for.
//!
//! For: the DER of one request. Must never: do I/O.

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::EncodePublicKey;

/// A DER element: tag, definite length, contents.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

const OID_CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
const OID_EXTENSION_REQUEST: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
const OID_SAN: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
const OID_ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

/// The DER of a request for `names` (at least one) signed by `key`.
pub fn request(key: &SigningKey, names: &[String]) -> Result<Vec<u8>, String> {
    let first = names.first().ok_or("a certificate request needs a name")?;
    let spki = key.verifying_key().to_public_key_der().map_err(|e| e.to_string())?;
    let cn = seq(&[OID_CN, &tlv(0x0c, first.as_bytes())]);
    let subject = seq(&[&tlv(0x31, &cn)]);
    let general_names: Vec<u8> = names.iter().flat_map(|n| tlv(0x82, n.as_bytes())).collect();
    let san = seq(&[OID_SAN, &tlv(0x04, &tlv(0x30, &general_names))]);
    let extensions = tlv(0x30, &san);
    let attribute = seq(&[OID_EXTENSION_REQUEST, &tlv(0x31, &extensions)]);
    let info = seq(&[&[0x02, 0x01, 0x00], &subject, spki.as_bytes(), &tlv(0xa0, &attribute)]);
    let sig: DerSignature = key.sign(&info);
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig.as_bytes());
    Ok(seq(&[&info, &seq(&[OID_ECDSA_SHA256]), &tlv(0x03, &bits)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_take_their_byte_count() {
        assert_eq!(tlv(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(long.len(), 304);
    }

    #[test]
    fn openssl_reads_and_verifies_the_request() {
        let key = SigningKey::from_slice(&[5u8; 32]).unwrap();
        let names = vec!["shop.test".to_owned(), "www.shop.test".to_owned()];
        let der = request(&key, &names).unwrap();
        let dir = kiln_testutil::tempdir("csr");
        std::fs::write(dir.join("r.der"), &der).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["req", "-inform", "DER", "-in"])
            .arg(dir.join("r.der"))
            .args(["-noout", "-verify", "-text"])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}");
        assert!(text.contains("verify OK") || text.contains("Certificate request self-signature verify OK"), "{text}");
        assert!(text.contains("CN = shop.test") || text.contains("CN=shop.test"), "{text}");
        assert!(text.contains("DNS:shop.test, DNS:www.shop.test"), "{text}");
        assert!(request(&key, &[]).is_err());
    }
}
