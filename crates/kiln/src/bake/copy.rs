//! Expands a `copy` entry into layer entries: globs, directories, modes and
//! owners, normalised so that the result depends only on file contents and
//! the spec (not on mtimes, the umask or directory read order).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::image::layer::{sort_entries, Entry, Kind};
use crate::spec::CopySpec;

/// The entries a copy produces, sorted. Errors are messages naming the
/// paths concerned; the caller adds the spec location.
pub fn copy_entries(base_dir: &Path, spec: &CopySpec) -> Result<Vec<Entry>, String> {
    let mut sources = Vec::new();
    for pattern in &spec.src {
        let found = expand(base_dir, pattern)?;
        sources.extend(found);
    }
    let into_dir = spec.dest.ends_with('/') || sources.len() > 1;
    let dest = spec.dest.trim_end_matches('/');
    let mut out: BTreeMap<String, (Entry, PathBuf)> = BTreeMap::new();
    for src in &sources {
        let meta = fs::metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
        if meta.is_dir() {
            walk(src, dest, spec, &mut out)?;
        } else if meta.is_file() {
            let target = if into_dir {
                let name = src.file_name().ok_or_else(|| format!("{}: no file name", src.display()))?;
                format!("{dest}/{}", name.to_string_lossy())
            } else {
                dest.to_owned()
            };
            add(&mut out, file_entry(src, &target, &meta, spec), src)?;
        } else {
            return Err(format!("{}: not a regular file or directory", src.display()));
        }
    }
    let mut entries: Vec<Entry> = out.into_values().map(|(e, _)| e).collect();
    sort_entries(&mut entries);
    Ok(entries)
}

fn expand(base_dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let is_glob = pattern.contains(['*', '?', '[']);
    if !is_glob {
        let p = base_dir.join(pattern);
        return match fs::symlink_metadata(&p) {
            Ok(_) => Ok(vec![p]),
            Err(_) => Err(format!("source {} does not exist", p.display())),
        };
    }
    let full = format!("{}/{pattern}", glob::Pattern::escape(&base_dir.to_string_lossy()));
    let opts =
        glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: true };
    let mut found: Vec<PathBuf> = glob::glob_with(&full, opts)
        .map_err(|e| format!("bad glob {pattern:?}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("while matching {pattern:?}: {e}"))?;
    if found.is_empty() {
        return Err(format!("no file matches {full}"));
    }
    found.sort();
    Ok(found)
}

fn walk(dir: &Path, target: &str, spec: &CopySpec, out: &mut BTreeMap<String, (Entry, PathBuf)>) -> Result<(), String> {
    if !target.is_empty() {
        add(
            out,
            Entry { path: rel(target), kind: Kind::Dir, mode: 0o755, uid: spec.uid.into(), gid: spec.gid.into() },
            dir,
        )?;
    }
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    children.sort_by_key(|c| c.file_name());
    for c in children {
        let path = c.path();
        let name = c.file_name();
        let name = name.to_str().ok_or_else(|| format!("{}: file name is not UTF-8", path.display()))?;
        let child_target = format!("{target}/{name}");
        let meta = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let link = fs::read_link(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let target =
                link.to_str().ok_or_else(|| format!("{}: link target is not UTF-8", path.display()))?.to_owned();
            let e = Entry {
                path: rel(&child_target),
                kind: Kind::Symlink { target },
                mode: 0o777,
                uid: spec.uid.into(),
                gid: spec.gid.into(),
            };
            add(out, e, &path)?;
        } else if ft.is_dir() {
            walk(&path, &child_target, spec, out)?;
        } else if ft.is_file() {
            add(out, file_entry(&path, &child_target, &meta, spec), &path)?;
        } else {
            return Err(format!("{}: sockets, fifos and devices cannot be copied into an image", path.display()));
        }
    }
    Ok(())
}

fn file_entry(src: &Path, target: &str, meta: &fs::Metadata, spec: &CopySpec) -> Entry {
    // Only the owner-execute bit is taken from disk: the other bits depend
    // on the umask of whoever checked the files out.
    let mode = spec.mode.unwrap_or(if meta.permissions().mode() & 0o100 != 0 { 0o755 } else { 0o644 });
    Entry {
        path: rel(target),
        kind: Kind::File { source: src.to_owned(), size: meta.len() },
        mode,
        uid: spec.uid.into(),
        gid: spec.gid.into(),
    }
}

fn rel(target: &str) -> String {
    target.trim_start_matches('/').to_owned()
}

fn add(out: &mut BTreeMap<String, (Entry, PathBuf)>, e: Entry, src: &Path) -> Result<(), String> {
    if let Some((prev, prev_src)) = out.get(&e.path) {
        if !(prev.kind == Kind::Dir && e.kind == Kind::Dir) {
            return Err(format!("both {} and {} would be written to /{}", prev_src.display(), src.display(), e.path));
        }
        return Ok(());
    }
    out.insert(e.path.clone(), (e, src.to_owned()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(src: &[&str], dest: &str) -> CopySpec {
        CopySpec {
            src: src.iter().map(|s| s.to_string()).collect(),
            dest: dest.into(),
            mode: None,
            uid: 0,
            gid: 0,
            line: 1,
        }
    }

    fn paths(v: &[Entry]) -> Vec<String> {
        v.iter().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn files_globs_and_directories() {
        let d = kiln_testutil::tempdir("copy");
        fs::create_dir_all(d.join("conf/sub")).unwrap();
        fs::write(d.join("a.txt"), "a").unwrap();
        fs::write(d.join("b.txt"), "b").unwrap();
        fs::write(d.join("conf/x"), "x").unwrap();
        fs::write(d.join("conf/sub/y"), "y").unwrap();
        std::os::unix::fs::symlink("x", d.join("conf/lx")).unwrap();
        fs::set_permissions(d.join("b.txt"), fs::Permissions::from_mode(0o700)).unwrap();

        let one = copy_entries(&d, &spec(&["a.txt"], "/etc/a.conf")).unwrap();
        assert_eq!(paths(&one), vec!["etc/a.conf"]);
        assert_eq!(one[0].mode, 0o644);

        let globbed = copy_entries(&d, &spec(&["*.txt"], "/t")).unwrap();
        assert_eq!(paths(&globbed), vec!["t/a.txt", "t/b.txt"]);
        assert_eq!(globbed[1].mode, 0o755, "owner-exec on disk means 0755");

        let tree = copy_entries(&d, &spec(&["conf"], "/srv/")).unwrap();
        assert_eq!(paths(&tree), vec!["srv", "srv/lx", "srv/sub", "srv/sub/y", "srv/x"]);
        assert_eq!(tree[1].kind, Kind::Symlink { target: "x".into() });

        let mut s = spec(&["a.txt"], "/a");
        s.mode = Some(0o400);
        s.uid = 7;
        let e = &copy_entries(&d, &s).unwrap()[0];
        assert_eq!((e.mode, e.uid, e.gid), (0o400, 7, 0));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn missing_sources_and_collisions_are_named() {
        let d = kiln_testutil::tempdir("copy");
        let e = copy_entries(&d, &spec(&["nope.bin"], "/x")).unwrap_err();
        assert!(e.contains(&d.join("nope.bin").display().to_string()), "{e}");
        let e = copy_entries(&d, &spec(&["*.none"], "/x")).unwrap_err();
        assert!(e.contains("no file matches"), "{e}");
        fs::create_dir_all(d.join("p")).unwrap();
        fs::create_dir_all(d.join("q")).unwrap();
        fs::write(d.join("p/f"), "1").unwrap();
        fs::write(d.join("q/f"), "2").unwrap();
        let e = copy_entries(&d, &spec(&["p/f", "q/f"], "/o/")).unwrap_err();
        assert!(e.contains("would be written to /o/f"), "{e}");
        fs::remove_dir_all(d).unwrap();
    }
}
