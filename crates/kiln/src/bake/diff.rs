//! What a `run` step changed: snapshot a rootfs before and after, and turn
//! the difference into layer entries (additions, changes, whiteouts).
//!
//! Change detection uses inode, size, mode, owner and ctime, which a command
//! cannot forge the way it can an mtime, so no file content is hashed.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::image::layer::{sort_entries, Entry, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Dir,
    File,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    dev: u64,
    ino: u64,
    nlink: u64,
    ctime: (i64, i64),
    link: Option<String>,
}

/// Every path under a root (relative, `/`-separated), with its metadata.
pub type Snapshot = BTreeMap<String, Meta>;

/// Mount points the runtime creates in the rootfs; ignored when new and empty.
const RUNTIME_MOUNTPOINTS: &[&str] = &["dev", "proc", "sys"];

pub fn snapshot(root: &Path) -> io::Result<Snapshot> {
    let mut out = BTreeMap::new();
    walk(root, "", &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Snapshot) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| io::Error::other(format!("{}: file name is not UTF-8", entry.path().display())))?;
        let rel = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
        let m = fs::symlink_metadata(entry.path())?;
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_file() {
            FileKind::File
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else {
            FileKind::Other
        };
        let link = if kind == FileKind::Symlink {
            Some(fs::read_link(entry.path())?.to_string_lossy().into_owned())
        } else {
            None
        };
        out.insert(
            rel.clone(),
            Meta {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: m.len(),
                dev: m.dev(),
                ino: m.ino(),
                nlink: m.nlink(),
                ctime: (m.ctime(), m.ctime_nsec()),
                link,
            },
        );
        if kind == FileKind::Dir {
            walk(&entry.path(), &rel, out)?;
        }
    }
    Ok(())
}

/// The layer entries that turn `before` into `after`. File entries read
/// their content from `root` when the layer is written.
pub fn diff(root: &Path, before: &Snapshot, after: &Snapshot) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut first_link: HashMap<(u64, u64), String> = HashMap::new();
    for (path, m) in after {
        let changed = match before.get(path) {
            None => {
                !(m.kind == FileKind::Dir
                    && RUNTIME_MOUNTPOINTS.contains(&path.as_str())
                    && m.nlink <= 2
                    && is_empty(&root.join(path)))
            }
            Some(b) => {
                b.kind != m.kind
                    || b.mode != m.mode
                    || b.uid != m.uid
                    || b.gid != m.gid
                    || (m.kind != FileKind::Dir
                        && (b.size != m.size || b.ino != m.ino || b.ctime != m.ctime || b.link != m.link))
            }
        };
        if !changed {
            continue;
        }
        let kind = match m.kind {
            FileKind::Dir => Kind::Dir,
            FileKind::Symlink => Kind::Symlink { target: m.link.clone().unwrap_or_default() },
            FileKind::File if m.nlink > 1 => match first_link.get(&(m.dev, m.ino)) {
                Some(t) => Kind::Hardlink { target: t.clone() },
                None => {
                    first_link.insert((m.dev, m.ino), path.clone());
                    Kind::File { source: root.join(path), size: m.size }
                }
            },
            FileKind::File => Kind::File { source: root.join(path), size: m.size },
            FileKind::Other => {
                return Err(io::Error::other(format!("/{path}: run steps may not create sockets, fifos or devices")));
            }
        };
        entries.push(Entry { path: path.clone(), kind, mode: m.mode, uid: m.uid.into(), gid: m.gid.into() });
    }
    for path in before.keys() {
        if after.contains_key(path) {
            continue;
        }
        // A removed directory's whiteout covers its contents.
        let parent_kept = match path.rsplit_once('/') {
            None => true,
            Some((parent, _)) => {
                after.get(parent).is_some_and(|p| p.kind == FileKind::Dir)
                    && before.get(parent).is_some_and(|p| p.kind == FileKind::Dir)
            }
        };
        if parent_kept {
            entries.push(Entry { path: path.clone(), kind: Kind::Whiteout, mode: 0, uid: 0, gid: 0 });
        }
    }
    sort_entries(&mut entries);
    Ok(entries)
}

fn is_empty(p: &PathBuf) -> bool {
    fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_additions_changes_deletions_and_links() {
        let root = kiln_testutil::tempdir("diff");
        fs::create_dir_all(root.join("etc/old")).unwrap();
        fs::write(root.join("etc/old/f"), "1").unwrap();
        fs::write(root.join("etc/keep"), "k").unwrap();
        fs::write(root.join("etc/edit"), "e").unwrap();
        fs::write(root.join("gone"), "g").unwrap();
        let before = snapshot(&root).unwrap();

        fs::remove_dir_all(root.join("etc/old")).unwrap();
        fs::remove_file(root.join("gone")).unwrap();
        fs::write(root.join("etc/edit"), "edited").unwrap();
        fs::create_dir(root.join("new")).unwrap();
        fs::write(root.join("new/a"), "a").unwrap();
        fs::hard_link(root.join("new/a"), root.join("new/b")).unwrap();
        std::os::unix::fs::symlink("a", root.join("new/l")).unwrap();
        fs::create_dir(root.join("proc")).unwrap();
        let after = snapshot(&root).unwrap();

        let d = diff(&root, &before, &after).unwrap();
        let shown: Vec<String> = d
            .iter()
            .map(|e| match &e.kind {
                Kind::Whiteout => format!("-{}", e.path),
                Kind::Hardlink { target } => format!("{}=>{target}", e.path),
                _ => e.path.clone(),
            })
            .collect();
        assert_eq!(shown, vec!["-gone", "-etc/old", "etc/edit", "new", "new/a", "new/b=>new/a", "new/l"]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn nothing_changed_means_no_entries() {
        let root = kiln_testutil::tempdir("diff");
        fs::write(root.join("f"), "1").unwrap();
        let a = snapshot(&root).unwrap();
        let b = snapshot(&root).unwrap();
        assert!(diff(&root, &a, &b).unwrap().is_empty());
        fs::remove_dir_all(root).unwrap();
    }
}
