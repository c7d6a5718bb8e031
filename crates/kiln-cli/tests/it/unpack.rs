//! The safe unpacker against crafted, hostile layer tarballs. Headers are
//! written byte by byte here, because well-behaved tar writers refuse to
//! produce most of these entries.

use crate::common;

use std::fs;

use common::tempdir;
use kiln::image::unpack::{unpack, EntryProblem, UnpackError};

const REG: u8 = b'0';
const HARD: u8 = b'1';
const SYM: u8 = b'2';
const CHR: u8 = b'3';
const BLK: u8 = b'4';
const DIR: u8 = b'5';

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// One raw ustar entry: any name, any type, any link target.
fn entry(name: &[u8], kind: u8, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], if kind == DIR { 0o755 } else { 0o644 });
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let ck = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(ck.as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tarball(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut t: Vec<u8> = entries.concat();
    t.extend_from_slice(&[0u8; 1024]);
    t
}

/// A sandbox: `root` to unpack into and `outside`, a sibling that must stay
/// untouched.
struct Sandbox {
    base: std::path::PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let base = tempdir("unpack");
        fs::create_dir_all(base.join("outside")).unwrap();
        Sandbox { base }
    }
    fn root(&self) -> std::path::PathBuf {
        self.base.join("root")
    }
    fn outside(&self) -> std::path::PathBuf {
        self.base.join("outside")
    }
    fn unpack(&self, layers: &[Vec<u8>]) -> Result<(), UnpackError> {
        unpack(&self.root(), layers.iter().map(|l| &l[..])).map(|_| ())
    }
    fn assert_outside_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.base).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| n == "root" || n == "outside"), "something escaped: {names:?}");
        assert_eq!(fs::read_dir(self.outside()).unwrap().count(), 0, "something was written outside the root");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn refused(r: Result<(), UnpackError>) -> (String, EntryProblem) {
    match r {
        Err(UnpackError::Refused { entry, problem, .. }) => (entry, problem),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn dot_dot_and_absolute_paths_are_refused() {
    let _room = common::room("no-runc");
    let s = Sandbox::new();
    let (name, p) = refused(s.unpack(&[tarball(&[entry(b"../outside/pwned", REG, b"", b"x")])]));
    assert_eq!((name.as_str(), p), ("../outside/pwned", EntryProblem::DotDot));
    let abs = format!("{}/pwned", s.outside().display());
    let (name, p) = refused(s.unpack(&[tarball(&[entry(abs.as_bytes(), REG, b"", b"x")])]));
    assert_eq!((name, p), (abs, EntryProblem::Absolute));
    s.assert_outside_untouched();
}

#[test]
fn symlinks_that_climb_out_are_refused() {
    let _room = common::room("no-runc");
    let s = Sandbox::new();
    let (name, p) = refused(s.unpack(&[tarball(&[entry(b"a/up", SYM, b"../../outside", b"")])]));
    assert_eq!(name, "a/up");
    assert!(matches!(p, EntryProblem::SymlinkEscapes(_)), "{p:?}");
    s.assert_outside_untouched();
}

#[test]
fn writes_through_a_symlinked_directory_are_refused_within_and_across_layers() {
    let _room = common::room("no-runc");
    let s = Sandbox::new();
    let target = s.outside();
    let link = entry(b"evil", SYM, target.to_str().unwrap().as_bytes(), b"");
    let (entry_name, p) = refused(s.unpack(&[tarball(&[link.clone(), entry(b"evil/pwned", REG, b"", b"x")])]));
    assert_eq!(entry_name, "evil/pwned");
    assert_eq!(p, EntryProblem::ThroughSymlink("evil".into()));
    let s2 = Sandbox::new();
    let link2 = entry(b"evil", SYM, s2.outside().to_str().unwrap().as_bytes(), b"");
    let r = s2.unpack(&[tarball(&[link2]), tarball(&[entry(b"evil/pwned", REG, b"", b"x")])]);
    assert!(matches!(refused(r).1, EntryProblem::ThroughSymlink(_)));
    // Not even a whiteout may reach through it.
    let s3 = Sandbox::new();
    fs::write(s3.outside().join("victim"), "keep").unwrap();
    let link3 = entry(b"evil", SYM, s3.outside().to_str().unwrap().as_bytes(), b"");
    let r = s3.unpack(&[tarball(&[link3]), tarball(&[entry(b"evil/.wh.victim", REG, b"", b"")])]);
    assert!(matches!(refused(r).1, EntryProblem::ThroughSymlink(_)));
    assert!(s3.outside().join("victim").exists());
    s.assert_outside_untouched();
    s2.assert_outside_untouched();
}

#[test]
fn hardlinks_outside_the_root_are_refused() {
    let _room = common::room("no-runc");
    let s = Sandbox::new();
    let (_, p) = refused(s.unpack(&[tarball(&[entry(b"h", HARD, b"../outside/x", b"")])]));
    assert!(matches!(p, EntryProblem::HardlinkOutside(_)), "{p:?}");
    let (_, p) = refused(s.unpack(&[tarball(&[entry(b"h", HARD, b"/etc/passwd", b"")])]));
    assert!(matches!(p, EntryProblem::HardlinkOutside(_)), "{p:?}");
    // Through a symlink to a directory outside.
    fs::write(s.outside().join("secret"), "s").unwrap();
    let link = entry(b"s", SYM, s.outside().to_str().unwrap().as_bytes(), b"");
    let (_, p) = refused(s.unpack(&[tarball(&[link, entry(b"h", HARD, b"s/secret", b"")])]));
    assert!(matches!(p, EntryProblem::ThroughSymlink(_)), "{p:?}");
    // To nothing.
    let (_, p) = refused(s.unpack(&[tarball(&[entry(b"h", HARD, b"missing", b"")])]));
    assert!(matches!(p, EntryProblem::HardlinkTargetMissing(_)), "{p:?}");
}

#[test]
fn device_nodes_and_malformed_whiteouts_are_refused() {
    let _room = common::room("no-runc");
    let s = Sandbox::new();
    assert_eq!(refused(s.unpack(&[tarball(&[entry(b"dev/sda", BLK, b"", b"")])])).1, EntryProblem::DeviceNode);
    assert_eq!(refused(s.unpack(&[tarball(&[entry(b"dev/mem", CHR, b"", b"")])])).1, EntryProblem::DeviceNode);
    for bad in [&b"a/.wh."[..], b".wh..", b"a/.wh..wh.x"] {
        let (entry_name, p) = refused(s.unpack(&[tarball(&[entry(bad, REG, b"", b"")])]));
        assert_eq!(p, EntryProblem::MalformedWhiteout, "{entry_name}");
    }
    assert_eq!(refused(s.unpack(&[tarball(&[entry(b"a/.wh.b", DIR, b"", b"")])])).1, EntryProblem::MalformedWhiteout);
}

#[test]
fn whiteouts_and_opaque_directories_apply_to_lower_layers_only() {
    let _room = common::room("no-runc");
    let s = Sandbox::new();
    let lower = tarball(&[
        entry(b"a/", DIR, b"", b""),
        entry(b"a/x", REG, b"", b"x"),
        entry(b"a/y", REG, b"", b"y"),
        entry(b"b/", DIR, b"", b""),
        entry(b"b/old", REG, b"", b"old"),
        entry(b"b/sub/deep", REG, b"", b"deep"),
        entry(b"c/keep", REG, b"", b"c"),
        entry(b"l", SYM, b"a/y", b""),
    ]);
    let upper = tarball(&[
        entry(b"a/.wh.x", REG, b"", b""),
        // The new entry comes before the opaque marker: it must survive.
        entry(b"b/new", REG, b"", b"new"),
        entry(b"b/sub/fresh", REG, b"", b"fresh"),
        entry(b"b/.wh..wh..opq", REG, b"", b""),
        entry(b".wh.c", REG, b"", b""),
        entry(b".wh.l", REG, b"", b""),
        entry(b".wh.never-existed", REG, b"", b""),
    ]);
    s.unpack(&[lower, upper]).unwrap();
    let r = s.root();
    let list = |d: &str| {
        let mut v: Vec<String> =
            fs::read_dir(r.join(d)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(list("a"), vec!["y"]);
    assert_eq!(list("b"), vec!["new", "sub"]);
    assert_eq!(list("b/sub"), vec!["fresh"], "lower content under an opaque dir is hidden, this layer's kept");
    assert_eq!(list("."), vec!["a", "b"]);
    assert_eq!(fs::read_to_string(r.join("b/new")).unwrap(), "new");
    s.assert_outside_untouched();
}

#[test]
fn later_layers_replace_types_and_read_only_dirs_still_fill() {
    let _room = common::room("no-runc");
    let s = Sandbox::new();
    let mut ro_dir = entry(b"ro/", DIR, b"", b"");
    // mode 0555
    ro_dir[100..108].copy_from_slice(b"0000555\0");
    ro_dir[148..156].copy_from_slice(b"        ");
    let sum: u32 = ro_dir[..512].iter().map(|&b| u32::from(b)).sum();
    ro_dir[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let l1 = tarball(&[
        ro_dir,
        entry(b"ro/f", REG, b"", b"f"),
        entry(b"p", DIR, b"", b""),
        entry(b"p/child", REG, b"", b"c"),
        entry(b"q", REG, b"", b"q"),
    ]);
    let l2 = tarball(&[
        entry(b"p", REG, b"", b"now a file"),
        entry(b"q/", DIR, b"", b""),
        entry(b"q/inner", REG, b"", b"i"),
        entry(b"ro/g", REG, b"", b"g"),
    ]);
    s.unpack(&[l1, l2]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let r = s.root();
    assert_eq!(fs::metadata(r.join("ro")).unwrap().permissions().mode() & 0o777, 0o555);
    assert_eq!(fs::read_to_string(r.join("ro/g")).unwrap(), "g");
    assert_eq!(fs::read_to_string(r.join("p")).unwrap(), "now a file");
    assert_eq!(fs::read_to_string(r.join("q/inner")).unwrap(), "i");
}

/// A small deterministic fuzz loop (the cargo-fuzz target in `fuzz/` runs
/// the same code for longer): random byte flips in a valid layer never
/// panic and never write outside the root.
#[test]
fn mutated_layers_never_escape() {
    let _room = common::room("no-runc");
    let base = tarball(&[
        entry(b"d/", DIR, b"", b""),
        entry(b"d/f", REG, b"", b"content"),
        entry(b"d/l", SYM, b"f", b""),
        entry(b"d/h", HARD, b"d/f", b""),
        entry(b"d/.wh.x", REG, b"", b""),
        entry(b"e/.wh..wh..opq", REG, b"", b""),
    ]);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let s = Sandbox::new();
    let interesting = [b'.', b'/', b'0', b'1', b'2', b'3', b'5', 0];
    for _ in 0..2000 {
        let mut t = base.clone();
        for _ in 0..(1 + next() % 4) {
            let i = (next() as usize) % t.len();
            t[i] = if next() % 2 == 0 { interesting[(next() % 8) as usize] } else { next() as u8 };
        }
        let _ = fs::remove_dir_all(s.root());
        let _ = unpack(&s.root(), [&t[..]]);
        s.assert_outside_untouched();
    }
}
