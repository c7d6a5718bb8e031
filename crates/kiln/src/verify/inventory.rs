//! What is installed in an image, for the vulnerability scan and the SBOM:
//! the OS (`/etc/os-release`), Debian packages (`/var/lib/dpkg/status` and
//! `status.d/`), Alpine packages (`/lib/apk/db/installed`) and the crates
//! of Rust binaries built with cargo-auditable.
//!
//! The layers are applied in order, whiteouts included, so the inventory
//! is of the filesystem an instance sees (unlike the secret scan, which
//! must also read what a later layer deleted). Only the files that
//! describe packages are kept in memory. This module reads the store; it
//! must never write to it.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Serialize;

use super::{apk, auditable, dpkg, gobin};
use crate::digest::Digest;
use crate::image::store::{Store, StoreError};
use crate::oci::Manifest;

/// An executable larger than this is not searched for cargo-auditable data.
const MAX_BINARY: u64 = 256 << 20;

/// The operating system an image declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Os {
    /// `ID`: `debian`, `alpine`, ...
    pub id: String,
    pub version_id: Option<String>,
    pub pretty_name: Option<String>,
}

impl Os {
    /// The OSV ecosystem of its packages: `Debian:12`, `Alpine:v3.19`.
    pub fn ecosystem(&self) -> Option<String> {
        let v = self.version_id.as_deref()?;
        match self.id.as_str() {
            "debian" => Some(format!("Debian:{}", v.split('.').next().unwrap_or(v))),
            "alpine" => {
                let mut parts = v.split('.');
                Some(format!("Alpine:v{}.{}", parts.next()?, parts.next()?))
            }
            _ => None,
        }
    }
}

/// Which package manager a package came from (the purl type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Deb,
    Apk,
    Cargo,
    /// A Go module (or `stdlib`) compiled into a binary.
    Golang,
    /// A program found by its contents, not listed by a package manager.
    Binary,
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    /// The source (Debian) or origin (Alpine) package; the crate itself for cargo.
    pub source: String,
    pub source_version: String,
    pub architecture: Option<String>,
    /// Its licenses as the package states them: Debian's short names from
    /// `/usr/share/doc/NAME/copyright` (`GPL-2+`, `Expat`), Alpine's `L:`
    /// field. The SBOM maps them to SPDX ids where one exists.
    pub licenses: Vec<String>,
    /// The file that lists it (for a binary found by its contents, the binary).
    pub location: String,
    /// False for a Debian package removed but for its conffiles: listed in
    /// the SBOM (files of it remain), not matched against advisories.
    pub installed: bool,
}

/// Percent-encodes a purl component: RFC 3986 unreserved characters and
/// `:` stay (an epoch's colon is not encoded, as syft and packageurl-go
/// write it, so the purls compare equal as strings).
fn purl_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Package {
    /// Its package URL:
    /// `pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12&upstream=openssl`.
    /// Qualifiers are sorted by key (the purl canonical form). `upstream`
    /// names the source package when it differs from the binary one, with
    /// `@version` when its version differs too: what grype matches Debian's
    /// advisories (which name source packages) by.
    pub fn purl(&self, os: Option<&Os>) -> String {
        let (kind, namespace) = match self.kind {
            Kind::Deb => ("deb", Some(os.map_or("debian", |o| o.id.as_str()))),
            Kind::Apk => ("apk", Some(os.map_or("alpine", |o| o.id.as_str()))),
            Kind::Cargo => ("cargo", None),
            Kind::Golang => ("golang", None),
            Kind::Binary => ("generic", None),
        };
        let mut s = format!("pkg:{kind}/");
        if let Some(ns) = namespace {
            s.push_str(&purl_escape(ns));
            s.push('/');
        }
        s.push_str(&purl_escape(&self.name));
        s.push('@');
        s.push_str(&purl_escape(&self.version));
        let mut q = Vec::new();
        if let Some(a) = &self.architecture {
            q.push(format!("arch={}", purl_escape(a)));
        }
        if matches!(self.kind, Kind::Deb | Kind::Apk) {
            if let Some(o) = os {
                q.push(format!("distro={}-{}", purl_escape(&o.id), purl_escape(o.version_id.as_deref().unwrap_or(""))));
            }
        }
        if self.kind == Kind::Deb && (self.source != self.name || self.source_version != self.version) {
            let mut up = purl_escape(&self.source);
            if self.source_version != self.version {
                up.push_str("%40");
                up.push_str(&purl_escape(&self.source_version));
            }
            q.push(format!("upstream={up}"));
        }
        if !q.is_empty() {
            s.push('?');
            s.push_str(&q.join("&"));
        }
        s
    }
}

/// An image's packages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inventory {
    pub os: Option<Os>,
    pub packages: Vec<Package>,
    /// Files that looked like package data but could not be read as such.
    pub notes: Vec<String>,
}

/// Why an inventory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("layer {layer}: {path}: {message}")]
    Parse { layer: Digest, path: String, message: String },
}

/// Parses `os-release`: `KEY=value` lines, values optionally quoted.
pub fn parse_os_release(text: &str) -> Option<Os> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else { continue };
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        fields.insert(k.trim(), v.replace("\\\"", "\""));
    }
    Some(Os {
        id: fields.get("ID")?.clone(),
        version_id: fields.get("VERSION_ID").cloned(),
        pretty_name: fields.get("PRETTY_NAME").cloned(),
    })
}

/// What a path held, as far as the inventory cares.
enum Found {
    Text {
        layer: Digest,
        bytes: Vec<u8>,
    },
    Link(String),
    Crates(Vec<auditable::Crate>),
    Go(Vec<gobin::Module>),
    /// A program recognised by its contents (see [`classify`]).
    Binary {
        name: String,
        version: String,
    },
}

/// Programs that carry their version in a known string, the way syft's
/// binary classifiers find them: (name, the bytes before the version).
const CLASSIFIERS: &[(&str, &[u8])] = &[("busybox", b"BusyBox v")];

/// A statically known program in `elf`: its name and version.
pub fn classify(elf: &[u8]) -> Option<(String, String)> {
    for (name, marker) in CLASSIFIERS {
        let at = elf.windows(marker.len()).position(|w| w == *marker)? + marker.len();
        let version: String =
            elf[at..].iter().take(32).take_while(|b| b.is_ascii_digit() || **b == b'.').map(|&b| b as char).collect();
        let version = version.trim_end_matches('.');
        if version.contains('.') {
            return Some(((*name).to_owned(), version.to_owned()));
        }
    }
    None
}

fn is_package_file(path: &str) -> bool {
    matches!(path, "etc/os-release" | "usr/lib/os-release" | "var/lib/dpkg/status" | "lib/apk/db/installed")
        || path.strip_prefix("var/lib/dpkg/status.d/").is_some_and(|f| !f.is_empty() && !f.contains('/'))
        || doc_package(path).is_some()
}

/// The package whose copyright file `path` is: `usr/share/doc/NAME/copyright`.
fn doc_package(path: &str) -> Option<&str> {
    let name = path.strip_prefix("usr/share/doc/")?.strip_suffix("/copyright")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Drops `path` and everything under it.
fn remove_tree(files: &mut BTreeMap<String, Found>, path: &str) {
    let prefix = format!("{path}/");
    files.retain(|p, _| p != path && !p.starts_with(&prefix));
}

/// A path relative to `dir` resolved lexically (for the os-release link).
fn resolve_link(dir: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') { Vec::new() } else { dir.split('/').collect() };
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.retain(|p| !p.is_empty());
    parts.join("/")
}

/// A Debian package's licenses, from `usr/share/doc/NAME/copyright`
/// (following one link of its doc directory); none when it has none.
fn debian_licenses(files: &BTreeMap<String, Found>, name: &str) -> Vec<String> {
    let mut file = format!("usr/share/doc/{name}/copyright");
    if let Some(Found::Link(target)) = files.get(&format!("usr/share/doc/{name}")) {
        file = format!("{target}/copyright");
    }
    match files.get(&file) {
        Some(Found::Text { bytes, .. }) => dpkg::copyright_licenses(&String::from_utf8_lossy(bytes)),
        _ => Vec::new(),
    }
}

/// The inventory of image `digest`.
pub fn collect(store: &Store, digest: &Digest) -> Result<Inventory, InventoryError> {
    let m: Manifest = store.read_json(digest)?;
    let mut files: BTreeMap<String, Found> = BTreeMap::new();
    let mut notes = Vec::new();
    store.each_entry(&m, |layer, path, mut entry| {
        let at = |source| StoreError::Io { path: store.blob_path(&layer.digest), source };
        let path = path.to_owned();
        let (dir, base) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        if base == ".wh..wh..opq" {
            let prefix = format!("{dir}/");
            files.retain(|p, _| !p.starts_with(&prefix));
            return Ok(());
        }
        if let Some(gone) = base.strip_prefix(".wh.") {
            remove_tree(&mut files, &if dir.is_empty() { gone.to_owned() } else { format!("{dir}/{gone}") });
            return Ok(());
        }
        let header = entry.header();
        let kind = header.entry_type();
        // A later entry at a path replaces what was there; a directory
        // entry merges with the one below it.
        if kind.is_dir() {
            files.remove(&path);
        } else {
            remove_tree(&mut files, &path);
        }
        // A package's doc directory may be a link to another's
        // (`usr/share/doc/libfoo1 -> libfoo-common`): its copyright is there.
        let doc_link = path.strip_prefix("usr/share/doc/").is_some_and(|n| !n.is_empty() && !n.contains('/'));
        if kind.is_symlink() && (path == "etc/os-release" || doc_link) {
            if let Some(t) = entry.link_name().map_err(at)? {
                files.insert(path.clone(), Found::Link(resolve_link(dir, &t.to_string_lossy())));
            }
            return Ok(());
        }
        if kind != tar::EntryType::Regular {
            return Ok(());
        }
        if is_package_file(&path) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(at)?;
            files.insert(path, Found::Text { layer: layer.digest.clone(), bytes });
            return Ok(());
        }
        let mode = header.mode().map_err(at)?;
        let size = header.size().map_err(at)?;
        if mode & 0o111 == 0 || !(64..=MAX_BINARY).contains(&size) {
            return Ok(());
        }
        let mut head = [0u8; 4];
        entry.read_exact(&mut head).map_err(at)?;
        if !auditable::is_elf(&head) {
            return Ok(());
        }
        let mut elf = head.to_vec();
        entry.read_to_end(&mut elf).map_err(at)?;
        match auditable::packages(&elf) {
            Ok(Some(crates)) => {
                files.insert(path, Found::Crates(crates));
            }
            Ok(None) => match gobin::modules(&elf) {
                Ok(Some(modules)) => {
                    files.insert(path, Found::Go(modules));
                }
                Ok(None) => {
                    if let Some((name, version)) = classify(&elf) {
                        files.insert(path, Found::Binary { name, version });
                    }
                }
                Err(e) => notes.push(format!("layer {} /{path}: {e}", layer.digest.short())),
            },
            Err(e) => notes.push(format!("layer {} /{path}: {e}", layer.digest.short())),
        }
        Ok::<(), InventoryError>(())
    })?;
    let mut inv = Inventory { notes, ..Inventory::default() };
    let text = |p: &str| match files.get(p) {
        Some(Found::Text { bytes, .. }) => Some(String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    };
    let os_file = match files.get("etc/os-release") {
        Some(Found::Link(target)) => target.clone(),
        Some(_) => "etc/os-release".to_owned(),
        None => "usr/lib/os-release".to_owned(),
    };
    inv.os = text(&os_file).as_deref().and_then(parse_os_release);
    for (path, found) in &files {
        match found {
            Found::Text { layer, bytes }
                if path == "var/lib/dpkg/status" || path.starts_with("var/lib/dpkg/status.d/") =>
            {
                let parse = |message| InventoryError::Parse { layer: layer.clone(), path: format!("/{path}"), message };
                for p in dpkg::parse_status(&String::from_utf8_lossy(bytes)).map_err(parse)? {
                    inv.packages.push(Package {
                        kind: Kind::Deb,
                        licenses: debian_licenses(&files, &p.name),
                        name: p.name,
                        version: p.version,
                        source: p.source,
                        source_version: p.source_version,
                        architecture: p.architecture,
                        location: format!("/{path}"),
                        installed: p.installed,
                    });
                }
            }
            Found::Text { layer, bytes } if path == "lib/apk/db/installed" => {
                let parse = |message| InventoryError::Parse { layer: layer.clone(), path: format!("/{path}"), message };
                for p in apk::parse_installed(&String::from_utf8_lossy(bytes)).map_err(parse)? {
                    inv.packages.push(Package {
                        kind: Kind::Apk,
                        source_version: p.version.clone(),
                        name: p.name,
                        version: p.version,
                        source: p.origin,
                        architecture: p.architecture,
                        licenses: p.license.into_iter().collect(),
                        location: format!("/{path}"),
                        installed: true,
                    });
                }
            }
            Found::Crates(crates) => {
                // All of them, the binary's own crate and build-time ones
                // too: an SBOM lists what went into the binary.
                for c in crates {
                    // Advisories name crates.io crates: a local or git crate
                    // of the same name is another crate, so its source says so.
                    let source = match c.source.as_str() {
                        "crates.io" | "" => c.name.clone(),
                        other => format!("{other}:{}", c.name),
                    };
                    inv.packages.push(Package {
                        kind: Kind::Cargo,
                        name: c.name.clone(),
                        version: c.version.clone(),
                        source,
                        source_version: c.version.clone(),
                        architecture: None,
                        licenses: Vec::new(),
                        location: format!("/{path}"),
                        installed: true,
                    });
                }
            }
            Found::Go(modules) => {
                for m in modules {
                    inv.packages.push(Package {
                        kind: Kind::Golang,
                        name: m.path.clone(),
                        version: m.version.clone(),
                        source: m.path.clone(),
                        // OSV's Go ecosystem: `stdlib` at 1.21.5, modules at 1.2.3.
                        source_version: m.version.trim_start_matches("go").trim_start_matches('v').to_owned(),
                        architecture: None,
                        licenses: Vec::new(),
                        location: format!("/{path}"),
                        installed: true,
                    });
                }
            }
            Found::Binary { name, version } => inv.packages.push(Package {
                kind: Kind::Binary,
                name: name.clone(),
                version: version.clone(),
                source: name.clone(),
                source_version: version.clone(),
                architecture: None,
                licenses: Vec::new(),
                location: format!("/{path}"),
                installed: true,
            }),
            _ => {}
        }
    }
    inv.packages
        .sort_by(|a, b| (a.kind, &a.name, &a.version, &a.location).cmp(&(b.kind, &b.name, &b.version, &b.location)));
    inv.packages
        .dedup_by(|a, b| a.kind == b.kind && a.name == b.name && a.version == b.version && a.location == b.location);
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_names_the_osv_ecosystem() {
        let deb =
            parse_os_release("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n").unwrap();
        assert_eq!(deb.ecosystem().as_deref(), Some("Debian:12"));
        assert_eq!(deb.pretty_name.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        let alp = parse_os_release("NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.19.1\n").unwrap();
        assert_eq!(alp.ecosystem().as_deref(), Some("Alpine:v3.19"));
        assert_eq!(parse_os_release("NAME=x\n"), None, "no ID");
    }

    #[test]
    fn purls_escape_what_the_spec_requires() {
        let os = Os { id: "debian".into(), version_id: Some("12".into()), pretty_name: None };
        let p = Package {
            kind: Kind::Deb,
            name: "openssh-client".into(),
            version: "1:9.2p1-2+deb12u3".into(),
            source: "openssh".into(),
            source_version: "1:9.2p1-2+deb12u3".into(),
            architecture: Some("amd64".into()),
            licenses: Vec::new(),
            location: "/var/lib/dpkg/status".into(),
            installed: true,
        };
        assert_eq!(
            p.purl(Some(&os)),
            "pkg:deb/debian/openssh-client@1:9.2p1-2%2Bdeb12u3?arch=amd64&distro=debian-12&upstream=openssh"
        );
        // Built from a source of another version (a binNMU): upstream names it.
        let bash = Package {
            name: "bash".into(),
            version: "5.2.15-2+b7".into(),
            source: "bash".into(),
            source_version: "5.2.15-2".into(),
            ..p.clone()
        };
        assert_eq!(
            bash.purl(Some(&os)),
            "pkg:deb/debian/bash@5.2.15-2%2Bb7?arch=amd64&distro=debian-12&upstream=bash%405.2.15-2"
        );
        let own = Package { source: "bash".into(), source_version: "5.2.15-2+b7".into(), ..bash };
        assert!(!own.purl(Some(&os)).contains("upstream"), "its own source, same version");
        let c = Package { kind: Kind::Cargo, name: "serde".into(), version: "1.0.0".into(), architecture: None, ..p };
        assert_eq!(c.purl(Some(&os)), "pkg:cargo/serde@1.0.0");
    }

    #[test]
    fn busybox_is_known_by_its_banner() {
        assert_eq!(
            classify(b"\x7fELF...BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) multi-call"),
            Some(("busybox".into(), "1.35.0".into()))
        );
        assert_eq!(classify(b"\x7fELF...BusyBox v"), None);
        assert_eq!(classify(b"\x7fELF...nothing"), None);
    }

    #[test]
    fn links_resolve_lexically() {
        assert_eq!(resolve_link("etc", "../usr/lib/os-release"), "usr/lib/os-release");
        assert_eq!(resolve_link("etc", "/usr/lib/os-release"), "usr/lib/os-release");
        assert_eq!(resolve_link("etc", "os-release.d/x"), "etc/os-release.d/x");
    }
}
