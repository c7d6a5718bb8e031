//! Signatures in cosign's simple-signing format, ECDSA P-256 with SHA-256,
//! fully offline (no transparency log). A signature is an artifact tagged
//! `NAME:sha256-<hex>.sig` whose one layer is the payload
//! (`application/vnd.dev.cosign.simplesigning.v1+json`) and whose layer
//! annotation `dev.cosignproject.cosign/signature` holds the base64 of the
//! DER signature over the payload's bytes: what `cosign verify --key` reads.
//!
//! Private keys are encrypted at rest with the secrets' scheme, in a store
//! of their own (`$KILN_HOME/keys/private/`), so no service can mount one;
//! public keys are PKIX PEM files (`$KILN_HOME/keys/NAME.pub`). This module
//! must never write a private key in clear or print it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::store::{Store, StoreError};
use crate::oci::{self, Descriptor, Manifest};
use crate::secrets::{SecretError, Secrets};

pub const MEDIA_SIMPLE_SIGNING: &str = oci::MEDIA_SIMPLE_SIGNING;
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
/// The kind (tag suffix) of a signature.
pub const SIG: &str = "sig";

/// Why signing or verifying failed, naming the key or the reference.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key {name:?} exists already (remove {} first to replace it)", path.display())]
    KeyExists { name: String, path: PathBuf },
    #[error("no signing key {name:?} (create it with `kiln key generate {name}`)")]
    NoKey { name: String },
    #[error("key {name:?}: {detail}")]
    BadKey { name: String, detail: String },
    #[error("{reference}: not signed (no tag {tag})")]
    Unsigned { reference: String, tag: String },
    #[error("{reference}: the signature does not verify with {key}: {detail}")]
    Invalid { reference: String, key: String, detail: String },
}

/// The public key file of key `name`.
pub fn public_key_path(home: &Path, name: &str) -> PathBuf {
    home.join("keys").join(format!("{name}.pub"))
}

fn private_keys(home: &Path) -> Secrets {
    Secrets::signing_keys(home)
}

fn bad_key(name: &str, detail: impl std::fmt::Display) -> SignError {
    SignError::BadKey { name: name.to_owned(), detail: detail.to_string() }
}

/// Creates key pair `name`: the private scalar encrypted at rest, the
/// public key as PKIX PEM (returned, and written next to it).
pub fn generate(home: &Path, name: &str) -> Result<String, SignError> {
    let pub_path = public_key_path(home, name);
    if pub_path.exists() {
        return Err(SignError::KeyExists { name: name.to_owned(), path: pub_path });
    }
    let key = loop {
        // Rejection sampling: a scalar of zero or past the order is refused.
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .map_err(|source| SignError::Io { path: "/dev/urandom".into(), source })?;
        if let Ok(k) = SigningKey::from_slice(&b) {
            break k;
        }
    };
    let pem = key.verifying_key().to_public_key_pem(LineEnding::LF).map_err(|e| bad_key(name, e))?;
    private_keys(home).set(name, &key.to_bytes())?;
    let dir = home.join("keys");
    std::fs::create_dir_all(&dir).map_err(|source| SignError::Io { path: dir, source })?;
    std::fs::write(&pub_path, &pem).map_err(|source| SignError::Io { path: pub_path, source })?;
    Ok(pem)
}

fn signing_key(home: &Path, name: &str) -> Result<SigningKey, SignError> {
    let v = private_keys(home).get(name).map_err(|e| match e {
        SecretError::Missing(_) => SignError::NoKey { name: name.to_owned() },
        e => e.into(),
    })?;
    SigningKey::from_slice(v.expose()).map_err(|e| bad_key(name, e))
}

/// Reads a PKIX PEM public key; `what` names it in errors.
pub fn read_public_key(pem: &str, what: &str) -> Result<VerifyingKey, SignError> {
    VerifyingKey::from_public_key_pem(pem).map_err(|e| bad_key(what, format!("not a P-256 PKIX PEM public key: {e}")))
}

/// cosign's simple-signing payload for `digest` as `docker_reference`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub critical: Critical,
    #[serde(default)]
    pub optional: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Critical {
    pub identity: Identity,
    pub image: PayloadImage,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

pub fn payload(docker_reference: &str, digest: &Digest, optional: BTreeMap<String, serde_json::Value>) -> Payload {
    Payload {
        critical: Critical {
            identity: Identity { docker_reference: docker_reference.to_owned() },
            image: PayloadImage { docker_manifest_digest: digest.to_string() },
            kind: "cosign container image signature".into(),
        },
        optional,
    }
}

pub use crate::base64::{decode as unbase64, encode as base64};

/// What signing produced.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Signed {
    pub reference: String,
    pub digest: Digest,
    pub tag: String,
    pub signature: Digest,
    pub key: String,
}

fn repository(store: &Store, desc: &Descriptor, tags: &[String]) -> Result<String, StoreError> {
    Ok(super::repository(&store.read_json(&desc.digest)?, tags))
}

/// Signs `reference`'s manifest digest with key `key`; `optional` goes
/// into the payload's `optional` (a promotion's `channel`, who and when).
/// Like cosign, the `.sig` artifact holds one layer per signature: a new
/// one replaces the layer with the same `optional.channel` (none for the
/// plain signature) and keeps the others.
pub fn sign(
    store: &Store,
    key: &str,
    reference: &str,
    optional: BTreeMap<String, serde_json::Value>,
    now: i64,
) -> Result<Signed, SignError> {
    sign_as(store, key, reference, None, optional, now)
}

/// [`sign`], the payload's `docker-reference` naming `docker_reference`
/// (the registry repository an image is pushed to, as cosign names it)
/// rather than the local name.
pub fn sign_as(
    store: &Store,
    key: &str,
    reference: &str,
    docker_reference: Option<&str>,
    optional: BTreeMap<String, serde_json::Value>,
    now: i64,
) -> Result<Signed, SignError> {
    let (desc, tags) = store.resolve(reference)?;
    let name = repository(store, &desc, &tags)?;
    let sk = signing_key(store.home(), key)?;
    let channel = optional.get(CHANNEL).cloned();
    let body =
        serde_json::to_vec(&payload(docker_reference.unwrap_or(&name), &desc.digest, optional)).expect("serializes");
    let sig: Signature = sk.sign(&body);
    let layer = store.put_blob(&body)?;
    let mut layer_desc = Descriptor::new(MEDIA_SIMPLE_SIGNING, layer, body.len() as u64);
    layer_desc.annotations = Some(BTreeMap::from([(ANNOTATION_SIGNATURE.to_owned(), base64(sig.to_der().as_bytes()))]));
    let tag = super::record_tag(&name, &desc.digest, SIG);
    let mut layers = Vec::new();
    if let Some(old) = signature_manifest(store, &tag)? {
        for l in old.layers {
            let p: Option<Payload> = serde_json::from_slice(&store.read_blob(&l.digest)?).ok();
            if p.is_some_and(|p| p.optional.get(CHANNEL) != channel.as_ref()) {
                layers.push(l);
            }
        }
    }
    layers.push(layer_desc);
    let config = cosign_config(&layers);
    let config_digest = store.put_blob(&config)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_MANIFEST.to_owned()),
        artifact_type: None,
        config: Descriptor::new(oci::MEDIA_CONFIG, config_digest, config.len() as u64),
        layers,
        subject: Some(Descriptor::new(oci::MEDIA_MANIFEST, desc.digest.clone(), desc.size)),
        annotations: Some(BTreeMap::from([(oci::ANNOTATION_CREATED.to_owned(), crate::time::rfc3339(now))])),
    };
    let bytes = oci::to_canonical_json(&manifest);
    let signature = store.put_blob(&bytes)?;
    let sig_desc = Descriptor::new(oci::MEDIA_MANIFEST, signature.clone(), bytes.len() as u64);
    store.set_tags(std::slice::from_ref(&tag), &sig_desc, true, now)?;
    Ok(Signed { reference: reference.to_owned(), digest: desc.digest, tag, signature, key: key.to_owned() })
}

/// The config of a signature image as cosign writes it (go-containerregistry's
/// empty image with the payloads appended): zero times, no platform, one
/// history entry and one diff_id per payload layer (payloads are not
/// compressed, so a diff_id is the layer's digest).
fn cosign_config(layers: &[Descriptor]) -> Vec<u8> {
    const ZERO: &str = "0001-01-01T00:00:00Z";
    let history: Vec<String> = layers.iter().map(|_| format!(r#"{{"created":"{ZERO}"}}"#)).collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("\"{}\"", l.digest)).collect();
    format!(
        r#"{{"architecture":"","created":"{ZERO}","history":[{}],"os":"","rootfs":{{"type":"layers","diff_ids":[{}]}},"config":{{}}}}"#,
        history.join(","),
        diff_ids.join(",")
    )
    .into_bytes()
}

/// The `optional` key a promotion's signature names its channel with.
pub const CHANNEL: &str = "channel";

fn signature_manifest(store: &Store, tag: &str) -> Result<Option<Manifest>, StoreError> {
    match store.resolve(tag) {
        Ok((d, _)) => Ok(Some(store.read_json(&d.digest)?)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What verification found.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Verified {
    pub reference: String,
    pub digest: Digest,
    pub docker_reference: String,
    /// The plain signature's `optional` (else the first valid one's).
    pub optional: BTreeMap<String, serde_json::Value>,
    /// The channels valid signatures promote it to, with their `optional`.
    pub channels: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

/// Checks `reference`'s signatures with `key` (a PEM public key; `key_name`
/// names it in errors): a signature counts when it verifies over the
/// payload's bytes as stored and the payload names this very digest.
/// Signatures by other keys are passed over; none that counts is an error
/// naming why the first one failed.
pub fn verify(store: &Store, reference: &str, key: &VerifyingKey, key_name: &str) -> Result<Verified, SignError> {
    let (desc, tags) = store.resolve(reference)?;
    let name = repository(store, &desc, &tags)?;
    let tag = super::record_tag(&name, &desc.digest, SIG);
    let Some(m) = signature_manifest(store, &tag)? else {
        return Err(SignError::Unsigned { reference: reference.to_owned(), tag });
    };
    verify_manifest(store, reference, &desc.digest, &m, key, key_name)
}

/// Checks image `digest`'s signature artifact `m` (found by the caller:
/// a tag in the store, or what a pull fetched before tagging it).
pub fn verify_manifest(
    store: &Store,
    reference: &str,
    digest: &Digest,
    m: &Manifest,
    key: &VerifyingKey,
    key_name: &str,
) -> Result<Verified, SignError> {
    let invalid = |detail: &str| SignError::Invalid {
        reference: reference.to_owned(),
        key: key_name.to_owned(),
        detail: detail.to_owned(),
    };
    let mut first_failure = None;
    let mut valid: Vec<Payload> = Vec::new();
    for layer in &m.layers {
        let body = store.read_blob(&layer.digest)?;
        let check = || -> Result<Payload, String> {
            let der =
                layer.annotation(ANNOTATION_SIGNATURE).and_then(unbase64).ok_or("no base64 signature annotation")?;
            let sig = Signature::from_der(&der).map_err(|_| "the signature is not DER ECDSA")?;
            key.verify(&body, &sig).map_err(|_| "wrong key, or the payload was changed")?;
            let p: Payload = serde_json::from_slice(&body).map_err(|e| format!("the payload: {e}"))?;
            if p.critical.image.docker_manifest_digest != digest.to_string() {
                return Err(format!("it signs {}, not this digest", p.critical.image.docker_manifest_digest));
            }
            Ok(p)
        };
        match check() {
            Ok(p) => valid.push(p),
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    if valid.is_empty() {
        return Err(invalid(first_failure.as_deref().unwrap_or("the signature artifact has no layer")));
    }
    let mut channels = BTreeMap::new();
    for p in &valid {
        if let Some(c) = p.optional.get(CHANNEL).and_then(|c| c.as_str()) {
            channels.insert(c.to_owned(), p.optional.clone());
        }
    }
    let plain = valid.iter().find(|p| !p.optional.contains_key(CHANNEL)).unwrap_or(&valid[0]);
    Ok(Verified {
        reference: reference.to_owned(),
        digest: digest.clone(),
        docker_reference: plain.critical.identity.docker_reference.clone(),
        optional: plain.optional.clone(),
        channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
        for n in 0..64u8 {
            let v: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            assert_eq!(unbase64(&base64(&v)).unwrap(), v);
        }
        assert!(unbase64("a*b").is_none());
    }

    #[test]
    fn the_payload_is_cosigns_simple_signing_shape() {
        let d = Digest::of(b"m");
        let v = serde_json::to_value(payload("web", &d, BTreeMap::new())).unwrap();
        assert_eq!(v["critical"]["identity"]["docker-reference"], "web");
        assert_eq!(v["critical"]["image"]["docker-manifest-digest"], d.to_string());
        assert_eq!(v["critical"]["type"], "cosign container image signature");
        assert!(v["optional"].as_object().unwrap().is_empty());
    }
}
