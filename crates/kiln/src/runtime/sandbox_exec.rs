//! The sandbox-exec helper (`crates/kiln/helper/sandbox_exec.rs`, built
//! static by the build script) and the default seccomp filter, as the files
//! an instance sees read-only at [`MOUNT_AT`]. runc starts the helper; it
//! loads the filter kiln compiled once and execs the instance's program, so
//! no start pays for runc compiling the profile.
//!
//! For: writing the two files once per kiln build under `/run/kiln`, where
//! every instance's bind mount finds them. Must never: change a file
//! an instance may be running (the directory is named by the files' hash
//! and written whole, then renamed into place).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The static helper binary.
const HELPER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sandbox-exec"));

/// Where an instance sees the directory (on its private /dev tmpfs, so no
/// image needs a mount point for it).
pub const MOUNT_AT: &str = "/dev/.kiln";
/// The helper and the filter inside an instance.
pub const HELPER_PATH: &str = "/dev/.kiln/sandbox-exec";
pub const FILTER_PATH: &str = "/dev/.kiln/default.bpf";

/// Writes the helper and the default filter under `kiln_root` (`/run/kiln`,
/// shared by every home: the files are the same for one build) unless they
/// are there already, and returns their directory; `None` where kiln does
/// not compile the filter itself (then runc compiles the profile).
pub fn install(kiln_root: &Path) -> io::Result<Option<PathBuf>> {
    if !super::seccomp::KILN_COMPILES {
        return Ok(None);
    }
    let parent = kiln_root.join("sandbox");
    let dir = parent.join(env!("KILN_SANDBOX_EXEC_ID"));
    if dir.join("default.bpf").exists() {
        return Ok(Some(dir));
    }
    fs::create_dir_all(&parent)?;
    if noexec(&parent)? {
        // A bind mount keeps its source's noexec: the helper could not
        // run. runc compiles the profile instead, as before.
        return Ok(None);
    }
    let Some(filter) = super::seccomp::default_filter() else {
        return Ok(None);
    };
    // Others pass: runc mounts it from inside the instance's user namespace.
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o711))?;
    let tmp = parent.join(format!(".tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    for (name, bytes, mode) in [("sandbox-exec", HELPER, 0o755), ("default.bpf", filter.as_slice(), 0o644)] {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(tmp.join(name))?;
        f.write_all(bytes)?;
    }
    match fs::rename(&tmp, &dir) {
        Ok(()) => Ok(Some(dir)),
        // Another kiln process put the same files there first.
        Err(_) if dir.join("default.bpf").exists() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(Some(dir))
        }
        Err(e) => Err(e),
    }
}

/// Whether the file system holding `dir` is mounted `noexec`.
fn noexec(dir: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::other("a path with a NUL byte"))?;
    // SAFETY: statvfs is plain data, for which all zeroes is a value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs fills the struct it is given; the path is a valid
    // NUL-terminated string that outlives the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_flag & libc::ST_NOEXEC != 0)
}

/// Whether `program` is an executable file in the image tree at `rootfs`,
/// looked up as runc looks it up (a name with a `/` from `cwd`, any other
/// in the `PATH` of `env`), with symbolic links resolved inside the tree.
/// The helper would find out only once the instance runs; runc refuses to
/// start it, so kiln checks first and refuses the same way.
pub fn find_program(rootfs: &Path, cwd: &str, program: &str, env: &[String]) -> bool {
    let executable = |p: &Path| {
        resolve_in_root(rootfs, p)
            .and_then(|host| fs::metadata(host).ok())
            .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(&Path::new(cwd).join(program));
    }
    let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("");
    path.split(':').any(|dir| executable(&Path::new(cwd).join(if dir.is_empty() { "." } else { dir }).join(program)))
}

/// A path inside the tree at `root` as a host path, following symbolic
/// links as the instance would see them (an absolute target starts again
/// at `root`, `..` stops at it). `None` when a part is missing or the
/// links go round.
fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    use std::collections::VecDeque;
    use std::path::Component;
    let parts_of = |p: &Path| -> VecDeque<std::ffi::OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let mut parts = parts_of(path);
    let mut at = PathBuf::new();
    let mut links = 0;
    while let Some(part) = parts.pop_front() {
        if part == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&part);
        let meta = fs::symlink_metadata(root.join(&next)).ok()?;
        if !meta.file_type().is_symlink() {
            at = next;
            continue;
        }
        links += 1;
        if links > 40 {
            return None;
        }
        let target = fs::read_link(root.join(&next)).ok()?;
        if target.is_absolute() {
            at = PathBuf::new();
        }
        let mut rest = parts_of(&target);
        rest.extend(parts);
        parts = rest;
    }
    Some(root.join(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_runc_finds_them_with_links_inside_the_tree() {
        use std::os::unix::fs::symlink;
        let root = kiln_testutil::tempdir("sandbox-find");
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("srv")).unwrap();
        let exe = |p: &str, mode| {
            fs::write(root.join(p), b"#!/bin/sh\n").unwrap();
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).unwrap();
        };
        exe("usr/bin/busybox", 0o755);
        exe("usr/bin/notes", 0o644);
        exe("srv/app", 0o755);
        // Debian's merged /usr, and busybox's absolute applet links.
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("/bin/busybox", root.join("usr/bin/httpd")).unwrap();
        // A link that would leave the tree on the host stays inside it.
        symlink("../../../../../../usr/bin/busybox", root.join("srv/up")).unwrap();
        symlink("/etc/passwd", root.join("srv/host")).unwrap();
        symlink("loop", root.join("srv/loop")).unwrap();
        let env = vec!["A=1".to_owned(), "PATH=/usr/local/bin:/bin".to_owned()];
        let found = |cwd, p| find_program(&root, cwd, p, &env);
        assert!(found("/", "httpd"), "in PATH through two links");
        assert!(found("/", "/bin/httpd"));
        assert!(found("/srv", "./app"), "relative to the working directory");
        assert!(found("/", "/srv/up"), "`..` stops at the root");
        assert!(!found("/", "notes"), "not executable");
        assert!(!found("/", "nope"));
        assert!(!found("/", "app"), "not in PATH");
        assert!(!found("/", "/srv/host"), "the host's /etc/passwd is not the tree's");
        assert!(!found("/", "/srv/loop"));
        assert!(!find_program(&root, "/", "httpd", &[]), "no PATH, no lookup");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn installs_once_by_content_and_the_helper_is_a_static_program() {
        let run = kiln_testutil::tempdir("sandbox-exec");
        let Some(dir) = install(&run).unwrap() else { return };
        let again = install(&run).unwrap().unwrap();
        assert_eq!(dir, again);
        let helper = fs::read(dir.join("sandbox-exec")).unwrap();
        assert_eq!(&helper[..4], b"\x7fELF");
        assert_eq!(fs::metadata(dir.join("sandbox-exec")).unwrap().permissions().mode() & 0o777, 0o755);
        let filter = fs::read(dir.join("default.bpf")).unwrap();
        assert_eq!(filter.len() % 8, 0);
        // A static program has no interpreter (PT_INTERP) to find in the
        // image: read the ELF program headers.
        let u16_at = |o: usize| u16::from_le_bytes([helper[o], helper[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(helper[0x20..0x28].try_into().unwrap()) as usize;
        let (size, count) = (u16_at(0x36), u16_at(0x38));
        assert!(count > 0);
        for i in 0..count {
            let at = phoff + i * size;
            let kind = u32::from_le_bytes(helper[at..at + 4].try_into().unwrap());
            assert_ne!(kind, 3, "program header {i} is PT_INTERP: the helper is not static");
        }
        fs::remove_dir_all(&run).unwrap();
    }
}
