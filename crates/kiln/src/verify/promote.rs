//! Promotion: the same digest moves along the channels of `[promotion]`
//! (default dev → staging → prod), never rebuilt. [`promote`] requires a
//! passed gate (the `test`, `vulns` and `secrets` records) and a valid
//! signature, and the previous channel, then adds a channel signature
//! (cosign simple-signing with `optional.channel`, who and when). [`admit`]
//! is what every start of a service with a `channel` goes through: the
//! digest must carry a valid signature for that channel.
//!
//! This module signs and checks; it must never start or stop anything.

use std::collections::BTreeMap;

use serde::Serialize;

use super::sign::{self, SignError};
use crate::digest::Digest;
use crate::image::store::{Store, StoreError};
use crate::spec::verify::{ChannelRule, PromotionSpec};

/// The gate records a promotion needs, by kind.
pub const REQUIRED: [&str; 3] = ["test", "vulns", "secrets"];

/// Why a digest may not be promoted, or may not run.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("no channel {channel:?} in [promotion] channels ({})", channels.join(", "))]
    UnknownChannel { channel: String, channels: Vec<String> },
    #[error("{reference} ({digest}): the {kind} gate {state}; run `kiln {command} {reference}` first")]
    Gate { reference: String, digest: Digest, kind: String, state: &'static str, command: &'static str },
    #[error("{reference} ({digest}) is not promoted to {previous:?}, which comes before {channel:?}")]
    Order { reference: String, digest: Digest, channel: String, previous: String },
    #[error(
        "{digest} is not promoted to channel {channel:?} (it is promoted to: {}); \
         `kiln promote-image {digest} --to {channel}` first",
        if promoted.is_empty() { "none".to_owned() } else { promoted.join(", ") }
    )]
    NotPromoted { digest: Digest, channel: String, promoted: Vec<String> },
}

impl PromoteError {
    /// A refusal about the image itself (not an I/O failure).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, PromoteError::Store(_) | PromoteError::Sign(SignError::Io { .. }))
    }
}

/// What a promotion did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Promoted {
    pub reference: String,
    pub digest: Digest,
    pub channel: String,
    pub by: String,
    pub at: String,
    /// Every channel it is now promoted to.
    pub channels: Vec<String>,
    pub signature: Digest,
}

fn public_key(store: &Store, name: &str) -> Result<(p256::ecdsa::VerifyingKey, String), SignError> {
    let path = sign::public_key_path(store.home(), name);
    let pem = std::fs::read_to_string(&path).map_err(|e| SignError::Io { path: path.clone(), source: e })?;
    let what = path.display().to_string();
    Ok((sign::read_public_key(&pem, &what)?, what))
}

/// Promotes `reference` to channel `to` as `actor`, signing with the
/// policy's key.
pub fn promote(
    store: &Store,
    policy: &PromotionSpec,
    reference: &str,
    to: &str,
    actor: &str,
    now: i64,
) -> Result<Promoted, PromoteError> {
    let Some(at) = policy.channels.iter().position(|c| c == to) else {
        return Err(PromoteError::UnknownChannel { channel: to.to_owned(), channels: policy.channels.clone() });
    };
    let (desc, _) = store.resolve(reference)?;
    let records = super::records_of(store, &desc.digest)?;
    for kind in REQUIRED {
        let state = match records.iter().find(|r| r.kind == kind) {
            Some(r) if r.passed => continue,
            Some(_) => "failed",
            None => "has not run",
        };
        let command = match kind {
            "test" => "test",
            "vulns" => "scan",
            _ => "scan-secrets",
        };
        return Err(PromoteError::Gate {
            reference: reference.to_owned(),
            digest: desc.digest.clone(),
            kind: kind.to_owned(),
            state,
            command,
        });
    }
    let (key, what) = public_key(store, &policy.key)?;
    let verified = sign::verify(store, &desc.digest.to_string(), &key, &what)?;
    if let Some(previous) = at.checked_sub(1).map(|i| &policy.channels[i]) {
        if !verified.channels.contains_key(previous) {
            return Err(PromoteError::Order {
                reference: reference.to_owned(),
                digest: desc.digest.clone(),
                channel: to.to_owned(),
                previous: previous.clone(),
            });
        }
    }
    let when = crate::time::rfc3339(now);
    let optional = BTreeMap::from([
        (sign::CHANNEL.to_owned(), serde_json::json!(to)),
        ("promoted_by".to_owned(), serde_json::json!(actor)),
        ("promoted_at".to_owned(), serde_json::json!(when)),
    ]);
    let signed = sign::sign(store, &policy.key, &desc.digest.to_string(), optional, now)?;
    let mut channels: Vec<String> = verified.channels.into_keys().collect();
    if !channels.iter().any(|c| c == to) {
        channels.push(to.to_owned());
    }
    channels.sort_by_key(|c| policy.channels.iter().position(|p| p == c));
    Ok(Promoted {
        reference: reference.to_owned(),
        digest: desc.digest,
        channel: to.to_owned(),
        by: actor.to_owned(),
        at: when,
        channels,
        signature: signed.signature,
    })
}

/// Whether `digest` may run under `rule`: a signature by the rule's key
/// that verifies, for the rule's channel.
pub fn admit(store: &Store, rule: &ChannelRule, digest: &Digest) -> Result<(), PromoteError> {
    let (key, what) = public_key(store, &rule.key)?;
    let verified = sign::verify(store, &digest.to_string(), &key, &what)?;
    if verified.channels.contains_key(&rule.channel) {
        return Ok(());
    }
    Err(PromoteError::NotPromoted {
        digest: digest.clone(),
        channel: rule.channel.clone(),
        promoted: verified.channels.into_keys().collect(),
    })
}
