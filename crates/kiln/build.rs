//! Builds the sandbox-exec helper (helper/sandbox_exec.rs) as a static
//! binary, which kiln embeds and bind-mounts into instances: it must run in
//! images with no C library, so it cannot be one of cargo's own targets,
//! which link the C library dynamically.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "helper/sandbox_exec.rs";
    // The filter the helper loads is a pure function of these two files.
    let filter_sources = ["src/runtime/seccomp.rs", "src/runtime/seccomp_bpf.rs"];
    for f in [src].iter().chain(&filter_sources) {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("sandbox-exec");
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let o = Command::new(rustc)
        .args(["--edition=2021", "--crate-name=kiln_sandbox_exec", "--crate-type=bin", "-O", "-D", "warnings"])
        .args(["-C", "panic=abort", "-C", "target-feature=+crt-static", "-C", "strip=symbols", "--target", &target])
        .arg("-o")
        .arg(&out)
        .arg(src)
        .output()
        .expect("run rustc for the sandbox-exec helper");
    assert!(
        o.status.success(),
        "building the static sandbox-exec helper ({src}) failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The identity of the helper and of the filter, hashed here once, so an
    // instance start only checks that their directory exists: hashing the
    // helper's megabyte and compiling the filter at each start cost
    // milliseconds. FNV-1a names a build, nothing more (the directory is
    // root's, under /run/kiln).
    let mut bytes = std::fs::read(&out).expect("read the sandbox-exec helper");
    for f in filter_sources {
        bytes.extend(std::fs::read(f).expect("read the seccomp sources"));
    }
    let fnv = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    println!("cargo:rustc-env=KILN_SANDBOX_EXEC_ID={fnv:016x}");
}
