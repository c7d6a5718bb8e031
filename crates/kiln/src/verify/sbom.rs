//! SBOMs, `kiln sbom`: an image's inventory as SPDX 2.3 JSON and as
//! CycloneDX 1.5 JSON, each stored as an OCI artifact whose `subject` is
//! the image (so a registry's referrers API finds them), tagged
//! `NAME:sha256-<hex>.spdx` and `.cdx`.
//!
//! The documents are a function of the image alone: their time is the
//! image's `created`, their namespace and serial number come from its
//! digest, so the same digest always gets the same SBOM. [`spdx`] and
//! [`cyclonedx`] are pure.

use serde::Serialize;
use serde_json::{json, Value};

use super::inventory::{self, Inventory, InventoryError, Kind};
use crate::digest::Digest;
use crate::image::store::Store;
use crate::oci::{self, ImageConfig, Manifest};

pub const ARTIFACT_SPDX: &str = "application/spdx+json";
pub const ARTIFACT_CYCLONEDX: &str = "application/vnd.cyclonedx+json";

/// What the SBOM is of.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub name: &'a str,
    pub digest: &'a Digest,
    /// RFC 3339 (the image's `created`).
    pub created: &'a str,
}

fn tool() -> String {
    format!("kiln-{}", env!("CARGO_PKG_VERSION"))
}

/// An SPDX id: letters, digits, `.` and `-` only.
fn spdx_id(i: usize, name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    format!("SPDXRef-Package-{i}-{clean}")
}

/// Debian's license short names (DEP-5 §7.1) and other common spellings,
/// with their SPDX ids. A name not here becomes a `LicenseRef-`.
const SPDX_IDS: &[(&str, &str)] = &[
    ("AGPL-3", "AGPL-3.0-only"),
    ("AGPL-3+", "AGPL-3.0-or-later"),
    ("Apache-2", "Apache-2.0"),
    ("Apache-2.0", "Apache-2.0"),
    ("Artistic-2.0", "Artistic-2.0"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-4-clause", "BSD-4-Clause"),
    ("BSL-1.0", "BSL-1.0"),
    ("CC0", "CC0-1.0"),
    ("CC0-1.0", "CC0-1.0"),
    ("curl", "curl"),
    ("Expat", "MIT"),
    ("FSFAP", "FSFAP"),
    ("FSFUL", "FSFUL"),
    ("FSFULLR", "FSFULLR"),
    ("GFDL-1.2", "GFDL-1.2-only"),
    ("GFDL-1.2+", "GFDL-1.2-or-later"),
    ("GFDL-1.3", "GFDL-1.3-only"),
    ("GFDL-1.3+", "GFDL-1.3-or-later"),
    ("GPL-1", "GPL-1.0-only"),
    ("GPL-1+", "GPL-1.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-3", "GPL-3.0-only"),
    ("GPL-3+", "GPL-3.0-or-later"),
    ("ISC", "ISC"),
    ("LGPL-2", "LGPL-2.0-only"),
    ("LGPL-2+", "LGPL-2.0-or-later"),
    ("LGPL-2.1", "LGPL-2.1-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-3", "LGPL-3.0-only"),
    ("LGPL-3+", "LGPL-3.0-or-later"),
    ("MIT", "MIT"),
    ("MPL-1.1", "MPL-1.1"),
    ("MPL-2.0", "MPL-2.0"),
    ("OpenSSL", "OpenSSL"),
    ("PSF-2", "PSF-2.0"),
    ("Python-2.0", "Python-2.0"),
    ("Unicode-DFS-2016", "Unicode-DFS-2016"),
    ("Unlicense", "Unlicense"),
    ("WTFPL", "WTFPL"),
    ("X11", "X11"),
    ("Zlib", "Zlib"),
];

/// A license name as SPDX knows it: its id, or none.
pub fn spdx_license_id(name: &str) -> Option<&'static str> {
    SPDX_IDS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, id)| *id)
}

/// The `LicenseRef-` an SPDX document names a license without an id by
/// (letters, digits, `.` and `-` only).
fn license_ref(name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    format!("LicenseRef-{clean}")
}

/// A package's licenses as one SPDX expression (all of them apply: `AND`),
/// or `NOASSERTION`.
fn spdx_expression(licenses: &[String]) -> String {
    if licenses.is_empty() {
        return "NOASSERTION".into();
    }
    let mut terms: Vec<String> =
        licenses.iter().map(|l| spdx_license_id(l).map_or_else(|| license_ref(l), str::to_owned)).collect();
    terms.sort();
    terms.dedup();
    terms.join(" AND ")
}

fn oci_purl(s: &Subject<'_>) -> String {
    format!("pkg:oci/{}@sha256%3A{}", s.name, s.digest.hex())
}

/// The SPDX 2.3 document: the image as the described package, containing
/// one package per installed package, each with its purl.
pub fn spdx(s: &Subject<'_>, inv: &Inventory) -> Value {
    let mut packages = vec![json!({
        "SPDXID": "SPDXRef-Image",
        "name": s.name,
        "versionInfo": s.digest.to_string(),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": oci_purl(s)}],
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Image",
    })];
    if let Some(os) = &inv.os {
        packages.push(json!({
            "SPDXID": "SPDXRef-OperatingSystem",
            "name": os.id,
            "versionInfo": os.version_id.clone().unwrap_or_default(),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "OPERATING-SYSTEM",
            "description": os.pretty_name.clone().unwrap_or_default(),
        }));
        relationships.push(json!({
            "spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": "SPDXRef-OperatingSystem",
        }));
    }
    // Every LicenseRef used, with the name it stands for (SPDX requires
    // each to be declared).
    let mut refs: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for (i, p) in inv.packages.iter().enumerate() {
        let id = spdx_id(i + 1, &p.name);
        for l in p.licenses.iter().filter(|l| spdx_license_id(l).is_none()) {
            refs.insert(license_ref(l), l.clone());
        }
        let mut pkg = json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": spdx_expression(&p.licenses),
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": if p.kind == Kind::Cargo { "LIBRARY" } else { "INSTALL" },
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": p.purl(inv.os.as_ref())}],
            "comment": if p.installed {
                format!("listed in {}", p.location)
            } else {
                format!("listed in {}: removed, but its configuration files remain", p.location)
            },
        });
        if p.source != p.name || p.source_version != p.version {
            pkg["sourceInfo"] = json!(format!("built from source package {} {}", p.source, p.source_version));
        }
        packages.push(pkg);
        relationships.push(json!({
            "spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{}", s.name, s.digest),
        "documentNamespace": format!("https://kiln.invalid/spdx/{}/{}", s.name, s.digest.hex()),
        "creationInfo": {"created": s.created, "creators": [format!("Tool: {}", tool())]},
        "packages": packages,
        "relationships": relationships,
        "hasExtractedLicensingInfos": refs.iter().map(|(id, name)| json!({
            "licenseId": id,
            "name": name,
            "extractedText": format!("{name}: a license the package names by this name, without an SPDX id"),
        })).collect::<Vec<_>>(),
    })
}

/// The digest as a UUID (for CycloneDX's `serialNumber`).
fn uuid_of(d: &Digest) -> String {
    let h = d.hex();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The CycloneDX 1.5 document: the image as the metadata component, one
/// component per package (and one for the OS).
pub fn cyclonedx(s: &Subject<'_>, inv: &Inventory) -> Value {
    let mut components = Vec::new();
    if let Some(os) = &inv.os {
        components.push(json!({
            "type": "operating-system",
            "bom-ref": "os",
            "name": os.id,
            "version": os.version_id.clone().unwrap_or_default(),
            "description": os.pretty_name.clone().unwrap_or_default(),
        }));
    }
    for (i, p) in inv.packages.iter().enumerate() {
        components.push(json!({
            "type": "library",
            "bom-ref": format!("pkg-{}", i + 1),
            "name": p.name,
            "version": p.version,
            "purl": p.purl(inv.os.as_ref()),
            "licenses": p.licenses.iter().map(|l| match spdx_license_id(l) {
                Some(id) => json!({"license": {"id": id}}),
                None => json!({"license": {"name": l}}),
            }).collect::<Vec<_>>(),
            "properties": [
                {"name": "kiln:package:source", "value": format!("{} {}", p.source, p.source_version)},
                {"name": "kiln:package:location", "value": p.location},
                {"name": "kiln:package:installed", "value": p.installed.to_string()},
            ],
        }));
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", uuid_of(s.digest)),
        "version": 1,
        "metadata": {
            "timestamp": s.created,
            "tools": {"components": [{"type": "application", "name": "kiln", "version": env!("CARGO_PKG_VERSION")}]},
            "component": {"type": "container", "bom-ref": "image", "name": s.name, "version": s.digest.to_string(), "purl": oci_purl(s)},
        },
        "components": components,
    })
}

/// `kiln sbom`'s result.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SbomReport {
    pub reference: String,
    pub digest: Digest,
    pub packages: usize,
    /// The stored artifacts.
    pub spdx: Digest,
    pub cyclonedx: Digest,
}

/// The SBOM document stored as the artifact `artifact` (its one layer).
pub fn document(store: &Store, artifact: &Digest) -> Result<Value, crate::image::store::StoreError> {
    let m: Manifest = store.read_json(artifact)?;
    let layer = m.layers.first().ok_or_else(|| crate::image::store::StoreError::Invalid {
        path: store.blob_path(artifact),
        message: "an SBOM artifact without its document layer".into(),
    })?;
    store.read_json(&layer.digest)
}

/// Takes the inventory of `reference`, stores both SBOMs as artifacts.
pub fn generate(store: &Store, reference: &str, now: i64) -> Result<SbomReport, InventoryError> {
    let (desc, tags) = store.resolve(reference)?;
    let m: Manifest = store.read_json(&desc.digest)?;
    let config: ImageConfig = store.read_json(&m.config.digest)?;
    let created = config.created.clone().unwrap_or_else(|| crate::time::rfc3339(0));
    let name = super::repository(&m, &tags);
    let inv = inventory::collect(store, &desc.digest)?;
    let subject = Subject { name: &name, digest: &desc.digest, created: &created };
    let (s, c) = (spdx(&subject, &inv), cyclonedx(&subject, &inv));
    let put = |kind: &str, artifact_type: &str, doc: &Value| {
        let payload = oci::to_canonical_json(doc);
        let a = super::Artifact { kind, artifact_type, payload: &payload, created: &created };
        super::attach_artifact(store, &name, &desc, &a, now)
    };
    Ok(SbomReport {
        reference: reference.to_owned(),
        digest: desc.digest.clone(),
        packages: inv.packages.len(),
        spdx: put("spdx", ARTIFACT_SPDX, &s)?,
        cyclonedx: put("cdx", ARTIFACT_CYCLONEDX, &c)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::inventory::{Os, Package};

    fn inv() -> Inventory {
        Inventory {
            os: Some(Os { id: "debian".into(), version_id: Some("12".into()), pretty_name: Some("Debian 12".into()) }),
            packages: vec![Package {
                kind: Kind::Deb,
                name: "libssl3".into(),
                version: "3.0.11-1~deb12u2".into(),
                source: "openssl".into(),
                source_version: "3.0.11-1~deb12u2".into(),
                architecture: Some("amd64".into()),
                licenses: vec!["GPL-2+".into(), "public-domain".into(), "Expat".into()],
                location: "/var/lib/dpkg/status".into(),
                installed: true,
            }],
            notes: vec![],
        }
    }

    #[test]
    fn both_documents_list_every_package_with_its_purl() {
        let d = Digest::of(b"image");
        let s = Subject { name: "web", digest: &d, created: "2026-01-01T00:00:00Z" };
        let doc = spdx(&s, &inv());
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        let pkgs = doc["packages"].as_array().unwrap();
        assert_eq!(pkgs.len(), 3, "image, OS, one package");
        assert_eq!(pkgs[2]["SPDXID"], "SPDXRef-Package-1-libssl3");
        assert_eq!(pkgs[2]["sourceInfo"], "built from source package openssl 3.0.11-1~deb12u2");
        assert_eq!(
            pkgs[2]["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12&upstream=openssl"
        );
        assert_eq!(pkgs[2]["licenseDeclared"], "GPL-2.0-or-later AND LicenseRef-public-domain AND MIT");
        assert_eq!(doc["hasExtractedLicensingInfos"][0]["licenseId"], "LicenseRef-public-domain");
        assert_eq!(doc["relationships"].as_array().unwrap().len(), 3);
        let cdx = cyclonedx(&s, &inv());
        assert_eq!(cdx["specVersion"], "1.5");
        assert_eq!(cdx["components"].as_array().unwrap().len(), 2);
        assert_eq!(cdx["components"][1]["licenses"][0]["license"]["id"], "GPL-2.0-or-later");
        assert_eq!(cdx["components"][1]["licenses"][1]["license"]["name"], "public-domain");
        assert_eq!(cdx["serialNumber"].as_str().unwrap().len(), "urn:uuid:".len() + 36);
        assert_eq!(spdx(&s, &inv()), doc, "a function of the image alone");
    }
}
