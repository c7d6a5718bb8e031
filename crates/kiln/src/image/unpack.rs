//! Safe unpacking of image layers into a directory.
//!
//! Layers come from images kiln did not necessarily build, so every entry is
//! treated as hostile. [`classify`] is the pure half: it decides what an
//! entry means or why it is refused (`..`, absolute paths, links that leave
//! the root, device nodes, malformed whiteouts). [`Unpacker`] is the I/O
//! half: it never follows a symlink on the host, refuses to write through a
//! symlinked directory, and applies whiteouts and opaque directories only to
//! lower layers. Nothing here may call `tar::Entry::unpack`, which follows
//! the host's notion of paths rather than the image's.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// A normalised path relative to the root: no `.`, `..` or empty components.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelPath(Vec<OsString>);

impl RelPath {
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
    pub fn components(&self) -> &[OsString] {
        &self.0
    }
    pub fn to_path(&self) -> PathBuf {
        self.0.iter().collect()
    }
    fn parent(&self) -> RelPath {
        RelPath(self.0[..self.0.len().saturating_sub(1)].to_vec())
    }
    fn join(&self, name: &[u8]) -> RelPath {
        let mut v = self.0.clone();
        v.push(OsStr::from_bytes(name).to_owned());
        RelPath(v)
    }
}

/// What a tar entry asks for, once judged safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Dir,
    File,
    Symlink {
        target: PathBuf,
    },
    Hardlink {
        target: RelPath,
    },
    /// Remove this path as found in lower layers.
    Whiteout {
        victim: RelPath,
    },
    /// Hide everything lower layers put in this directory.
    Opaque {
        dir: RelPath,
    },
    /// Nothing to do (the root itself, global pax headers).
    Skip,
}

/// Why an entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("path has a '..' component")]
    DotDot,
    #[error("path is absolute")]
    Absolute,
    #[error("path is empty")]
    Empty,
    #[error("symlink target {0:?} resolves outside the root")]
    SymlinkEscapes(String),
    #[error("symlink has an empty target")]
    EmptyLinkTarget,
    #[error("hardlink target {0:?} is outside the root")]
    HardlinkOutside(String),
    #[error("hardlink target {0:?} does not exist or is a directory")]
    HardlinkTargetMissing(String),
    #[error("would write through the symlink {0:?}")]
    ThroughSymlink(String),
    #[error("parent {0:?} is not a directory")]
    ParentNotDir(String),
    #[error("device node")]
    DeviceNode,
    #[error("malformed whiteout")]
    MalformedWhiteout,
    #[error("unsupported entry type {0}")]
    Unsupported(String),
}

/// An unpacking failure, naming the layer and the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: entry {entry:?} refused: {problem}")]
    Refused { layer: usize, entry: String, problem: EntryProblem },
    #[error("layer {layer}: entry {entry:?}: {source}")]
    Io { layer: usize, entry: String, source: io::Error },
    #[error("layer {layer}: malformed tar stream: {source}")]
    Format { layer: usize, source: io::Error },
}

/// Judges one entry. Pure: looks at bytes only.
pub fn classify(path: &[u8], kind: tar::EntryType, link: Option<&[u8]>) -> Result<(RelPath, Action), EntryProblem> {
    use tar::EntryType as T;
    if matches!(kind, T::XGlobalHeader) {
        return Ok((RelPath(Vec::new()), Action::Skip));
    }
    let rel = normalize(path)?;
    let Some(base) = rel.0.last().map(|b| b.as_bytes().to_vec()) else {
        return match kind {
            T::Directory => Ok((rel, Action::Skip)),
            _ => Err(EntryProblem::Empty),
        };
    };
    if base.starts_with(WHITEOUT_PREFIX) {
        if !matches!(kind, T::Regular | T::Continuous) {
            return Err(EntryProblem::MalformedWhiteout);
        }
        let parent = rel.parent();
        if base == OPAQUE {
            return Ok((rel, Action::Opaque { dir: parent }));
        }
        let name = &base[WHITEOUT_PREFIX.len()..];
        if name.is_empty() || name == b"." || name == b".." || name.starts_with(WHITEOUT_PREFIX) {
            return Err(EntryProblem::MalformedWhiteout);
        }
        let victim = parent.join(name);
        return Ok((rel, Action::Whiteout { victim }));
    }
    let action = match kind {
        T::Regular | T::Continuous => Action::File,
        T::Directory => Action::Dir,
        T::Symlink => {
            let target = link.unwrap_or_default();
            if target.is_empty() {
                return Err(EntryProblem::EmptyLinkTarget);
            }
            if !target.starts_with(b"/") && escapes(rel.0.len() - 1, target) {
                return Err(EntryProblem::SymlinkEscapes(String::from_utf8_lossy(target).into_owned()));
            }
            Action::Symlink { target: PathBuf::from(OsStr::from_bytes(target)) }
        }
        T::Link => {
            let target = link.unwrap_or_default();
            let shown = || String::from_utf8_lossy(target).into_owned();
            if target.starts_with(b"/") {
                return Err(EntryProblem::HardlinkOutside(shown()));
            }
            let t = normalize(target).map_err(|_| EntryProblem::HardlinkOutside(shown()))?;
            if t.is_root() {
                return Err(EntryProblem::HardlinkOutside(shown()));
            }
            Action::Hardlink { target: t }
        }
        T::Char | T::Block => return Err(EntryProblem::DeviceNode),
        other => return Err(EntryProblem::Unsupported(format!("{other:?}"))),
    };
    Ok((rel, action))
}

fn normalize(path: &[u8]) -> Result<RelPath, EntryProblem> {
    if path.starts_with(b"/") {
        return Err(EntryProblem::Absolute);
    }
    let mut parts = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(EntryProblem::DotDot),
            c => parts.push(OsStr::from_bytes(c).to_owned()),
        }
    }
    Ok(RelPath(parts))
}

/// Whether a relative link target, resolved lexically from a directory
/// `depth` levels below the root, climbs above the root.
fn escapes(depth: usize, target: &[u8]) -> bool {
    let mut d = depth as i64;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                d -= 1;
                if d < 0 {
                    return true;
                }
            }
            _ => d += 1,
        }
    }
    false
}

/// What one layer contained.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Applies layers, in order, to a root directory.
#[derive(Debug)]
pub struct Unpacker {
    root: PathBuf,
    chown: bool,
    dir_modes: Vec<(PathBuf, u32)>,
}

impl Unpacker {
    /// Prepares to unpack into `root`, creating it if needed. Ownership from
    /// the image is applied only when running as root.
    pub fn new(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let chown = unsafe { libc::geteuid() } == 0;
        Ok(Unpacker { root: root.to_owned(), chown, dir_modes: Vec::new() })
    }

    /// Applies one uncompressed layer tar stream. `index` is for messages.
    pub fn apply_layer<R: Read>(&mut self, index: usize, reader: R) -> Result<LayerStats, UnpackError> {
        let mut archive = tar::Archive::new(reader);
        let mut touched: HashSet<PathBuf> = HashSet::new();
        let mut stats = LayerStats::default();
        let format = |source| UnpackError::Format { layer: index, source };
        for entry in archive.entries().map_err(format)? {
            let mut entry = entry.map_err(format)?;
            let raw_path = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw_path).into_owned();
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            let kind = entry.header().entry_type();
            let refused = |problem| UnpackError::Refused { layer: index, entry: shown.clone(), problem };
            let (rel, action) = classify(&raw_path, kind, link.as_deref()).map_err(refused)?;
            let h = entry.header();
            let meta = (|| Ok::<_, io::Error>((h.mode()? & 0o7777, h.uid()?, h.gid()?)))()
                .map_err(|source| UnpackError::Io { layer: index, entry: shown.clone(), source })?;
            stats.entries += 1;
            stats.bytes += entry.size();
            self.apply(&rel, action, &mut entry, meta, &mut touched).map_err(|e| match e {
                Failure::Refused(p) => refused(p),
                Failure::Io(source) => UnpackError::Io { layer: index, entry: shown.clone(), source },
            })?;
        }
        Ok(stats)
    }

    /// Sets directory modes last (deepest first), so that a read-only
    /// directory in the image did not block writing its contents.
    pub fn finish(mut self) -> io::Result<()> {
        self.dir_modes.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, mode) in self.dir_modes {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    fn apply(
        &mut self,
        rel: &RelPath,
        action: Action,
        data: &mut dyn Read,
        (mode, uid, gid): (u32, u64, u64),
        touched: &mut HashSet<PathBuf>,
    ) -> Result<(), Failure> {
        match action {
            Action::Skip => return Ok(()),
            Action::Whiteout { victim } => {
                if let Some(path) = self.existing_parents(&victim)? {
                    if exists(&path) {
                        remove_except(&path, touched)?;
                    }
                }
                return Ok(());
            }
            Action::Opaque { dir } => {
                let path = self.make_parents(&dir.join(b"x"), touched)?.parent().map(Path::to_owned);
                let path = path.unwrap_or_else(|| self.root.clone());
                self.ensure_dir(&path)?;
                mark(touched, &self.root, &path);
                for child in fs::read_dir(&path)? {
                    remove_except(&child?.path(), touched)?;
                }
                return Ok(());
            }
            _ => {}
        }
        let path = self.make_parents(rel, touched)?;
        mark(touched, &self.root, &path);
        match action {
            Action::Dir => {
                self.ensure_dir(&path)?;
                self.owner(&path, uid, gid)?;
                self.dir_modes.push((path, mode));
            }
            Action::File => {
                remove_if_exists(&path)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                io::copy(data, &mut f)?;
                drop(f);
                self.owner(&path, uid, gid)?;
                // After chown, which clears set-id bits.
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            }
            Action::Symlink { target } => {
                remove_if_exists(&path)?;
                std::os::unix::fs::symlink(&target, &path)?;
                self.owner(&path, uid, gid)?;
            }
            Action::Hardlink { target } => {
                let shown = || target.to_path().to_string_lossy().into_owned();
                let source = self
                    .existing_parents(&target)?
                    .ok_or_else(|| Failure::Refused(EntryProblem::HardlinkTargetMissing(shown())))?;
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(Failure::Refused(EntryProblem::HardlinkTargetMissing(shown()))),
                }
                if source != path {
                    remove_if_exists(&path)?;
                    fs::hard_link(&source, &path)?;
                }
            }
            Action::Whiteout { .. } | Action::Opaque { .. } | Action::Skip => {}
        }
        Ok(())
    }

    /// Creates missing parents of `rel` and returns its host path; refuses
    /// if any parent is a symlink or not a directory.
    fn make_parents(&self, rel: &RelPath, touched: &mut HashSet<PathBuf>) -> Result<PathBuf, Failure> {
        self.walk_parents(rel, Some(touched))?.ok_or_else(|| Failure::Io(io::Error::other("parent vanished")))
    }

    /// The host path of `rel` if all its parents exist as real directories;
    /// `None` if one is missing; refused if one is a symlink.
    fn existing_parents(&self, rel: &RelPath) -> Result<Option<PathBuf>, Failure> {
        self.walk_parents(rel, None)
    }

    /// The one place that walks from the root to `rel`'s parent: it never
    /// passes through a symlink. With `create`, missing directories are made
    /// (and recorded as written by this layer); without, a missing or
    /// non-directory parent gives `None`.
    fn walk_parents(
        &self,
        rel: &RelPath,
        mut create: Option<&mut HashSet<PathBuf>>,
    ) -> Result<Option<PathBuf>, Failure> {
        let mut cur = self.root.clone();
        let n = rel.0.len();
        for c in &rel.0[..n.saturating_sub(1)] {
            cur.push(c);
            match (fs::symlink_metadata(&cur), create.as_deref_mut()) {
                (Ok(m), _) if m.file_type().is_symlink() => {
                    return Err(Failure::Refused(EntryProblem::ThroughSymlink(self.shown(&cur))))
                }
                (Ok(m), _) if m.is_dir() => {}
                (Ok(_), Some(_)) => return Err(Failure::Refused(EntryProblem::ParentNotDir(self.shown(&cur)))),
                (Err(e), Some(touched)) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur)?;
                    touched.insert(cur.clone());
                }
                (Err(e), Some(_)) => return Err(Failure::Io(e)),
                (_, None) => return Ok(None),
            }
        }
        if let Some(last) = rel.0.last() {
            cur.push(last);
        }
        Ok(Some(cur))
    }

    fn ensure_dir(&self, path: &Path) -> io::Result<()> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => {
                fs::remove_file(path)?;
                fs::create_dir(path)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(path),
            Err(e) => Err(e),
        }
    }

    fn owner(&self, path: &Path, uid: u64, gid: u64) -> io::Result<()> {
        if self.chown {
            let id = |v: u64| u32::try_from(v).map_err(|_| io::Error::other(format!("id {v} out of range")));
            std::os::unix::fs::lchown(path, Some(id(uid)?), Some(id(gid)?))?;
        }
        Ok(())
    }

    fn shown(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).to_string_lossy().into_owned()
    }
}

enum Failure {
    Refused(EntryProblem),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Records `path` and its ancestors up to the root as written by this layer.
fn mark(touched: &mut HashSet<PathBuf>, root: &Path, path: &Path) {
    let mut p = path;
    while p != root && touched.insert(p.to_owned()) {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes `path` except whatever the current layer wrote under it.
fn remove_except(path: &Path, touched: &HashSet<PathBuf>) -> io::Result<()> {
    if !touched.contains(path) {
        return remove_if_exists(path);
    }
    let m = fs::symlink_metadata(path)?;
    if m.is_dir() {
        for child in fs::read_dir(path)? {
            remove_except(&child?.path(), touched)?;
        }
    }
    Ok(())
}

/// Unpacks uncompressed layer streams, in order, into `root`.
pub fn unpack<R: Read>(root: &Path, layers: impl IntoIterator<Item = R>) -> Result<Vec<LayerStats>, UnpackError> {
    let mut u = Unpacker::new(root).map_err(|source| UnpackError::Io { layer: 0, entry: String::new(), source })?;
    let mut stats = Vec::new();
    for (i, layer) in layers.into_iter().enumerate() {
        stats.push(u.apply_layer(i, layer)?);
    }
    u.finish().map_err(|source| UnpackError::Io { layer: stats.len(), entry: String::new(), source })?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::EntryType as T;

    fn rel(s: &str) -> RelPath {
        normalize(s.as_bytes()).unwrap()
    }

    #[test]
    fn classify_refuses_escapes() {
        assert_eq!(classify(b"../x", T::Regular, None).unwrap_err(), EntryProblem::DotDot);
        assert_eq!(classify(b"a/../../x", T::Regular, None).unwrap_err(), EntryProblem::DotDot);
        assert_eq!(classify(b"/etc/passwd", T::Regular, None).unwrap_err(), EntryProblem::Absolute);
        assert!(matches!(
            classify(b"a/l", T::Symlink, Some(b"../../etc")).unwrap_err(),
            EntryProblem::SymlinkEscapes(_)
        ));
        assert!(classify(b"a/l", T::Symlink, Some(b"../etc")).is_ok());
        assert!(classify(b"a/l", T::Symlink, Some(b"/etc/passwd")).is_ok(), "absolute targets resolve inside the root");
        assert!(matches!(classify(b"h", T::Link, Some(b"../x")).unwrap_err(), EntryProblem::HardlinkOutside(_)));
        assert!(matches!(classify(b"h", T::Link, Some(b"/etc/shadow")).unwrap_err(), EntryProblem::HardlinkOutside(_)));
        assert_eq!(classify(b"dev/sda", T::Block, None).unwrap_err(), EntryProblem::DeviceNode);
        assert_eq!(classify(b"dev/null", T::Char, None).unwrap_err(), EntryProblem::DeviceNode);
        assert_eq!(classify(b"l", T::Symlink, Some(b"")).unwrap_err(), EntryProblem::EmptyLinkTarget);
    }

    #[test]
    fn classify_whiteouts() {
        assert_eq!(classify(b"./a/.wh.b", T::Regular, None).unwrap().1, Action::Whiteout { victim: rel("a/b") });
        assert_eq!(classify(b"a/.wh..wh..opq", T::Regular, None).unwrap().1, Action::Opaque { dir: rel("a") });
        assert_eq!(classify(b".wh..wh..opq", T::Regular, None).unwrap().1, Action::Opaque { dir: rel("") });
        for bad in [&b"a/.wh."[..], b"a/.wh..", b"a/.wh...", b"a/.wh..wh.x"] {
            assert_eq!(classify(bad, T::Regular, None).unwrap_err(), EntryProblem::MalformedWhiteout, "{bad:?}");
        }
        assert_eq!(classify(b"a/.wh.b", T::Directory, None).unwrap_err(), EntryProblem::MalformedWhiteout);
    }

    #[test]
    fn classify_normalises() {
        assert_eq!(classify(b"./a//b/./c", T::Regular, None).unwrap().0, rel("a/b/c"));
        assert_eq!(classify(b"./", T::Directory, None).unwrap().1, Action::Skip);
        assert_eq!(classify(b"./", T::Regular, None).unwrap_err(), EntryProblem::Empty);
    }

    #[test]
    fn escape_depth() {
        assert!(!escapes(0, b"a/../b"));
        assert!(escapes(0, b".."));
        assert!(escapes(1, b"../.."));
        assert!(!escapes(2, b"../../x"));
        assert!(escapes(0, b"a/../../x"));
    }
}
