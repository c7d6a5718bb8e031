//! OCI image-spec types (manifest, index, config, descriptors) and the media
//! types kiln reads and writes. Pure data: serialization is deterministic
//! (struct field order, `BTreeMap`s), which the reproducibility of digests
//! relies on. Never add a `HashMap` here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The empty config of an artifact manifest (OCI 1.1): the blob `{}`.
pub const MEDIA_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
pub const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
pub const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";
pub const ANNOTATION_VERSION: &str = "org.opencontainers.image.version";
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// The kind (tag suffix) of one of kiln's artifacts: `test`, `spdx`, ...
pub const ANNOTATION_ARTIFACT_KIND: &str = "dev.kiln.verification.kind";
/// The payload layer of a cosign signature.
pub const MEDIA_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The base an image was baked from, as the OCI annotations name it.
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
pub const ANNOTATION_SPEC_HASH: &str = "dev.kiln.spec.sha256";
pub const ANNOTATION_COMPRESSOR: &str = "dev.kiln.layer.compressor";

pub type Annotations = BTreeMap<String, String>;

/// How a layer blob is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerEncoding {
    Tar,
    Gzip,
}

impl LayerEncoding {
    /// The encoding of a layer media type, or `None` for one kiln cannot read
    /// (zstd, foreign layers).
    pub fn of_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            MEDIA_LAYER_TAR | DOCKER_LAYER_TAR => Some(LayerEncoding::Tar),
            MEDIA_LAYER_GZIP | DOCKER_LAYER_GZIP => Some(LayerEncoding::Gzip),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor { media_type: media_type.to_owned(), digest, size, platform: None, annotations: None }
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// An artifact's kind (OCI 1.1); none for an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// The manifest an artifact is about (OCI 1.1 referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
}

impl Manifest {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
}

impl Index {
    /// The entry for `linux/<arch>` (an arm64 entry may say variant v8 or
    /// nothing; any other variant is another platform). Pure.
    pub fn for_platform(&self, arch: &str) -> Option<&Descriptor> {
        self.manifests.iter().find(|m| {
            m.platform.as_ref().is_some_and(|p| {
                p.os == "linux"
                    && p.architecture == arch
                    && match p.variant.as_deref() {
                        None => true,
                        Some(v) => arch == "arm64" && v == "v8",
                    }
            })
        })
    }

    /// Whether a registry document is an index (or a Docker manifest
    /// list) rather than an image manifest: by its media type, else by
    /// its shape (an index lists `manifests`, an image names a `config`).
    pub fn is_index(bytes: &[u8]) -> bool {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Shape {
            media_type: Option<String>,
            manifests: Option<serde::de::IgnoredAny>,
        }
        match serde_json::from_slice::<Shape>(bytes) {
            Ok(Shape { media_type: Some(m), .. }) => m == MEDIA_INDEX || m == DOCKER_MANIFEST_LIST,
            Ok(Shape { media_type: None, manifests }) => manifests.is_some(),
            Err(_) => false,
        }
    }
}

impl Default for Index {
    fn default() -> Self {
        Index { schema_version: 2, media_type: Some(MEDIA_INDEX.to_owned()), manifests: Vec::new(), annotations: None }
    }
}

/// The image configuration (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

/// The part of the config that says how to run the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Empty>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The OCI architecture name of the machine kiln runs on.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Serializes an OCI object canonically (compact JSON, fixed field order).
pub fn to_canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail: no non-string map keys.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_with_docker_field_names() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Cmd":["/x"],"ExposedPorts":{"80/tcp":{}}},"rootfs":{"type":"layers","diff_ids":[]},"unknown":1}"#;
        let c: ImageConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.config.env.as_deref(), Some(&["A=1".to_owned()][..]));
        let out = String::from_utf8(to_canonical_json(&c)).unwrap();
        assert!(out.contains(r#""ExposedPorts":{"80/tcp":{}}"#), "{out}");
        assert!(!out.contains("unknown"));
    }

    #[test]
    fn an_index_yields_this_platform_s_manifest() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"windows"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('e')
        );
        assert!(Index::is_index(text.as_bytes()));
        let ix: Index = serde_json::from_str(&text).unwrap();
        assert_eq!(ix.for_platform("amd64").unwrap().digest.to_string(), d('e'));
        assert_eq!(ix.for_platform("arm64").unwrap().digest.to_string(), d('b'));
        assert!(ix.for_platform("arm").is_none(), "v7 is not asked for");
        assert!(ix.for_platform("s390x").is_none());
        assert!(!Index::is_index(br#"{"schemaVersion":2,"config":{},"layers":[]}"#));
        assert!(Index::is_index(br#"{"schemaVersion":2,"manifests":[]}"#), "an OCI index may omit its mediaType");
        assert!(!Index::is_index(br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}"#));
    }

    #[test]
    fn encodings_of_known_media_types() {
        assert_eq!(LayerEncoding::of_media_type(MEDIA_LAYER_GZIP), Some(LayerEncoding::Gzip));
        assert_eq!(LayerEncoding::of_media_type(DOCKER_LAYER_TAR), Some(LayerEncoding::Tar));
        assert_eq!(LayerEncoding::of_media_type("application/vnd.oci.image.layer.v1.tar+zstd"), None);
    }
}
