//! kiln's sandbox exec helper: the first program an instance runs when its
//! service has the default seccomp profile. It loads a seccomp filter that
//! kiln compiled once (`runtime::seccomp::default_filter`), then replaces
//! itself with the instance's own program.
//!
//! Usage: `sandbox-exec FILTER PROGRAM [ARG...]`. FILTER is a file of
//! classic BPF instructions (8 bytes each, native byte order). PROGRAM is
//! looked up in `PATH` as runc would look it up.
//!
//! Why it exists: runc 1.1 compiles the profile's ~290 rules with libseccomp
//! at every start, which cost +4 ms (1.14×) of a 30 ms start
//! (bench/sandbox.sh). Loading a filter already compiled takes microseconds.
//!
//! It is built by the kiln crate's build script as a static binary (it runs
//! inside images that may have no C library) and bind-mounted read-only into
//! each instance. It is its own program, not a module: it links nothing of
//! kiln's, and must never do more than load the filter and exec: whatever it
//! did would run in every instance, before the filter.

use std::os::unix::process::CommandExt;
use std::process::{exit, Command};

/// One classic BPF instruction, as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// The kernel's `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

const PR_SET_NO_NEW_PRIVS: i32 = 38;
const PR_SET_SECCOMP: i32 = 22;
const SECCOMP_MODE_FILTER: u64 = 2;

extern "C" {
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

fn fail(what: &str, code: i32) -> ! {
    eprintln!("kiln sandbox-exec: {what}");
    exit(code)
}

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() < 3 {
        fail("usage: sandbox-exec FILTER PROGRAM [ARG...]", 2);
    }
    let bytes =
        std::fs::read(&args[1]).unwrap_or_else(|e| fail(&format!("cannot read the filter {:?}: {e}", args[1]), 126));
    if bytes.is_empty() || bytes.len() % 8 != 0 || bytes.len() / 8 > 4096 {
        fail(&format!("the filter {:?} is not a BPF program ({} bytes)", args[1], bytes.len()), 126);
    }
    let program: Vec<SockFilter> = bytes
        .chunks_exact(8)
        .map(|c| SockFilter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let fprog = SockFprog { len: program.len() as u16, filter: program.as_ptr() };
    // SAFETY: prctl with integer arguments only; setting no_new_privs cannot
    // touch memory. runc has set it already; it is asked again because the
    // kernel refuses an unprivileged filter without it.
    if unsafe { prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        fail(&format!("cannot set no_new_privs: {}", std::io::Error::last_os_error()), 126);
    }
    // SAFETY: `fprog` points at `program`, both alive across the call; the
    // kernel copies the instructions and keeps no pointer to them.
    if unsafe { prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog as *const SockFprog as u64, 0, 0) } != 0 {
        fail(&format!("cannot load the seccomp filter: {}", std::io::Error::last_os_error()), 126);
    }
    // `exec` looks the program up in PATH, keeps argv[0] as given, and
    // resets SIGPIPE (which the Rust runtime ignores) to its default.
    let mut cmd = Command::new(&args[2]);
    cmd.arg0(&args[2]).args(&args[3..]);
    let err = cmd.exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
    fail(&format!("cannot run {:?}: {err}", args[2]), code)
}
