//! Helpers shared by the integration tests: temp dirs, running the real
//! `kiln` binary, and a busybox rootfs made from Debian's busybox-static.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

pub fn tempdir(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "kiln-it-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).unwrap();
    p
}

pub fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// Runs kiln with `home` as KILN_HOME in `cwd`, with SOURCE_DATE_EPOCH unset.
pub fn kiln(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(kiln_bin())
        .args(args)
        .current_dir(cwd)
        .env("KILN_HOME", home)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run kiln")
}

/// Runs kiln and insists on success; returns stdout.
pub fn kiln_ok(home: &Path, cwd: &Path, args: &[&str]) -> String {
    let out = kiln(home, cwd, args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs kiln, insists on failure; returns stderr.
pub fn kiln_err(home: &Path, cwd: &Path, args: &[&str]) -> String {
    let out = kiln(home, cwd, args);
    assert!(!out.status.success(), "kiln {args:?} should fail; stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

/// `kiln bake --json` → the digests of the baked images, in order.
pub fn bake_digests(home: &Path, cwd: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["bake", "--json"];
    args.extend_from_slice(extra);
    let out = kiln_ok(home, cwd, &args);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad json {e}: {out}"));
    v.as_array().unwrap().iter().map(|r| r["digest"].as_str().unwrap().to_owned()).collect()
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out =
        Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const APPLETS: &[&str] = &[
    "sh", "echo", "mkdir", "rm", "ln", "cat", "touch", "chmod", "ls", "true", "sleep", "id", "stat", "hostname", "wc",
    "grep", "printenv",
];

/// Writes a rootfs tarball with Debian's static busybox and a few applet
/// links, plus /etc/motd, at `path`.
pub fn busybox_rootfs(path: &Path) {
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(size);
        h
    };
    for d in ["bin", "etc", "tmp"] {
        b.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), format!("{d}/"), std::io::empty()).unwrap();
    }
    b.append_data(&mut header(tar::EntryType::Regular, 0o755, busybox.len() as u64), "bin/busybox", &busybox[..])
        .unwrap();
    for a in APPLETS {
        b.append_link(&mut header(tar::EntryType::Symlink, 0o777, 0), format!("bin/{a}"), "busybox").unwrap();
    }
    let motd = b"welcome\n";
    b.append_data(&mut header(tar::EntryType::Regular, 0o644, motd.len() as u64), "etc/motd", &motd[..]).unwrap();
    fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// The uncompressed entries (path, is-whiteout) of a gzip layer blob.
pub fn layer_paths(blob: &Path) -> Vec<String> {
    let f = fs::File::open(blob).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad json {e}: {s}"))
}
