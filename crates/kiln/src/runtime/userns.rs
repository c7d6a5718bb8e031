//! User namespaces: each service's uid 0..65535 mapped to a host range of
//! its own, and the read-only image tree shown to it through an idmapped
//! mount, so that the files root owns in the image are owned by the
//! service's root inside and by an unprivileged host uid outside.
//!
//! Ranges start at [`FIRST_BASE`] (2^30, far above the ranges `/etc/subuid`
//! hands out) in steps of 65,536; the allocation is recorded in
//! `$KILN_HOME/userns.json`, under a lock, and never reused for another
//! service. Debian 12's runc (1.1.5) cannot ask the kernel for an idmapped
//! mount, so kiln makes it itself (`open_tree`, `mount_setattr` with
//! `MOUNT_ATTR_IDMAP`, `move_mount`; Linux 5.12 or later, on a file system
//! that supports it, such as ext4, xfs, btrfs or tmpfs) and gives runc the
//! mounted tree as the instance's root. The mount is read-only, so nothing
//! can delete the shared image tree through it, and it lives on only in the
//! instance's own mount namespace: the shim detaches the host's copy as soon
//! as the container holds it (with the bundle), so the host keeps none.
//!
//! For: ranges, idmapped trees, shifting a volume into a range. Must never:
//! unmount anything it did not mount, or follow a symlink out of a volume.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The first host uid kiln maps to.
pub const FIRST_BASE: u32 = 1 << 30;
/// How many ids each service gets.
pub const SIZE: u32 = 65_536;

/// The host range of one service: its uid (and gid) 0 is host `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Range {
    pub base: u32,
    pub size: u32,
}

impl Range {
    /// The host id of `id` inside.
    pub fn host(&self, id: u32) -> u32 {
        self.base + id.min(self.size - 1)
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Allocations {
    ranges: BTreeMap<String, u32>,
}

/// The range of `service`, allocated (and recorded) on first use.
pub fn range_for(home: &Path, service: &str) -> io::Result<Range> {
    let lock = File::options().create(true).truncate(false).write(true).open(home.join("userns.lock"))?;
    // SAFETY: flock on a descriptor this function owns; released when
    // `lock` is dropped at the end of the function.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let path = home.join("userns.json");
    let mut a: Allocations = match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Allocations::default(),
        Err(e) => return Err(e),
    };
    if let Some(base) = a.ranges.get(service) {
        return Ok(Range { base: *base, size: SIZE });
    }
    let base = a.ranges.values().max().map_or(FIRST_BASE, |b| b + SIZE);
    if u64::from(base) + u64::from(SIZE) > u64::from(u32::MAX) {
        return Err(io::Error::other("no user namespace range left"));
    }
    a.ranges.insert(service.to_owned(), base);
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&a).expect("serializes"))?;
    fs::rename(&tmp, &path)?;
    Ok(Range { base, size: SIZE })
}

/// A user namespace with `range` mapped, held open by its descriptor (the
/// process that made it is gone once this returns). The process is a bare
/// fork that unshares and waits on a pipe: exec'ing a program for it
/// (`/bin/sleep`, before) cost about a millisecond of every start.
fn userns(range: Range) -> io::Result<File> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let pipe = || -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`, owned below.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both were just made by pipe2 and belong to no one else.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    };
    let (ready_r, ready_w) = pipe()?;
    let (hold_r, hold_w) = pipe()?;
    // SAFETY: the child calls only async-signal-safe functions (unshare,
    // write, read, _exit) before it ends, as a fork of a process that may
    // have threads requires; it never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see the fork above; the buffers are one byte on this stack.
        unsafe {
            // Its copies of the parent's ends, or the EOF would never come.
            libc::close(hold_w.as_raw_fd());
            libc::close(ready_r.as_raw_fd());
            let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
            libc::write(ready_w.as_raw_fd(), (&ok as *const u8).cast(), 1);
            let mut b = 0u8;
            // Until the parent closes its end: EOF.
            libc::read(hold_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop((ready_w, hold_r));
    let mut ok = [0u8; 1];
    let made = File::from(ready_r)
        .read_exact(&mut ok)
        .map_err(|e| io::Error::new(e.kind(), "the user namespace's process ended"));
    let proc = format!("/proc/{pid}");
    let map = format!("0 {} {}\n", range.base, range.size);
    let done = made
        .and_then(|_| if ok[0] == 1 { Ok(()) } else { Err(io::Error::other("unshare(CLONE_NEWUSER) failed")) })
        .and_then(|_| fs::write(format!("{proc}/uid_map"), &map))
        .and_then(|_| fs::write(format!("{proc}/gid_map"), &map))
        .and_then(|_| File::open(format!("{proc}/ns/user")));
    drop(hold_w);
    let mut status = 0;
    // SAFETY: waits for the child forked above, which exits on the EOF.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    done
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

fn cstr(p: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("a path with a NUL byte"))
}

/// Mounts `src` at `dst` (an empty directory) read-only, its ids shifted
/// into `range`: what host uid 0 owns shows as `range.base`.
pub fn mount_idmapped(src: &Path, dst: &Path, range: Range) -> io::Result<()> {
    let ns = userns(range)?;
    let (src_c, dst_c, empty) = (cstr(src)?, cstr(dst)?, c"");
    // SAFETY: open_tree with a valid NUL-terminated path; the returned
    // descriptor is owned by `tree` below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open_tree and is owned by no one else.
    let tree = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on the detached tree's descriptor, an empty
    // path with AT_EMPTY_PATH, and a mount_attr of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("an idmapped mount of {} (Linux 5.12+ on ext4, xfs, btrfs or tmpfs): {e}", src.display()),
        ));
    }
    // SAFETY: move_mount of the detached tree (empty path) onto `dst`, a
    // valid NUL-terminated path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts what [`mount_idmapped`] mounted at `dst` (lazily, so a
/// container still inside keeps it until it is gone) and removes the
/// then-empty directory. Nothing mounted there: only the directory goes.
pub fn unmount(dst: &Path) {
    if let Ok(c) = cstr(dst) {
        // SAFETY: umount2 with a valid path; EINVAL (not a mount point) is fine.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    // rmdir, never a recursive removal: if the unmount failed, the tree
    // below is the shared image.
    let _ = fs::remove_dir(dst);
}

/// Shifts a volume made before its service had a range (owned by host ids
/// below 65,536) into `range`, every entry by lchown; a volume already in
/// the range is left as it is. Symlinks are not followed.
pub fn shift_volume(dir: &Path, range: Range) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    let inside = |id: u32| id >= range.base && id < range.base + range.size;
    if inside(meta.uid()) {
        return Ok(());
    }
    fn walk(p: &Path, range: Range) -> io::Result<()> {
        let m = fs::symlink_metadata(p)?;
        let (u, g) = (m.uid(), m.gid());
        if u < range.size && g < range.size {
            std::os::unix::fs::lchown(p, Some(range.host(u)), Some(range.host(g)))?;
        }
        if m.is_dir() {
            for e in fs::read_dir(p)? {
                walk(&e?.path(), range)?;
            }
        }
        Ok(())
    }
    walk(dir, range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_gets_a_range_of_its_own_and_keeps_it() {
        let home = kiln_testutil::tempdir("userns");
        let web = range_for(&home, "web").unwrap();
        let db = range_for(&home, "db").unwrap();
        assert_eq!(web, Range { base: FIRST_BASE, size: SIZE });
        assert_eq!(db.base, FIRST_BASE + SIZE);
        assert_eq!(range_for(&home, "web").unwrap(), web, "recorded, not allocated again");
        assert_eq!(web.host(0), FIRST_BASE);
        assert_eq!(web.host(65534), FIRST_BASE + 65534);
        fs::remove_dir_all(home).unwrap();
    }
}
