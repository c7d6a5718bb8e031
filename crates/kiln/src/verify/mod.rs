//! Verify: what is known about an image digest before it may be promoted.
//! Each result is a verification record stored in the store as an OCI 1.1
//! artifact whose `subject` is the image's manifest, tagged
//! `NAME:sha256-<hex>.<kind>` (the tag scheme cosign uses for signatures,
//! for registries without the referrers API), so `skopeo` and registries
//! carry it along with the image. [`gate`] is `kiln test`, [`vulns`]
//! `kiln scan`, [`leaks`] `kiln scan-secrets`, [`sbom`] `kiln sbom`, [`sign`]
//! `kiln sign` and `kiln verify`.
//!
//! This module stores and finds records; it must never run an instance.

pub mod apk;
pub mod auditable;
pub mod dpkg;
pub mod gate;
pub mod gobin;
pub mod inventory;
pub mod leaks;
pub mod osv;
pub mod osvdb;
pub mod promote;
pub mod sbom;
pub mod sign;
pub mod vulns;
pub mod zip;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::store::{Store, StoreError};
use crate::oci::{self, Descriptor, Manifest};

/// The artifact type of a verification record.
pub const ARTIFACT_RECORD: &str = "application/vnd.kiln.verification.v1+json";
/// The annotation naming a record's kind (`test`, later `scan`, ...).
pub const ANNOTATION_KIND: &str = oci::ANNOTATION_ARTIFACT_KIND;

/// One gate's result about one digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kind: String,
    /// The image manifest it is about.
    pub subject: Digest,
    pub passed: bool,
    /// RFC 3339, UTC.
    pub at: String,
    pub duration_ms: u64,
    pub kiln_version: String,
    /// The gate's own report.
    pub detail: serde_json::Value,
}

/// The tag of `subject`'s record of `kind`, in repository `name`.
pub fn record_tag(name: &str, subject: &Digest, kind: &str) -> String {
    format!("{name}:sha256-{}.{kind}", subject.hex())
}

/// Stores `record` as an artifact pointing at `subject` and tags it in
/// `name` (replacing an older record of the same kind). Returns the
/// artifact manifest's digest.
pub fn attach(
    store: &Store,
    name: &str,
    subject: &Descriptor,
    record: &Record,
    now: i64,
) -> Result<Digest, StoreError> {
    let payload = oci::to_canonical_json(record);
    let a = Artifact { kind: &record.kind, artifact_type: ARTIFACT_RECORD, payload: &payload, created: &record.at };
    attach_artifact(store, name, subject, &a, now)
}

/// An artifact's content: one layer of `artifact_type`.
#[derive(Debug, Clone, Copy)]
pub struct Artifact<'a> {
    /// The tag suffix: `test`, `spdx`, ...
    pub kind: &'a str,
    pub artifact_type: &'a str,
    pub payload: &'a [u8],
    /// RFC 3339.
    pub created: &'a str,
}

/// Stores `a` as a one-layer OCI 1.1 artifact whose `subject` is
/// `subject`, tagged `NAME:sha256-<hex>.<kind>`.
pub fn attach_artifact(
    store: &Store,
    name: &str,
    subject: &Descriptor,
    a: &Artifact<'_>,
    now: i64,
) -> Result<Digest, StoreError> {
    let (kind, artifact_type, payload, created) = (a.kind, a.artifact_type, a.payload, a.created);
    let empty = store.put_blob(b"{}")?;
    let layer = store.put_blob(payload)?;
    let annotations = BTreeMap::from([
        (ANNOTATION_KIND.to_owned(), kind.to_owned()),
        (oci::ANNOTATION_CREATED.to_owned(), created.to_owned()),
    ]);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_MANIFEST.to_owned()),
        artifact_type: Some(artifact_type.to_owned()),
        config: Descriptor::new(oci::MEDIA_EMPTY, empty, 2),
        layers: vec![Descriptor::new(artifact_type, layer, payload.len() as u64)],
        subject: Some(Descriptor::new(oci::MEDIA_MANIFEST, subject.digest.clone(), subject.size)),
        annotations: Some(annotations),
    };
    let bytes = oci::to_canonical_json(&manifest);
    let digest = store.put_blob(&bytes)?;
    let desc = Descriptor::new(oci::MEDIA_MANIFEST, digest.clone(), bytes.len() as u64);
    store.set_tags(&[record_tag(name, &subject.digest, kind)], &desc, true, now)?;
    Ok(digest)
}

/// The record of `kind` about `subject` in repository `name`, if any.
pub fn find(store: &Store, name: &str, subject: &Digest, kind: &str) -> Result<Option<Record>, StoreError> {
    let (desc, _) = match store.resolve(&record_tag(name, subject, kind)) {
        Ok(found) => found,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let m: Manifest = store.read_json(&desc.digest)?;
    let Some(layer) = m.layers.first().filter(|_| m.artifact_type.as_deref() == Some(ARTIFACT_RECORD)) else {
        return Ok(None);
    };
    let r: Record = store.read_json(&layer.digest)?;
    Ok(Some(r).filter(|r| r.subject == *subject && r.kind == kind))
}

/// The repository an image's records are tagged in: its title (the
/// `[image.X]` it was baked from), else its first tag's name.
pub fn repository(manifest: &Manifest, tags: &[String]) -> String {
    manifest
        .annotation(oci::ANNOTATION_TITLE)
        .map(str::to_owned)
        .or_else(|| tags.first().and_then(|t| t.split_once(':')).map(|(n, _)| n.to_owned()))
        .unwrap_or_else(|| "image".into())
}

/// Every artifact tagged about `subject`: (artifact, repository, kind).
pub fn about(store: &Store, subject: &Digest) -> Result<Vec<(Digest, String, String)>, StoreError> {
    let suffix = format!(":sha256-{}.", subject.hex());
    let mut out = Vec::new();
    for (d, tags) in store.tagged()? {
        for t in tags {
            if let Some((name, kind)) = t.split_once(&suffix) {
                out.push((d.digest.clone(), name.to_owned(), kind.to_owned()));
            }
        }
    }
    Ok(out)
}

/// Every record about `subject` (any repository, any kind), by kind.
pub fn records_of(store: &Store, subject: &Digest) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    for (_, name, kind) in about(store, subject)? {
        if let Some(r) = find(store, &name, subject, &kind)? {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.kind.cmp(&b.kind));
    Ok(out)
}

/// The artifact digests of every record about `subject` (signatures
/// excluded), for signing them.
pub fn record_artifacts(store: &Store, subject: &Digest) -> Result<Vec<Digest>, StoreError> {
    let mut out: Vec<Digest> = Vec::new();
    for (d, _, kind) in about(store, subject)? {
        if kind != sign::SIG && !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}
